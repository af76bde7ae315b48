"""The store's day partitions (migration 0006, docs/store.md): made ahead of time, listed, and the
rows that reached a DEFAULT partition moved into their day.

``predictions``, ``feedback`` and ``feedback_history`` are partitioned by the prediction's time, one
partition per UTC day, the three of a day made together by the store's ``driftloop_create_day``.
Days are made ahead: at every store start (:func:`training.store.migrate`), hourly by each service
worker's prediction log, and by ``driftloop prune``; a backfill or a simulation makes the days of
its history before loading it. A row no day covers goes to the DEFAULT partition instead of failing;
making its day later (:func:`ensure_days`, :func:`drain_default`) moves it there.

Making a day takes the advisory lock below (one maker at a time), a write lock on the DEFAULT
partitions for the moment it lasts, and a lock on each parent that blocks only other schema changes;
``lock_timeout`` bounds the waits, so a maker never holds up the service's writes for long.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import psycopg2
import psycopg2.extensions

__all__ = [
    "DAYS_AHEAD",
    "LOCK_TIMEOUT_MS",
    "PARTITIONED_TABLES",
    "day_of",
    "default_days",
    "drain_default",
    "ensure_ahead",
    "ensure_days",
    "ensure_range",
    "partition_days",
    "try_ensure_ahead",
]

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection

# Days made ahead of today: a service whose maintenance fails (or stops) for this long still writes
# into day partitions, not the DEFAULT one.
DAYS_AHEAD = 7
# The longest a maker waits for a lock before giving up (and trying again later).
LOCK_TIMEOUT_MS = 5_000
# Any fixed number, the same in every process (training.store's migrations use 727_001).
_PARTITION_LOCK = 727_002
# The tables of one day, in the order a day is dropped (labels before their predictions).
PARTITIONED_TABLES = ("feedback_history", "feedback", "predictions")

_MISSING_DAYS = (
    "SELECT d FROM unnest(%s::date[]) AS d"
    " WHERE to_regclass('predictions_p' || to_char(d, 'YYYYMMDD')) IS NULL ORDER BY d"
)
_CREATE_DAY = "SELECT driftloop_create_day(%s)"
_PARTITION_DAYS = """
SELECT to_date(substr(c.relname, 14), 'YYYYMMDD')
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'predictions'::regclass AND c.relname ~ '^predictions_p[0-9]{8}$'
ORDER BY 1
"""
_DEFAULT_DAYS = (
    "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM predictions_default ORDER BY 1"
)


def day_of(at: datetime) -> date:
    """The UTC day whose partition holds a row made at ``at`` (a time with a time zone)."""
    if at.tzinfo is None:
        raise ValueError(f"{at.isoformat()} has no time zone")
    return at.astimezone(UTC).date()


def ensure_days(conn: Connection, days: Iterable[date]) -> dict[date, int]:
    """Make the partitions of each of ``days`` that lacks them; the caller commits.

    Returns:
        Each day made, with how many predictions it moved out of the DEFAULT partition.

    Raises:
        psycopg2.errors.LockNotAvailable: a lock was not had within :data:`LOCK_TIMEOUT_MS`.
    """
    wanted = sorted(set(days))
    if not wanted:
        return {}
    with conn.cursor() as cur:
        cur.execute(_MISSING_DAYS, (wanted,))
        missing = [row[0] for row in cur.fetchall()]
        if not missing:
            return {}
        cur.execute("SET LOCAL lock_timeout = %s", (LOCK_TIMEOUT_MS,))
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
        made: dict[date, int] = {}
        for day in missing:
            cur.execute(_CREATE_DAY, (day,))
            row = cur.fetchone()
            moved = -1 if row is None else int(row[0])
            if moved >= 0:  # -1: another maker made it while this one waited for the lock
                made[day] = moved
        cur.execute("SET LOCAL lock_timeout = DEFAULT")
    if made:
        log.debug("store partitions made for %s", ", ".join(str(d) for d in made))
    return made


def ensure_range(conn: Connection, first: date, last: date) -> dict[date, int]:
    """:func:`ensure_days` for every day from ``first`` to ``last``, both included."""
    return ensure_days(conn, (first + timedelta(days=n) for n in range((last - first).days + 1)))


def ensure_ahead(
    conn: Connection, *, today: date | None = None, days_ahead: int = DAYS_AHEAD
) -> dict[date, int]:
    """Make yesterday's, today's and the next ``days_ahead`` days' partitions; the caller commits."""
    today = today or datetime.now(UTC).date()
    return ensure_range(conn, today - timedelta(days=1), today + timedelta(days=days_ahead))


def try_ensure_ahead(conn: Connection) -> bool:
    """:func:`ensure_ahead` inside a savepoint: a lock not had in time (a long query holds one)
    is logged and leaves the transaction usable; the next call tries again.

    Returns:
        Whether the days ahead exist now.
    """
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT driftloop_partitions")
        try:
            ensure_ahead(conn)
        except psycopg2.errors.LockNotAvailable:
            cur.execute("ROLLBACK TO SAVEPOINT driftloop_partitions")
            log.warning(
                "store partitions: the days ahead could not be made now (a lock was busy for "
                "%d ms); rows past the last day go to the DEFAULT partition until they are",
                LOCK_TIMEOUT_MS,
            )
            return False
        cur.execute("RELEASE SAVEPOINT driftloop_partitions")
    return True


def partition_days(conn: Connection) -> list[date]:
    """The days that have their own partitions, oldest first."""
    with conn.cursor() as cur:
        cur.execute(_PARTITION_DAYS)
        return [row[0] for row in cur.fetchall()]


def default_days(conn: Connection) -> list[date]:
    """The days of the predictions held in the DEFAULT partition (no day partition covered them)."""
    with conn.cursor() as cur:
        cur.execute(_DEFAULT_DAYS)
        return [row[0] for row in cur.fetchall()]


def drain_default(conn: Connection) -> dict[date, int]:
    """Give every day found in the DEFAULT partition its own partitions, moving its rows there
    (the only row-by-row moves the store makes); the caller commits.

    Returns:
        Each day made, with how many predictions moved.
    """
    return ensure_days(conn, default_days(conn))
