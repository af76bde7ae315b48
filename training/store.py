"""The feedback store in PostgreSQL: migrations, prediction and feedback writes, the loop's records."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Literal

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from training.errors import NotFoundError, StoreUnavailable

__all__ = [
    "FeedbackOutcome",
    "PredictionRecord",
    "applied_migrations",
    "connect",
    "migrate",
    "record_feedback",
    "record_feedback_many",
    "record_predictions",
    "reset",
]

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 727_001
_TABLES = (
    "deployments",
    "model_versions",
    "training_runs",
    "drift_runs",
    "feedback",
    "predictions",
)

Connection = psycopg2.extensions.connection


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A connection that commits on success, rolls back on error and always closes.

    Raises:
        StoreUnavailable: the server cannot be reached (one line naming the problem).
    """
    try:
        conn = psycopg2.connect(url, connect_timeout=10, application_name="driftloop")
    except psycopg2.OperationalError as exc:
        first_line = (str(exc).strip().splitlines() or ["no answer"])[0]
        raise StoreUnavailable(f"database unreachable: {first_line}") from exc
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def _migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("training") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(number), name, entry.read_text()))
    return sorted(found)


def migrate(conn: Connection) -> list[int]:
    """Apply the migrations not yet applied, in order, under an advisory lock; return those applied.

    Safe to call from every process at start-up: concurrent callers wait for the lock, then find
    nothing left to do.
    """
    applied_now: list[int] = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for number, name, text in _migration_files():
            if number in done:
                continue
            cur.execute(text)
            cur.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (number, name),
            )
            applied_now.append(number)
    conn.commit()
    return applied_now


def applied_migrations(conn: Connection) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [row[0] for row in cur.fetchall()]


def reset(conn: Connection) -> None:
    """Drop every driftloop table (the demo's ``--reset``); the next :func:`migrate` recreates them."""
    with conn.cursor() as cur:
        for table in (*_TABLES, "schema_migrations"):
            cur.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    conn.commit()


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    model_name: str
    model_version: str
    features: dict[str, Any]
    score: float
    label: int
    created_at: datetime | None = None


def record_predictions(conn: Connection, records: Sequence[PredictionRecord]) -> int:
    """Insert predictions; a ``request_id`` already stored is left as it is. Returns rows inserted."""
    if not records:
        return 0
    rows = [
        (
            r.request_id,
            r.model_name,
            r.model_version,
            json.dumps(r.features),
            r.score,
            r.label,
            r.created_at,
        )
        for r in records
    ]
    with conn.cursor() as cur:
        result = psycopg2.extras.execute_values(
            cur,
            "INSERT INTO predictions"
            " (request_id, model_name, model_version, features, score, label, created_at)"
            " VALUES %s ON CONFLICT (request_id) DO NOTHING RETURNING 1",
            rows,
            template="(%s, %s, %s, %s::jsonb, %s, %s, COALESCE(%s, now()))",
            page_size=1000,
            fetch=True,
        )
    return len(result)


FeedbackStatus = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class FeedbackOutcome:
    request_id: str
    label: int
    status: FeedbackStatus


_FEEDBACK_UPSERT = """
INSERT INTO feedback (request_id, label, received_at)
SELECT p.request_id, %(label)s, COALESCE(%(received_at)s, now())
FROM predictions p WHERE p.request_id = %(request_id)s
ON CONFLICT (request_id) DO UPDATE
    SET label = EXCLUDED.label,
        received_at = EXCLUDED.received_at,
        revisions = feedback.revisions + 1
    WHERE feedback.label IS DISTINCT FROM EXCLUDED.label
RETURNING (xmax = 0) AS inserted
"""


def record_feedback(
    conn: Connection, request_id: str, label: int, received_at: datetime | None = None
) -> FeedbackOutcome:
    """Store the ground truth for one prediction; the latest differing label wins.

    Raises:
        NotFoundError: no prediction carries ``request_id``.
    """
    params = {"request_id": request_id, "label": label, "received_at": received_at}
    with conn.cursor() as cur:
        cur.execute(_FEEDBACK_UPSERT, params)
        row = cur.fetchone()
        if row is not None:
            return FeedbackOutcome(request_id, label, "created" if row[0] else "updated")
        cur.execute("SELECT label FROM feedback WHERE request_id = %s", (request_id,))
        if cur.fetchone() is None:
            raise NotFoundError(f"no prediction with request_id {request_id!r}")
    return FeedbackOutcome(request_id, label, "unchanged")


def record_feedback_many(
    conn: Connection, labels: Sequence[tuple[str, int, datetime | None]]
) -> int:
    """Bulk feedback for known request ids (the demo's delayed labels); returns rows written."""
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO feedback (request_id, label, received_at) VALUES %s"
            " ON CONFLICT (request_id) DO UPDATE SET label = EXCLUDED.label,"
            " received_at = EXCLUDED.received_at, revisions = feedback.revisions + 1"
            " WHERE feedback.label IS DISTINCT FROM EXCLUDED.label",
            labels,
            template="(%s, %s, COALESCE(%s, now()))",
            page_size=1000,
        )
    return len(labels)
