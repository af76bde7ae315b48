"""The retraining loop's steps. Each is one transaction-like unit that the DAG calls from one task.

A task builds one :class:`StepContext` (settings, spec, the store's URL after migrations) and calls
its step, which takes and returns the small frozen dataclasses of :mod:`training.steps` (URIs,
tags, ids, verdicts): Airflow's XCom carries references, never data. Every step records what it
did through :mod:`training.runs`, and every step can run again for the same run key (a cleared
task) without adding a second record, model or Bento.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from training import registry
from training.approval import Review, run_timeout
from training.artifacts import open_store
from training.bento import build_bento, publish_bento
from training.decision import LiveCheck, decide, judgeable, relation_changed
from training.drift import detect_drift
from training.errors import NotFoundError
from training.evaluate import Evaluation, evaluate, judge, live_check, score
from training.extract import extract_window
from training.models import select_spec
from training.postgres import ensure_database
from training.runs import (
    close_stale_runs,
    deployments,
    read_frame,
    record_drift_run,
    record_training_run,
    recorded_challenger,
    reopen_candidate,
    safe_key,
    upload_frame,
)
from training.settings import Settings
from training.spec import ModelSpec
from training.steps import Built, Decision, Extracted, Promotion, Skipped, Trained, Validation
from training.store import connect
from training.train import fit
from training.trainset import known_ids, split_for_challenger

__all__ = [
    "StepContext",
    "build_challenger_bento",
    "check_drift",
    "containerize_bento",
    "extract",
    "promote",
    "record_rejection",
    "record_skip",
    "train_challenger",
    "validate",
]


@dataclass(frozen=True)
class StepContext:
    """What every step of one run needs, built once per task: the settings, the model's spec, the
    store's URL (migrations applied) and the run's key (Airflow's run id)."""

    settings: Settings
    spec: ModelSpec
    url: str
    run_key: str

    @classmethod
    def build(cls, settings: Settings, model: str | None, run_key: str) -> StepContext:
        return cls(settings, select_spec(settings, model), ensure_database(settings), run_key)

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def prefix(self) -> str:
        """Where this run's files go in the artifact store (the same on every re-run)."""
        return f"runs/{self.spec.name}/{safe_key(self.run_key)}"


def extract(ctx: StepContext, window_end: datetime, window_days: float) -> Extracted:
    """Copy the window ``[window_end - window_days, window_end)`` out of the store into Parquet.

    The run's first step also closes the model's training runs a crash left open for longer than
    a run may take (``retrain_timeout_hours``, plus the approval timeout when the spec asks for
    approval): failed, candidates rejected, so they never hold the schedule back.
    """
    if window_days <= 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    close_stale_runs(
        ctx.url,
        ctx.model,
        older_than=run_timeout(ctx.settings, ctx.spec),
        by=ctx.run_key,
    )
    spec = ctx.spec
    start = window_end - timedelta(days=window_days)
    with connect(ctx.url) as conn:
        frame = extract_window(conn, spec, start, window_end)
    uri = upload_frame(ctx.settings, frame, f"{ctx.prefix}/window.parquet")
    return Extracted(
        dataset_uri=uri,
        window_start=start.isoformat(),
        window_end=window_end.isoformat(),
        rows=len(frame),
        labelled_rows=int(frame[spec.target].notna().sum()),
    )


def check_drift(ctx: StepContext, extracted: Extracted, force: bool = False) -> Decision:
    """Drift of the window against the champion's training data, the champion's recent accuracy,
    and the decision to retrain or skip (with its reason), recorded in ``drift_runs``.

    The champion's accuracy is measured only on labelled rows it did not train on.
    """
    spec, settings = ctx.spec, ctx.settings
    window = read_frame(settings, extracted.dataset_uri)
    labelled = window[window[spec.target].notna()].copy()
    labelled[spec.target] = labelled[spec.target].astype("int64")
    with connect(ctx.url) as conn:
        champ = registry.champion(conn, spec.name)

    drift = None
    live: LiveCheck | None = None
    performance: dict[str, float] = {}
    report_uri = None
    reference = read_frame(settings, champ.train_data_uri) if champ is not None else None
    if champ is not None and reference is not None and not window.empty:
        pipeline, _ = registry.load_model(champ.tag)
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "drift_report.html"
            drift = detect_drift(
                spec, reference, window, report, score=lambda f: score(pipeline, spec, f)
            )
            report_uri = open_store(settings).put(report, f"{ctx.prefix}/drift_report.html")
        baseline = champ.metrics.get("roc_auc")
        live = live_check(
            pipeline,
            spec,
            labelled,
            known_ids(reference),
            None if baseline is None else float(baseline),
        )
        if live is not None:
            performance = {
                "baseline_auc": live.baseline_auc,
                "recent_auc": live.recent_auc,
                "drop": live.drop,
            }
    unjudgeable = None
    if len(labelled) >= spec.gates.min_labelled_rows:
        unjudgeable = judgeable(
            split_for_challenger(spec, labelled, reference).holdout, spec.target
        )
    verdict = decide(
        spec,
        labelled_rows=len(labelled),
        has_champion=champ is not None,
        drift=drift,
        live=live,
        unjudgeable=unjudgeable,
        force=force,
    )
    drift_run_id = record_drift_run(
        ctx.url,
        spec.name,
        ctx.run_key,
        window_start=extracted.window_start,
        window_end=extracted.window_end,
        champion_tag=champ.tag if champ else None,
        rows=len(window),
        labelled_rows=len(labelled),
        drift_share=drift.drift_share if drift else None,
        drifted=drift.drifted if drift else None,
        columns=drift.columns_json() if drift else {},
        performance=performance,
        dataset_uri=extracted.dataset_uri,
        report_uri=report_uri,
        decision=verdict.decision,
        reason=verdict.reason,
    )
    return Decision(
        drift_run_id=drift_run_id,
        decision=verdict.decision,
        reason=verdict.reason,
        drift_share=drift.drift_share if drift else None,
        most_drifted=[c.column for c in drift.most_drifted() if c.drifted] if drift else [],
        report_uri=report_uri,
        champion_tag=champ.tag if champ else None,
        relation_changed=relation_changed(spec, live),
    )


def record_skip(ctx: StepContext, decision: Decision) -> Skipped:
    """The run ends without training: keep the reason next to the drift run that decided it."""
    run_id = record_training_run(
        ctx.url,
        ctx.model,
        ctx.run_key,
        status="skipped",
        reason=decision.reason,
        drift_run_id=decision.drift_run_id,
        champion_tag=decision.champion_tag,
    )
    return Skipped(training_run_id=run_id, reason=decision.reason)


def _registered(tag: str | None) -> bool:
    if tag is None:
        return False
    try:
        registry.model_spec(tag)
    except NotFoundError:
        return False
    return True


def train_challenger(ctx: StepContext, decision: Decision, dataset_uri: str) -> Trained:
    """Fit a challenger by the spec's training-data policy: the older part of the labelled window
    (plus, by default, a sample of the champion's training rows while its learned relation still
    holds); the newest part that the
    champion never saw is the holdout on which champion and challenger are compared.

    A re-run of the step for the same run key (a cleared task) reuses the challenger it already
    registered instead of adding a second model.
    """
    spec, settings = ctx.spec, ctx.settings
    window = read_frame(settings, dataset_uri)
    labelled = window[window[spec.target].notna()].copy()
    labelled[spec.target] = labelled[spec.target].astype("int64")
    with connect(ctx.url) as conn:
        champ = registry.champion(conn, spec.name)
    reference = read_frame(settings, champ.train_data_uri) if champ is not None else None
    split = split_for_challenger(
        spec, labelled, reference, relation_changed=decision.relation_changed
    )
    train_part, holdout = split.train, split.holdout
    train_uri = upload_frame(settings, train_part, f"{ctx.prefix}/train.parquet")
    holdout_uri = upload_frame(settings, holdout, f"{ctx.prefix}/holdout.parquet")
    existing = recorded_challenger(ctx.url, spec.name, ctx.run_key)
    reused = _registered(existing)
    if existing is not None and reused:
        tag = existing
        reopen_candidate(ctx.url, tag)
    else:
        pipeline = fit(spec, train_part)
        fit_metrics = evaluate(pipeline, spec, holdout).as_dict()
        tag = registry.save_model(
            spec, pipeline, metrics=fit_metrics, train_data_uri=train_uri, training_set=train_part
        )
    run_id = record_training_run(
        ctx.url,
        spec.name,
        ctx.run_key,
        status="trained",
        reason=decision.reason,
        drift_run_id=decision.drift_run_id,
        champion_tag=decision.champion_tag,
        challenger_tag=tag,
    )
    if not reused:
        with connect(ctx.url) as conn:
            registry.register(
                conn,
                model_name=spec.name,
                tag=tag,
                metrics=fit_metrics,
                train_data_uri=train_uri,
                training_run_id=run_id,
            )
    return Trained(
        training_run_id=run_id,
        challenger_tag=tag,
        holdout_uri=holdout_uri,
        train_rows=len(train_part),
        holdout_rows=len(holdout),
        training_data=split.describe(),
        reused=reused,
    )


def validate(ctx: StepContext, trained: Trained) -> Validation:
    """Score challenger and champion on the same holdout and apply the spec's gates.

    A challenger that fails is marked ``rejected`` and the champion keeps serving.
    """
    spec = ctx.spec
    holdout = read_frame(ctx.settings, trained.holdout_uri)
    holdout[spec.target] = holdout[spec.target].astype("int64")
    with connect(ctx.url) as conn:
        champ = registry.champion(conn, spec.name)
    # A re-run after promote: the challenger is the champion now; compare with the one it replaced,
    # and leave the run `promoted`.
    promoted = champ if champ is not None and champ.tag == trained.challenger_tag else None
    if promoted is not None:
        champ = _replaced(ctx, promoted.tag)
    challenger_pipeline, _ = registry.load_model(trained.challenger_tag)
    challenger_eval = evaluate(challenger_pipeline, spec, holdout)
    champion_eval: Evaluation | None = None
    if champ is not None:
        champion_pipeline, champion_spec = registry.load_model(champ.tag)
        champion_eval = evaluate(champion_pipeline, champion_spec, holdout)
    verdict = judge(challenger_eval, champion_eval, spec.gates)
    gates = [asdict(g) for g in verdict.gates]
    metrics = {
        "challenger": challenger_eval.as_dict(),
        "champion": champion_eval.as_dict() if champion_eval else None,
    }
    record_training_run(
        ctx.url,
        spec.name,
        ctx.run_key,
        status="promoted" if promoted else "trained" if verdict.passed else "rejected",
        reason=f"promoted to champion v{promoted.version}" if promoted else verdict.reason,
        metrics=metrics,
        gates=gates,
    )
    if not verdict.passed and promoted is None:
        with connect(ctx.url) as conn:
            registry.reject(conn, trained.challenger_tag)
    return Validation(
        passed=verdict.passed,
        reason=verdict.reason,
        challenger_tag=trained.challenger_tag,
        champion_tag=champ.tag if champ else None,
        challenger=challenger_eval.as_dict(),
        champion=champion_eval.as_dict() if champion_eval else None,
        gates=gates,
    )


def _replaced(ctx: StepContext, tag: str) -> registry.ModelVersion | None:
    with connect(ctx.url) as conn:
        for promotion in registry.promotions(conn, ctx.model):
            if promotion.tag == tag and promotion.previous_tag is not None:
                return registry.get_version(conn, promotion.previous_tag)
    return None


def _bento_exists(bento_tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.bentos.get(bento_tag)
    except NotFound:
        return False
    return True


def _built_bento(challenger_tag: str, recorded: str | None) -> str | None:
    """The Bento the model already has: the one recorded, or the one a try that failed before
    recording it built (``build_bento`` names it ``<name>_service:<model version>``)."""
    name, _, version = challenger_tag.partition(":")
    for tag in (recorded, f"{name}_service:{version}"):
        if tag is not None and _bento_exists(tag):
            return tag
    return None


def build_challenger_bento(ctx: StepContext, challenger_tag: str) -> Built:
    """Build the Bento of a challenger that passed its gates (before promotion, so that every
    champion has a Bento to serve); a re-run reuses the Bento the model already has, recorded or
    not (the database may have failed the try that built it)."""
    with connect(ctx.url) as conn:
        known = registry.get_version(conn, challenger_tag).bento_tag
    found = _built_bento(challenger_tag, known)
    if found is not None:
        if found != known:
            with connect(ctx.url) as conn:
                registry.set_bento(conn, challenger_tag, found)
        return Built(challenger_tag=challenger_tag, bento_tag=found, reused=True)
    bento_tag = build_bento(challenger_tag)
    with connect(ctx.url) as conn:
        registry.set_bento(conn, challenger_tag, bento_tag)
    return Built(challenger_tag=challenger_tag, bento_tag=bento_tag)


def containerize_bento(ctx: StepContext, built: Built) -> Built:
    """Build the OCI image of the new Bento (``bentoml containerize``) when ``DRIFTLOOP_CONTAINERIZE``
    is on, so a champion is only promoted once its image exists; otherwise pass through."""
    from dataclasses import replace

    settings = ctx.settings
    if not settings.containerize:
        return replace(built, image=None, image_skipped="DRIFTLOOP_CONTAINERIZE is off")
    from training.release import containerize, record_image

    with connect(ctx.url) as conn:
        done = deployments(conn, target="image", bento_tag=built.bento_tag, limit=1)
    if done:
        # A re-run: the image of this Bento was built and recorded already.
        detail = done[0].detail
        return replace(
            built, image=detail["image"], image_size_bytes=detail.get("size_bytes"), reused=True
        )
    image = containerize(settings, built.bento_tag, repository=settings.image_repository)
    record_image(ctx.url, built.challenger_tag, image)
    return replace(built, image=image.image, image_size_bytes=image.size_bytes)


def promote(ctx: StepContext, built: Built, review: Review | None = None) -> Promotion:
    """Make the challenger the champion (the previous one retires) and close the training run.

    With a person's approval (``review``), the promotion record names them and their comment. A
    re-run after the challenger became champion changes nothing (``changed`` is False).
    """
    if review is not None and not review.approved:
        raise ValueError(
            f"{built.challenger_tag} was {review.verdict}: record_rejection, not promote"
        )
    if review is not None:
        # The approval task was cleared and answered anew after a rejection: the latest answer
        # stands (the challenger passed its gates in this run, or promote would not run).
        reopen_candidate(ctx.url, built.challenger_tag)
    # Exported first: every champion has its Bento in the artifact store, and a store that cannot
    # be written fails the step with the champion unchanged.
    publish_bento(ctx.settings, ctx.url, built.challenger_tag, built.bento_tag)
    with connect(ctx.url) as conn:
        before = registry.champion(conn, ctx.model)
        if before is not None and before.tag == built.challenger_tag:
            previous = _replaced(ctx, before.tag)
            return Promotion(
                champion_tag=before.tag,
                previous_champion=previous.tag if previous else None,
                bento_tag=built.bento_tag,
                version=before.version,
                changed=False,
            )
        reason = f"passed its gates against {before.tag if before else 'no champion'}"
        if review is not None:
            reason = f"{reason}; {review.verdict} (run {ctx.run_key})"
        promoted = registry.promote(
            conn,
            built.challenger_tag,
            by=review.by if review is not None else f"run {ctx.run_key}",
            reason=reason,
        )
    record_training_run(
        ctx.url,
        ctx.model,
        ctx.run_key,
        status="promoted",
        reason=f"promoted to champion v{promoted.version}"
        + (f", {review.verdict}" if review is not None else ""),
    )
    return Promotion(
        champion_tag=promoted.tag,
        previous_champion=before.tag if before else None,
        bento_tag=built.bento_tag,
        version=promoted.version,
    )


def record_rejection(ctx: StepContext, built: Built, review: Review) -> str:
    """A person rejected the challenger: the run ends ``rejected`` with who and why, the
    challenger is ``rejected`` and the champion keeps serving. Returns the reason recorded.

    Running it again records the same; a challenger that became champion meanwhile (an earlier
    approval of this run) is left as it is.
    """
    with connect(ctx.url) as conn:
        current = registry.champion(conn, ctx.model)
        if current is not None and current.tag == built.challenger_tag:
            raise ValueError(
                f"{built.challenger_tag} is already the champion (approved earlier in run "
                f"{ctx.run_key}): `driftloop rollback` puts the previous one back"
            )
        registry.reject(conn, built.challenger_tag)
    record_training_run(ctx.url, ctx.model, ctx.run_key, status="rejected", reason=review.verdict)
    return review.verdict
