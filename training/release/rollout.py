"""Canary rollouts of a Bento's image to a Kubernetes Deployment, with automatic rollback.

The stable Deployment (``Settings.k8s_deployment``) is whatever ``deploy/`` applied. A rollout
starts ``<stable>-canary``: the stable's pod template with the new image, the label
``driftloop.io/track: canary`` added, and a share of the stable's replicas. Its pods carry every
label of the stable's pods, so the Service that selects those serves them too. The canary must
become ready within the progress deadline, then stay ready with no more than the allowed restarts
for the bake time, answering no more than the allowed share of its requests with server errors
(read from each canary pod's ``/metrics`` through the API server's pod proxy, as the counts
``driftloop_requests_total`` grew over the bake). Then the stable takes the image and the canary
goes (promoted), or the canary goes and the stable is never touched (rolled back).

The cluster holds the state: a rollout that was interrupted finds its canary and goes on from
there; a canary of another image, left behind, is removed first. Every step is handed to
``record`` (the CLI writes it to ``deployments``). Nothing here knows Airflow or the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lightkube import ApiError, Client
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import Container, PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod
from lightkube.types import CascadeType

from training.errors import DriftloopError
from training.settings import Settings

__all__ = [
    "Outcome",
    "Policy",
    "RolloutFailed",
    "RolloutResult",
    "Target",
    "kube_client",
    "rollout",
    "undo",
]

TRACK = "driftloop.io/track"
BENTO = "driftloop.io/bento-tag"
# Kept on the canary, so a rollout interrupted after the stable took the new image still knows
# what the stable ran before (what --undo goes back to).
PREVIOUS_IMAGE = "driftloop.io/previous-image"
PREVIOUS_BENTO = "driftloop.io/previous-bento-tag"
# Waiting reasons no amount of waiting fixes: the image cannot be had or cannot start.
FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
Outcome = Literal["promoted", "unchanged", "undone"]
Record = Callable[[str, dict[str, Any]], None]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where a rollout goes: the stable Deployment, its namespace, and which container."""

    namespace: str
    deployment: str
    container: str | None = None

    @property
    def canary(self) -> str:
        return f"{self.deployment}-canary"

    @property
    def name(self) -> str:
        """The ``deployments.target`` of its records."""
        return f"kubernetes/{self.namespace}/{self.deployment}"

    @classmethod
    def from_settings(cls, settings: Settings) -> Target:
        return cls(settings.k8s_namespace, settings.k8s_deployment, settings.k8s_container)


@dataclass(frozen=True)
class Policy:
    """How a canary is judged (``Settings.rollout_*``; docs/rollout.md)."""

    canary_share: float = 0.1
    progress_deadline_s: float = 600.0
    bake_s: float = 300.0
    max_restarts: int = 0
    poll_s: float = 2.0
    # The share of the canary's requests over the bake that may be server errors; 1: not checked.
    max_error_rate: float = 0.05
    # Fewer requests than this over the bake are too few to judge the share by.
    min_requests: int = 20
    # An admin API key, for a canary served with DRIFTLOOP_AUTH=on (its /metrics needs one).
    metrics_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        key = settings.rollout_metrics_key
        return cls(
            canary_share=settings.rollout_canary_share,
            progress_deadline_s=settings.rollout_progress_deadline_s,
            bake_s=settings.rollout_bake_s,
            max_restarts=settings.rollout_max_restarts,
            poll_s=settings.rollout_poll_s,
            max_error_rate=settings.rollout_max_error_rate,
            min_requests=settings.rollout_min_requests,
            metrics_key=key.get_secret_value() if key is not None else None,
        )


@dataclass(frozen=True)
class RolloutResult:
    outcome: Outcome
    image: str
    previous_image: str
    seconds: float


class RolloutFailed(DriftloopError):
    """The canary failed its checks and was removed; the stable Deployment is as it was."""

    def __init__(self, reason: str, image: str) -> None:
        super().__init__(f"rollout of {image} rolled back: {reason}")
        self.reason = reason
        self.image = image


def kube_client(settings: Settings) -> Client:
    """A client for the configured cluster: ``Settings.kubeconfig`` (and its current context, or
    ``k8s_context``), else ``KUBECONFIG``/``~/.kube/config``, else the pod's service account."""
    from lightkube import KubeConfig
    from lightkube.core.exceptions import ConfigError

    try:
        if settings.kubeconfig is not None:
            config = KubeConfig.from_file(settings.kubeconfig)
        else:
            config = KubeConfig.from_env()
    except ConfigError as exc:
        raise DriftloopError(
            f"no Kubernetes configuration ({exc}); set DRIFTLOOP_KUBECONFIG or KUBECONFIG"
        ) from None
    return Client(config.get(settings.k8s_context), namespace=settings.k8s_namespace)


