"""The scheduled backup on Kubernetes (``deploy/components/backup``, in every overlay): a CronJob
that runs ``driftloop backup`` as the CLI parses it, against the store's Secret, into each
overlay's own S3 prefix, locked down like the service and allowed out to what it needs only.

Real kubectl/kustomize renders; strict validation of the same objects is ``deploy/check.py``
(tests/unit/test_k8s_manifests.py runs it on every overlay).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from training.cli import _parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("staging", "production")


def _render(overlay: str) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("deploy_check", DEPLOY / "check.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: list[dict[str, Any]] = module.render(DEPLOY / "overlays" / overlay)
    return rendered


def _one(objects: list[dict[str, Any]], kind: str, name_prefix: str) -> dict[str, Any]:
    [found] = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)
    ]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_cronjob_runs_driftloop_backup_nightly_one_at_a_time(overlay: str) -> None:
    cron = _one(_render(overlay), "CronJob", "driftloop-backup")["spec"]
    assert cron["schedule"] == "30 2 * * *"
    assert cron["timeZone"] == "Etc/UTC"
    assert cron["concurrencyPolicy"] == "Forbid"
    job = cron["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "training.cli"]
    args = _parser().parse_args(command[3:])
    assert args.command == "backup"
    assert args.keep == 14
    assert args.to is None  # the artifact store's backups/, set by the ConfigMap
    assert container["image"] == "ghcr.io/acme/driftloop-airflow:3.3.2"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_backup_reads_the_store_secret_and_writes_to_the_overlays_own_prefix(
    overlay: str,
) -> None:
    objects = _render(overlay)
    pod = _one(objects, "CronJob", "driftloop-backup")["spec"]["jobTemplate"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["DRIFTLOOP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "driftloop-store",
        "key": "database-url",
    }
    config = _one(objects, "ConfigMap", "driftloop-backup-")
    refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert refs == [config["metadata"]["name"]]
    assert config["data"]["DRIFTLOOP_ARTIFACTS_URI"] == f"s3://acme-driftloop/{overlay}"
    secrets = [e["secretRef"] for e in container["envFrom"] if "secretRef" in e]
    assert secrets == [{"name": "driftloop-artifacts", "optional": True}]
    # BentoML's store and the staging of each part are on the pod's volume, not its image.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["BENTOML_HOME"]["value"].startswith("/tmp/")
    assert env["TMPDIR"]["value"] == "/tmp"
    assert "/tmp" in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_backup_pod_is_locked_down_and_reaches_only_dns_the_store_and_s3(overlay: str) -> None:
    objects = _render(overlay)
    template = _one(objects, "CronJob", "driftloop-backup")["spec"]["jobTemplate"]["spec"][
        "template"
    ]
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    account = _one(objects, "ServiceAccount", "driftloop-backup")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False

    labels = template["metadata"]["labels"]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    selecting = [
        p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    # Only its own policy: the service's would allow no HTTPS out, and S3 is HTTPS.
    assert [p["metadata"]["name"] for p in selecting] == ["driftloop-backup"]
    [policy] = selecting
    assert "ingress" not in policy["spec"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (443, "TCP")}
