"""``driftloop prune``: whole days dropped (detach and drop, never a row deleted), and refused, with
what it would break, while a kept model's training set or a run still refers to a day's rows."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from training.partitions import ensure_range, partition_days
from training.retention import PruneRefused, plan_prune, prune
from training.spec import load_spec
from training.store import PredictionRecord, connect, record_feedback, record_predictions

pytestmark = pytest.mark.integration

TODAY = date(2026, 3, 31)
DAYS = [TODAY - timedelta(days=n) for n in range(20, 0, -1)]  # 2026-03-11 .. 2026-03-30


def _at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _rows(conn: Any, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


def _fill(conn: Any, model: str = "churn") -> None:
    """Three predictions a day over DAYS, the first of each labelled, then corrected."""
    spec = load_spec()
    ensure_range(conn, DAYS[0], DAYS[-1])
    records = [
        PredictionRecord(
            f"{model}-{day}-{i}", model, "v1", spec.example_request(), 0.4, 0, _at(day, 6 * i)
        )
        for day in DAYS
        for i in range(3)
    ]
    record_predictions(conn, records)
    for day in DAYS:
        record_feedback(conn, f"{model}-{day}-0", 1)
        record_feedback(conn, f"{model}-{day}-0", 0)
    conn.commit()


def _version(
    conn: Any, tag: str, status: str, start: datetime, end: datetime, **extra: Any
) -> None:
    name, _, version = tag.partition(":")
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO model_versions (model_name, version, tag, status, train_data_uri,"
            " data_start, data_end, bento_tag, promoted_at, training_run_id)"
            " VALUES (%s, %s, %s, %s, 'file:///frame.parquet', %s, %s, %s, %s, %s)",
            (
                name,
                int(version.lstrip("v")),
                tag,
                status,
                start,
                end,
                extra.get("bento_tag"),
                extra.get("promoted_at"),
                extra.get("training_run_id"),
            ),
        )
    conn.commit()


def test_prune_drops_whole_days_and_keeps_the_rest_untouched(store_url: str) -> None:
    with connect(store_url) as conn:
        _fill(conn)
        kept_before = _rows(
            conn,
            "SELECT p.request_id, p.created_at, f.label FROM predictions p"
            " LEFT JOIN feedback f ON f.request_id = p.request_id AND f.predicted_at = p.created_at"
            " WHERE p.created_at >= %s ORDER BY 1",
            (_at(TODAY - timedelta(days=10), 0),),
        )
        plan = plan_prune(conn, 10, today=TODAY)
        assert [d.day for d in plan.days] == DAYS[:10]
        assert not plan.blocked

        result = prune(conn, 10, today=TODAY)

        assert list(result.dropped) == DAYS[:10]
        held = set(partition_days(conn))
        assert not held & set(DAYS[:10])
        assert set(DAYS[10:]) <= held
        for table in ("predictions", "feedback", "feedback_history"):
            names = [f"{table}_p{day:%Y%m%d}" for day in DAYS[:10]]
            assert _rows(
                conn, "SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", (names,)
            ) == [(0,)]
        assert (
            _rows(
                conn,
                "SELECT p.request_id, p.created_at, f.label FROM predictions p"
                " LEFT JOIN feedback f ON f.request_id = p.request_id AND f.predicted_at = p.created_at"
                " ORDER BY 1",
            )
            == kept_before
        )
        assert _rows(conn, "SELECT count(*) FROM feedback_history") == [(10,)]
        # Nothing older is left: a second prune has nothing to do.
        assert prune(conn, 10, today=TODAY).dropped == ()


def test_prune_refuses_to_take_a_kept_models_training_set_and_says_what_keeps_it(
    store_url: str,
) -> None:
    with connect(store_url) as conn:
        _fill(conn)
        # The champion learnt from 2026-03-14 .. 03-16; an older retired version is no rollback
        # target (nothing recorded it as replaced), so its older span is not kept.
        _version(conn, "churn:v1", "retired", _at(DAYS[0]), _at(DAYS[1]))
        _version(
            conn,
            "churn:v2",
            "champion",
            _at(DAYS[3], 0),
            _at(DAYS[5], 18),
            promoted_at=_at(DAYS[6]),
        )
        with pytest.raises(PruneRefused) as refused:
            prune(conn, 10, today=TODAY)
        message = str(refused.value)
        assert "2026-03-14: 3 rows of the training set of churn:v2 (champion" in message
        assert "2026-03-16: 3 rows of the training set of churn:v2" in message
        assert "churn:v1" not in message
        assert "--older-than 17 keeps them" in message
        assert set(DAYS) <= set(partition_days(conn))  # nothing dropped

        assert prune(conn, 17, today=TODAY).dropped == tuple(DAYS[:3])


def test_prune_keeps_the_rollback_target_and_the_window_of_a_run_not_finished(
    store_url: str,
) -> None:
    with connect(store_url) as conn:
        _fill(conn)
        _version(
            conn,
            "churn:v1",
            "retired",
            _at(DAYS[1]),
            _at(DAYS[2]),
            bento_tag="b:1",
            promoted_at=_at(DAYS[2]),
        )
        _version(
            conn, "churn:v2", "champion", _at(DAYS[15]), _at(DAYS[16]), promoted_at=_at(DAYS[17])
        )
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO promotions (model_name, tag, previous_tag, action, by, reason)"
                " VALUES ('churn', 'churn:v2', 'churn:v1', 'retrain', 'test', 'better')"
            )
            cur.execute(
                "INSERT INTO drift_runs (model_name, run_key, window_start, window_end, rows,"
                " labelled_rows) VALUES ('churn', 'run-1', %s, %s, 6, 2) RETURNING id",
                (_at(DAYS[5], 0), _at(DAYS[7], 0)),
            )
            drift_id = cur.fetchone()[0]  # type: ignore[index]
            cur.execute(
                "INSERT INTO training_runs (model_name, run_key, drift_run_id, status)"
                " VALUES ('churn', 'run-1', %s, 'trained') RETURNING id",
                (drift_id,),
            )
        conn.commit()
        plan = plan_prune(conn, 10, today=TODAY)
        assert [line.split(":")[0] for line in plan.blocked] == [
            "2026-03-12",
            "2026-03-13",
            "2026-03-16",
            "2026-03-17",
        ]
        assert "rollback target" in plan.blocked[0]
        assert "the window of run run-1 (not finished" in plan.blocked[2]
        # Once the run has finished and the rollback target is no longer one, the days may go.
        with conn.cursor() as cur:
            cur.execute("UPDATE training_runs SET status = 'rejected', finished_at = now()")
            cur.execute("UPDATE model_versions SET bento_tag = NULL WHERE tag = 'churn:v1'")
        conn.commit()
        assert prune(conn, 10, today=TODAY).dropped == tuple(DAYS[:10])


def test_cli_dry_run_prints_the_days_and_drops_nothing(env: Path, store_url: str) -> None:
    with connect(store_url) as conn:
        _fill(conn)
    # Days before "today" (the real one) are all older than 30 days.
    result = subprocess.run(
        [sys.executable, "-m", "training.cli", "prune", "--older-than", "30", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "2026-03-11" in result.stdout
    assert "2026-03-30" in result.stdout
    assert "dry run: nothing dropped" in result.stdout
    with connect(store_url) as conn:
        assert set(DAYS) <= set(partition_days(conn))

    with connect(store_url) as conn:
        _version(conn, "churn:v9", "candidate", _at(DAYS[4], 0), _at(DAYS[4], 13))
    refused = subprocess.run(
        [sys.executable, "-m", "training.cli", "prune", "--older-than", "30"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("driftloop: error: prune --older-than 30 would drop rows")
    assert "2026-03-15: 3 rows of the training set of churn:v9 (candidate" in refused.stderr
    assert "Traceback" not in refused.stderr
