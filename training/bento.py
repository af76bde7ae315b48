"""Build the versioned Bento of a model (the service in ``bentos/`` with that model packaged in it),
export it to the artifact store, and bring an export back into the local BentoML store.

An export is one file per Bento, ``<artifacts root>/bentos/<service>/<version>.bento`` (BentoML's
``bentoml export`` format), recorded as the model version's ``bento_uri``: a machine whose BentoML
store lacks the champion (a CI runner, a fresh checkout) rebuilds its image from there.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from training.artifacts import open_store
from training.errors import DriftloopError
from training.lineage import check_requirements
from training.settings import Settings
from training.store import connect

__all__ = [
    "PROJECT_ROOT",
    "bento_exists",
    "bento_key",
    "build_bento",
    "ensure_local_bento",
    "ensure_recorded_bento",
    "export_bento",
    "import_bento",
    "publish_bento",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def build_bento(model_tag: str, *, labels: dict[str, str] | None = None) -> str:
    """Run ``bentoml build`` for ``model_tag``; the Bento's version is the model's version.

    A fresh process builds it, so the service module is imported with this build's arguments even
    when the caller already imported it for another model.

    Returns:
        The Bento tag, ``<service name>:<model version>``.

    Raises:
        DriftloopError: ``bentos/requirements.txt`` does not match ``uv.lock``, or the build
            failed (the message carries BentoML's last lines).
    """
    check_requirements()
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


def bento_exists(bento_tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.bentos.get(bento_tag)
    except NotFound:
        return False
    return True


def bento_key(bento_tag: str) -> str:
    """Where a Bento's export goes under the artifact store's root."""
    name, _, version = bento_tag.partition(":")
    if not name or not version:
        raise ValueError(f"a Bento tag is <name>:<version>, got {bento_tag!r}")
    return f"bentos/{name}/{version}.bento"


def export_bento(settings: Settings, bento_tag: str) -> str:
    """``bentoml export`` the Bento into the artifact store; return its URI. Exporting again
    writes the same key (a re-run replaces the file with an equal one).

    Raises:
        DriftloopError: the artifact store cannot be written (the message names its URI).
    """
    import bentoml

    key = bento_key(bento_tag)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(key).name
        bentoml.bentos.export_bento(bento_tag, str(local))
        return open_store(settings).put(local, key)


def publish_bento(settings: Settings, url: str, model_tag: str, bento_tag: str) -> str:
    """Export a model's Bento to the artifact store and record the export as its ``bento_uri``."""
    from training import registry

    uri = export_bento(settings, bento_tag)
    with connect(url) as conn:
        registry.set_bento_uri(conn, model_tag, uri)
    return uri


def import_bento(settings: Settings, uri: str) -> str:
    """Fetch an exported Bento from the artifact store into the local BentoML store; return its tag.

    Raises:
        DriftloopError: the artifact cannot be read (the message names its URI).
    """
    import bentoml

    with tempfile.TemporaryDirectory() as tmp:
        local = open_store(settings).fetch(uri, Path(tmp) / Path(uri).name)
        return str(bentoml.bentos.import_bento(str(local)).tag)


def ensure_local_bento(settings: Settings, bento_tag: str, bento_uri: str | None) -> bool:
    """Make ``bento_tag`` available locally, importing its export when the local store lacks it.

    Returns:
        True when it was imported from ``bento_uri``.

    Raises:
        DriftloopError: not in the local store and no export recorded, or the export holds
            another Bento.
    """
    if bento_exists(bento_tag):
        return False
    if bento_uri is None:
        raise DriftloopError(
            f"Bento {bento_tag} is not in the local BentoML store and no export of it is recorded "
            "(exports go to DRIFTLOOP_ARTIFACTS_URI when a retrain promotes a model)"
        )
    imported = import_bento(settings, bento_uri)
    if imported != bento_tag:
        raise DriftloopError(f"{bento_uri} holds Bento {imported}, expected {bento_tag}")
    return True


def ensure_recorded_bento(settings: Settings, url: str, bento_tag: str) -> str | None:
    """:func:`ensure_local_bento` with the export the registry recorded for ``bento_tag``.

    Returns:
        The URI imported from, or None when the Bento was already in the local store.
    """
    if bento_exists(bento_tag):
        return None
    from training import registry

    with connect(url) as conn:
        version = registry.by_bento(conn, bento_tag)
    uri = version.bento_uri if version else None
    ensure_local_bento(settings, bento_tag, uri)
    return uri