def _container(deployment: Deployment, name: str | None) -> Container:
    assert deployment.spec is not None
    assert deployment.spec.template.spec is not None
    containers = deployment.spec.template.spec.containers
    if name is None:
        return containers[0]
    for container in containers:
        if container.name == name:
            return container
    raise DriftloopError(
        f"Deployment {deployment.metadata.name if deployment.metadata else '?'} has no container "
        f"{name!r} (it has {', '.join(c.name for c in containers)}); set DRIFTLOOP_K8S_CONTAINER"
    )


def _get(client: Client, name: str, namespace: str) -> Deployment | None:
    try:
        return client.get(Deployment, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def _stable(client: Client, target: Target) -> Deployment:
    stable = _get(client, target.deployment, target.namespace)
    if stable is None:
        raise DriftloopError(
            f"no Deployment {target.deployment!r} in namespace {target.namespace!r}: apply the "
            "manifests first (kubectl apply -k deploy/overlays/<env>), or set DRIFTLOOP_K8S_DEPLOYMENT"
        )
    return stable


def _canary_manifest(
    stable: Deployment, target: Target, image: str, bento_tag: str, policy: Policy
) -> Deployment:
    assert stable.spec is not None
    assert stable.spec.template.metadata is not None
    replicas = max(1, round((stable.spec.replicas or 1) * policy.canary_share))
    labels = {**(stable.spec.template.metadata.labels or {}), TRACK: "canary"}
    selector = {**(stable.spec.selector.matchLabels or {}), TRACK: "canary"}
    template: PodTemplateSpec = PodTemplateSpec.from_dict(stable.spec.template.to_dict())  # type: ignore[assignment]
    assert template.metadata is not None
    assert template.spec is not None
    template.metadata.labels = labels
    template.metadata.annotations = {**(template.metadata.annotations or {}), BENTO: bento_tag}
    _container_in(template.spec.containers, target.container).image = image
    return Deployment(
        metadata=ObjectMeta(
            name=target.canary,
            namespace=target.namespace,
            labels={
                **((stable.metadata.labels if stable.metadata else None) or {}),
                TRACK: "canary",
            },
            annotations={
                BENTO: bento_tag,
                PREVIOUS_IMAGE: _container(stable, target.container).image or "",
                PREVIOUS_BENTO: (
                    (stable.metadata.annotations if stable.metadata else None) or {}
                ).get(BENTO, ""),
            },
        ),
        spec=DeploymentSpec(
            replicas=replicas,
            selector=LabelSelector(matchLabels=selector),
            template=template,
            progressDeadlineSeconds=max(1, int(policy.progress_deadline_s)),
        ),
    )


def _container_in(containers: list[Container], name: str | None) -> Container:
    if name is None:
        return containers[0]
    return next(c for c in containers if c.name == name)


@dataclass(frozen=True)
class Health:
    ready: int
    wanted: int
    restarts: int
    fatal: str | None

    def __str__(self) -> str:
        return f"{self.ready}/{self.wanted} ready, {self.restarts} restarts"


def _health(client: Client, deployment: Deployment, namespace: str) -> Health:
    assert deployment.spec is not None
    selector: dict[str, Any] = dict(deployment.spec.selector.matchLabels or {})
    ready = restarts = 0
    fatal: str | None = None
    for pod in client.list(Pod, namespace=namespace, labels=selector):
        if pod.metadata is not None and pod.metadata.deletionTimestamp is not None:
            continue
        status = pod.status
        if status is None:
            continue
        if any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
            ready += 1
        for container in status.containerStatuses or []:
            restarts += container.restartCount
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason in FATAL_WAITING:
                fatal = f"{container.name}: {waiting.reason} ({waiting.message or container.image})"
    return Health(ready, deployment.spec.replicas or 0, restarts, fatal)


def _wait_gone(
    client: Client, name: str, namespace: str, labels: dict[str, Any], policy: Policy
) -> None:
    deadline = time.monotonic() + policy.progress_deadline_s
    while time.monotonic() < deadline:
        left = list(client.list(Pod, namespace=namespace, labels=labels))
        if _get(client, name, namespace) is None and not left:
            return
        time.sleep(min(policy.poll_s, 1.0))
    raise DriftloopError(
        f"Deployment {name} and its pods were not gone after {policy.progress_deadline_s:.0f}s"
    )


def _remove_canary(client: Client, target: Target, policy: Policy) -> None:
    canary = _get(client, target.canary, target.namespace)
    if canary is None:
        return
    assert canary.spec is not None
    labels: dict[str, Any] = dict(canary.spec.selector.matchLabels or {})
    try:
        client.delete(
            Deployment, target.canary, namespace=target.namespace, cascade=CascadeType.FOREGROUND
        )
    except ApiError as exc:
        if exc.status.code != 404:
            raise
    _wait_gone(client, target.canary, target.namespace, labels, policy)


def _wait_canary(client: Client, target: Target, policy: Policy, progress: Progress) -> Health:
    """Until every canary pod is ready; raise the reason it never got there."""
    deadline = time.monotonic() + policy.progress_deadline_s
    health = Health(0, 0, 0, None)
    while True:
        canary = _get(client, target.canary, target.namespace)
        if canary is None:
            raise _Failure("the canary Deployment was deleted by someone else")
        health = _health(client, canary, target.namespace)
        _judge(health, policy)
        if health.wanted and health.ready >= health.wanted:
            return health
        if time.monotonic() >= deadline:
            raise _Failure(
                f"canary not ready within the progress deadline of {policy.progress_deadline_s:.0f}s ({health})"
            )
        time.sleep(policy.poll_s)


def _bake(
    client: Client, target: Target, policy: Policy, progress: Progress
) -> tuple[Health, Errors | None]:
    """Watch the ready canary for the bake time; raise at the first sign of trouble. Returns its
    health and the requests it answered while baking (None: the error rate is not checked)."""
    end = time.monotonic() + policy.bake_s
    health = Health(0, 0, 0, None)
    judged = policy.max_error_rate < 1
    canary = _get(client, target.canary, target.namespace)
    baseline = (
        _canary_requests(client, canary, target, policy, strict=False) if judged and canary else {}
    )
    errors: Errors | None = None
    while True:
        canary = _get(client, target.canary, target.namespace)
        if canary is None:
            raise _Failure("the canary Deployment was deleted by someone else")
        health = _health(client, canary, target.namespace)
        _judge(health, policy)
        if health.ready < health.wanted:
            raise _Failure(f"canary pods stopped being ready while baking ({health})")
        done = time.monotonic() >= end
        if judged:
            # Every poll may end the bake early; the last one must read every pod.
            now = _canary_requests(client, canary, target, policy, strict=done)
            errors = Errors.since(baseline, now)
            _judge_errors(errors, policy)
        if done:
            return health, errors
        time.sleep(min(policy.poll_s, max(0.0, end - time.monotonic())))


# Server errors: what a healthy server never answers, whoever sent the request. 4xx (the client's
# mistakes, refusals) and 499 (the client left) are not the canary's fault.
GRPC_SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "UNIMPLEMENTED"}


