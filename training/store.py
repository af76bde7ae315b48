"""The feedback store in PostgreSQL: migrations, prediction and feedback writes, the loop's records."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import IO, Any, Literal

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from training import partitions
from training.errors import NotFoundError, StoreUnavailable

__all__ = [
    "FeedbackOutcome",
    "FeedbackRow",
    "PredictionRecord",
    "applied_migrations",
    "connect",
    "copy_predictions",
    "encode_prediction",
    "migrate",
    "new_request_ids",
    "record_feedback",
    "record_feedback_many",
    "record_predictions",
    "reset",
    "service_connection",
]

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 727_001
_TABLES = (
    "promotions",
    "deployments",
    "model_versions",
    "training_runs",
    "drift_runs",
    "feedback_history",
    "feedback",
    "predictions",
    "api_keys",
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


# TCP keepalives of the service's connections: a peer gone silent (a dead host, a dropped route) is
# noticed in about 20 s instead of the kernel's two hours.
_KEEPALIVES_IDLE_S = 10
_KEEPALIVES_INTERVAL_S = 3
_KEEPALIVES_COUNT = 3
# libpq 12 and later can also bound how long sent data may stay unacknowledged (a COPY to a host
# that vanished mid-write would otherwise wait out the kernel's retransmissions, about 15 minutes).
_TCP_USER_TIMEOUT_LIBPQ = 120_000
_TCP_USER_TIMEOUT_SLACK_MS = 5_000


def service_connection(
    url: str, *, connect_timeout_s: int, statement_timeout_ms: int, application_name: str
) -> Connection:
    """A connection for a long-running process that must never hang on the store.

    The server cancels any statement running longer than ``statement_timeout_ms`` (an ``options``
    already in ``url`` is kept); TCP keepalives, and where libpq supports it a TCP user timeout,
    make a vanished server an error instead of a wait. The connection is not in autocommit mode.

    Args:
        url: a PostgreSQL URL or DSN.
        connect_timeout_s: how long connecting may take.
        statement_timeout_ms: the server-side ``statement_timeout`` of every statement.
        application_name: how the connection shows in ``pg_stat_activity``.

    Raises:
        psycopg2.OperationalError: the server cannot be reached (its message may name the host or
            socket: log it at DEBUG only).
    """
    options = f"-c statement_timeout={int(statement_timeout_ms)}"
    configured = psycopg2.extensions.parse_dsn(url).get("options")
    if configured:
        options = f"{configured} {options}"
    params: dict[str, Any] = {
        "connect_timeout": connect_timeout_s,
        "application_name": application_name,
        "options": options,
        "keepalives": 1,
        "keepalives_idle": _KEEPALIVES_IDLE_S,
        "keepalives_interval": _KEEPALIVES_INTERVAL_S,
        "keepalives_count": _KEEPALIVES_COUNT,
    }
    if psycopg2.extensions.libpq_version() >= _TCP_USER_TIMEOUT_LIBPQ:
        params["tcp_user_timeout"] = int(statement_timeout_ms) + _TCP_USER_TIMEOUT_SLACK_MS
    conn: Connection = psycopg2.connect(url, **params)
    return conn


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
    # Every process that opens the store makes the day partitions ahead (training.partitions).
    partitions.try_ensure_ahead(conn)
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
        cur.execute("DROP FUNCTION IF EXISTS driftloop_create_day(date)")
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
    """Insert predictions; a ``request_id`` already stored is left as it is. Returns rows inserted.

    Rows whose day has no partition yet go to the DEFAULT one (training.partitions).
    """
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
            " SELECT * FROM (VALUES %s) AS v (request_id, model_name, model_version, features,"
            " score, label, created_at)"
            " WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.request_id = v.request_id)"
            " ON CONFLICT (request_id, created_at) DO NOTHING RETURNING 1",
            rows,
            template=(
                "(%s, %s, %s, %s::jsonb, %s::double precision, %s::smallint,"
                " COALESCE(%s::timestamptz, now()))"
            ),
            page_size=1000,
            fetch=True,
        )
    return len(result)


# json.dumps with arguments builds an encoder per call; one shared encoder saves that per request.
# ensure_ascii (the default) leaves backslash as the only character COPY's text format cares about,
# and allow_nan=False refuses NaN and Infinity, which jsonb would reject.
_FEATURES_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_SMALLINT = range(-32_768, 32_768)
# The JSON escape of U+0000 (jsonb refuses it): a "\u0000" whose backslash is not itself escaped
# ("\\u0000" is the harmless text "\u0000").
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# The records of one served batch share one created_at object: formatting it once per batch saves a
# fifth of the encoding. (Object, text) replaced as one tuple, so threads never see a torn pair.
_last_created_at: tuple[datetime | None, str] = (None, "")


def _copy_text(field: str, value: str) -> str:
    """``value`` escaped for COPY's text format (one field of one line)."""
    if "\x00" in value:
        # PostgreSQL's text cannot hold U+0000; refused here, it would fail a whole COPY later.
        raise ValueError(f"prediction {field} must not contain the NUL character")
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def encode_prediction(record: PredictionRecord) -> bytes:
    """One line of PostgreSQL's COPY text format for the ``predictions`` table.

    The columns are, in order, ``request_id, model_name, model_version, features, score, label,
    created_at``; the line ends with a newline, so lines concatenate into a COPY stream. Whatever
    PostgreSQL would refuse is refused here instead, where the caller can still answer for it.

    Args:
        record: the prediction; its ``created_at`` must be set (the time it was served, with a time
            zone), since a spooled record may reach the store much later.

    Returns:
        The UTF-8 line.

    Raises:
        ValueError: ``created_at`` is missing or naive; a feature is NaN or infinite; a text holds
            NUL (U+0000) or a lone surrogate; ``label`` does not fit a smallint.
    """
    global _last_created_at
    created_at = record.created_at
    cached_at, timestamp = _last_created_at
    if created_at is not cached_at:
        if created_at is None:
            raise ValueError(
                "prediction created_at must be set to the time the prediction was served"
            )
        if created_at.tzinfo is None:
            raise ValueError("prediction created_at must carry a time zone")
        timestamp = created_at.isoformat()
        _last_created_at = (created_at, timestamp)
    label = int(record.label)
    if label not in _SMALLINT:
        raise ValueError(f"prediction label {label} does not fit a smallint")
    features = _FEATURES_JSON.encode(record.features)
    if "\\u0000" in features and _JSON_NUL.search(features):
        raise ValueError("prediction features must not contain the NUL character")
    if "\\ud" in features:
        # ASCII-only JSON hides lone surrogates (jsonb refuses them) as escapes; only strings with
        # characters outside the BMP get here, so the second encoding is rare.
        json.dumps(record.features, ensure_ascii=False).encode()
    return (
        f"{_copy_text('request_id', record.request_id)}\t"
        f"{_copy_text('model_name', record.model_name)}\t"
        f"{_copy_text('model_version', record.model_version)}\t"
        f"{_copy_text('features', features)}\t"
        f"{float(record.score)!r}\t{label}\t{timestamp}\n"
    ).encode()


