"""Who posted each label, and the labels corrections replaced (feedback.key_id, feedback_history)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from training.keys import create_key
from training.spec import load_spec
from training.store import (
    PredictionRecord,
    connect,
    record_feedback,
    record_feedback_many,
    record_predictions,
)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _predictions(*request_ids: str) -> list[PredictionRecord]:
    return [
        PredictionRecord(
            request_id=request_id,
            model_name="churn",
            model_version="v1",
            features=load_spec().example_request(),
            score=0.7,
            label=1,
            created_at=T0,
        )
        for request_id in request_ids
    ]


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def test_a_correction_keeps_its_predecessor_with_both_keys(store_url: str) -> None:
    with connect(store_url) as conn:
        record_predictions(conn, _predictions("a", "b"))
        first, _ = create_key(conn, "first", ["feedback"])
        second, _ = create_key(conn, "second", ["feedback"])
        record_feedback(conn, "a", 1, T0, raw_label="Yes", key_id=first.id)
        record_feedback(conn, "a", 1, raw_label="1", key_id=second.id)  # unchanged: no history
        assert record_feedback(conn, "a", 0, raw_label="No", key_id=second.id).status == "updated"
        record_feedback(conn, "b", 0)  # auth off: no key
        assert record_feedback(conn, "b", 1, key_id=first.id).status == "updated"

    assert _rows(
        store_url, "SELECT request_id, label, raw_label, key_id FROM feedback ORDER BY 1"
    ) == [
        ("a", 0, "No", second.id),
        ("b", 1, None, first.id),
    ]
    history = _rows(
        store_url,
        "SELECT request_id, label, raw_label, key_id, received_at, replaced_by"
        " FROM feedback_history ORDER BY request_id",
    )
    assert history == [
        ("a", 1, "Yes", first.id, T0, second.id),
        ("b", 0, None, None, history[1][4], first.id),
    ]


def test_bulk_feedback_records_its_key_and_history(store_url: str) -> None:
    with connect(store_url) as conn:
        record_predictions(conn, _predictions("a", "b", "c"))
        key, _ = create_key(conn, "bulk", ["feedback"])
        record_feedback_many(conn, [("a", 1, T0, "Yes"), ("b", 0, None)])
        record_feedback_many(
            conn, [("a", 0, None, "No"), ("b", 0, None), ("c", 1, None)], key_id=key.id
        )

    assert _rows(
        store_url, "SELECT request_id, label, key_id, revisions FROM feedback ORDER BY 1"
    ) == [
        ("a", 0, key.id, 1),
        ("b", 0, None, 0),  # the same label again: unchanged, still the first poster's
        ("c", 1, key.id, 0),
    ]
    assert _rows(
        store_url, "SELECT request_id, label, raw_label, key_id, replaced_by FROM feedback_history"
    ) == [("a", 1, "Yes", None, key.id)]
