"""Benchmark: the retrain steps on 1,000,000 labelled feedback rows, each against its own limit.

Setup (untimed): a scratch database of the embedded PostgreSQL, 1,000,000 predictions and their
labels loaded with COPY (a 0.2 sigma shift of monthly_charges, so the loop decides to retrain),
and a champion trained on 200,000 reference rows.

Each measurement runs in a fresh process (wall time, peak RSS). The limits, measured in the same
run: reading the window out of PostgreSQL alone (COPY as CSV into ``pandas.read_csv(engine=
"pyarrow")``), LightGBM training alone (the challenger's rows as a numpy matrix), the drift
statistics alone (``detect_drift`` on frames already in memory); and Evidently's
``DataDriftPreset`` on the full data, which the drift statistics must beat 5x with the same
per-column verdicts. The pipeline: the loop's steps without Airflow, in sequence, handing Parquet
files on as the DAG does (extract, check drift, train, validate). LightGBM runs on one thread.

Usage: ``uv run python bench/pipeline.py [--rows 1000000] [--drift-only]``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import psycopg2

from training.partitions import day_of, ensure_range
from training.postgres import create_database, database_url, with_database
from training.settings import get_settings
from training.spec import ModelSpec, load_spec
from training.store import PredictionRecord, connect, copy_predictions, encode_prediction, migrate
from training.synthetic import Scenario, generate

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=30)
REFERENCE_ROWS = 200_000
LIMIT_FACTOR = 1.3
SPEEDUP_TARGET = 5.0


def _spec() -> ModelSpec:
    data = load_spec().model_dump()
    # One thread: on a shared 2-core machine LightGBM's OpenMP threads spin against each other.
    data["model"]["params"] = {**data["model"]["params"], "n_jobs": 1}
    return ModelSpec.model_validate(data)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _hwm_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report at
    # least its parent's size at fork.
    return _status_mb("VmHWM")


# --- the steps, each run in its own process ----------------------------------------------------


def _read_limit(work: Path, url: str) -> dict[str, Any]:
    from training.extract import _window_query

    spec = _spec()
    with connect(url) as conn, conn.cursor() as cur:
        buffer = io.BytesIO()
        query = cur.mogrify(_window_query(spec), {"model": spec.name, "start": START, "end": END})
        cur.copy_expert(f"COPY ({query.decode()}) TO STDOUT WITH (FORMAT csv, HEADER true)", buffer)
    buffer.seek(0)
    frame = pd.read_csv(buffer, engine="pyarrow")
    return {"rows": len(frame)}


def _extract(work: Path, url: str) -> dict[str, Any]:
    from training.extract import extract_window

    spec = _spec()
    with connect(url) as conn:
        frame = extract_window(conn, spec, START, END)
    frame.to_parquet(work / "window.parquet")
    return {"rows": len(frame)}


def _scorer(spec: ModelSpec, champion: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    from training.evaluate import score

    return lambda frame: score(champion, spec, frame)


def _drift_limit(work: Path, url: str) -> dict[str, Any]:
    """The drift statistics alone: both sides already in memory, no report, no live ROC AUC."""
    from training.drift import detect_drift

    spec = _spec()
    window = pd.read_parquet(work / "window.parquet")
    reference = pd.read_parquet(work / "reference.parquet")
    champion = joblib.load(work / "champion.joblib")
    began = time.perf_counter()
    drift = detect_drift(spec, reference, window, score=_scorer(spec, champion))
    return {
        "timed": time.perf_counter() - began,
        "drifted": [c.column for c in drift.columns if c.drifted],
        "prediction_drifted": bool(drift.prediction and drift.prediction.drifted),
    }


def _evidently(work: Path, url: str) -> dict[str, Any]:
    """Evidently's DataDriftPreset on the full data (its defaults), features only."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from training.features import feature_frame

    spec = _spec()
    window = feature_frame(spec, pd.read_parquet(work / "window.parquet"))
    reference = feature_frame(spec, pd.read_parquet(work / "reference.parquet"))
    definition = DataDefinition(
        numerical_columns=list(spec.numeric_features),
        categorical_columns=list(spec.categorical_features),
    )
    began = time.perf_counter()
    snapshot = Report([DataDriftPreset(columns=spec.feature_names)]).run(
        Dataset.from_pandas(window, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    drifted = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        value, threshold = float(metric["value"]), float(config["threshold"])
        moved = value < threshold if "p_value" in str(config["method"]) else value >= threshold
        if moved:
            drifted.append(config["column"])
    return {
        "timed": time.perf_counter() - began,
        "drifted": [c for c in spec.feature_names if c in drifted],
    }


def _check_drift(work: Path, url: str) -> dict[str, Any]:
    """What the DAG's check_drift does: read the window and the reference, the drift (with the
    HTML report), the champion's live ROC AUC on the labelled rows, the decision."""
    from training.decision import decide, judgeable
    from training.drift import detect_drift
    from training.evaluate import live_check
    from training.trainset import known_ids, split_for_challenger

    spec = _spec()
    window = pd.read_parquet(work / "window.parquet")
    reference = pd.read_parquet(work / "reference.parquet")
    champion = joblib.load(work / "champion.joblib")
    labelled = window[window[spec.target].notna()].copy()
    labelled[spec.target] = labelled[spec.target].astype("int64")
    drift = detect_drift(
        spec, reference, window, work / "drift_report.html", score=_scorer(spec, champion)
    )
    baseline = json.loads((work / "champion.json").read_text())["roc_auc"]
    live = live_check(champion, spec, labelled, known_ids(reference), baseline)
    verdict = decide(
        spec,
        labelled_rows=len(labelled),
        has_champion=True,
        drift=drift,
        live=live,
        unjudgeable=judgeable(split_for_challenger(spec, labelled, reference).holdout, spec.target),
        force=False,
    )
    return {"decision": verdict.decision, "reason": verdict.reason}


def _train(work: Path, url: str) -> dict[str, Any]:
    from training.train import fit
    from training.trainset import split_for_challenger

    spec = _spec()
    window = pd.read_parquet(work / "window.parquet")
    reference = pd.read_parquet(work / "reference.parquet")
    labelled = window[window[spec.target].notna()].copy()
    labelled[spec.target] = labelled[spec.target].astype("int64")
    split = split_for_challenger(spec, labelled, reference)
    split.train.to_parquet(work / "train.parquet")
    split.holdout.to_parquet(work / "holdout.parquet")
    joblib.dump(fit(spec, split.train), work / "challenger.joblib")
    return {"train_rows": len(split.train), "holdout_rows": len(split.holdout)}


def _train_limit(work: Path, url: str) -> dict[str, Any]:
    """LightGBM alone on the challenger's rows, already encoded as a float matrix."""
    import lightgbm

    from training.features import feature_frame

    spec = _spec()
    train = pd.read_parquet(work / "train.parquet")
    features = feature_frame(spec, train)
    for name in spec.categorical_features:
        features[name] = features[name].astype("category").cat.codes
    x = features.to_numpy(dtype="float64")
    y = train[spec.target].to_numpy(dtype="int64")
    began = time.perf_counter()
    lightgbm.LGBMClassifier(**spec.model.params).fit(x, y)
    return {"timed": time.perf_counter() - began, "rows": len(x)}


def _validate(work: Path, url: str) -> dict[str, Any]:
    from training.evaluate import evaluate, judge

    spec = _spec()
    holdout = pd.read_parquet(work / "holdout.parquet")
    challenger = evaluate(joblib.load(work / "challenger.joblib"), spec, holdout)
    champion = evaluate(joblib.load(work / "champion.joblib"), spec, holdout)
    verdict = judge(challenger, champion, spec.gates)
    return {
        "challenger_auc": challenger.roc_auc,
        "champion_auc": champion.roc_auc,
        "passed": verdict.passed,
    }


STEPS: dict[str, Callable[[Path, str], dict[str, Any]]] = {
    "read_limit": _read_limit,
    "extract": _extract,
    "drift_limit": _drift_limit,
    "evidently": _evidently,
    "check_drift": _check_drift,
    "train": _train,
    "train_limit": _train_limit,
    "validate": _validate,
}


def _child(step: str, work: Path, url: str) -> None:
    base = _rss_mb()
    began = time.perf_counter()
    out = STEPS[step](work, url)
    seconds = time.perf_counter() - began
    peak = _hwm_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base, **out}))


