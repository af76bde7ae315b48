"""``driftloop rollout`` against a real API server and controller manager (Kubernetes 1.20.2), with
the registry in a real PostgreSQL.

What is not real: no kubelet runs containers. tests/k8s/node_agent.py binds the pods and reports
their health by a rule on the image's tag: ``broken...`` runs but never becomes ready, ``crash...``
restarts every second, ``errors...`` is ready and never restarts but answers every other
prediction with a 500, anything else is ready half a second after it is bound. So "a good Bento"
is an image tagged ``good-...`` and "a broken one" an image tagged ``broken-...``/``crash-...``/
``errors-...``: what the rollout sees is the same pod status a kubelet reports for such images.
What answers on a pod's address is not the Bento either but a stand-in (tests/k8s/pod_server.py)
that follows the same rule and counts its answers in ``/metrics`` as driftloop's service does.

What is real: the API server, etcd and the Deployment, ReplicaSet, Endpoints and garbage-collection
controllers (Kubernetes' own); the HTTP between them and the pods. The predictions of the traffic
tests go through the API server's Service proxy, which sends each to one of the Service's ready
endpoints as the Endpoints controller lists them (the canary's pod among them once it is ready),
and the rollout reads each canary pod's ``/metrics`` through the API server's pod proxy, over a
network namespace of the tests' own (tests/k8s/pod_network.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Endpoints, Pod

from tests.k8s.conftest import STABLE, STABLE_BENTO, STABLE_IMAGE, KubeTest, wait_for
from training import registry, runs
from training.cli import main
from training.release.deploy import rollout_bento
from training.release.rollout import _api
from training.settings import get_settings
from training.store import connect

pytestmark = [pytest.mark.k8s, pytest.mark.integration, pytest.mark.slow]

NEW_BENTO = "churn_service:b"


def _versions(store_url: str, new_image: str) -> None:
    """churn:a is the champion (its image runs in the stable Deployment); churn:b is promoted with
    ``new_image`` recorded as its built image (as the DAG's containerize step records it)."""
    with connect(store_url) as conn:
        for tag, bento in (("churn:a", STABLE_BENTO), ("churn:b", NEW_BENTO)):
            registry.register(conn, model_name="churn", tag=tag, metrics={}, train_data_uri="x")
            registry.set_bento(conn, tag, bento)
        registry.promote(conn, "churn:a")
        runs.record_deployment(
            conn, "churn:b", NEW_BENTO, target="image", status="built", detail={"image": new_image}
        )
        registry.promote(conn, "churn:b")


def _records(store_url: str, namespace: str) -> list[tuple[str, str, dict[str, Any]]]:
    with connect(store_url) as conn:
        found = runs.deployments(conn, target=f"kubernetes/{namespace}/{STABLE}", limit=100)
    return [(d.status, d.bento_tag, d.detail) for d in reversed(found)]


def _image(kube: KubeTest) -> str:
    stable = kube.client.get(Deployment, STABLE, namespace=kube.namespace)
    assert stable.spec is not None
    assert stable.spec.template.spec is not None
    return stable.spec.template.spec.containers[0].image or ""


def _canary(kube: KubeTest) -> Deployment | None:
    try:
        return kube.client.get(Deployment, f"{STABLE}-canary", namespace=kube.namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


@dataclass
class Watch:
    """What a thread saw behind the Service and in the stable Deployment during a rollout."""

    canary_endpoints: int = 0
    least_stable_ready: int = 99
    least_endpoints: int = 99
    images_in_endpoints: set[str] = field(default_factory=set)


@contextmanager
def watching(kube: KubeTest) -> Iterator[Watch]:
    seen = Watch()
    stop = threading.Event()

    def look() -> None:
        while not stop.is_set():
            endpoints = kube.client.get(Endpoints, STABLE, namespace=kube.namespace)
            ready = [
                a
                for subset in endpoints.subsets or []
                for a in subset.addresses or []
                if a.targetRef
            ]
            canary = [
                a
                for a in ready
                if a.targetRef and (a.targetRef.name or "").startswith(f"{STABLE}-canary")
            ]
            seen.canary_endpoints = max(seen.canary_endpoints, len(canary))
            stable = kube.client.get(Deployment, STABLE, namespace=kube.namespace)
            seen.least_stable_ready = min(
                seen.least_stable_ready, (stable.status.readyReplicas or 0) if stable.status else 0
            )
            seen.least_endpoints = min(seen.least_endpoints, len(ready))
            stop.wait(0.1)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class Traffic:
    """Predictions sent to the Service through the API server's Service proxy: every answer's
    status and ``model_version`` (the image tag of the pod that answered)."""

    answers: list[tuple[int, str]] = field(default_factory=list)

    def statuses(self) -> set[int]:
        return {status for status, _ in self.answers}


@contextmanager
def traffic(kube: KubeTest) -> Iterator[Traffic]:
    """About 40 predictions a second to the Service, spread by the API server over its ready
    endpoints, until the block ends."""
    seen = Traffic()
    stop = threading.Event()
    # A client of its own: this thread and the test's never share a connection pool.
    http = _api(Client(KubeConfig.from_file(kube.kube.cluster.kubeconfig)))
    path = f"/api/v1/namespaces/{kube.namespace}/services/{STABLE}:80/proxy/predict"

    def send() -> None:
        while not stop.is_set():
            response = http.post(path, json={"tenure": 3}, timeout=10)
            version = (
                response.json().get("model_version", "") if response.status_code == 200 else ""
            )
            seen.answers.append((response.status_code, version))
            stop.wait(0.025)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=15)
        http.close()


def _pod_images(kube: KubeTest) -> list[str]:
    return sorted(
        p.spec.containers[0].image or ""
        for p in kube.client.list(Pod, namespace=kube.namespace)
        if p.spec is not None and p.metadata is not None and p.metadata.deletionTimestamp is None
    )


def test_a_good_image_rolls_out_through_a_canary_behind_the_service_and_is_promoted(
    kube: KubeTest, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    new = "registry.test/churn_service:good-b"
    _versions(store_url, new)

    with watching(kube) as seen:
        assert main(["rollout"]) == 0  # the champion's Bento, its recorded image

    assert "promoted" in capsys.readouterr().out
    assert _image(kube) == new
    assert _canary(kube) is None
    assert _pod_images(kube) == [new] * 3
    # The canary's pod served behind the same Service, and the stable never lost a ready pod.
    assert seen.canary_endpoints == 1
    assert seen.least_stable_ready == 3
    records = _records(store_url, kube.namespace)
    assert [status for status, _, _ in records] == [
        "canary-started",
        "canary-ready",
        "baked",
        "promoted",
    ]
    assert {bento for _, bento, _ in records} == {NEW_BENTO}
    assert records[0][2]["replicas"] == 1
    assert records[-1][2]["previous_image"] == STABLE_IMAGE
    assert records[-1][2]["previous_bento_tag"] == STABLE_BENTO

    # Rolling out what already runs changes nothing, and says so.
    assert main(["rollout", NEW_BENTO]) == 0
    assert _records(store_url, kube.namespace)[-1][0] == "unchanged"


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("registry.test/churn_service:broken-b", "not ready within the progress deadline of 15s"),
        ("registry.test/churn_service:crash-b", "restarted"),
    ],
)
def test_a_broken_image_is_rolled_back_while_the_stable_keeps_serving(
    kube: KubeTest, store_url: str, capsys: pytest.CaptureFixture[str], image: str, reason: str
) -> None:
    _versions(store_url, image)

    with watching(kube) as seen:
        assert main(["rollout", NEW_BENTO]) == 1

    out = capsys.readouterr().out
    assert "rolled back" in out
    assert reason in out
    assert _image(kube) == STABLE_IMAGE
    assert _canary(kube) is None
    assert _pod_images(kube) == [STABLE_IMAGE] * 3
    assert seen.least_stable_ready == 3
    assert seen.least_endpoints >= 3  # the stable's three pods answered throughout
    assert seen.canary_endpoints == 0  # an unready canary never joins the Service
    records = _records(store_url, kube.namespace)
    assert [status for status, _, _ in records] == ["canary-started", "rolled-back"]
    assert reason in records[-1][2]["reason"]


