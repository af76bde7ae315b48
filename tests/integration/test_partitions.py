"""The store partitioned by day (migration 0006): a store made by 0001-0005 moves over without
losing a row, days are made ahead, rows without a day wait in DEFAULT and move with it, and a
window reads only its own days."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from training.extract import extract_window, window_query
from training.partitions import (
    DAYS_AHEAD,
    default_days,
    drain_default,
    ensure_range,
    partition_days,
)
from training.spec import load_spec
from training.store import (
    PredictionRecord,
    connect,
    migrate,
    new_request_ids,
    record_feedback,
    record_predictions,
)

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parents[2] / "training" / "migrations"
DAY0 = date(2026, 3, 1)


def _at(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def _rows(conn: Any, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


@pytest.fixture
def fresh_url(server_url: str) -> Iterator[str]:
    """An empty database of its own (no migration applied)."""
    from training.postgres import create_database, with_database

    name = f"driftloop_part_{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    yield with_database(server_url, name)
    admin = psycopg2.connect(server_url)
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


def _migrate_to_0005(conn: Any) -> None:
    """What training.store.migrate made before 0006 existed: 0001-0005 and their records."""
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in sorted(MIGRATIONS.glob("000[1-5]_*.sql")):
            number, _, name = path.stem.partition("_")
            cur.execute(path.read_text())
            cur.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (int(number), name)
            )
    conn.commit()


def _fill_0005_store(conn: Any) -> None:
    """Predictions of two models over four days (one a month apart), labels for half of them,
    corrections by API keys, as the 0005 layout holds them."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO api_keys (id, name, secret_hash, scopes) VALUES"
            " ('k1', 'ops', 'x', '{feedback}'), ('k2', 'crm', 'y', '{feedback}')"
        )
        days = [DAY0, DAY0 + timedelta(days=1), DAY0 + timedelta(days=2), DAY0 + timedelta(days=33)]
        n = 0
        for day in days:
            for i in range(60):
                n += 1
                model = "churn" if i % 3 else "fraud"
                at = _at(day) + timedelta(minutes=23 * i, microseconds=n)
                cur.execute(
                    "INSERT INTO predictions (request_id, model_name, model_version, features,"
                    " score, label, created_at) VALUES (%s, %s, 'v1', %s, %s, %s, %s)",
                    (
                        f"r{n:04d}",
                        model,
                        json.dumps({"age": n, "region": "north"}),
                        n / 300,
                        n % 2,
                        at,
                    ),
                )
                if n % 2:
                    cur.execute(
                        "INSERT INTO feedback (request_id, label, received_at, revisions, raw_label,"
                        " key_id) VALUES (%s, %s, %s, %s, %s, %s)",
                        (
                            f"r{n:04d}",
                            int(n % 4 == 1),
                            at + timedelta(hours=5),
                            1 if n % 5 == 0 else 0,
                            "Yes" if n % 4 == 1 else "no",
                            "k1" if n % 3 else None,
                        ),
                    )
                if n % 5 == 0 and n % 2:
                    cur.execute(
                        "INSERT INTO feedback_history (request_id, label, raw_label, key_id,"
                        " received_at, replaced_by) VALUES (%s, 0, '0', NULL, %s, 'k2')",
                        (f"r{n:04d}", at + timedelta(hours=1)),
                    )
    conn.commit()


_SNAPSHOTS = {
    "predictions": "SELECT request_id, model_name, model_version, features, score, label,"
    " created_at FROM predictions ORDER BY request_id",
    "feedback": "SELECT request_id, label, received_at, revisions, raw_label, key_id FROM feedback"
    " ORDER BY request_id",
    "feedback_history": "SELECT id, request_id, label, raw_label, key_id, received_at,"
    " replaced_at, replaced_by FROM feedback_history ORDER BY id",
}