def _server_error(status: str) -> bool:
    return (status.isdigit() and int(status) >= 500) or status in GRPC_SERVER_ERRORS


@dataclass(frozen=True)
class Errors:
    """The requests a canary answered over the bake, and how many of them were server errors."""

    requests: int
    errors: int

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def since(cls, before: dict[str, tuple[int, int]], now: dict[str, tuple[int, int]]) -> Errors:
        """The growth of each pod's counts (a pod that appeared since counts from its start)."""
        requests = errors = 0
        for pod, (total, failed) in now.items():
            was_total, was_failed = before.get(pod, (0, 0))
            if total < was_total:  # the pod's server restarted: its counts started over
                was_total = was_failed = 0
            requests += total - was_total
            errors += failed - was_failed
        return cls(requests, errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "server_errors": self.errors,
            "error_rate": round(self.rate, 4) if self.requests else None,
        }

    def __str__(self) -> str:
        return f"{self.errors} server errors in {self.requests} requests ({self.rate:.1%})"


def _judge_errors(errors: Errors, policy: Policy) -> None:
    if errors.requests >= policy.min_requests and errors.rate > policy.max_error_rate:
        raise _Failure(
            f"canary error rate {errors.rate:.1%} over the bake is above the allowed "
            f"{policy.max_error_rate:.1%} ({errors})"
        )


def _http_port(deployment: Deployment, target: Target) -> int:
    """The canary container's HTTP port: the one named ``http``, else its first, else 3000."""
    ports = _container(deployment, target.container).ports or []
    for port in ports:
        if port.name == "http":
            return port.containerPort
    return ports[0].containerPort if ports else 3000


