"""The feedback store against a real PostgreSQL: migrations, idempotent writes, COPY extraction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from training.errors import NotFoundError, StoreUnavailable
from training.extract import extract_window
from training.spec import ModelSpec, load_spec
from training.store import (
    PredictionRecord,
    applied_migrations,
    connect,
    migrate,
    record_feedback,
    record_feedback_many,
    record_predictions,
)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _prediction(request_id: str, at: datetime, **features: object) -> PredictionRecord:
    spec = load_spec()
    return PredictionRecord(
        request_id=request_id,
        model_name="churn",
        model_version="v1",
        features=spec.example_request() | features,
        score=0.7,
        label=1,
        created_at=at,
    )


def test_migrations_apply_once(store_url: str) -> None:
    with connect(store_url) as conn:
        assert migrate(conn) == []
        # Every file of training/migrations, in order.
        folder = Path(__file__).parents[2] / "training" / "migrations"
        shipped = sorted(int(f.name.split("_")[0]) for f in folder.glob("*.sql"))
        assert shipped[:5] == [1, 2, 3, 4, 5]
        assert applied_migrations(conn) == shipped


def test_predictions_are_idempotent_on_request_id(store_url: str) -> None:
    with connect(store_url) as conn:
        assert record_predictions(conn, [_prediction("a", T0), _prediction("b", T0)]) == 2
        assert record_predictions(conn, [_prediction("a", T0, age=99.0), _prediction("c", T0)]) == 1
        with conn.cursor() as cur:
            cur.execute("SELECT request_id, features->>'age' FROM predictions ORDER BY 1")
            rows = cur.fetchall()
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert rows[0][1] != "99.0"  # the first write of "a" stays


def test_feedback_latest_different_label_wins(store_url: str) -> None:
    with connect(store_url) as conn:
        record_predictions(conn, [_prediction("a", T0)])
        assert record_feedback(conn, "a", 1).status == "created"
        assert record_feedback(conn, "a", 1).status == "unchanged"
        assert record_feedback(conn, "a", 0).status == "updated"
        with conn.cursor() as cur:
            cur.execute("SELECT label, revisions FROM feedback WHERE request_id = 'a'")
            assert cur.fetchall() == [(0, 1)]


def test_feedback_keeps_the_label_as_it_was_sent_beside_the_normalised_one(
    store_url: str,
) -> None:
    """feedback.label is 0/1, feedback.raw_label the spelling sent with it; a different spelling
    of the same label changes nothing (the first stays); bulk feedback may carry it too."""
    with connect(store_url) as conn:
        record_predictions(conn, [_prediction(r, T0) for r in ("a", "b", "c", "d")])
        assert record_feedback(conn, "a", 1, raw_label="Yes").status == "created"
        assert record_feedback(conn, "a", 1, raw_label="1").status == "unchanged"
        assert record_feedback(conn, "b", 0).status == "created"
        record_feedback_many(conn, [("c", 1, T0, "true"), ("d", 0, None)])
        assert record_feedback(conn, "b", 1, raw_label="yes").status == "updated"
        with pytest.raises(ValueError, match="must be 0 or 1"):
            record_feedback(conn, "a", 2, raw_label="2")
        with pytest.raises(ValueError, match="must be 0 or 1"):
            record_feedback_many(conn, [("c", -1, None)])
        with conn.cursor() as cur:
            cur.execute("SELECT request_id, label, raw_label FROM feedback ORDER BY 1")
            assert cur.fetchall() == [
                ("a", 1, "Yes"),
                ("b", 1, "yes"),
                ("c", 1, "true"),
                ("d", 0, None),
            ]


def test_feedback_for_unknown_request_is_refused_and_not_stored(store_url: str) -> None:
    with connect(store_url) as conn:
        with pytest.raises(NotFoundError, match="no prediction with request_id 'ghost'"):
            record_feedback(conn, "ghost", 1)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM feedback")
            assert cur.fetchone() == (0,)


def test_extract_window_returns_typed_rows_with_labels_where_known(store_url: str) -> None:
    spec = load_spec()
    with connect(store_url) as conn:
        record_predictions(
            conn,
            [
                _prediction("before", T0 - timedelta(seconds=1)),
                _prediction("first", T0, region="south"),
                _prediction("second", T0 + timedelta(hours=1)),
                _prediction("at-end", T0 + timedelta(days=1)),
            ],
        )
        record_feedback(conn, "first", 1)
        frame = extract_window(conn, spec, T0, T0 + timedelta(days=1))
    assert list(frame["request_id"]) == ["first", "second"]
    assert frame.loc[0, "region"] == "south"
    assert frame["age"].dtype == "float64"
    assert frame[spec.target].tolist()[0] == 1
    assert frame[spec.target].isna().tolist() == [False, True]


def test_extract_window_reads_null_and_absent_features_as_missing_and_only_those(
    store_url: str,
) -> None:
    """A nullable feature logged as null, or not logged at all, is NaN; a category spelt like one
    of pandas' missing markers ("NA", "None") is still that category."""
    base = load_spec()
    spec = ModelSpec.model_validate(
        {
            **base.model_dump(),
            "features": [
                f.model_dump() | {"nullable": f.name in ("age", "region")} for f in base.features
            ],
        }
    )
    with connect(store_url) as conn:
        record_predictions(
            conn,
            [
                _prediction("null", T0, age=None, region=None),
                _prediction("absent", T0 + timedelta(seconds=1)),
                _prediction("na-text", T0 + timedelta(seconds=2), region="NA", contract="None"),
            ],
        )
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE predictions SET features = features - 'age' - 'region'"
                " WHERE request_id = 'absent'"
            )
        frame = extract_window(conn, spec, T0, T0 + timedelta(days=1)).set_index("request_id")
    assert frame["age"].isna().tolist() == [True, True, False]
    assert frame["region"].isna().tolist() == [True, True, False]
    assert frame.loc["na-text", "region"] == "NA"
    assert frame.loc["na-text", "contract"] == "None"
    assert frame["age"].dtype == "float64"


def test_extract_refuses_an_empty_window(store_url: str) -> None:
    with connect(store_url) as conn, pytest.raises(ValueError, match="is not after its start"):
        extract_window(conn, load_spec(), T0, T0)


def test_unreachable_database_is_one_clear_error() -> None:
    with (
        pytest.raises(StoreUnavailable, match="database unreachable"),
        connect("postgresql://nobody@127.0.0.1:1/none"),
    ):
        pass


def test_extract_window_reads_times_of_mixed_precision_as_times(store_url: str) -> None:
    """Backfilled history has whole seconds, live traffic fractions: one window holds both."""
    spec = load_spec()
    with connect(store_url) as conn:
        record_predictions(
            conn,
            [
                _prediction("history", T0 + timedelta(seconds=5)),
                _prediction("live", T0 + timedelta(hours=1, microseconds=123_456)),
            ],
        )
        frame = extract_window(conn, spec, T0, T0 + timedelta(days=1))
    assert str(frame["created_at"].dtype) == "datetime64[ns, UTC]"
    assert frame["created_at"].tolist() == [
        pd.Timestamp(T0 + timedelta(seconds=5)),
        pd.Timestamp(T0 + timedelta(hours=1, microseconds=123_456)),
    ]