_COPY_PREDICTIONS = (
    "COPY predictions"
    " (request_id, model_name, model_version, features, score, label, created_at) FROM STDIN"
)
_COPY_SAVEPOINT = "SAVEPOINT driftloop_copy_predictions"
_COPY_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT driftloop_copy_predictions"
_CREATE_STAGING = (
    "CREATE TEMP TABLE predictions_staging (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DROP"
)
_COPY_STAGING = (
    "COPY pg_temp.predictions_staging"
    " (request_id, model_name, model_version, features, score, label, created_at) FROM STDIN"
)
# A request id stored on any day is left as it is (the primary key only covers one time).
_INSERT_FROM_STAGING = (
    "INSERT INTO predictions"
    " (request_id, model_name, model_version, features, score, label, created_at)"
    " SELECT request_id, model_name, model_version, features, score, label, created_at"
    " FROM pg_temp.predictions_staging s"
    " WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.request_id = s.request_id)"
    " ON CONFLICT (request_id, created_at) DO NOTHING"
)
# Dropped explicitly too, so a second call in the same transaction can create it again.
_DROP_STAGING = "DROP TABLE pg_temp.predictions_staging"
_COPY_BUFFER_BYTES = 1 << 16


def copy_predictions(conn: Connection, data: bytes | IO[bytes]) -> int:
    """COPY lines made by :func:`encode_prediction` into ``predictions``; never duplicates a row.

    The fast path is a plain ``COPY``. When it hits a prediction already stored (the same
    ``request_id`` and time: a replay after a crash between commit and cleanup), it is rolled back
    to a savepoint taken just before it, and the lines go through a temporary staging table and
    ``INSERT ... ON CONFLICT DO NOTHING``, which also skips a ``request_id`` stored at another time:
    rows already stored keep their first version. Rows whose day has no partition yet go to the
    DEFAULT one (training.partitions). The caller commits; what it did
    earlier in the same transaction is kept.

    Args:
        conn: a connection, not in autocommit mode.
        data: the lines, as bytes or a binary file (read from its current position; a file that
            cannot seek is read into memory, since the slow path needs the lines twice).

    Returns:
        How many rows were newly stored.

    Raises:
        psycopg2.DataError: a line PostgreSQL cannot read (and other ``psycopg2.Error`` as raised).
    """
    if isinstance(data, bytes):
        if not data:
            return 0
        payload: bytes | None = data
        start = 0
    elif data.seekable():
        payload = None
        start = data.tell()
    else:
        payload = data.read()
        start = 0

    def source() -> IO[bytes]:
        if payload is not None:
            return io.BytesIO(payload)
        assert not isinstance(data, bytes)
        data.seek(start)
        return data

    with conn.cursor() as cur:
        cur.execute(_COPY_SAVEPOINT)
        try:
            cur.copy_expert(_COPY_PREDICTIONS, source(), size=_COPY_BUFFER_BYTES)
            return max(cur.rowcount, 0)
        except psycopg2.errors.UniqueViolation:
            cur.execute(_COPY_ROLLBACK_TO_SAVEPOINT)
        cur.execute(_CREATE_STAGING)
        cur.copy_expert(_COPY_STAGING, source(), size=_COPY_BUFFER_BYTES)
        cur.execute(_INSERT_FROM_STAGING)
        stored = max(cur.rowcount, 0)
        cur.execute(_DROP_STAGING)
    return stored


