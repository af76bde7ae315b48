"""The retraining loop's steps. Each is one transaction-like unit that the DAG calls from one task.

Steps take and return small JSON values (URIs, tags, ids, verdicts) so Airflow's XCom carries
references, never data. Every step records what it did in PostgreSQL.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from training import registry
from training.artifacts import open_store
from training.bento import build_bento
from training.decision import LiveCheck, decide, judgeable
from training.drift import detect_drift
from training.evaluate import Evaluation, evaluate, judge
from training.extract import extract_window
from training.models import select_spec
from training.postgres import ensure_database
from training.runs import read_frame, record_training_run, safe_key, upload_frame
from training.settings import Settings
from training.spec import ModelSpec
from training.store import connect
from training.train import fit
from training.trainset import known_ids, split_for_challenger

__all__ = [
    "Decision",
    "Extracted",
    "Promotion",
    "Trained",
    "Validation",
    "build_challenger_bento",
    "check_drift",
    "extract",
    "promote",
    "record_skip",
    "train_challenger",
    "validate",
]


def _spec(settings: Settings, model: str | None) -> ModelSpec:
    return select_spec(settings, model)


@dataclass(frozen=True)
class Extracted:
    dataset_uri: str
    window_start: str
    window_end: str
    rows: int
    labelled_rows: int


def extract(
    settings: Settings, model: str, run_key: str, window_end: datetime, window_days: float
) -> dict[str, Any]:
    """Copy the window ``[window_end - window_days, window_end)`` out of the store into Parquet."""
    if window_days <= 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    spec = _spec(settings, model)
    start = window_end - timedelta(days=window_days)
    url = ensure_database(settings)
    with connect(url) as conn:
        frame = extract_window(conn, spec, start, window_end)
    uri = upload_frame(settings, frame, f"runs/{spec.name}/{safe_key(run_key)}/window.parquet")
    return asdict(
        Extracted(
            dataset_uri=uri,
            window_start=start.isoformat(),
            window_end=window_end.isoformat(),
            rows=len(frame),
            labelled_rows=int(frame[spec.target].notna().sum()),
        )
    )


@dataclass(frozen=True)
class Decision:
    drift_run_id: int
    decision: Literal["retrain", "skip"]
    reason: str
    drift_share: float | None
    most_drifted: list[str]
    report_uri: str | None
    champion_tag: str | None


def check_drift(
    settings: Settings, model: str, run_key: str, extracted: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """Drift of the window against the champion's training data, the champion's recent accuracy,
    and the decision to retrain or skip (with its reason), recorded in ``drift_runs``.

    The champion's accuracy is measured only on labelled rows it did not train on.
    """
    spec = _spec(settings, model)
    window = read_frame(settings, extracted["dataset_uri"])
    labelled = window[window[spec.target].notna()].copy()
    labelled[spec.target] = labelled[spec.target].astype("int64")
    url = ensure_database(settings)
    with connect(url) as conn:
        champ = registry.champion(conn, spec.name)

    drift = None
    live: LiveCheck | None = None
    performance: dict[str, Any] = {}
    report_uri = None
    reference = read_frame(settings, champ.train_data_uri) if champ is not None else None
    if champ is not None and reference is not None and not window.empty:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "drift_report.html"
            drift = detect_drift(spec, reference, window, report)
            report_uri = open_store(settings).put(
                report, f"runs/{spec.name}/{safe_key(run_key)}/drift_report.html"
            )
        unseen = labelled[~labelled["request_id"].astype(str).isin(known_ids(reference))]
        if unseen[spec.target].nunique() == 2:
            pipeline, _ = registry.load_model(champ.tag)
            recent = evaluate(pipeline, spec, unseen)
            live = LiveCheck(
                baseline_auc=float(champ.metrics.get("roc_auc", recent.roc_auc)),
                recent_auc=recent.roc_auc,
            )
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
    decision, reason = verdict.decision, verdict.reason

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO drift_runs (model_name, run_key, window_start, window_end, champion_tag,"
            " rows, labelled_rows, drift_share, drifted, columns, performance, dataset_uri,"
            " report_uri, decision, reason)"
            " VALUES (%(m)s, %(k)s, %(s)s, %(e)s, %(c)s, %(r)s, %(l)s, %(ds)s, %(d)s, %(cols)s,"
            " %(perf)s, %(uri)s, %(rep)s, %(dec)s, %(why)s)"
            " ON CONFLICT (model_name, run_key) DO UPDATE SET drift_share = EXCLUDED.drift_share,"
            " drifted = EXCLUDED.drifted, columns = EXCLUDED.columns,"
            " performance = EXCLUDED.performance, report_uri = EXCLUDED.report_uri,"
            " decision = EXCLUDED.decision, reason = EXCLUDED.reason"
            " RETURNING id",
            {
                "m": spec.name,
                "k": run_key,
                "s": extracted["window_start"],
                "e": extracted["window_end"],
                "c": champ.tag if champ else None,
                "r": len(window),
                "l": len(labelled),
                "ds": drift.drift_share if drift else None,
                "d": drift.drifted if drift else None,
                "cols": json.dumps(drift.columns_json() if drift else {}),
                "perf": json.dumps(performance),
                "uri": extracted["dataset_uri"],
                "rep": report_uri,
                "dec": decision,
                "why": reason,
            },
        )
        row = cur.fetchone()
        assert row is not None
        drift_run_id = int(row[0])
    return asdict(
        Decision(
            drift_run_id=drift_run_id,
            decision=decision,
            reason=reason,
            drift_share=drift.drift_share if drift else None,
            most_drifted=[c.column for c in drift.most_drifted() if c.drifted] if drift else [],
            report_uri=report_uri,
            champion_tag=champ.tag if champ else None,
        )
    )


def record_skip(
    settings: Settings, model: str, run_key: str, decision: dict[str, Any]
) -> dict[str, Any]:
    """The run ends without training: keep the reason next to the drift run that decided it."""
    run_id = record_training_run(
        settings,
        model,
        run_key,
        status="skipped",
        reason=decision["reason"],
        drift_run_id=decision["drift_run_id"],
        champion_tag=decision["champion_tag"],
    )
    return {
        "training_run_id": run_id,
        "status": "skipped",
        "reason": decision["reason"],
    }


@dataclass(frozen=True)
class Trained:
    training_run_id: int
    challenger_tag: str
    holdout_uri: str
    train_rows: int
    holdout_rows: int
    training_data: str


def train_challenger(
    settings: Settings, model: str, run_key: str, decision: dict[str, Any], dataset_uri: str
) -> dict[str, Any]:
    """Fit a challenger by the spec's training-data policy: the older part of the labelled window
    (plus, by default, a sample of the champion's training rows); the newest part that the
    champion never saw is the holdout on which champion and challenger are compared."""
    spec = _spec(settings, model)
    window = read_frame(settings, dataset_uri)
    labelled = window[window[spec.target].notna()].copy()
    labelled[spec.target] = labelled[spec.target].astype("int64")
    with connect(ensure_database(settings)) as conn:
        champ = registry.champion(conn, spec.name)
    reference = read_frame(settings, champ.train_data_uri) if champ is not None else None
    split = split_for_challenger(spec, labelled, reference)
    train_part, holdout = split.train, split.holdout
    pipeline = fit(spec, train_part)
    prefix = f"runs/{spec.name}/{safe_key(run_key)}"
    train_uri = upload_frame(settings, train_part, f"{prefix}/train.parquet")
    holdout_uri = upload_frame(settings, holdout, f"{prefix}/holdout.parquet")
    fit_metrics = evaluate(pipeline, spec, holdout).as_dict()
    tag = registry.save_model(spec, pipeline, metrics=fit_metrics, train_data_uri=train_uri)
    run_id = record_training_run(
        settings,
        model,
        run_key,
        status="trained",
        reason=decision["reason"],
        drift_run_id=decision["drift_run_id"],
        champion_tag=decision["champion_tag"],
        challenger_tag=tag,
    )
    with connect(ensure_database(settings)) as conn:
        registry.register(
            conn,
            model_name=spec.name,
            tag=tag,
            metrics=fit_metrics,
            train_data_uri=train_uri,
            training_run_id=run_id,
        )
    return asdict(
        Trained(
            training_run_id=run_id,
            challenger_tag=tag,
            holdout_uri=holdout_uri,
            train_rows=len(train_part),
            holdout_rows=len(holdout),
            training_data=split.describe(),
        )
    )


@dataclass(frozen=True)
class Validation:
    passed: bool
    reason: str
    challenger_tag: str
    champion_tag: str | None
    challenger: dict[str, float]
    champion: dict[str, float] | None
    gates: list[dict[str, Any]]


def validate(
    settings: Settings, model: str, run_key: str, trained: dict[str, Any]
) -> dict[str, Any]:
    """Score challenger and champion on the same holdout and apply the spec's gates.

    A challenger that fails is marked ``rejected`` and the champion keeps serving.
    """
    spec = _spec(settings, model)
    holdout = read_frame(settings, trained["holdout_uri"])
    holdout[spec.target] = holdout[spec.target].astype("int64")
    url = ensure_database(settings)
    with connect(url) as conn:
        champ = registry.champion(conn, spec.name)
    challenger_pipeline, _ = registry.load_model(trained["challenger_tag"])
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
        settings,
        model,
        run_key,
        status="trained" if verdict.passed else "rejected",
        reason=verdict.reason,
        metrics=metrics,
        gates=gates,
    )
    if not verdict.passed:
        with connect(url) as conn:
            registry.reject(conn, trained["challenger_tag"])
    return asdict(
        Validation(
            passed=verdict.passed,
            reason=verdict.reason,
            challenger_tag=trained["challenger_tag"],
            champion_tag=champ.tag if champ else None,
            challenger=challenger_eval.as_dict(),
            champion=champion_eval.as_dict() if champion_eval else None,
            gates=gates,
        )
    )


def build_challenger_bento(settings: Settings, validation: dict[str, Any]) -> dict[str, Any]:
    """Build the Bento of a challenger that passed its gates (before promotion, so that every
    champion has a Bento to serve)."""
    tag = validation["challenger_tag"]
    bento_tag = build_bento(tag)
    with connect(ensure_database(settings)) as conn:
        registry.set_bento(conn, tag, bento_tag)
    return {"challenger_tag": tag, "bento_tag": bento_tag}


def containerize_bento(settings: Settings, built: dict[str, Any]) -> dict[str, Any]:
    """Build the OCI image of the new Bento (``bentoml containerize``) when ``DRIFTLOOP_CONTAINERIZE``
    is on, so a champion is only promoted once its image exists; otherwise pass through."""
    if not settings.containerize:
        return {**built, "image": None, "image_skipped": "DRIFTLOOP_CONTAINERIZE is off"}
    from training.container import containerize, record_image

    image = containerize(settings, built["bento_tag"], repository=settings.image_repository)
    record_image(ensure_database(settings), built["challenger_tag"], image)
    return {**built, "image": image.image, "image_size_bytes": image.size_bytes}


@dataclass(frozen=True)
class Promotion:
    champion_tag: str
    previous_champion: str | None
    bento_tag: str
    version: int


def promote(settings: Settings, model: str, run_key: str, built: dict[str, Any]) -> dict[str, Any]:
    """Make the challenger the champion (the previous one retires) and close the training run."""
    url = ensure_database(settings)
    with connect(url) as conn:
        before = registry.champion(conn, model)
        promoted = registry.promote(
            conn,
            built["challenger_tag"],
            by=f"run {run_key}",
            reason=f"passed its gates against {before.tag if before else 'no champion'}",
        )
    record_training_run(
        settings,
        model,
        run_key,
        status="promoted",
        reason=f"promoted to champion v{promoted.version}",
    )
    return asdict(
        Promotion(
            champion_tag=promoted.tag,
            previous_champion=before.tag if before else None,
            bento_tag=built["bento_tag"],
            version=promoted.version,
        )
    )