def test_undo_after_a_promotion_restores_the_previous_image(kube: KubeTest, store_url: str) -> None:
    new = "registry.test/churn_service:good-b"
    _versions(store_url, new)
    assert main(["rollout"]) == 0
    assert _image(kube) == new

    assert main(["rollout", "--undo"]) == 0

    assert _image(kube) == STABLE_IMAGE
    assert _pod_images(kube) == [STABLE_IMAGE] * 3
    status, bento, detail = _records(store_url, kube.namespace)[-1]
    assert (status, bento) == ("undone", STABLE_BENTO)
    assert detail == {"image": STABLE_IMAGE, "previous_image": new, "bento_tag": STABLE_BENTO}


class Interrupted(Exception):
    pass


def _interrupt_at(words: str) -> Any:
    def progress(message: str) -> None:
        if message.startswith(words):
            raise Interrupted(message)

    return progress


def test_an_interrupted_rollout_is_resumed_by_running_it_again(
    kube: KubeTest, store_url: str
) -> None:
    new = "registry.test/churn_service:good-b"
    _versions(store_url, new)
    with pytest.raises(Interrupted):
        rollout_bento(get_settings(), "churn", NEW_BENTO, progress=_interrupt_at("canary ready"))
    assert _canary(kube) is not None  # left running, as a killed process leaves it
    assert _image(kube) == STABLE_IMAGE

    assert main(["rollout", NEW_BENTO]) == 0

    assert _image(kube) == new
    assert _canary(kube) is None
    statuses = [status for status, _, _ in _records(store_url, kube.namespace)]
    assert statuses == ["canary-started", "canary-resumed", "canary-ready", "baked", "promoted"]


