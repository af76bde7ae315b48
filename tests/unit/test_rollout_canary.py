"""The canary Deployment a rollout makes from the stable one (no cluster needed)."""

from __future__ import annotations

import pytest
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment

from training.errors import DriftloopError
from training.release.rollout import Policy, Target, _canary_manifest, _container


def _stable(replicas: int) -> Deployment:
    labels = {"app.kubernetes.io/name": "driftloop"}
    return Deployment(
        metadata=ObjectMeta(name="driftloop", annotations={"driftloop.io/bento-tag": "svc:a"}),
        spec=DeploymentSpec(
            replicas=replicas,
            selector=LabelSelector(matchLabels=labels),
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=labels),
                spec=PodSpec(
                    containers=[
                        Container(name="sidecar", image="proxy:1"),
                        Container(name="bento", image="repo/svc:a"),
                    ]
                ),
            ),
        ),
    )


@pytest.mark.parametrize(
    ("replicas", "share", "canaries"), [(10, 0.1, 1), (3, 0.1, 1), (10, 0.25, 2)]
)
def test_the_canary_takes_a_share_of_the_replicas_and_at_least_one(
    replicas: int, share: float, canaries: int
) -> None:
    canary = _canary_manifest(
        _stable(replicas),
        Target("ns", "driftloop", "bento"),
        "repo/svc:b",
        "svc:b",
        Policy(canary_share=share),
    )
    assert canary.spec is not None
    assert canary.spec.replicas == canaries


def test_the_canary_runs_the_new_image_in_the_named_container_and_keeps_the_service_labels() -> (
    None
):
    stable = _stable(4)
    canary = _canary_manifest(
        stable,
        Target("ns", "driftloop", "bento"),
        "repo/svc:b",
        "svc:b",
        Policy(progress_deadline_s=90),
    )
    assert canary.metadata is not None
    assert canary.spec is not None
    assert canary.spec.template.spec is not None
    assert canary.metadata.name == "driftloop-canary"
    assert [(c.name, c.image) for c in canary.spec.template.spec.containers] == [
        ("sidecar", "proxy:1"),
        ("bento", "repo/svc:b"),
    ]
    # Every label of the stable's pods (what its Service selects), plus the track.
    assert canary.spec.template.metadata is not None
    assert canary.spec.template.metadata.labels == {
        "app.kubernetes.io/name": "driftloop",
        "driftloop.io/track": "canary",
    }
    assert canary.spec.selector.matchLabels == canary.spec.template.metadata.labels
    assert canary.spec.progressDeadlineSeconds == 90
    assert canary.metadata.annotations == {
        "driftloop.io/bento-tag": "svc:b",
        "driftloop.io/previous-image": "repo/svc:a",
        "driftloop.io/previous-bento-tag": "svc:a",
    }
    # The stable itself is not changed by making its canary.
    assert stable.spec is not None
    assert stable.spec.template.spec is not None
    assert stable.spec.template.spec.containers[1].image == "repo/svc:a"


def test_a_missing_container_is_named_with_the_ones_there_are() -> None:
    with pytest.raises(DriftloopError, match=r"no container 'web' \(it has sidecar, bento\)"):
        _container(_stable(1), "web")


def test_the_error_rate_counts_server_errors_over_the_bake_only() -> None:
    from training.release.rollout import Errors

    before = {"pod-a": (100, 1), "pod-b": (50, 0)}
    now = {
        "pod-a": (140, 3),  # 40 more requests, 2 of them server errors
        "pod-b": (10, 5),  # restarted: its counts started over
        "pod-c": (5, 0),  # new since the bake began
    }
    errors = Errors.since(before, now)
    assert (errors.requests, errors.errors) == (55, 7)
    assert errors.as_dict() == {"requests": 55, "server_errors": 7, "error_rate": 0.1273}
    assert Errors.since({}, {}).as_dict()["error_rate"] is None


@pytest.mark.parametrize(
    ("status", "server_error"),
    [
        ("200", False),
        ("400", False),
        ("429", False),
        ("499", False),
        ("500", True),
        ("503", True),
        ("OK", False),
        ("INVALID_ARGUMENT", False),
        ("INTERNAL", True),
        ("UNAVAILABLE", True),
    ],
)
def test_server_errors_are_5xx_and_the_grpc_codes_a_healthy_server_never_answers(
    status: str, server_error: bool
) -> None:
    from training.release.rollout import _server_error

    assert _server_error(status) is server_error


def test_too_few_requests_are_not_judged_and_the_threshold_is_a_share() -> None:
    from training.release.rollout import Errors, _Failure, _judge_errors

    policy = Policy(max_error_rate=0.05, min_requests=20)
    _judge_errors(Errors(19, 19), policy)  # too few to judge
    _judge_errors(Errors(100, 5), policy)  # 5% is allowed
    with pytest.raises(
        _Failure, match=r"canary error rate 6\.0% over the bake is above the allowed 5\.0%"
    ):
        _judge_errors(Errors(100, 6), policy)
