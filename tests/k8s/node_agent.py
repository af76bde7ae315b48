"""A stand-in kubelet and scheduler for the test control plane.

It registers one Ready node, binds every unscheduled pod to it, finishes pod deletions and writes
each pod's status. It runs no containers: starting the Bento's image under podman for every pod
would take minutes per test, so a pod's health follows a rule on its container images instead:

- an image whose tag starts with ``broken`` runs but never becomes ready (its readiness probe on
  ``/readyz`` would keep failing);
- an image whose tag starts with ``crash`` exits over and over (a restart every second, waiting in
  ``CrashLoopBackOff``);
- an image whose tag starts with ``errors`` becomes ready and never restarts, but answers every
  other prediction with a 500 (and counts it in its ``/metrics``);
- any other image becomes ready half a second after its pod is bound.

Each pod gets an address of the pod network (tests/k8s/pod_network.py), where the pod server
answers for it by the same rule: the API server's pod and Service proxies reach it there, so a
canary's ``/metrics`` and the predictions sent through the Service are real HTTP.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, Client
from lightkube.models.core_v1 import ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import PatchType

from tests.k8s.pod_network import PodNetwork

NODE = "driftloop-test-node"
START_DELAY_S = 0.5
RESTART_EVERY_S = 1.0


def image_health(image: str) -> str:
    """``ready``, ``unready``, ``crashing`` or ``erroring``: the rule above, from an image."""
    tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else "latest"
    if tag.startswith("broken"):
        return "unready"
    if tag.startswith("crash"):
        return "crashing"
    if tag.startswith("errors"):
        return "erroring"
    return "ready"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    """Runs in a thread of the test process until :meth:`stop`."""

    def __init__(self, client: Client, network: PodNetwork, poll_s: float = 0.2) -> None:
        self.client = client
        self.network = network
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-agent", daemon=True)
        self._bound_at: dict[str, float] = {}
        self._addresses: dict[str, str] = {}
        self.errors: list[str] = []

    def start(self) -> None:
        self._register()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _register(self) -> None:
        self.client.create(Node(metadata=ObjectMeta(name=NODE, labels={"driftloop.test": "1"})))
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110"}
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "192.0.2.2"}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastHeartbeatTime": _now(),
                    "lastTransitionTime": _now(),
                }
            ],
        }
        self.client.patch(Node.Status, NODE, {"status": status}, patch_type=PatchType.MERGE)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self.client.list(Pod, namespace="*"):
                    self._tend(pod)
            except (ApiError, OSError) as exc:
                # Deletions race with the controllers; the next pass sees the new state.
                self.errors.append(str(exc))
            except Exception as exc:
                self.errors.append(repr(exc))
            self._stop.wait(self.poll_s)

    def _tend(self, pod: Pod) -> None:
        meta, spec = pod.metadata, pod.spec
        assert meta is not None
        assert spec is not None
        assert meta.name
        assert meta.namespace
        key = f"{meta.namespace}/{meta.name}/{meta.uid}"
        if meta.deletionTimestamp is not None:
            # The kubelet's part of a graceful deletion: the containers are stopped, remove it.
            self.client.delete(Pod, meta.name, namespace=meta.namespace, grace_period=0)
            self._bound_at.pop(key, None)
            return
        if not spec.nodeName:
            binding = Pod.Binding(
                metadata=ObjectMeta(name=meta.name, namespace=meta.namespace),
                target=ObjectReference(kind="Node", name=NODE, apiVersion="v1"),
            )
            self.client.create(binding, meta.name, namespace=meta.namespace)
            self._bound_at[key] = time.monotonic()
            return
        self._report(pod, key)

    def _report(self, pod: Pod, key: str) -> None:
        assert pod.metadata is not None
        assert pod.spec is not None
        bound_at = self._bound_at.setdefault(key, time.monotonic())
        age = time.monotonic() - bound_at
        address = self._addresses.get(key)
        if address is None:
            address = self._addresses[key] = self.network.address()
            image = pod.spec.containers[0].image or ""
            self.network.announce(address, image_health(image), image)
        statuses = [self._container_status(c.name, c.image or "", age) for c in pod.spec.containers]
        ready = all(s["ready"] for s in statuses) and age >= START_DELAY_S
        wanted: dict[str, Any] = {
            "phase": "Running",
            "hostIP": "192.0.2.2",
            "podIP": address,
            "podIPs": [{"ip": address}],
            "containerStatuses": statuses,
            "conditions": [
                {"type": kind, "status": "True"} for kind in ("PodScheduled", "Initialized")
            ]
            + [
                {"type": kind, "status": "True" if ready else "False"}
                for kind in ("ContainersReady", "Ready")
            ],
        }
        current = pod.status
        if current is not None and self._same(current, wanted):
            return
        wanted["startTime"] = (
            current.startTime.strftime("%Y-%m-%dT%H:%M:%SZ")
            if current is not None and current.startTime
            else _now()
        )
        for condition in wanted["conditions"]:
            condition["lastTransitionTime"] = _now()
        self.client.patch(
            Pod.Status,
            pod.metadata.name or "",
            {"status": wanted},
            namespace=pod.metadata.namespace,
            patch_type=PatchType.MERGE,
        )

    @staticmethod
    def _container_status(name: str, image: str, age: float) -> dict[str, Any]:
        health = image_health(image)
        status: dict[str, Any] = {
            "name": name,
            "image": image,
            "imageID": f"test://{image}",
            "restartCount": 0,
            "ready": health in ("ready", "erroring") and age >= START_DELAY_S,
            "started": health != "crashing",
            "state": {"running": {"startedAt": _now()}},
        }
        if health == "crashing":
            status["restartCount"] = int(age / RESTART_EVERY_S)
            status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        return status

    @staticmethod
    def _same(current: Any, wanted: dict[str, Any]) -> bool:
        ready = {c.type: c.status for c in current.conditions or []}
        restarts = [(c.name, c.restartCount, c.ready) for c in current.containerStatuses or []]
        return (
            current.phase == wanted["phase"]
            and current.podIP == wanted["podIP"]
            and ready.get("Ready") == wanted["conditions"][-1]["status"]
            and restarts
            == [(c["name"], c["restartCount"], c["ready"]) for c in wanted["containerStatuses"]]
        )