def _api(client: Client) -> Any:
    """The HTTP client (httpx's API) lightkube talks to the API server with: its address, TLS
    settings and credentials, for the paths lightkube has no method for (the pod proxy)."""
    http = getattr(getattr(client, "_client", None), "_client", None)
    if not callable(getattr(http, "get", None)):
        raise DriftloopError("this lightkube version keeps no HTTP client where expected")
    return http


def _canary_requests(
    client: Client, canary: Deployment, target: Target, policy: Policy, *, strict: bool
) -> dict[str, tuple[int, int]]:
    """Each ready canary pod's (requests, server errors) so far, by pod uid, from its ``/metrics``
    read through the API server's pod proxy. ``strict``: a pod whose metrics cannot be read fails
    the canary; otherwise it is left out (the next poll reads it again)."""
    from prometheus_client.parser import text_string_to_metric_families

    assert canary.spec is not None
    port = _http_port(canary, target)
    headers = {"X-API-Key": policy.metrics_key} if policy.metrics_key else {}
    counts: dict[str, tuple[int, int]] = {}
    labels: dict[str, Any] = dict(canary.spec.selector.matchLabels or {})
    for pod in client.list(Pod, namespace=target.namespace, labels=labels):
        assert pod.metadata is not None
        if pod.metadata.deletionTimestamp is not None:
            continue
        name = pod.metadata.name
        path = f"/api/v1/namespaces/{target.namespace}/pods/{name}:{port}/proxy/metrics"
        try:
            response = _api(client).get(path, headers=headers, timeout=10)
        except Exception as exc:  # lightkube's HTTP client's errors (it has its own httpx)
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                total = failed = 0
                for family in text_string_to_metric_families(response.text):
                    if family.name != "driftloop_requests":
                        continue
                    for sample in family.samples:
                        if sample.name.endswith("_total"):
                            total += int(sample.value)
                            if _server_error(str(sample.labels.get("status", ""))):
                                failed += int(sample.value)
                counts[pod.metadata.uid or name or ""] = (total, failed)
                continue
            problem = f"HTTP {response.status_code}: {response.text[:200].strip()}"
            if response.status_code in (401, 403):
                problem += (
                    " (with DRIFTLOOP_AUTH=on, set DRIFTLOOP_ROLLOUT_METRICS_KEY to an admin key)"
                )
        if strict:
            raise _Failure(
                f"cannot read the canary's error rate from pod {name}'s /metrics: {problem}; "
                "DRIFTLOOP_ROLLOUT_MAX_ERROR_RATE=1 turns the check off"
            )
    return counts


class _Failure(Exception):
    """A canary check failed (the message says which); the rollout rolls back."""


def _judge(health: Health, policy: Policy) -> None:
    if health.fatal is not None:
        raise _Failure(f"canary cannot start: {health.fatal}")
    if health.restarts > policy.max_restarts:
        raise _Failure(
            f"canary restarted {health.restarts} times (at most {policy.max_restarts} allowed)"
        )


def _set_image(
    client: Client, target: Target, stable: Deployment, image: str, bento_tag: str
) -> None:
    container = _container(stable, target.container)
    patch = {
        "metadata": {"annotations": {BENTO: bento_tag}},
        "spec": {
            "template": {
                "metadata": {"annotations": {BENTO: bento_tag}},
                "spec": {"containers": [{"name": container.name, "image": image}]},
            }
        },
    }
    client.patch(Deployment, target.deployment, patch, namespace=target.namespace)


def _wait_stable(client: Client, target: Target, policy: Policy) -> None:
    """Until the stable Deployment has rolled out its current template to every replica."""
    deadline = time.monotonic() + policy.progress_deadline_s
    status: Any = None
    while time.monotonic() < deadline:
        stable = _stable(client, target)
        assert stable.metadata is not None
        assert stable.spec is not None
        status = stable.status
        wanted = stable.spec.replicas or 0
        if (
            status is not None
            and (status.observedGeneration or 0) >= (stable.metadata.generation or 0)
            and (status.updatedReplicas or 0) == wanted
            and (status.availableReplicas or 0) == wanted
            and (status.replicas or 0) == wanted
        ):
            return
        time.sleep(policy.poll_s)
    raise DriftloopError(
        f"Deployment {target.deployment} did not finish rolling out within "
        f"{policy.progress_deadline_s:.0f}s (status: {status.to_dict() if status else 'none'})"
    )


