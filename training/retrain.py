"""The retraining loop's steps. Each is one transaction-like unit that the DAG calls from one task.

Steps take and return small JSON values (URIs, tags, ids, verdicts) so Airflow's XCom carries
references, never data. Every step records what it did in PostgreSQL.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from training import registry
from training.artifacts import open_store
from training.bento import build_bento
from training.drift import detect_drift
from training.evaluate import Evaluation, evaluate, judge
from training.extract import extract_window
from training.postgres import ensure_database
from training.settings import Settings
from training.spec import ModelSpec, load_spec
from training.store import connect
from training.train import fit

__all__ = [
    "Decision",
    "Extracted",
    "Promotion",
    "Trained",
    "Validation",
    "bootstrap_champion",
    "build_challenger_bento",
    "check_drift",
    "extract",
    "promote",
    "record_skip",
    "train_challenger",
    "validate",
]


def _safe(run_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_key)


def _spec(settings: Settings) -> ModelSpec:
    return load_spec(settings.model_spec)


def _upload_frame(settings: Settings, frame: pd.DataFrame, key: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(key).name
        frame.to_parquet(local, index=False)
        return open_store(settings).put(local, key)


def _read_frame(settings: Settings, uri: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        local = open_store(settings).fetch(uri, Path(tmp) / "frame.parquet")
        return pd.read_parquet(local)


@dataclass(frozen=True)
class Extracted:
    dataset_uri: str
    window_start: str
    window_end: str
    rows: int
    labelled_rows: int


def extract(
    settings: Settings, run_key: str, window_end: datetime, window_days: float
) -> dict[str, Any]:
    """Copy the window ``[window_end - window_days, window_end)`` out of the store into Parquet."""
    if window_days <= 0:
        raise ValueError(f"window_days must be positive, got {window_days}")
    spec = _spec(settings)
    start = window_end - timedelta(days=window_days)
    url = ensure_database(settings)
    with connect(url) as conn:
        frame = extract_window(conn, spec, start, window_end)
    uri = _upload_frame(settings, frame, f"runs/{spec.name}/{_safe(run_key)}/window.parquet")
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
    settings: Settings, run_key: str, extracted: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """Drift of the window against the champion's training data, the champion's recent accuracy,
    and the decision to retrain or skip (with its reason), recorded in ``drift_runs``."""
    spec = _spec(settings)
    window = _read_frame(settings, extracted["dataset_uri"])
    labelled = window[window[spec.target].notna()]
    url = ensure_database(settings)
    with connect(url) as conn:
        champ = registry.champion(conn, spec.name)

    reasons: list[str] = []
    drift = None
    performance: dict[str, Any] = {}
    report_uri = None
    if champ is None:
        reasons.append("no champion yet")
    elif window.empty:
        pass
    else:
        reference = _read_frame(settings, champ.train_data_uri)
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "drift_report.html"
            drift = detect_drift(spec, reference, window, report)
            report_uri = open_store(settings).put(
                report, f"runs/{spec.name}/{_safe(run_key)}/drift_report.html"
            )
        if drift.drifted:
            top = ", ".join(c.column for c in drift.most_drifted() if c.drifted)
            reasons.append(
                f"feature drift in {drift.drift_share:.0%} of columns (>= "
                f"{spec.drift.share_threshold:.0%}): {top}"
            )
        if drift.target is not None and drift.target.drifted:
            reasons.append(
                f"label distribution moved ({drift.target.method} {drift.target.score:.3f})"
            )
        if labelled[spec.target].nunique() == 2:
            pipeline, _ = registry.load_model(champ.tag)
            recent = evaluate(pipeline, spec, labelled)
            baseline = float(champ.metrics.get("roc_auc", recent.roc_auc))
            drop = baseline - recent.roc_auc
            performance = {
                "baseline_auc": baseline,
                "recent_auc": recent.roc_auc,
                "drop": drop,
            }
            if drop > spec.drift.max_performance_drop:
                reasons.append(
                    f"champion ROC AUC fell {drop:.3f} (from {baseline:.3f} to {recent.roc_auc:.3f})"
                )

    decision: Literal["retrain", "skip"]
    if len(labelled) < spec.gates.min_labelled_rows:
        decision = "skip"
        reason = (
            f"too few labelled rows: {len(labelled)} in the window, "
            f"{spec.gates.min_labelled_rows} needed"
        )
    elif force:
        decision, reason = (
            "retrain",
            "forced by the run's params" + (f" ({'; '.join(reasons)})" if reasons else ""),
        )
    elif reasons:
        decision, reason = "retrain", "; ".join(reasons)
    else:
        decision, reason = "skip", "no drift and the champion holds its accuracy"

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


def _record_training_run(
    settings: Settings,
    run_key: str,
    *,
    status: str,
    reason: str,
    drift_run_id: int | None = None,
    champion_tag: str | None = None,
    challenger_tag: str | None = None,
    metrics: dict[str, Any] | None = None,
    gates: list[dict[str, Any]] | None = None,
) -> int:
    spec = _spec(settings)
    with connect(ensure_database(settings)) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO training_runs (model_name, run_key, drift_run_id, status, reason,"
            " champion_tag, challenger_tag, metrics, gates, finished_at)"
            " VALUES (%(m)s, %(k)s, %(d)s, %(s)s, %(r)s, %(c)s, %(t)s, %(x)s, %(g)s,"
            " CASE WHEN %(s)s = 'trained' THEN NULL ELSE now() END)"
            " ON CONFLICT (model_name, run_key) DO UPDATE SET status = EXCLUDED.status,"
            " reason = EXCLUDED.reason,"
            " drift_run_id = COALESCE(EXCLUDED.drift_run_id, training_runs.drift_run_id),"
            " champion_tag = COALESCE(EXCLUDED.champion_tag, training_runs.champion_tag),"
            " challenger_tag = COALESCE(EXCLUDED.challenger_tag, training_runs.challenger_tag),"
            " metrics = training_runs.metrics || EXCLUDED.metrics,"
            " gates = CASE WHEN EXCLUDED.gates = '[]'::jsonb THEN training_runs.gates"
            " ELSE EXCLUDED.gates END, finished_at = EXCLUDED.finished_at"
            " RETURNING id",
            {
                "m": spec.name,
                "k": run_key,
                "d": drift_run_id,
                "s": status,
                "r": reason,
                "c": champion_tag,
                "t": challenger_tag,
                "x": json.dumps(metrics or {}),
                "g": json.dumps(gates or []),
            },
        )
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


def record_skip(settings: Settings, run_key: str, decision: dict[str, Any]) -> dict[str, Any]:
    """The run ends without training: keep the reason next to the drift run that decided it."""
    run_id = _record_training_run(
        settings,
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


def _split_by_time(
    labelled: pd.DataFrame, holdout_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    ordered = labelled.sort_values(["created_at", "request_id"], kind="stable")
    cut = round(len(ordered) * (1 - holdout_fraction))
    return ordered.iloc[:cut], ordered.iloc[cut:]


def train_challenger(
    settings: Settings, run_key: str, decision: dict[str, Any], dataset_uri: str
) -> dict[str, Any]:
    """Fit a challenger on the older part of the labelled window; the newest part is the holdout
    on which champion and challenger are compared."""
    spec = _spec(settings)
    window = _read_frame(settings, dataset_uri)
    labelled = window[window[spec.target].notna()].copy()
    labelled[spec.target] = labelled[spec.target].astype("int64")
    train_part, holdout = _split_by_time(labelled, spec.gates.holdout_fraction)
    pipeline = fit(spec, train_part)
    prefix = f"runs/{spec.name}/{_safe(run_key)}"
    train_uri = _upload_frame(settings, train_part, f"{prefix}/train.parquet")
    holdout_uri = _upload_frame(settings, holdout, f"{prefix}/holdout.parquet")
    fit_metrics = evaluate(pipeline, spec, holdout).as_dict()
    tag = registry.save_model(spec, pipeline, metrics=fit_metrics, train_data_uri=train_uri)
    run_id = _record_training_run(
        settings,
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


def validate(settings: Settings, run_key: str, trained: dict[str, Any]) -> dict[str, Any]:
    """Score challenger and champion on the same holdout and apply the spec's gates.

    A challenger that fails is marked ``rejected`` and the champion keeps serving.
    """
    spec = _spec(settings)
    holdout = _read_frame(settings, trained["holdout_uri"])
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
    _record_training_run(
        settings,
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


def promote(settings: Settings, run_key: str, built: dict[str, Any]) -> dict[str, Any]:
    """Make the challenger the champion (the previous one retires) and close the training run."""
    url = ensure_database(settings)
    with connect(url) as conn:
        before = registry.champion(conn, _spec(settings).name)
        promoted = registry.promote(conn, built["challenger_tag"])
    _record_training_run(
        settings,
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


def bootstrap_champion(
    settings: Settings, training_data: pd.DataFrame, run_key: str = "bootstrap"
) -> dict[str, Any]:
    """Train, gate, build and promote the first champion from a labelled frame (the demo's day 0)."""
    spec = _spec(settings)
    train_part = training_data.sample(frac=1 - spec.gates.holdout_fraction, random_state=0)
    holdout = training_data.drop(train_part.index)
    pipeline = fit(spec, train_part)
    metrics = evaluate(pipeline, spec, holdout)
    verdict = judge(metrics, None, spec.gates)
    if not verdict.passed:
        raise ValueError(f"the initial model fails its gates: {verdict.reason}")
    train_uri = _upload_frame(
        settings, train_part, f"runs/{spec.name}/{_safe(run_key)}/train.parquet"
    )
    tag = registry.save_model(spec, pipeline, metrics=metrics.as_dict(), train_data_uri=train_uri)
    run_id = _record_training_run(
        settings,
        run_key,
        status="trained",
        reason="initial champion",
        challenger_tag=tag,
        metrics={"challenger": metrics.as_dict()},
        gates=[asdict(g) for g in verdict.gates],
    )
    with connect(ensure_database(settings)) as conn:
        registry.register(
            conn,
            model_name=spec.name,
            tag=tag,
            metrics=metrics.as_dict(),
            train_data_uri=train_uri,
            training_run_id=run_id,
        )
    built = build_challenger_bento(settings, {"challenger_tag": tag})
    return promote(settings, run_key, built) | {"metrics": metrics.as_dict()}