def test_a_store_made_by_0005_moves_to_day_partitions_without_losing_a_row(
    fresh_url: str,
) -> None:
    with connect(fresh_url) as conn:
        _migrate_to_0005(conn)
        _fill_0005_store(conn)
        before = {table: _rows(conn, query) for table, query in _SNAPSHOTS.items()}
        last_id = _rows(conn, "SELECT last_value FROM feedback_history_id_seq")[0][0]
        assert len(before["predictions"]) == 240
        assert len(before["feedback"]) == 120
        assert len(before["feedback_history"]) == 24

        assert migrate(conn) == [6]

        # Every row, column for column; each label now carries its prediction's time.
        assert {table: _rows(conn, query) for table, query in _SNAPSHOTS.items()} == before
        assert _rows(
            conn,
            "SELECT count(*) FROM feedback f JOIN predictions p"
            " ON p.request_id = f.request_id AND p.created_at = f.predicted_at",
        ) == [(120,)]
        assert _rows(
            conn,
            "SELECT count(*) FROM feedback_history h JOIN predictions p"
            " ON p.request_id = h.request_id AND p.created_at = h.predicted_at",
        ) == [(24,)]
        # Each row sits in its own day's partition; none in DEFAULT.
        days = [DAY0, DAY0 + timedelta(days=1), DAY0 + timedelta(days=2), DAY0 + timedelta(33)]
        assert set(days) <= set(partition_days(conn))
        for table, column in (("predictions", "created_at"), ("feedback", "predicted_at")):
            placed = _rows(
                conn,
                f"SELECT tableoid::regclass::text, min({column}), max({column}) FROM {table}"
                " GROUP BY 1 ORDER BY 1",
            )
            assert [name for name, *_ in placed] == [f"{table}_p{d:%Y%m%d}" for d in days]
            for name, first, last in placed:
                day = date(int(name[-8:-4]), int(name[-4:-2]), int(name[-2:]))
                assert _at(day) <= first <= last < _at(day + timedelta(days=1))
        assert default_days(conn) == []
        # The id sequence goes on where it was, and belongs to the new table.
        assert _rows(conn, "SELECT last_value FROM feedback_history_id_seq") == [(last_id,)]
        assert _rows(
            conn,
            "SELECT pg_get_serial_sequence('feedback_history', 'id')",
        ) == [("public.feedback_history_id_seq",)]
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO feedback_history (request_id, label, received_at, predicted_at)"
                " SELECT request_id, 1, now(), created_at FROM predictions"
                " WHERE request_id = 'r0001' RETURNING id"
            )
            assert cur.fetchone() == (last_id + 1,)
        conn.rollback()
        # The old tables are gone; the keys and constraints hold on the new ones.
        assert _rows(
            conn, "SELECT count(*) FROM pg_class WHERE relname LIKE '%%\\_0005' AND relkind = 'r'"
        ) == [(0,)]
        constraints = dict(
            _rows(
                conn,
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid IN ('predictions'::regclass, 'feedback'::regclass,"
                " 'feedback_history'::regclass)",
            )
        )
        assert constraints["predictions_pkey"] == "PRIMARY KEY (request_id, created_at)"
        assert constraints["feedback_pkey"] == "PRIMARY KEY (request_id, predicted_at)"
        assert constraints["feedback_history_pkey"] == "PRIMARY KEY (id, predicted_at)"
        assert "FOREIGN KEY (key_id) REFERENCES api_keys(id)" in constraints.values()
        for day in days:
            suffix = f"{day:%Y%m%d}"
            keys = _rows(
                conn,
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
                " WHERE contype = 'f' AND confrelid = %s::regclass ORDER BY 1",
                (f"predictions_p{suffix}",),
            )
            assert keys == [
                (f"feedback_history_p{suffix}", f"predictions_p{suffix}"),
                (f"feedback_p{suffix}", f"predictions_p{suffix}"),
            ]
    # A label for no prediction, or naming no API key, is still refused.
    for values in (
        ("ghost", _at(DAY0, 1), None),
        ("r0001", _at(DAY0) + timedelta(microseconds=5), None),
        ("r0002", _rows_one(fresh_url, "r0002"), "no-such-key"),
    ):
        with (
            pytest.raises(psycopg2.errors.ForeignKeyViolation),
            connect(fresh_url) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(
                "INSERT INTO feedback (request_id, predicted_at, label, key_id)"
                " VALUES (%s, %s, 1, %s)",
                values,
            )
    # The store still works as before: a label, a correction, an extraction.
    with connect(fresh_url) as conn:
        assert record_feedback(conn, "r0002", 1).status == "created"
        assert record_feedback(conn, "r0001", 0, key_id="k2").status == "updated"
        spec = load_spec()
        frame = extract_window(conn, spec, _at(DAY0), _at(DAY0 + timedelta(days=1)))
        assert len(frame) == 40  # the day's churn predictions
        assert frame[spec.target].notna().sum() == 21


def _rows_one(url: str, request_id: str) -> datetime:
    with connect(url) as conn:
        found = _rows(
            conn, "SELECT created_at FROM predictions WHERE request_id = %s", (request_id,)
        )
    return found[0][0]  # type: ignore[no-any-return]


def test_store_start_makes_the_days_ahead(store_url: str) -> None:
    today = datetime.now(UTC).date()
    with connect(store_url) as conn:
        days = partition_days(conn)
    wanted = {today + timedelta(days=n) for n in range(-1, DAYS_AHEAD + 1)}
    assert wanted <= set(days)


def _prediction(request_id: str, at: datetime) -> PredictionRecord:
    spec = load_spec()
    return PredictionRecord(request_id, spec.name, "v1", spec.example_request(), 0.7, 1, at)


def test_a_row_without_its_day_waits_in_default_and_moves_when_the_day_is_made(
    store_url: str,
) -> None:
    far = date(2021, 6, 15)
    with connect(store_url) as conn:
        record_predictions(
            conn, [_prediction("early", _at(far, 9)), _prediction("late", _at(far, 23))]
        )
        record_feedback(conn, "early", 1)
        record_feedback(conn, "early", 0)
        conn.commit()
        assert default_days(conn) == [far]
        assert _rows(conn, "SELECT count(*) FROM feedback_history_default") == [(1,)]

        assert drain_default(conn) == {far: 2}
        conn.commit()
        assert default_days(conn) == []
        assert _rows(
            conn, "SELECT tableoid::regclass::text, count(*) FROM predictions GROUP BY 1"
        ) == [(f"predictions_p{far:%Y%m%d}", 2)]
        assert _rows(conn, "SELECT tableoid::regclass::text, label FROM feedback") == [
            (f"feedback_p{far:%Y%m%d}", 0)
        ]
        assert _rows(conn, "SELECT tableoid::regclass::text, label FROM feedback_history") == [
            (f"feedback_history_p{far:%Y%m%d}", 1)
        ]
        # Made once: asking again changes nothing.
        assert ensure_range(conn, far, far) == {}


def test_a_window_reads_only_its_own_days(store_url: str) -> None:
    """EXPLAIN of the retrain's extraction: of ten days held, a three-day window scans the
    predictions and labels partitions of those three days and no other (not DEFAULT either)."""
    spec = load_spec()
    days = [DAY0 + timedelta(days=n) for n in range(10)]
    with connect(store_url) as conn:
        ensure_range(conn, days[0], days[-1])
        record_predictions(conn, [_prediction(f"p{n}", _at(day, 12)) for n, day in enumerate(days)])
        for n in range(10):
            record_feedback(conn, f"p{n}", n % 2)
        start, end = _at(days[3]), _at(days[6])
        query = window_query(conn, spec, start, end)
        with conn.cursor() as cur:
            cur.execute(f"EXPLAIN (FORMAT JSON) {query}")
            plan = cur.fetchone()[0]  # type: ignore[index]
        frame = extract_window(conn, spec, start, end)

    def scanned(node: dict[str, Any]) -> set[str]:
        found = {node["Relation Name"]} if "Relation Name" in node else set()
        for child in node.get("Plans", []):
            found |= scanned(child)
        return found

    window = days[3:6]
    assert scanned(plan[0]["Plan"]) == {
        f"{table}_p{day:%Y%m%d}" for day in window for table in ("predictions", "feedback")
    }
    assert list(frame["request_id"]) == ["p3", "p4", "p5"]
    assert frame[spec.target].tolist() == [1, 0, 1]


def test_a_label_finds_its_prediction_by_the_time_in_a_served_request_id(store_url: str) -> None:
    served = datetime.now(UTC) - timedelta(hours=1)
    ids = new_request_ids(3, served)
    assert len(set(ids)) == 3
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    with connect(store_url) as conn:
        record_predictions(conn, [_prediction(i, served) for i in ids])
        assert record_feedback(conn, ids[1], 1).status == "created"
        assert _rows(conn, "SELECT request_id, predicted_at FROM feedback") == [(ids[1], served)]
        # The lookup of a served id reads one day only.
        with conn.cursor() as cur:
            cur.execute(
                "EXPLAIN (FORMAT JSON) SELECT created_at FROM predictions WHERE request_id = %s"
                " AND created_at >= %s AND created_at < %s",
                (ids[1], served - timedelta(seconds=1), served + timedelta(seconds=1)),
            )
            text = json.dumps(cur.fetchone())
        assert f"predictions_p{served:%Y%m%d}" in text
        assert text.count('"Relation Name"') == 1
