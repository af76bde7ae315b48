"""Build the versioned Bento of a model: the service in ``bentos/`` with that model packaged in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from training.errors import DriftloopError

__all__ = ["PROJECT_ROOT", "build_bento"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def build_bento(model_tag: str, *, labels: dict[str, str] | None = None) -> str:
    """Run ``bentoml build`` for ``model_tag``; the Bento's version is the model's version.

    A fresh process builds it, so the service module is imported with this build's arguments even
    when the caller already imported it for another model.

    Returns:
        The Bento tag, ``<service name>:<model version>``.

    Raises:
        DriftloopError: the build failed (the message carries BentoML's last lines).
    """
    name, _, version = model_tag.partition(":")
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "build",
        str(PROJECT_ROOT),
        "-f",
        str(PROJECT_ROOT / "bentofile.yaml"),
        "--version",
        version,
        "--arg",
        f"model_tag={model_tag}",
        "--label",
        f"model_tag={name}.{version}",
        "-o",
        "tag",
    ]
    for key, value in (labels or {}).items():
        command += ["--label", f"{key}={value}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise DriftloopError(f"bentoml build for {model_tag} failed: {tail}")
    # `-o tag` prints "__tag__:<tag>" on its last line.
    last = result.stdout.strip().splitlines()[-1]
    return last.removeprefix("__tag__:").strip()
