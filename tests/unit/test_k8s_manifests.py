"""The Kubernetes manifests under ``deploy/``: every overlay renders with ``kubectl kustomize`` and
validates strictly (``deploy/check.py``, as ``make k8s-check`` and ``.ci/run`` run it), a broken one
fails naming what is wrong, and the rendered objects keep the promises docs/kubernetes.md makes.

Real kubectl/kustomize and kubernetes-validate schemas, no cluster (the rollouts against a real API
server are tests/k8s). Broken overlays are written to a temporary folder on top of ``deploy/base``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("staging", "production")


def _check_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check", DEPLOY / "check.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _check_module()


def _overlay(tmp_path: Path, body: str) -> Path:
    """An overlay in ``tmp_path`` whose ``BASE`` and ``COMPONENTS`` point into deploy/ (kustomize
    takes relative paths only)."""
    folder = tmp_path / "overlay"
    folder.mkdir(parents=True)
    base = os.path.relpath(DEPLOY / "base", folder)
    components = os.path.relpath(DEPLOY / "components", folder)
    text = body.replace("BASE", base).replace("COMPONENTS", components)
    (folder / "kustomization.yaml").write_text(text)
    return folder


def _rendered(overlay: str) -> dict[str, dict[str, Any]]:
    """The model service's objects by kind (the backup component's are tests/unit/test_backup_manifests.py's)."""
    return {
        obj["kind"]: obj
        for obj in check.render(DEPLOY / "overlays" / overlay)
        if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "backup"
    }


def test_make_k8s_check_passes_on_every_overlay() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "check.py")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for overlay in (*OVERLAYS, "rollout-rbac"):
        assert f"ok {overlay}:" in result.stdout
    assert "Kubernetes 1.30.0 and" in result.stdout


def test_an_unknown_field_fails_strict_validation_naming_it(tmp_path: Path) -> None:
    overlay = _overlay(
        tmp_path,
        """resources:
  - BASE
patches:
  - target:
      kind: Deployment
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/livenesProbe
        value: {}
""",
    )
    problems, _ = check.check(overlay)
    assert any("Deployment/driftloop" in p and "livenesProbe" in p for p in problems), problems
    assert any("1.30.0" in p for p in problems)
    assert subprocess.run([sys.executable, str(DEPLOY / "check.py"), str(overlay)]).returncode == 1


def test_a_wrong_type_fails_naming_the_field(tmp_path: Path) -> None:
    overlay = _overlay(
        tmp_path,
        """resources:
  - BASE
patches:
  - target:
      kind: Service
    patch: |-
      - op: replace
        path: /spec/ports/0/port
        value: http
""",
    )
    problems, _ = check.check(overlay)
    assert any("Service/driftloop" in p and "spec.ports.0.port" in p for p in problems), problems


def test_a_render_error_is_reported(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path, "resources:\n  - BASE\n  - missing.yaml\n")
    problems, _ = check.check(overlay)
    assert len(problems) == 1
    assert "kubectl kustomize failed" in problems[0]
    assert "missing.yaml" in problems[0]


def test_a_kind_without_a_schema_is_not_skipped(tmp_path: Path) -> None:
    """A typo in a custom resource's apiVersion must fail, not pass as 'no schema, skipped'."""
    overlay = _overlay(
        tmp_path,
        """resources:
  - BASE
components:
  - COMPONENTS/servicemonitor
patches:
  - target:
      kind: ServiceMonitor
    patch: |-
      - op: replace
        path: /apiVersion
        value: monitoring.coreos.com/v1beta1
""",
    )
    problems, _ = check.check(overlay)
    assert any("no schema for monitoring.coreos.com/v1beta1 ServiceMonitor" in p for p in problems)


def test_a_service_monitor_on_a_port_the_service_lacks_fails(tmp_path: Path) -> None:
    overlay = _overlay(
        tmp_path,
        """resources:
  - BASE
components:
  - COMPONENTS/servicemonitor
patches:
  - target:
      kind: ServiceMonitor
    patch: |-
      - op: replace
        path: /spec/endpoints/0/port
        value: metrics
      - op: remove
        path: /spec/endpoints/0/authorization
""",
    )
    problems, _ = check.check(overlay)
    assert any("spec.endpoints.0.port 'metrics' is no port" in p for p in problems), problems
    assert any("needs a Secret's name and key" in p for p in problems), problems


