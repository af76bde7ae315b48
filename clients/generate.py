"""Regenerate the typed HTTP client in ``clients/python`` from the service's OpenAPI document.

The document is the one ``/docs.json`` serves with ``DRIFTLOOP_AUTH=on`` (its security schemes and
401/403/429 answers included) and the default ``DRIFTLOOP_BATCH_MAX_RECORDS``, built the way the
service builds it (:func:`bentos.contract.openapi_document`, :func:`bentos.access.secure_document`)
without starting a server. It depends on the served model's spec (its features and labels):

    python clients/generate.py                      # the built-in churn demo model (the default)
    python clients/generate.py --spec models/x.yaml # a model spec of your own
    python clients/generate.py --model-tag x:v3     # a trained model in the BentoML model store

With ``--spec`` (or the default), the spec is saved as a stand-in model, holding nothing but the
spec, in a throwaway BentoML home: no trained model is needed. The output is deterministic: the
same spec and the locked tool versions write the same files, which ``.ci/run`` checks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "openapi-python-client.yaml"
# Templates replacing openapi-python-client's own (the package's README).
TEMPLATES = HERE / "templates"
OUTPUT = HERE / "python"
DOCUMENT = "openapi.json"


def _stand_in_model(spec_path: Path | None) -> str:
    """Save ``spec_path``'s spec (the built-in one when None) as a model holding only its spec, in
    the BentoML home of this process; return its tag. The service imports the spec, never the
    pipeline, to declare its routes."""
    import bentoml
    import yaml

    from training.registry import SPEC_FILE
    from training.spec import load_spec

    spec = load_spec(spec_path)
    with bentoml.models.create(spec.name, labels={"owner": "driftloop-client"}) as model:
        Path(model.path_of(SPEC_FILE)).write_text(
            yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        )
    return str(model.tag)


def build_document(model_tag: str) -> dict[str, Any]:
    """The document ``/docs.json`` serves for ``model_tag`` with auth on and default settings."""
    from bentoml._internal.utils.args import set_arguments

    # The service reads its model from BentoML's build arguments when its module is imported.
    set_arguments({"model_tag": model_tag})
    from bentos.access import secure_document
    from bentos.contract import openapi_document
    from bentos.service import ChurnService
    from training.settings import Settings

    max_records = Settings.model_fields["batch_max_records"].default
    return secure_document(openapi_document(ChurnService, max_records))


def generate(document: dict[str, Any], output: Path) -> None:
    """Write the client package for ``document`` to ``output`` (replaced), the document beside it."""
    tools = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryDirectory(prefix="driftloop-client-") as scratch:
        source = Path(scratch) / DOCUMENT
        source.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        target = Path(scratch) / "python"
        command = [
            str(tools / "openapi-python-client"),
            "generate",
            "--path",
            str(source),
            "--config",
            str(CONFIG),
            "--custom-template-path",
            str(TEMPLATES),
            "--meta",
            "setup",
            "--output-path",
            str(target),
            "--fail-on-warning",
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            sys.exit(f"openapi-python-client failed:\n{result.stdout}{result.stderr}")
        shutil.rmtree(target / ".ruff_cache", ignore_errors=True)  # the post hooks' cache
        shutil.copy(source, target / DOCUMENT)
        shutil.rmtree(output, ignore_errors=True)
        shutil.copytree(target, output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--spec", type=Path, help="a model spec YAML (default: the built-in churn)")
    which.add_argument("--model-tag", help="a model in the BentoML model store, e.g. churn:latest")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="driftloop-bentoml-") as home:
        if args.model_tag is None:
            # Before BentoML is imported: it reads its home once.
            os.environ["BENTOML_HOME"] = home
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        tag = args.model_tag or _stand_in_model(args.spec)
        document = build_document(tag)
    generate(document, args.output)
    print(f"wrote {args.output} ({DOCUMENT} and the driftloop_client package) for {tag}")


if __name__ == "__main__":
    main()
