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
