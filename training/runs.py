"""The loop's run records: each run's frames in the artifact store, and every write and read of
``drift_runs``, ``training_runs`` and ``deployments`` (plus the summary ``driftloop status`` prints).

Functions take a database URL (a step's context has it, migrations applied once per task); the
older ones also accept the settings, to find the URL by.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from training.artifacts import open_store
from training.postgres import ensure_database
from training.settings import Settings
from training.store import Connection, connect

__all__ = [
    "Deployment",
    "RunSummary",
    "close_stale_runs",
    "deployments",
    "read_frame",
    "record_deployment",
    "record_drift_run",
    "record_failure",
    "record_training_run",
    "recorded_challenger",
    "reopen_candidate",
    "run_summary",
    "safe_key",
    "upload_frame",
]


def _url(db: Settings | str) -> str:
    return db if isinstance(db, str) else ensure_database(db)


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
    db: Settings | str,
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
    with connect(_url(db)) as conn, conn.cursor() as cur:
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


def record_failure(db: Settings | str, model: str, run_key: str, step: str, error: str) -> bool:
    """Record that ``step`` of run ``run_key`` failed with ``error``: the run ``failed`` with its
    finish time and reason, its candidate ``rejected``. False when the run had already ended."""
    first_line = (error.strip().splitlines() or ["(no message)"])[0][:500]
    with connect(_url(db)) as conn, conn.cursor() as cur:
        cur.execute(_FAIL_RUN, {"m": model, "k": run_key, "r": f"{step} failed: {first_line}"})
        row = cur.fetchone()
        if row is None:
            return False
        if row[0] is not None:
            cur.execute(_REJECT_CANDIDATE, (row[0],))
        return True


_UPSERT_DRIFT_RUN = """
INSERT INTO drift_runs (model_name, run_key, window_start, window_end, champion_tag, rows,
    labelled_rows, drift_share, drifted, columns, performance, dataset_uri, report_uri, decision,
    reason)
VALUES (%(m)s, %(k)s, %(s)s, %(e)s, %(c)s, %(r)s, %(l)s, %(ds)s, %(d)s, %(cols)s, %(perf)s,
    %(uri)s, %(rep)s, %(dec)s, %(why)s)
ON CONFLICT (model_name, run_key) DO UPDATE SET drift_share = EXCLUDED.drift_share,
    drifted = EXCLUDED.drifted, columns = EXCLUDED.columns, performance = EXCLUDED.performance,
    report_uri = EXCLUDED.report_uri, decision = EXCLUDED.decision, reason = EXCLUDED.reason
RETURNING id
"""


def record_drift_run(
    url: str,
    model: str,
    run_key: str,
    *,
    window_start: str,
    window_end: str,
    champion_tag: str | None,
    rows: int,
    labelled_rows: int,
    drift_share: float | None,
    drifted: bool | None,
    columns: dict[str, Any],
    performance: dict[str, Any],
    dataset_uri: str,
    report_uri: str | None,
    decision: str,
    reason: str,
) -> int:
    """Record (or, on a re-run of the same run key, update) the drift check; returns its id."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            _UPSERT_DRIFT_RUN,
            {
                "m": model,
                "k": run_key,
                "s": window_start,
                "e": window_end,
                "c": champion_tag,
                "r": rows,
                "l": labelled_rows,
                "ds": drift_share,
                "d": drifted,
                "cols": json.dumps(columns),
                "perf": json.dumps(performance),
                "uri": dataset_uri,
                "rep": report_uri,
                "dec": decision,
                "why": reason,
            },
        )
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


def recorded_challenger(url: str, model: str, run_key: str) -> str | None:
    """The challenger a run already trained and registered (a re-run reuses it), if any."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT r.challenger_tag FROM training_runs r"
            " JOIN model_versions v ON v.tag = r.challenger_tag"
            " WHERE r.model_name = %s AND r.run_key = %s",
            (model, run_key),
        )
        row = cur.fetchone()
    return None if row is None else str(row[0])


def reopen_candidate(url: str, tag: str) -> None:
    """A run cleared after a failure tries again: its challenger, rejected by the failure (not by
    its gates, which ``validate`` applies again next), is a candidate once more."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE model_versions SET status = 'candidate' WHERE tag = %s AND status = 'rejected'",
            (tag,),
        )