FeedbackStatus = Literal["created", "updated", "unchanged"]
# (request_id, label 0/1, received_at or None for now, and optionally the label as it was sent).
FeedbackRow = tuple[str, int, datetime | None] | tuple[str, int, datetime | None, str | None]


@dataclass(frozen=True)
class FeedbackOutcome:
    request_id: str
    label: int
    status: FeedbackStatus


# A label sent again in another spelling ("Yes", then 1) is the same label: nothing is written,
# and the spelling first sent stays in raw_label. A different label replaces the row and the row it
# replaced goes to feedback_history, with the key that posted the new one (replaced_by), in the
# same statement. _LOCK_FEEDBACK runs first: corrections of one label wait for each other, so each
# statement's snapshot holds the row it replaces (a FOR UPDATE inside the statement would skip a
# row the upsert already changed). A first label racing another first label for the same request
# is written as an update without a history row: the row it replaced was never visible to it.
_LOCK_FEEDBACK = (
    "SELECT 1 FROM feedback WHERE request_id = %s AND predicted_at = %s ORDER BY request_id"
    " FOR UPDATE"
)
_LOCK_FEEDBACK_MANY = (
    "SELECT 1 FROM feedback WHERE request_id = ANY(%s) ORDER BY request_id, predicted_at FOR UPDATE"
)