def _run(step: str, work: Path, url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--step", step, "--work", str(work), "--url", url],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {step}: {result['seconds']:.1f} s, peak {result['peak_mb']:.0f} MB", flush=True)
    return result


# --- setup and report ---------------------------------------------------------------------------


def _load(url: str, rows: int, spec: ModelSpec, scenario: Scenario) -> None:
    data = generate(rows, seed=2, scenario=scenario)
    step = (END - START) / rows
    features = data[spec.feature_names].to_dict(orient="records")
    labels = data[spec.target].to_numpy()
    with connect(url) as conn:
        migrate(conn)
        ensure_range(conn, day_of(START), day_of(END))
        chunk = 100_000
        for first in range(0, rows, chunk):
            ids = range(first, min(first + chunk, rows))
            lines = b"".join(
                encode_prediction(
                    PredictionRecord(
                        f"r{i:07d}", spec.name, "v1", features[i], 0.5, 1, START + step * i
                    )
                )
                for i in ids
            )
            copy_predictions(conn, lines)
            feedback = "".join(
                f"r{i:07d}\t{labels[i]}\t{(START + step * i + timedelta(days=1)).isoformat()}"
                f"\t{(START + step * i).isoformat()}\n"
                for i in ids
            )
            with conn.cursor() as cur:
                cur.copy_expert(
                    "COPY feedback (request_id, label, received_at, predicted_at) FROM STDIN",
                    io.StringIO(feedback),
                )
            conn.commit()


