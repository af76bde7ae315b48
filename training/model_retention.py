"""Model and Bento retention: which registered versions keep their model, Bento and Bento export,
and pruning the rest, each deletion recorded.

A version is kept when it is the champion, one of the ``keep`` champions before it (by when they
were last promoted), the version ``driftloop rollback`` would go back to, a candidate (its run may
still promote it), a model an unfinished training run uses, or the Bento of a deployment target's
latest record (a served, built or rolled-out Bento, and the one a rollout would be undone to).
Everything else is pruned from the BentoML store (its Bento, then its model) and its Bento export
from the artifact store. The registry keeps the version's row: each pruning is a ``deployments`` row
(target ``retention``, status ``deleted``, what went and why), and the row's ``bento_uri`` is
cleared, since the export is gone.

The rule is :func:`decide`, a pure function of the registry's rows and :class:`Facts`.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training import registry, runs
from training.artifacts import store_of
from training.errors import NotFoundError
from training.postgres import ensure_database
from training.registry import ModelVersion
from training.settings import Settings
from training.store import Connection, connect

__all__ = [
    "RETENTION_TARGET",
    "Facts",
    "Pruned",
    "Verdict",
    "decide",
    "prune_models",
    "read_facts",
    "refuse_pruned",
]

# deployments.target of each pruning (a backup leaves pruned versions out on purpose).
RETENTION_TARGET = "retention"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Facts:
    """What the store says about one model beyond its versions' rows."""

    # The tag ``driftloop rollback`` would make champion again (None: none can).
    rollback: str | None = None
    # Tag -> the unfinished training run (its key) that uses it.
    live_runs: dict[str, str] = field(default_factory=dict)
    # Bento tag -> the deployment record that refers to it ("target local (serving)").
    deployed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    version: ModelVersion
    keep: bool
    why: str


def decide(versions: Sequence[ModelVersion], facts: Facts, keep: int) -> list[Verdict]:
    """Keep or prune each version of one model, with the reason; in ``versions``' order.

    Args:
        versions: every version of the model.
        facts: the model's rollback target, live runs and deployments.
        keep: how many champions before the current one keep their Bentos.
    """
    if keep < 0:
        raise ValueError(f"--keep must be 0 or more, got {keep}")
    previous = sorted(
        (v for v in versions if v.promoted_at is not None and v.status != "champion"),
        key=lambda v: v.promoted_at,  # type: ignore[arg-type, return-value]  # filtered above
        reverse=True,
    )
    rank = {v.tag: i for i, v in enumerate(previous, start=1)}
    verdicts = []
    for v in versions:
        reasons = []
        if v.status == "champion":
            reasons.append("the champion")
        if rank.get(v.tag, keep + 1) <= keep:
            reasons.append(f"champion before the current one (#{rank[v.tag]} of {keep} kept)")
        if v.tag == facts.rollback:
            reasons.append("the version `driftloop rollback` goes back to")
        if v.status == "candidate":
            reasons.append("a candidate: its run may still promote it")
        if v.tag in facts.live_runs:
            reasons.append(f"used by the unfinished run {facts.live_runs[v.tag]}")
        if v.bento_tag is not None and v.bento_tag in facts.deployed:
            reasons.append(f"its Bento is deployed: {facts.deployed[v.bento_tag]}")
        if reasons:
            verdicts.append(Verdict(v, True, "; ".join(reasons)))
        elif v.status == "retired":
            older = f"#{rank[v.tag]}" if v.tag in rank else "never"
            verdicts.append(
                Verdict(v, False, f"retired; champion {older} before the current one, {keep} kept")
            )
        else:
            verdicts.append(Verdict(v, False, f"{v.status}; never champion"))
    return verdicts


_LIVE_RUNS = (
    "SELECT run_key, champion_tag, challenger_tag FROM training_runs"
    " WHERE model_name = %s AND status = 'trained' AND finished_at IS NULL"
)
# The newest record of each deployment target of the model (retention's own excepted).
_LATEST_DEPLOYMENTS = (
    "SELECT DISTINCT ON (target) target, status, bento_tag, detail->>'previous_bento_tag'"
    " FROM deployments WHERE model_name = %s AND target <> %s"
    " ORDER BY target, created_at DESC, id DESC"
)


def read_facts(conn: Connection, model_name: str) -> Facts:
    try:
        rollback: str | None = registry.rollback_target(conn, model_name).tag
    except NotFoundError:
        rollback = None
    live: dict[str, str] = {}
    deployed: dict[str, str] = {}
    with conn.cursor() as cur:
        cur.execute(_LIVE_RUNS, (model_name,))
        for run_key, champion_tag, challenger_tag in cur.fetchall():
            for tag in (champion_tag, challenger_tag):
                if tag is not None:
                    live.setdefault(tag, run_key)
        cur.execute(_LATEST_DEPLOYMENTS, (model_name, RETENTION_TARGET))
        for target, status, bento_tag, previous in cur.fetchall():
            deployed.setdefault(bento_tag, f"target {target} ({status})")
            if previous:
                deployed.setdefault(previous, f"target {target}'s undo goes back to it")
    return Facts(rollback=rollback, live_runs=live, deployed=deployed)


