"""A model's Bento onto the configured cluster: which image, which records, and what a failed
rollout does to the registry. Shared by ``driftloop rollout`` and the retrain DAG's last step;
the Kubernetes side is :mod:`training.release.rollout`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from training import registry, runs
from training.errors import DriftloopError, NotFoundError
from training.postgres import ensure_database
from training.release import rollout as kube
from training.settings import Settings
from training.store import connect

__all__ = ["Deployed", "image_of", "rollout_after_promotion", "rollout_bento", "undo_rollout"]


@dataclass(frozen=True)
class Deployed:
    """What a rollout (or an undo) did, as the CLI prints it and the DAG passes it on."""

    outcome: str
    model_tag: str
    bento_tag: str
    image: str
    previous_image: str
    target: str
    seconds: float


def image_of(conn: Any, settings: Settings, bento_tag: str) -> str:
    """The image of a Bento: the last one built of it (``driftloop image``, the DAG's containerize
    step), else the name those would give it, ``<image_repository or Bento name>:<version>``."""
    built = runs.deployments(conn, target="image", bento_tag=bento_tag, limit=1)
    if built and isinstance(built[0].detail.get("image"), str):
        return str(built[0].detail["image"])
    name, _, version = bento_tag.partition(":")
    return f"{settings.image_repository or name}:{version}"


def _model_tag(conn: Any, model_name: str, bento_tag: str) -> str:
    for version in registry.versions(conn, model_name):
        if version.bento_tag == bento_tag:
            return version.tag
    raise NotFoundError(
        f"Bento {bento_tag} is not the Bento of any version of {model_name} "
        "(`driftloop models --model NAME` lists them)"
    )


def _recorder(url: str, model_tag: str, bento_tag: str, target: str) -> kube.Record:
    def record(status: str, detail: dict[str, Any]) -> None:
        with connect(url) as conn:
            runs.record_deployment(
                conn, model_tag, bento_tag, target=target, status=status, detail=detail
            )

    return record


def rollout_bento(
    settings: Settings,
    model_name: str,
    bento_tag: str | None = None,
    *,
    image: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Deployed:
    """Roll a Bento of ``model_name`` (the champion's by default) out to the configured cluster.

    Raises:
        RolloutFailed: the canary failed and was removed (recorded as ``rolled-back``).
        NotFoundError: no champion with a Bento, or the Bento is no version's of this model.
    """
    url = ensure_database(settings)
    with connect(url) as conn:
        if bento_tag is None:
            current = registry.champion(conn, model_name)
            if current is None or current.bento_tag is None:
                raise NotFoundError(f"no champion of {model_name} with a Bento to roll out")
            bento_tag = current.bento_tag
        model_tag = _model_tag(conn, model_name, bento_tag)
        image = image or image_of(conn, settings, bento_tag)
    return _apply(
        kube.rollout,
        settings,
        url,
        kube.Target.from_settings(settings),
        image,
        model_tag,
        bento_tag,
        progress,
    )


def undo_rollout(
    settings: Settings, model_name: str, *, progress: Callable[[str], None] = lambda _: None
) -> Deployed:
    """Set the stable Deployment back to the image it ran before the last promoted rollout.

    Raises:
        NotFoundError: no promoted rollout of this model on the configured target.
    """
    url = ensure_database(settings)
    target = kube.Target.from_settings(settings)
    with connect(url) as conn:
        promoted = [
            d
            for d in runs.deployments(conn, target=target.name, status="promoted", limit=50)
            if d.model_name == model_name
        ]
        if not promoted:
            raise NotFoundError(f"no promoted rollout of {model_name} on {target.name} to undo")
        last = promoted[0]
        image = str(last.detail.get("previous_image") or "")
        bento_tag = str(last.detail.get("previous_bento_tag") or "unknown")
        try:
            model_tag = _model_tag(conn, model_name, bento_tag)
        except NotFoundError:
            # The stable ran an image no driftloop rollout put there (applied by hand).
            model_tag = f"{model_name}:unknown"
    if not image:
        raise DriftloopError(f"the last rollout on {target.name} recorded no previous image")
    return _apply(kube.undo, settings, url, target, image, model_tag, bento_tag, progress)


def _apply(
    action: Callable[..., kube.RolloutResult],
    settings: Settings,
    url: str,
    target: kube.Target,
    image: str,
    model_tag: str,
    bento_tag: str,
    progress: Callable[[str], None],
) -> Deployed:
    """Run ``kube.rollout`` or ``kube.undo`` with the configured policy, recording each step."""
    result = action(
        kube.kube_client(settings),
        target,
        kube.Policy.from_settings(settings),
        image=image,
        bento_tag=bento_tag,
        record=_recorder(url, model_tag, bento_tag, target.name),
        progress=progress,
    )
    return Deployed(
        result.outcome,
        model_tag,
        bento_tag,
        image,
        result.previous_image,
        target.name,
        result.seconds,
    )


def rollout_after_promotion(
    settings: Settings,
    model: str,
    run_key: str,
    *,
    champion_tag: str,
    bento_tag: str,
    previous_champion: str | None,
) -> dict[str, Any]:
    """The retrain DAG's last step: roll the new champion out when ``DRIFTLOOP_ROLLOUT`` is on.

    A failed rollout gives the champion back to the one it replaced (a ``rollback`` promotion,
    so the registry names what the cluster serves) and raises, failing the task with the reason.
    """
    if settings.rollout != "on":
        return {"skipped": "DRIFTLOOP_ROLLOUT is off"}
    try:
        deployed = rollout_bento(settings, model, bento_tag)
    except DriftloopError as exc:
        if previous_champion:
            with connect(ensure_database(settings)) as conn:
                current = registry.champion(conn, model)
                # Only if nothing promoted another champion meanwhile.
                if current is not None and current.tag == champion_tag:
                    registry.promote(
                        conn,
                        previous_champion,
                        by=f"run {run_key}",
                        reason=f"the rollout of {champion_tag} failed: {exc}",
                        action="rollback",
                    )
        raise
    return asdict(deployed)
