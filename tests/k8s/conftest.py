"""Fixtures of the Kubernetes tier: one control plane for the session (tests/k8s/cluster.py), a
namespace per test with a stable Deployment and its Service, and driftloop's settings pointed at
them. Without the binaries (``make k8s-test-tools``) the tier skips, and fails under ``CI=true``."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import (
    Container,
    ContainerPort,
    PodSpec,
    PodTemplateSpec,
    ServicePort,
    ServiceSpec,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Service

from tests.k8s.cluster import Cluster, missing_tools, start_cluster
from tests.k8s.node_agent import NodeAgent
from tests.k8s.pod_network import PodNetwork
from tests.k8s.pod_network import missing as network_missing

STABLE = "churn"
STABLE_IMAGE = "registry.test/churn_service:good-a"
STABLE_BENTO = "churn_service:a"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "k8s: needs the Kubernetes test control plane (make k8s-test-tools)"
    )


@dataclass
class Kube:
    cluster: Cluster
    client: Client
    agent: NodeAgent
    started_s: float


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    missing = missing_tools()
    why = network_missing()
    if why:
        missing.append(why)
    if missing:
        message = f"missing {', '.join(missing)}: run make k8s-test-tools"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    began = time.monotonic()
    network = PodNetwork()
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("kube"))
        try:
            client = Client(
                KubeConfig.from_file(cluster.kubeconfig), field_manager="driftloop-tests"
            )
            # Its own client: the agent's thread and the test's never share a connection pool.
            agent = NodeAgent(
                Client(KubeConfig.from_file(cluster.kubeconfig), field_manager="node-agent"),
                network,
            )
            agent.start()
            yield Kube(cluster, client, agent, time.monotonic() - began)
            agent.stop()
        finally:
            cluster.stop()
    finally:
        # Last: nothing sends to a pod address once the API server and the agent are gone.
        network.close()


def _stable(namespace: str, replicas: int) -> Deployment:
    labels = {"app": STABLE}
    return Deployment(
        metadata=ObjectMeta(
            name=STABLE, namespace=namespace, annotations={"driftloop.io/bento-tag": STABLE_BENTO}
        ),
        spec=DeploymentSpec(
            replicas=replicas,
            selector=LabelSelector(matchLabels=labels),
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=labels),
                spec=PodSpec(
                    containers=[
                        Container(
                            name="bento",
                            image=STABLE_IMAGE,
                            ports=[ContainerPort(containerPort=3000, name="http")],
                        )
                    ]
                ),
            ),
        ),
    )


def wait_for(check: object, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class KubeTest:
    """One test's view: the session's control plane and the namespace made for the test."""

    kube: Kube
    namespace: str

    @property
    def client(self) -> Client:
        return self.kube.client


@pytest.fixture
def kube(kube_cluster: Kube, env: Path, monkeypatch: pytest.MonkeyPatch) -> KubeTest:
    """A fresh namespace with the stable Deployment (3 ready replicas of ``STABLE_IMAGE``) and a
    Service selecting its pods; driftloop's settings point at it with short deadlines."""
    client = kube_cluster.client
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    client.create(Namespace(metadata=ObjectMeta(name=namespace)))
    client.create(_stable(namespace, 3))
    client.create(
        Service(
            metadata=ObjectMeta(name=STABLE, namespace=namespace),
            spec=ServiceSpec(
                selector={"app": STABLE}, ports=[ServicePort(port=80, targetPort=3000)]
            ),
        )
    )

    def stable_ready() -> bool:
        status = client.get(Deployment, STABLE, namespace=namespace).status
        return status is not None and (status.availableReplicas or 0) == 3

    wait_for(stable_ready, "the stable Deployment's 3 replicas")
    for name, value in {
        "KUBECONFIG": str(kube_cluster.cluster.kubeconfig),
        "DRIFTLOOP_KUBECONFIG": str(kube_cluster.cluster.kubeconfig),
        "DRIFTLOOP_K8S_NAMESPACE": namespace,
        "DRIFTLOOP_K8S_DEPLOYMENT": STABLE,
        "DRIFTLOOP_ROLLOUT_CANARY_SHARE": "0.34",
        "DRIFTLOOP_ROLLOUT_PROGRESS_DEADLINE_S": "15",
        "DRIFTLOOP_ROLLOUT_BAKE_S": "2",
        "DRIFTLOOP_ROLLOUT_POLL_S": "0.25",
        "DRIFTLOOP_ROLLOUT_MIN_REQUESTS": "6",
    }.items():
        monkeypatch.setenv(name, value)
    return KubeTest(kube_cluster, namespace)