@dataclass(frozen=True)
class Pruned:
    """A version pruned (or, in a dry run, to be pruned): what of it was (or would be) deleted."""

    model_name: str
    tag: str
    version: int
    why: str
    removed: list[str]


def _present(settings: Settings, v: ModelVersion) -> list[tuple[str, Callable[[], None]]]:
    """What of ``v`` is still stored, each with how to delete it (the Bento before its model)."""
    import bentoml
    from bentoml.exceptions import NotFound

    found: list[tuple[str, Callable[[], None]]] = []
    if v.bento_tag is not None:
        try:
            bentoml.bentos.get(v.bento_tag)
            bento_tag = v.bento_tag
            found.append((f"Bento {bento_tag}", lambda: bentoml.bentos.delete(bento_tag)))
        except NotFound:
            pass
    try:
        bentoml.models.get(v.tag)
        found.append((f"model {v.tag}", lambda: bentoml.models.delete(v.tag)))
    except NotFound:
        pass
    if v.bento_uri is not None:
        store, _ = store_of(v.bento_uri, settings)
        if store.exists(v.bento_uri):
            uri = v.bento_uri
            found.append((f"export {uri}", lambda: store.delete(uri)))
    return found


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's user)
        return "unknown"


def _prune_one(
    settings: Settings, conn: Connection, verdict: Verdict, keep: int, dry_run: bool
) -> Pruned | None:
    v = verdict.version
    present = _present(settings, v)
    if not present:
        return None  # pruned before, or never stored here
    removed = [what for what, _ in present]
    if not dry_run:
        for _, delete in present:
            delete()
        detail: dict[str, Any] = {
            "removed": removed,
            "reason": verdict.why,
            "keep": keep,
            "by": f"{_who()} (driftloop prune-models)",
        }
        runs.record_deployment(
            conn, v.tag, v.bento_tag or "", target=RETENTION_TARGET, status="deleted", detail=detail
        )
        if v.bento_uri is not None:
            registry.clear_bento_uri(conn, v.tag)
    return Pruned(v.model_name, v.tag, v.version, verdict.why, removed)


def refuse_pruned(conn: Connection, tag: str) -> None:
    """Refuse to make a pruned version champion: its Bento and model are gone.

    Raises:
        ValueError: ``tag`` was pruned (when, and by whom).
    """
    version = registry.get_version(conn, tag)
    if version.bento_tag is None:
        return
    pruned = runs.deployments(
        conn, target=RETENTION_TARGET, bento_tag=version.bento_tag, status="deleted", limit=1
    )
    if pruned:
        raise ValueError(
            f"model {tag}'s Bento {version.bento_tag} was pruned on "
            f"{pruned[0].created_at:%Y-%m-%d %H:%M} by {pruned[0].detail.get('by')}: nothing is "
            "left to serve (restore a backup made before to get it back)"
        )


def _model_names(conn: Connection) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT model_name FROM model_versions ORDER BY model_name")
        return [str(row[0]) for row in cur.fetchall()]


def prune_models(
    settings: Settings,
    *,
    keep: int,
    dry_run: bool = False,
    model: str | None = None,
    progress: Progress = _quiet,
) -> list[Pruned]:
    """Prune the registered versions :func:`decide` does not keep (of ``model``, or of every
    model); with ``dry_run``, only say what would go.

    Each model is pruned under the lock promotions take, so no version becomes champion while its
    Bento is being deleted.

    Raises:
        NotFoundError: ``model`` has no version in the registry.
    """
    url = ensure_database(settings)
    with connect(url) as conn:
        names = _model_names(conn)
    if model is not None:
        if model not in names:
            raise NotFoundError(
                f"--model {model}: no version of it in the registry "
                f"(registered: {', '.join(names) or 'none'})"
            )
        names = [model]
    pruned: list[Pruned] = []
    for name in names:
        with connect(url) as conn:
            # The lock promotions take (session-wide here, as each pruning commits on its own).
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
            try:
                pruned += _prune_model(settings, conn, name, keep, dry_run, progress)
            finally:
                conn.rollback()
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))
    return pruned


def _prune_model(
    settings: Settings, conn: Connection, name: str, keep: int, dry_run: bool, progress: Progress
) -> list[Pruned]:
    verdicts = decide(registry.versions(conn, name), read_facts(conn, name), keep)
    progress(f"{name}: {len(verdicts)} versions, the champion and {keep} before it kept")
    pruned = []
    for verdict in verdicts:
        v = verdict.version
        if verdict.keep:
            progress(f"  keep   v{v.version:<4} {v.tag}: {verdict.why}")
            continue
        done = _prune_one(settings, conn, verdict, keep, dry_run)
        # Each pruning is recorded as soon as its files are gone.
        conn.commit()
        if done is None:
            continue
        pruned.append(done)
        verb = "would delete" if dry_run else "deleted"
        progress(
            f"  prune  v{v.version:<4} {v.tag}: {verdict.why}; {verb} {', '.join(done.removed)}"
        )
    return pruned
