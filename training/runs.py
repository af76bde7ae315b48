"""The loop's shared records: frames in the artifact store, and rows of ``training_runs``."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from training.artifacts import open_store
from training.postgres import ensure_database
from training.settings import Settings
from training.store import connect

__all__ = ["read_frame", "record_failure", "record_training_run", "safe_key", "upload_frame"]


def safe_key(run_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_key)


def upload_frame(settings: Settings, frame: pd.DataFrame, key: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(key).name
        frame.to_parquet(local, index=False)
        return open_store(settings).put(local, key)


def read_frame(settings: Settings, uri: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        local = open_store(settings).fetch(uri, Path(tmp) / "frame.parquet")
        return pd.read_parquet(local)


def record_training_run(
    settings: Settings,
    model: str,
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
                "m": model,
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


# A failure ends a run that has not ended yet (no row, or one still ``trained``); a run already
# skipped, rejected or promoted keeps its outcome. Its candidate, if it has one, can never become
# champion now: it is rejected.
_FAIL_RUN = """
INSERT INTO training_runs (model_name, run_key, status, reason, finished_at)
VALUES (%(m)s, %(k)s, 'failed', %(r)s, now())
ON CONFLICT (model_name, run_key) DO UPDATE
    SET status = 'failed', reason = EXCLUDED.reason, finished_at = now()
    WHERE training_runs.status = 'trained'
RETURNING challenger_tag
"""
_REJECT_CANDIDATE = (
    "UPDATE model_versions SET status = 'rejected' WHERE tag = %s AND status = 'candidate'"
)


def record_failure(settings: Settings, model: str, run_key: str, step: str, error: str) -> bool:
    """Record that ``step`` of run ``run_key`` failed with ``error``: the run ``failed`` with its
    finish time and reason, its candidate ``rejected``. False when the run had already ended."""
    first_line = (error.strip().splitlines() or ["(no message)"])[0][:500]
    with connect(ensure_database(settings)) as conn, conn.cursor() as cur:
        cur.execute(_FAIL_RUN, {"m": model, "k": run_key, "r": f"{step} failed: {first_line}"})
        row = cur.fetchone()
        if row is None:
            return False
        if row[0] is not None:
            cur.execute(_REJECT_CANDIDATE, (row[0],))
        return True