def test_a_rollout_interrupted_while_promoting_is_finished_and_can_still_be_undone(
    kube: KubeTest, store_url: str
) -> None:
    new = "registry.test/churn_service:good-b"
    _versions(store_url, new)
    with pytest.raises(Interrupted):
        rollout_bento(get_settings(), "churn", NEW_BENTO, progress=_interrupt_at("promoting"))
    assert _image(kube) == new  # the stable took the image; the canary is still there
    assert _canary(kube) is not None

    assert main(["rollout", NEW_BENTO]) == 0
    assert _canary(kube) is None
    last = _records(store_url, kube.namespace)[-1]
    assert last[0] == "promoted"
    assert last[2]["previous_image"] == STABLE_IMAGE  # kept on the canary across the interruption

    assert main(["rollout", "--undo"]) == 0
    assert _image(kube) == STABLE_IMAGE


def test_a_canary_left_by_another_rollout_is_removed_first(kube: KubeTest, store_url: str) -> None:
    _versions(store_url, "registry.test/churn_service:broken-b")
    with pytest.raises(Interrupted):
        rollout_bento(get_settings(), "churn", NEW_BENTO, progress=_interrupt_at("canary"))
    assert _canary(kube) is not None

    assert main(["rollout", NEW_BENTO, "--image", "registry.test/churn_service:good-c"]) == 0

    assert _image(kube) == "registry.test/churn_service:good-c"
    statuses = [status for status, _, _ in _records(store_url, kube.namespace)]
    assert statuses[:2] == ["canary-started", "canary-removed"]
    assert statuses[-1] == "promoted"


def test_the_dags_rollout_step_gives_the_champion_back_when_the_rollout_fails(
    kube: KubeTest, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain DAG's last task (training.release.deploy.rollout_after_promotion), called as
    the task calls it after promote made churn:b the champion."""
    from training.release.deploy import rollout_after_promotion
    from training.release.rollout import RolloutFailed

    _versions(store_url, "registry.test/churn_service:broken-b")
    promoted = {"champion_tag": "churn:b", "bento_tag": NEW_BENTO, "previous_champion": "churn:a"}

    monkeypatch.setenv("DRIFTLOOP_ROLLOUT", "off")
    assert rollout_after_promotion(get_settings(), "churn", "run-1", **promoted) == {
        "skipped": "DRIFTLOOP_ROLLOUT is off"
    }
    assert _records(store_url, kube.namespace) == []

    monkeypatch.setenv("DRIFTLOOP_ROLLOUT", "on")
    with pytest.raises(RolloutFailed, match="not ready within the progress deadline"):
        rollout_after_promotion(get_settings(), "churn", "run-1", **promoted)

    assert _image(kube) == STABLE_IMAGE
    with connect(store_url) as conn:
        champion = registry.champion(conn, "churn")
        last = registry.promotions(conn, "churn")[0]
    assert champion is not None
    assert champion.tag == "churn:a"
    assert (last.tag, last.previous_tag, last.action, last.by) == (
        "churn:a",
        "churn:b",
        "rollback",
        "run run-1",
    )
    assert "the rollout of churn:b failed" in last.reason


def test_a_ready_canary_answering_server_errors_is_rolled_back_on_its_error_rate(
    kube: KubeTest,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ready and never restarting, so only its error rate (read from its /metrics through the API
    server) gives it away, under predictions sent through the Service."""
    monkeypatch.setenv("DRIFTLOOP_ROLLOUT_BAKE_S", "30")
    image = "registry.test/churn_service:errors-b"
    _versions(store_url, image)

    with watching(kube) as seen, traffic(kube) as sent:
        assert main(["rollout", NEW_BENTO]) == 1
        rolled_back = len(sent.answers)
        wait_for(lambda: len(sent.answers) > rolled_back + 40, "predictions after the rollback")

    out = capsys.readouterr().out
    assert "rolled back" in out
    assert "error rate" in out
    assert _image(kube) == STABLE_IMAGE
    assert _canary(kube) is None
    assert _pod_images(kube) == [STABLE_IMAGE] * 3
    assert seen.least_stable_ready == 3
    assert seen.canary_endpoints == 1  # it was ready and behind the Service
    # The canary answered through the Service (its 500s among them), the stable never failed, and
    # once it was gone every answer was the stable's.
    assert 500 in sent.statuses()
    assert "errors-b" in {v for _, v in sent.answers}
    assert set(sent.answers[rolled_back:]) == {(200, "good-a")}
    records = _records(store_url, kube.namespace)
    assert [status for status, _, _ in records] == ["canary-started", "canary-ready", "rolled-back"]
    reason = records[-1][2]["reason"]
    assert "canary error rate" in reason
    assert "above the allowed 5.0%" in reason


def test_a_healthy_canary_under_traffic_is_promoted_with_its_error_rate_recorded(
    kube: KubeTest, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_ROLLOUT_BAKE_S", "4")
    new = "registry.test/churn_service:good-b"
    _versions(store_url, new)

    with traffic(kube) as sent:
        assert main(["rollout", NEW_BENTO]) == 0

    assert _image(kube) == new
    assert sent.statuses() == {200}
    assert "good-b" in {v for _, v in sent.answers}  # the canary answered some
    baked = next(d for status, _, d in _records(store_url, kube.namespace) if status == "baked")
    assert baked["requests"] >= 6
    assert baked["server_errors"] == 0
    assert baked["error_rate"] == 0.0