# A label is stored beside its prediction: its day's partition, keyed by (request_id,
# predicted_at), predicted_at being the prediction's created_at (found first: _PREDICTION_TIME).
# A row the upsert inserted has revisions 0, one it updated 1 or more (a partitioned table's
# RETURNING cannot read xmax).
_FEEDBACK_UPSERT = """
WITH previous AS (
    SELECT request_id, label, raw_label, key_id, received_at FROM feedback
    WHERE request_id = %(request_id)s AND predicted_at = %(predicted_at)s
), written AS (
    INSERT INTO feedback (request_id, predicted_at, label, raw_label, received_at, key_id)
    VALUES (%(request_id)s, %(predicted_at)s, %(label)s, %(raw_label)s,
            COALESCE(%(received_at)s, now()), %(key_id)s)
    ON CONFLICT (request_id, predicted_at) DO UPDATE
        SET label = EXCLUDED.label,
            raw_label = EXCLUDED.raw_label,
            received_at = EXCLUDED.received_at,
            key_id = EXCLUDED.key_id,
            revisions = feedback.revisions + 1
        WHERE feedback.label IS DISTINCT FROM EXCLUDED.label
    RETURNING request_id, (revisions = 0) AS inserted
), kept AS (
    INSERT INTO feedback_history
        (request_id, predicted_at, label, raw_label, key_id, received_at, replaced_by)
    SELECT p.request_id, %(predicted_at)s, p.label, p.raw_label, p.key_id, p.received_at,
           %(key_id)s
    FROM previous p JOIN written w USING (request_id)
    WHERE NOT w.inserted
)
SELECT inserted FROM written
"""

# The same for many labels (one statement per page of execute_values), with the request ids that
# name no prediction.
_FEEDBACK_MANY = """
WITH incoming (request_id, label, raw_label, received_at, key_id) AS (VALUES %s),
matched AS (
    SELECT i.*, p.created_at AS predicted_at
    FROM incoming i JOIN predictions p ON p.request_id = i.request_id
), previous AS (
    SELECT f.request_id, f.predicted_at, f.label, f.raw_label, f.key_id, f.received_at
    FROM feedback f JOIN matched m USING (request_id, predicted_at)
), written AS (
    INSERT INTO feedback (request_id, predicted_at, label, raw_label, received_at, key_id)
    SELECT request_id, predicted_at, label, raw_label, received_at, key_id FROM matched
    ON CONFLICT (request_id, predicted_at) DO UPDATE
        SET label = EXCLUDED.label,
            raw_label = EXCLUDED.raw_label,
            received_at = EXCLUDED.received_at,
            key_id = EXCLUDED.key_id,
            revisions = feedback.revisions + 1
        WHERE feedback.label IS DISTINCT FROM EXCLUDED.label
    RETURNING request_id, predicted_at, (revisions = 0) AS inserted
), kept AS (
    INSERT INTO feedback_history
        (request_id, predicted_at, label, raw_label, key_id, received_at, replaced_by)
    SELECT p.request_id, p.predicted_at, p.label, p.raw_label, p.key_id, p.received_at, m.key_id
    FROM previous p JOIN written w USING (request_id, predicted_at)
    JOIN matched m USING (request_id, predicted_at)
    WHERE NOT w.inserted
)
SELECT ARRAY(SELECT request_id FROM incoming EXCEPT SELECT request_id FROM matched)
"""

# Request ids the service makes (new_request_ids) begin with the millisecond they were served, in
# 12 hex digits, then 80 random bits: a label for one is looked for in its own day's partition.
# Any other id (a backfill's, one made before) is looked for in every day.
_SERVED_DIGITS = 12
_SERVED_SLACK = timedelta(seconds=1)
_PREDICTION_TIME = (
    "SELECT created_at FROM predictions WHERE request_id = %s ORDER BY created_at LIMIT 1"
)
_PREDICTION_TIME_NEAR = (
    "SELECT created_at FROM predictions WHERE request_id = %s"
    " AND created_at >= %s AND created_at < %s ORDER BY created_at LIMIT 1"
)