# A run still `trained` without a finish time, long after it started, was interrupted (the task
# process or the machine died, the database went away): no callback ran, so nothing else closes it.
_CLOSE_STALE = """
UPDATE training_runs SET status = 'failed', finished_at = now(),
    reason = 'interrupted: no step finished it within ' || %(age)s || ' (closed by run '
        || %(by)s || ')'
WHERE model_name = %(m)s AND status = 'trained' AND finished_at IS NULL
    AND created_at < now() - %(older)s AND run_key <> %(by)s
RETURNING run_key, challenger_tag
"""


def close_stale_runs(url: str, model: str, *, older_than: timedelta, by: str) -> list[str]:
    """Close ``model``'s training runs interrupted by a crash: ``failed`` with the reason, their
    candidates rejected. Returns the run keys closed."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            _CLOSE_STALE, {"m": model, "older": older_than, "age": str(older_than), "by": by}
        )
        closed = cur.fetchall()
        for _, tag in closed:
            if tag is not None:
                cur.execute(_REJECT_CANDIDATE, (tag,))
    return [str(key) for key, _ in closed]


@dataclass(frozen=True)
class RunSummary:
    """A model's last drift check, its training run, the champion and the champion's image."""

    drift: tuple[Any, ...] | None
    training: tuple[Any, ...] | None
    champion: tuple[Any, ...] | None
    image: tuple[Any, ...] | None


def run_summary(url: str, model_name: str) -> RunSummary:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT run_key, window_start, window_end, rows, labelled_rows, drift_share, drifted,"
            " columns, performance, dataset_uri, report_uri, decision, reason"
            " FROM drift_runs WHERE model_name = %s ORDER BY id DESC LIMIT 1",
            (model_name,),
        )
        drift = cur.fetchone()
        training: tuple[Any, ...] | None = None
        if drift is not None:
            cur.execute(
                "SELECT status, reason, metrics, gates, challenger_tag FROM training_runs"
                " WHERE model_name = %s AND run_key = %s",
                (model_name, drift[0]),
            )
            training = cur.fetchone()
        cur.execute(
            "SELECT version, tag, bento_tag FROM model_versions"
            " WHERE model_name = %s AND status = 'champion'",
            (model_name,),
        )
        champion = cur.fetchone()
        image = None
        if champion is not None:
            cur.execute(
                "SELECT detail FROM deployments WHERE bento_tag = %s AND target = 'image'"
                " ORDER BY created_at DESC LIMIT 1",
                (champion[2],),
            )
            image = cur.fetchone()
    return RunSummary(drift=drift, training=training, champion=champion, image=image)


def record_deployment(
    conn: Connection,
    model_tag: str,
    bento_tag: str,
    *,
    target: str,
    status: str,
    detail: dict[str, Any],
) -> None:
    """Record where a model's Bento went (``target``: local serving, an image, a cluster)."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO deployments (model_name, model_tag, bento_tag, target, status, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (model_tag.partition(":")[0], model_tag, bento_tag, target, status, json.dumps(detail)),
        )


@dataclass(frozen=True)
class Deployment:
    model_name: str
    model_tag: str
    bento_tag: str
    target: str
    status: str
    detail: dict[str, Any]
    created_at: datetime


def deployments(
    conn: Connection,
    *,
    target: str,
    bento_tag: str | None = None,
    status: str | None = None,
    limit: int = 20,
) -> list[Deployment]:
    """The latest records of one ``target`` (optionally of one Bento, or one status), newest first."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT model_name, model_tag, bento_tag, target, status, detail, created_at"
            " FROM deployments WHERE target = %(target)s"
            " AND (%(bento)s::text IS NULL OR bento_tag = %(bento)s)"
            " AND (%(status)s::text IS NULL OR status = %(status)s)"
            " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
            {"target": target, "bento": bento_tag, "status": status, "limit": limit},
        )
        return [Deployment(*row) for row in cur.fetchall()]