def rollout(
    client: Client,
    target: Target,
    policy: Policy,
    *,
    image: str,
    bento_tag: str,
    record: Record,
    progress: Progress = lambda _: None,
) -> RolloutResult:
    """Roll ``image`` out through a canary; promote it or roll it back.

    Raises:
        RolloutFailed: the canary failed a check; it was removed, the stable was not touched.
        DriftloopError: no stable Deployment, or the stable did not finish taking the image.
    """
    started = time.monotonic()
    stable = _stable(client, target)
    previous = _container(stable, target.container).image or ""
    annotations = (stable.metadata.annotations if stable.metadata else None) or {}
    base = {
        "image": image,
        "previous_image": previous,
        "previous_bento_tag": annotations.get(BENTO),
    }
    canary = _get(client, target.canary, target.namespace)
    if canary is not None and _container(canary, target.container).image != image:
        left = _container(canary, target.container).image
        progress(f"removing a canary of {left} left by an earlier rollout")
        _remove_canary(client, target, policy)
        record("canary-removed", {**base, "reason": f"a canary of {left} was left behind"})
        canary = None
    if canary is not None and canary.metadata is not None and canary.metadata.annotations:
        # Resuming: what the stable ran before this rollout began, even if it already took the image.
        kept = canary.metadata.annotations
        base["previous_image"] = kept.get(PREVIOUS_IMAGE) or previous
        base["previous_bento_tag"] = kept.get(PREVIOUS_BENTO) or base["previous_bento_tag"]
    if previous == image:
        if canary is None:
            record("unchanged", {**base, "reason": "the stable Deployment already runs this image"})
            return RolloutResult("unchanged", image, previous, time.monotonic() - started)
        # Interrupted after the stable took the image: finish the promotion.
        progress("the stable already runs this image: finishing an interrupted promotion")
        return _promote(
            client, target, policy, stable, image, bento_tag, base, record, started, progress
        )
    if canary is None:
        canary = client.create(_canary_manifest(stable, target, image, bento_tag, policy))
        assert canary.spec is not None
        record("canary-started", {**base, "replicas": canary.spec.replicas})
        progress(
            f"canary {target.canary} started with {canary.spec.replicas} replica(s) of {image}"
        )
    else:
        progress(f"canary {target.canary} of {image} found: resuming an interrupted rollout")
        record("canary-resumed", base)
    try:
        health = _wait_canary(client, target, policy, progress)
        progress(f"canary ready ({health}); baking for {policy.bake_s:.0f}s")
        record("canary-ready", {**base, "health": str(health)})
        health, errors = _bake(client, target, policy, progress)
        traffic = ""
        if errors is not None:
            judged = "" if errors.requests >= policy.min_requests else ", too few to judge"
            traffic = f"; {errors}{judged}"
        progress(f"canary baked ({health}{traffic})")
        record(
            "baked",
            {
                **base,
                "health": str(health),
                "bake_s": policy.bake_s,
                **(errors.as_dict() if errors is not None else {}),
            },
        )
    except _Failure as failure:
        progress(f"canary failed: {failure}; rolling back")
        _remove_canary(client, target, policy)
        record("rolled-back", {**base, "reason": str(failure)})
        raise RolloutFailed(str(failure), image) from None
    return _promote(
        client, target, policy, stable, image, bento_tag, base, record, started, progress
    )


def _promote(
    client: Client,
    target: Target,
    policy: Policy,
    stable: Deployment,
    image: str,
    bento_tag: str,
    base: dict[str, Any],
    record: Record,
    started: float,
    progress: Progress,
) -> RolloutResult:
    _set_image(client, target, stable, image, bento_tag)
    progress(f"promoting: {target.deployment} takes {image}")
    _wait_stable(client, target, policy)
    _remove_canary(client, target, policy)
    record("promoted", {**base, "bento_tag": bento_tag})
    return RolloutResult("promoted", image, base["previous_image"], time.monotonic() - started)


def undo(
    client: Client,
    target: Target,
    policy: Policy,
    *,
    image: str,
    bento_tag: str,
    record: Record,
    progress: Progress = lambda _: None,
) -> RolloutResult:
    """Set the stable Deployment back to ``image`` (the previous champion's), without a canary:
    undoing is for when the new version is already known to be bad."""
    started = time.monotonic()
    stable = _stable(client, target)
    previous = _container(stable, target.container).image or ""
    _remove_canary(client, target, policy)
    if previous != image:
        progress(f"setting {target.deployment} back from {previous} to {image}")
        _set_image(client, target, stable, image, bento_tag)
    _wait_stable(client, target, policy)
    record("undone", {"image": image, "previous_image": previous, "bento_tag": bento_tag})
    return RolloutResult("undone", image, previous, time.monotonic() - started)