def new_request_ids(count: int, served_at: datetime) -> list[str]:
    """``count`` new request ids for predictions served at ``served_at``: 32 hex digits, the
    millisecond first (so a label finds its prediction's day), then 80 random bits."""
    prefix = format(int(served_at.timestamp() * 1000), f"0{_SERVED_DIGITS}x")
    width = 32 - _SERVED_DIGITS
    random = os.urandom(width // 2 * count).hex()
    return [prefix + random[width * i : width * (i + 1)] for i in range(count)]


def _served_window(request_id: str) -> tuple[datetime, datetime] | None:
    """Where a prediction with an id made by :func:`new_request_ids` must lie, if it could be one."""
    if len(request_id) != 32:
        return None
    try:
        served = datetime.fromtimestamp(int(request_id[:_SERVED_DIGITS], 16) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return served - _SERVED_SLACK, served + _SERVED_SLACK


def _prediction_time(conn: Connection, request_id: str) -> datetime | None:
    """The ``created_at`` of the prediction ``request_id`` names (the earliest, were there two)."""
    window = _served_window(request_id)
    with conn.cursor() as cur:
        if window is not None:
            cur.execute(_PREDICTION_TIME_NEAR, (request_id, *window))
            row = cur.fetchone()
            if row is not None:
                return row[0]  # type: ignore[no-any-return]
        cur.execute(_PREDICTION_TIME, (request_id,))
        row = cur.fetchone()
    return None if row is None else row[0]


def _check_label(request_id: str, label: int) -> None:
    # The table takes any smallint; the loop trains on 0/1 only.
    if isinstance(label, bool) or label not in (0, 1):
        raise ValueError(
            f"feedback label for {request_id!r} must be 0 or 1 (normalise it with "
            f"ModelSpec.label_of), got {label!r}"
        )


def record_feedback(
    conn: Connection,
    request_id: str,
    label: int,
    received_at: datetime | None = None,
    *,
    raw_label: str | None = None,
    key_id: str | None = None,
) -> FeedbackOutcome:
    """Store the ground truth for one prediction; the latest differing label wins.

    Args:
        conn: the store.
        request_id: the prediction's request id.
        label: the outcome normalised to 0/1 (what the loop trains on).
        received_at: when it arrived; now when None.
        raw_label: the label as it was sent ("Yes", "1", "true"), kept in ``feedback.raw_label``;
            written with the label, so a different spelling of the same label changes nothing.
        key_id: the API key that posted it (``feedback.key_id``); None when auth is off. A label
            it replaces is kept in ``feedback_history`` with this key as ``replaced_by``.

    Raises:
        NotFoundError: no prediction carries ``request_id``.
        ValueError: ``label`` is not 0 or 1.
    """
    _check_label(request_id, label)
    predicted_at = _prediction_time(conn, request_id)
    if predicted_at is None:
        raise NotFoundError(f"no prediction with request_id {request_id!r}")
    params = {
        "request_id": request_id,
        "predicted_at": predicted_at,
        "label": label,
        "raw_label": raw_label,
        "received_at": received_at,
        "key_id": key_id,
    }
    with conn.cursor() as cur:
        cur.execute(_LOCK_FEEDBACK, (request_id, predicted_at))
        cur.execute(_FEEDBACK_UPSERT, params)
        row = cur.fetchone()
    if row is not None:
        return FeedbackOutcome(request_id, label, "created" if row[0] else "updated")
    return FeedbackOutcome(request_id, label, "unchanged")


def record_feedback_many(
    conn: Connection, labels: Sequence[FeedbackRow], *, key_id: str | None = None
) -> int:
    """Bulk feedback for known request ids (the demo's delayed labels); returns rows written.

    Args:
        conn: the store.
        labels: ``(request_id, label, received_at)`` rows, or ``(request_id, label, received_at,
            raw_label)`` to keep the label as it was sent; labels are 0/1, received_at None is now.
        key_id: the API key that posted them, recorded as :func:`record_feedback` records it
            (replaced labels kept in ``feedback_history``).

    Raises:
        ValueError: a label is not 0 or 1 (nothing is written).
        NotFoundError: a request id names no prediction (nothing is written).
    """
    rows = [(*row, None) if len(row) == 3 else row for row in labels]
    for request_id, label, *_ in rows:
        _check_label(request_id, label)
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT driftloop_feedback_many")
        cur.execute(_LOCK_FEEDBACK_MANY, (sorted({row[0] for row in rows}),))
        pages = psycopg2.extras.execute_values(
            cur,
            _FEEDBACK_MANY,
            [(request_id, label, raw, at, key_id) for request_id, label, at, raw in rows],
            template="(%s, %s::smallint, %s::text, COALESCE(%s::timestamptz, now()), %s::text)",
            page_size=1000,
            fetch=True,
        )
        unknown = sorted({request_id for (ids,) in pages for request_id in ids})
        if unknown:
            cur.execute("ROLLBACK TO SAVEPOINT driftloop_feedback_many")
            raise NotFoundError(
                f"no prediction with request_id {unknown[0]!r}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
        cur.execute("RELEASE SAVEPOINT driftloop_feedback_many")
    return len(labels)
