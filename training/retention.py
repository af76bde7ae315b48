"""Retention of the store: ``driftloop prune --older-than DAYS`` drops whole days (docs/store.md).

A day of the store is three partitions (training.partitions): its predictions, their labels and the
labels those replaced. Pruning detaches and drops the three together, one transaction per day, and
never deletes a row; its cost does not grow with the rows a day holds.

A day is dropped when it lies before the day ``DAYS`` days before today (UTC). A prune is refused,
with nothing dropped, when such a day holds rows that something still refers to:

- the training set of each model's champion and candidates, and of the champion a rollback would
  return to (``model_versions.data_start`` .. ``data_end``, the span of its training rows);
- the window of each retrain run that made one of those models, and of each run not finished yet
  (``drift_runs.window_start`` .. ``window_end``, through ``training_runs``).

Retired and rejected versions and finished runs keep their records and the copies they took into
the artifact store (``train_data_uri``, ``dataset_uri``); their rows in the store are not kept for
them. Rows that reached the DEFAULT partition are first moved into their own day (the only
row-by-row moves), so they are pruned with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from psycopg2 import sql

from training import partitions
from training.errors import DriftloopError, NotFoundError
from training.store import Connection

__all__ = [
    "DayToDrop",
    "Hold",
    "PrunePlan",
    "PruneRefused",
    "PruneResult",
    "holds",
    "plan_prune",
    "prune",
    "refusal",
]

_KEPT_VERSIONS = """
SELECT model_name, tag, status, data_start, data_end FROM model_versions
WHERE data_start IS NOT NULL AND data_end IS NOT NULL
  AND (status IN ('champion', 'candidate') OR tag = ANY(%(rollback)s))
ORDER BY model_name, version
"""
_KEPT_RUNS = """
SELECT DISTINCT d.model_name, d.run_key, d.window_start, d.window_end,
       CASE WHEN v.tag IS NULL THEN 'not finished' ELSE 'made ' || v.tag || ', ' || v.status END
FROM drift_runs d
JOIN training_runs t ON t.drift_run_id = d.id
LEFT JOIN model_versions v ON v.training_run_id = t.id
    AND (v.status IN ('champion', 'candidate') OR v.tag = ANY(%(rollback)s))
WHERE v.tag IS NOT NULL OR (t.status = 'trained' AND t.finished_at IS NULL)
ORDER BY 1, 2
"""
_CHAMPIONS = "SELECT model_name FROM model_versions WHERE status = 'champion' ORDER BY 1"
_ROWS_HELD = (
    "SELECT count(*) FROM predictions"
    " WHERE model_name = %s AND created_at >= %s AND created_at < %s"
)
# Estimates from the planner's statistics (an exact count would read every row of every day).
_DAY_SIZES = """
SELECT c.relname, greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
FROM pg_class c WHERE c.relname = ANY(%s)
"""


class PruneRefused(DriftloopError):
    """Dropping the days asked for would take rows something still refers to; nothing dropped."""


@dataclass(frozen=True)
class Hold:
    """Something that refers to a model's rows in ``[start, end)``."""

    model_name: str
    what: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class DayToDrop:
    """One day a prune drops: its predictions and labels (estimated rows) and its size on disk."""

    day: date
    predictions: int
    labels: int
    bytes: int


@dataclass(frozen=True)
class PrunePlan:
    """What ``driftloop prune --older-than older_than_days`` drops, and what forbids it."""

    older_than_days: int
    first_kept: date
    days: tuple[DayToDrop, ...]
    # One line per (day, hold) whose rows the drop would take; empty when the prune may go.
    blocked: tuple[str, ...]
    # The --older-than that would keep every held row (None when nothing is held).
    safe_days: int | None
    # Predictions before first_kept still in the DEFAULT partition (moved to their days first).
    in_default: int


@dataclass(frozen=True)
class PruneResult:
    plan: PrunePlan
    dropped: tuple[date, ...]
    moved_from_default: int
    seconds: float


def _rollback_targets(conn: Connection) -> list[str]:
    from training import registry

    with conn.cursor() as cur:
        cur.execute(_CHAMPIONS)
        models = [row[0] for row in cur.fetchall()]
    targets = []
    for model in models:
        try:
            targets.append(registry.rollback_target(conn, model).tag)
        except NotFoundError:
            continue
    return targets