def _setup(work: Path, url: str, rows: int, spec: ModelSpec) -> None:
    from sklearn.metrics import roc_auc_score

    from training.evaluate import score
    from training.train import fit

    reference = generate(REFERENCE_ROWS, seed=1)
    reference["request_id"] = [f"ref{i}" for i in range(len(reference))]
    reference["created_at"] = pd.Timestamp(START) - pd.Timedelta(days=60)
    sigma = float(reference["monthly_charges"].std())
    scenario = Scenario(kind="covariate", columns=("monthly_charges",), strength=0.2 * sigma / 35)
    began = time.perf_counter()
    _load(url, rows, spec, scenario)
    print(
        f"  loaded {rows:,} predictions + labels with COPY in {time.perf_counter() - began:.0f} s"
    )
    champion = fit(spec, reference)
    check = generate(20_000, seed=3)
    auc = float(roc_auc_score(check[spec.target], score(champion, spec, check)))
    reference.to_parquet(work / "reference.parquet")
    joblib.dump(champion, work / "champion.joblib")
    (work / "champion.json").write_text(json.dumps({"roc_auc": auc}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--drift-only",
        action="store_true",
        help="only the drift statistics against Evidently, on a window generated in memory",
    )
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        _child(args.step, args.work, args.url)
        return

    spec = _spec()
    if args.drift_only:
        _drift_only(args.rows, spec)
        return
    server = database_url(get_settings(), "postgres")
    name = f"driftloop_bench_{uuid.uuid4().hex[:6]}"
    create_database(server, name)
    url = with_database(server, name)
    try:
        with tempfile.TemporaryDirectory(prefix="driftloop-pipeline-") as tmp:
            work = Path(tmp)
            print(f"setup: scratch database {name}", flush=True)
            _setup(work, url, args.rows, spec)
            print("pipeline (the loop's steps without Airflow, in sequence):", flush=True)
            pipeline = {
                s: _run(s, work, url) for s in ("extract", "check_drift", "train", "validate")
            }
            print("limits, each alone:", flush=True)
            limits = {s: _run(s, work, url) for s in ("read_limit", "drift_limit", "train_limit")}
            print("Evidently on the full data:", flush=True)
            evidently = _run("evidently", work, url)
            _report(args.rows, pipeline, limits, evidently)
    finally:
        admin = psycopg2.connect(server)
        admin.autocommit = True  # DROP DATABASE cannot run in a transaction
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE "{name}"')
        admin.close()


def _drift_only(rows: int, spec: ModelSpec) -> None:
    """The drift comparison alone: the same reference, champion and shifted window, without
    PostgreSQL (the window goes straight to Parquet)."""
    from training.train import fit

    with tempfile.TemporaryDirectory(prefix="driftloop-drift-") as tmp:
        work = Path(tmp)
        reference = generate(REFERENCE_ROWS, seed=1)
        sigma = float(reference["monthly_charges"].std())
        shift = Scenario(kind="covariate", columns=("monthly_charges",), strength=0.2 * sigma / 35)
        reference.to_parquet(work / "reference.parquet")
        generate(rows, seed=2, scenario=shift).to_parquet(work / "window.parquet")
        joblib.dump(fit(spec, reference), work / "champion.joblib")
        drift = _run("drift_limit", work, "")
        evidently = _run("evidently", work, "")
    speedup = evidently["timed"] / drift["timed"]
    print()
    print(f"drift on {rows:,} rows (window) against {REFERENCE_ROWS:,} (reference)")
    print()
    print("| | wall s (timed part) | process peak MB | drifted columns |")
    print("|---|---|---|---|")
    print(
        f"| driftloop detect_drift | {drift['timed']:.1f} | {drift['peak_mb']:.0f} | {drift['drifted']} |"
    )
    print(
        f"| Evidently DataDriftPreset, full data | {evidently['timed']:.1f} "
        f"| {evidently['peak_mb']:.0f} | {evidently['drifted']} |"
    )
    print()
    print(
        f"speed-up {speedup:.1f}x, target >= 5x: {'met' if speedup >= SPEEDUP_TARGET else 'NOT met'}; "
        f"verdicts {'same' if drift['drifted'] == evidently['drifted'] else 'DIFFERENT'}"
    )


def _report(
    rows: int,
    pipeline: dict[str, dict[str, Any]],
    limits: dict[str, dict[str, Any]],
    evidently: dict[str, Any],
) -> None:
    read, drift, train = limits["read_limit"], limits["drift_limit"], limits["train_limit"]
    pairs = {
        "extract": ("read the window alone (COPY + pyarrow CSV)", read["seconds"], read),
        "check_drift": ("drift statistics alone", drift["timed"], drift),
        "train": ("LightGBM fit alone", train["timed"], train),
        "validate": ("(no limit of its own)", 0.0, None),
    }
    print()
    print(f"retrain pipeline on {rows:,} labelled rows (each step in a fresh process)")
    print()
    print("| step | wall s | peak MB | limit | limit s | limit peak MB | step / limit |")
    print("|---|---|---|---|---|---|---|")
    for step, result in pipeline.items():
        label, seconds, limit = pairs[step]
        ratio = f"{result['seconds'] / seconds:.2f}x" if seconds else "–"
        peak = f"{limit['peak_mb']:.0f}" if limit else "–"
        print(
            f"| {step} | {result['seconds']:.1f} | {result['peak_mb']:.0f} | {label} "
            f"| {seconds:.1f} | {peak} | {ratio} |"
        )
    total = sum(r["seconds"] for r in pipeline.values())
    budget = LIMIT_FACTOR * (read["seconds"] + drift["timed"] + train["timed"])
    speedup = evidently["timed"] / drift["timed"]
    same = evidently["drifted"] == drift["drifted"]
    print()
    print(f"decision: {pipeline['check_drift']['decision']} ({pipeline['check_drift']['reason']})")
    print(
        f"whole pipeline {total:.1f} s vs 1.3 x sum of limits {budget:.1f} s: "
        f"{'met' if total <= budget else 'NOT met'}"
    )
    print(
        f"drift statistics {drift['timed']:.1f} s vs Evidently on the full data "
        f"{evidently['timed']:.1f} s (peak {evidently['peak_mb']:.0f} MB): {speedup:.1f}x, target "
        f">= 5x: {'met' if speedup >= SPEEDUP_TARGET else 'NOT met'}"
    )
    print(
        f"drifted columns: ours {drift['drifted']}, Evidently {evidently['drifted']}: "
        f"{'same' if same else 'DIFFERENT'}"
    )


if __name__ == "__main__":
    main()