def test_the_hpa_api_version_is_a_component_for_old_clusters(tmp_path: Path) -> None:
    """Kubernetes 1.20 (the API server tests/k8s runs) has no autoscaling/v2."""
    plain = check.render(_overlay(tmp_path / "a", "resources:\n  - BASE\n"))
    old = check.render(
        _overlay(tmp_path / "b", "resources:\n  - BASE\ncomponents:\n  - COMPONENTS/hpa-v2beta2\n")
    )
    hpa = {o["apiVersion"] for o in plain if o["kind"] == "HorizontalPodAutoscaler"}
    old_hpa = [o for o in old if o["kind"] == "HorizontalPodAutoscaler"]
    assert hpa == {"autoscaling/v2"}
    assert [o["apiVersion"] for o in old_hpa] == ["autoscaling/v2beta2"]
    assert old_hpa[0]["spec"] == next(
        o["spec"] for o in plain if o["kind"] == "HorizontalPodAutoscaler"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_locked_down_with_its_writable_paths_on_volumes(overlay: str) -> None:
    deployment = _rendered(overlay)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    spool = env["DRIFTLOOP_SPOOL_DIR"]["value"]
    assert "emptyDir" in volumes[mounts[spool]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # BentoML writes its store's folders and its workers' metrics files under BENTOML_HOME.
    assert env["BENTOML_HOME"]["value"].startswith("/tmp/")
    assert env["DRIFTLOOP_HOME"]["value"].startswith("/tmp/")
    # SIGTERM drains the spool for up to 20 s before the worker exits.
    assert pod["terminationGracePeriodSeconds"] > 20
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_the_service_match(overlay: str) -> None:
    objects = _rendered(overlay)
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000, "grpc": 3001}
    grpc_env = next(e for e in container["env"] if e["name"] == "DRIFTLOOP_GRPC_PORT")
    assert int(grpc_env["value"]) == ports["grpc"]
    service = objects["Service"]["spec"]
    assert {p["name"]: p["targetPort"] for p in service["ports"]} == {
        "http": "http",
        "grpc": "grpc",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_serves_stable_and_canary_pods_and_the_stable_owns_only_its_own(
    overlay: str,
) -> None:
    """``driftloop rollout`` starts a canary whose pods carry the stable's labels with
    ``driftloop.io/track: canary``: the Service must select them, the stable Deployment must not."""
    objects = _rendered(overlay)
    deployment = objects["Deployment"]
    stable_pod = deployment["spec"]["template"]["metadata"]["labels"]
    canary_pod = {**stable_pod, "driftloop.io/track": "canary"}
    selector = deployment["spec"]["selector"]["matchLabels"]

    def selects(labels: dict[str, str], pod: dict[str, str]) -> bool:
        return labels.items() <= pod.items()

    assert selects(selector, stable_pod)
    assert not selects(selector, canary_pod)
    for kind, labels in [
        ("Service", objects["Service"]["spec"]["selector"]),
        ("PodDisruptionBudget", objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
        ("NetworkPolicy", objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]),
    ]:
        assert selects(labels, stable_pod), kind
        assert selects(labels, canary_pod), kind
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # The autoscaler owns the count: an applied one would reset it at every kubectl apply.
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_keys_on_and_secrets_by_reference(overlay: str) -> None:
    objects = _rendered(overlay)
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    config = objects["ConfigMap"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    data = config["data"]
    assert data["DRIFTLOOP_AUTH"] == "on"
    assert int(data["DRIFTLOOP_BATCH_MAX_SIZE"]) >= 1
    assert int(data["DRIFTLOOP_BATCH_MAX_LATENCY_MS"]) >= 1
    image = container["image"]
    assert not image.startswith("driftloop-model-service"), "the overlay sets the image"
    assert data["DRIFTLOOP_MODEL_TAG"].partition(":")[2] == image.rpartition(":")[2]
    url = next(e for e in container["env"] if e["name"] == "DRIFTLOOP_DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"] == {"name": "driftloop-store", "key": "database-url"}
    # API keys live in the store: no Secret ships, and no key reaches the pod.
    assert "Secret" not in objects
    assert not any("KEY" in e["name"] for e in container["env"])
    monitor = objects["ServiceMonitor"]["spec"]["endpoints"][0]
    assert monitor["path"] == "/metrics"
    assert monitor["authorization"]["credentials"]["name"] == "driftloop-metrics-key"


def test_each_overlay_has_its_own_namespace_and_scale() -> None:
    staging, production = _rendered("staging"), _rendered("production")
    assert staging["Namespace"]["metadata"]["name"] != production["Namespace"]["metadata"]["name"]
    for objects in (staging, production):
        namespace = objects["Namespace"]["metadata"]["name"]
        for kind, obj in objects.items():
            if kind != "Namespace":
                assert obj["metadata"]["namespace"] == namespace, kind
    assert production["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert (
        production["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
        > staging["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    )