def holds(conn: Connection) -> list[Hold]:
    """Everything whose rows a prune keeps (see the module doc)."""

    def when(at: datetime) -> str:
        return f"{at.astimezone(UTC):%Y-%m-%d %H:%M}"

    rollback = _rollback_targets(conn)
    found: list[Hold] = []
    with conn.cursor() as cur:
        cur.execute(_KEPT_VERSIONS, {"rollback": rollback})
        for model, tag, status, start, end in cur.fetchall():
            role = "rollback target" if status == "retired" else status
            found.append(
                Hold(
                    model,
                    f"the training set of {tag} ({role}; data {when(start)} .. {when(end)})",
                    start,
                    # data_end is the last training row's time: the span includes it.
                    end + timedelta(microseconds=1),
                )
            )
        cur.execute(_KEPT_RUNS, {"rollback": rollback})
        for model, run_key, start, end, why in cur.fetchall():
            found.append(
                Hold(
                    model,
                    f"the window of run {run_key} ({why}; {when(start)} .. {when(end)})",
                    start,
                    end,
                )
            )
    return found


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def plan_prune(conn: Connection, older_than_days: int, *, today: date | None = None) -> PrunePlan:
    """What pruning the days before ``today - older_than_days`` would drop and what forbids it.

    Reads only; the days still in the DEFAULT partition are counted as days to drop.

    Raises:
        ValueError: ``older_than_days`` is less than 1 (today is never dropped).
    """
    if older_than_days < 1:
        raise ValueError(f"--older-than must be 1 or more days, got {older_than_days}")
    today = today or datetime.now(UTC).date()
    first_kept = today - timedelta(days=older_than_days)
    in_default_days = [d for d in partitions.default_days(conn) if d < first_kept]
    days = sorted(
        {d for d in partitions.partition_days(conn) if d < first_kept} | set(in_default_days)
    )
    blocked: list[str] = []
    earliest_held: date | None = None
    with conn.cursor() as cur:
        for hold in holds(conn):
            for day in days:
                low, high = _day_bounds(day)
                start, end = max(low, hold.start), min(high, hold.end)
                if start >= end:
                    continue
                cur.execute(_ROWS_HELD, (hold.model_name, start, end))
                row = cur.fetchone()
                rows = int(row[0]) if row else 0
                if rows:
                    blocked.append(f"{day}: {rows:,} rows of {hold.what}")
                    earliest_held = day if earliest_held is None else min(earliest_held, day)
        names = [f"{table}_p{day:%Y%m%d}" for day in days for table in ("predictions", "feedback")]
        cur.execute(_DAY_SIZES, (names,))
        sizes = {name: (int(rows), int(size)) for name, rows, size in cur.fetchall()}
        in_default = 0
        if in_default_days:
            cur.execute(
                "SELECT count(*) FROM predictions_default WHERE created_at < %s",
                (_day_bounds(first_kept)[0],),
            )
            row = cur.fetchone()
            in_default = int(row[0]) if row else 0
    planned = []
    for day in days:
        predictions, p_bytes = sizes.get(f"predictions_p{day:%Y%m%d}", (0, 0))
        labels, f_bytes = sizes.get(f"feedback_p{day:%Y%m%d}", (0, 0))
        planned.append(DayToDrop(day, predictions, labels, p_bytes + f_bytes))
    return PrunePlan(
        older_than_days=older_than_days,
        first_kept=first_kept,
        days=tuple(planned),
        blocked=tuple(sorted(blocked)),
        safe_days=None if earliest_held is None else (today - earliest_held).days,
        in_default=in_default,
    )


def refusal(plan: PrunePlan) -> str:
    """Why ``plan`` may not go, as the lines a person reads."""
    lines = [
        f"prune --older-than {plan.older_than_days} would drop rows still referred to:",
        *(f"  {line}" for line in plan.blocked),
        f"Nothing was dropped. --older-than {plan.safe_days} keeps them (a retired or rejected "
        "version's training set and a finished run's window are not kept: see docs/store.md).",
    ]
    return "\n".join(lines)


def _drop_day(conn: Connection, day: date) -> None:
    """Detach and drop the three partitions of ``day`` in one transaction."""
    suffix = f"{day:%Y%m%d}"
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (partitions.LOCK_TIMEOUT_MS,))
        for table in partitions.PARTITIONED_TABLES:
            cur.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(table), sql.Identifier(f"{table}_p{suffix}")
                )
            )
        cur.execute(
            sql.SQL("DROP TABLE {}").format(
                sql.SQL(", ").join(
                    sql.Identifier(f"{table}_p{suffix}") for table in partitions.PARTITIONED_TABLES
                )
            )
        )
    conn.commit()


def prune(conn: Connection, older_than_days: int, *, today: date | None = None) -> PruneResult:
    """Drop every day before ``today - older_than_days``, unless something still refers to its
    rows (see the module doc); each day is detached and dropped in a transaction of its own.

    Raises:
        PruneRefused: a day to drop holds rows still referred to (nothing dropped; the message
            says which and what --older-than would keep them).
        psycopg2.errors.LockNotAvailable: the store stayed busy (a long query on a table) for
            :data:`training.partitions.LOCK_TIMEOUT_MS`; the days before it were dropped.
    """
    started = time.perf_counter()
    plan = plan_prune(conn, older_than_days, today=today)
    if plan.blocked:
        conn.rollback()
        raise PruneRefused(refusal(plan))
    # Every day found in DEFAULT gets its partitions (older ones are then dropped with them), and
    # the days ahead are made, as at every store start.
    moved = sum(partitions.drain_default(conn).values())
    partitions.ensure_ahead(conn)
    conn.commit()
    dropped = []
    for planned in plan.days:
        _drop_day(conn, planned.day)
        dropped.append(planned.day)
    return PruneResult(plan, tuple(dropped), moved, time.perf_counter() - started)
