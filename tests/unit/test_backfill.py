"""training.history's checks and conversions on tiny tables (no store): what a row becomes, which
rows are refused and how the message names them, and which request ids rows get."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from training.backfill import BackfillResult
from training.cli.history import summary_lines
from training.history import BackfillError, prepare_labels, prepare_predictions
from training.spec import ModelSpec

SPEC = ModelSpec.model_validate(
    {
        "name": "shop",
        "target": "bought",
        "positive_label": "Yes",
        "negative_label": "No",
        "time_column": "seen_at",
        "features": [
            {"name": "price", "type": "numeric", "min": 0, "max": 100},
            {"name": "discount", "type": "numeric", "min": 0, "nullable": True},
            {"name": "store", "type": "categorical", "categories": ["1", "2"]},
            {"name": "channel", "type": "categorical", "categories": ["web"], "nullable": True},
        ],
        "model": {"family": "lightgbm"},
    }
)


def _table(**columns: list[Any]) -> pd.DataFrame:
    """Three valid rows as a CSV reads them (text, None where empty), with ``columns`` replaced."""
    base: dict[str, list[Any]] = {
        "seen_at": ["2026-03-01T10:00:00Z", "2026-03-02 12:30:00+02:00", "2026-03-03T00:00:00Z"],
        "price": ["10", "20.5", "30"],
        "discount": ["1", None, " "],
        "store": ["1", "2", "3"],
        "channel": ["web", None, "app"],
        "bought": ["Yes", "no", None],
    }
    return pd.DataFrame(base | columns)


def _problem(frame: pd.DataFrame, **options: Any) -> str:
    with pytest.raises(BackfillError) as refused:
        prepare_predictions(SPEC, frame, source="t.csv", with_labels=True, **options)
    return str(refused.value)


def test_rows_convert_by_the_spec() -> None:
    rows = prepare_predictions(SPEC, _table(), source="t.csv", with_labels=True)

    assert rows.features == [
        {"price": 10.0, "discount": 1.0, "store": "1", "channel": "web"},
        {"price": 20.5, "discount": None, "store": "2", "channel": None},
        {"price": 30.0, "discount": None, "store": "3", "channel": "app"},
    ]
    assert rows.created_at == [
        datetime(2026, 3, 1, 10, tzinfo=UTC),
        datetime(2026, 3, 2, 10, 30, tzinfo=UTC),
        datetime(2026, 3, 3, tzinfo=UTC),
    ]
    assert rows.naive_timestamps == 0
    assert rows.scores == [None, None, None]
    assert rows.labels is not None
    # The third row has no target: a prediction without a label yet.
    assert rows.labels.request_ids == rows.request_ids[:2]
    assert rows.labels.labels == [1, 0]
    assert rows.labels.raw_labels == ["Yes", "no"]


def test_typed_columns_convert_as_their_text_does() -> None:
    typed = pd.DataFrame(
        {
            "seen_at": pd.to_datetime(["2026-03-01 10:00", "2026-03-02 10:30", "2026-03-03 00:00"]),
            "price": [10, 20.5, 30],
            "discount": [1.0, float("nan"), None],
            "store": [1, 2, 3],
            "channel": ["web", None, "app"],
            "bought": [True, False, None],
        }
    )
    rows = prepare_predictions(SPEC, typed, source="t.parquet", with_labels=True)

    assert [r["store"] for r in rows.features] == ["1", "2", "3"]
    assert [r["discount"] for r in rows.features] == [1.0, None, None]
    assert rows.naive_timestamps == 3  # a timestamp without a zone is UTC
    assert rows.created_at[0] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert rows.labels is not None
    assert rows.labels.labels == [1, 0]
    assert rows.labels.raw_labels == ["true", "false"]


def test_naive_text_timestamps_are_utc_and_counted() -> None:
    rows = prepare_predictions(
        SPEC,
        _table(seen_at=["2026-03-01 10:00:00", "2026-03-02", "2026-03-03T08:00:00-01:00"]),
        source="t.csv",
        with_labels=False,
    )
    assert rows.naive_timestamps == 2
    assert rows.created_at == [
        datetime(2026, 3, 1, 10, tzinfo=UTC),
        datetime(2026, 3, 2, tzinfo=UTC),
        datetime(2026, 3, 3, 9, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("price", None, "row 2 price: is missing and the spec does not allow nulls here"),
        ("price", " ", "row 2 price: is missing and the spec does not allow nulls here"),
        ("price", "101", "row 2 price: 101.0 is above the maximum 100.0"),
        ("price", "-1", "row 2 price: -1.0 is below the minimum 0.0"),
        ("price", "ten", "row 2 price: 'ten' is not a number"),
        ("price", "inf", "row 2 price: inf is not finite"),
        ("store", None, "row 2 store: is missing and the spec does not allow nulls here"),
        ("store", "x" * 65, "row 2 store: 'xxxxx"),
        ("seen_at", None, "row 2 seen_at: is empty; every row needs its time"),
        ("seen_at", "03/02/2026", "row 2 seen_at: '03/02/2026' is not a timestamp (ISO 8601"),
        ("bought", "maybe", "row 2 bought: label 'maybe' is neither 'Yes' (positive)"),
    ],
)
def test_a_bad_value_is_named_by_row_and_column(column: str, value: Any, problem: str) -> None:
    values = _table()[column].tolist()
    values[1] = value
    message = _problem(_table(**{column: values}))
    assert message.startswith(f"t.csv: 1 problem(s), nothing stored: {problem}")


def test_problems_are_listed_by_row_first_few_only() -> None:
    frame = pd.concat([_table()] * 4, ignore_index=True)
    frame.loc[[3, 5, 7, 9, 11], "price"] = "-5"
    frame.loc[[0, 2], "seen_at"] = "soon"
    message = _problem(frame)
    assert message.startswith("t.csv: 7 problem(s), nothing stored: row 1 seen_at: 'soon'")
    assert [part.split(":")[0] for part in message.split("; ")[1:5]] == [
        "row 3 seen_at",
        "row 4 price",
        "row 6 price",
        "row 8 price",
    ]
    assert message.endswith("; and 2 more")


def test_missing_columns_are_named() -> None:
    message = _problem(_table().drop(columns=["price", "bought"]))
    assert message == "t.csv: no column(s) 'price', 'bought'"
    with pytest.raises(BackfillError, match=r"expected 'seen_at' or 'created_at'.*--time-column"):
        prepare_predictions(
            SPEC, _table().drop(columns=["seen_at"]), source="t.csv", with_labels=False
        )


def test_another_time_column_can_be_named() -> None:
    frame = _table().rename(columns={"seen_at": "when"})
    rows = prepare_predictions(SPEC, frame, source="t.csv", with_labels=False, time_column="when")
    assert rows.created_at[0] == datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_scores_and_versions_are_kept_and_checked() -> None:
    rows = prepare_predictions(
        SPEC,
        _table(score=["0.9", None, "0"], model_version=["3", None, "3"]),
        source="t.csv",
        with_labels=False,
    )
    assert rows.scores == [0.9, None, 0.0]
    assert rows.model_versions == ["3", None, "3"]
    assert "row 1 score: 1.5 is above the maximum 1.0" in _problem(
        _table(score=["1.5", None, None])
    )


def test_derived_ids_are_stable_and_match_training() -> None:
    from training.champion import prepare_table

    text = prepare_predictions(SPEC, _table(), source="t.csv", with_labels=False)
    again = prepare_predictions(SPEC, _table(), source="t.csv", with_labels=False)
    assert text.derived_ids
    assert text.request_ids == again.request_ids
    assert len(set(text.request_ids)) == 3
    labelled = _table().iloc[:2]
    assert prepare_table(SPEC, labelled)["request_id"].tolist() == text.request_ids[:2]


def test_identical_rows_get_separate_ids() -> None:
    frame = pd.concat([_table().iloc[:1]] * 3, ignore_index=True)
    ids = prepare_predictions(SPEC, frame, source="t.csv", with_labels=False).request_ids
    assert ids[1:] == [f"{ids[0]}-2", f"{ids[0]}-3"]


def test_explicit_ids_must_be_present_and_unique() -> None:
    rows = prepare_predictions(
        SPEC, _table(request_id=["a", "b", "c"]), source="t.csv", with_labels=False
    )
    assert (rows.request_ids, rows.derived_ids) == (["a", "b", "c"], False)
    assert "row 3 request_id: 'a' repeats the request id of row 1" in _problem(
        _table(request_id=["a", "b", "a"])
    )
    assert "row 2 order: is empty" in _problem(_table(order=["a", None, "c"]), id_column="order")


def test_labels_table() -> None:
    frame = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "bought": ["YES", "0", "No"],
            "received_at": ["2026-04-01T00:00:00Z", None, "2026-04-02"],
        }
    )
    labels = prepare_labels(SPEC, frame, source="l.csv")
    assert labels.labels == [1, 0, 0]
    assert labels.raw_labels == ["YES", "0", "No"]
    assert labels.received_at == [
        datetime(2026, 4, 1, tzinfo=UTC),
        None,
        datetime(2026, 4, 2, tzinfo=UTC),
    ]

    with pytest.raises(BackfillError, match="row 2 bought: is empty; every label row needs"):
        prepare_labels(SPEC, frame.assign(bought=["Yes", None, "No"]), source="l.csv")
    with pytest.raises(BackfillError, match=r"no 'request_id' column .*--id-column"):
        prepare_labels(SPEC, frame.drop(columns=["request_id"]), source="l.csv")


def _result(**counts: Any) -> BackfillResult:
    values: dict[str, Any] = {
        "model_name": "shop",
        "predictions_read": 0,
        "predictions_stored": 0,
        "predictions_already_stored": 0,
        "scored": 0,
        "scored_by": None,
        "naive_timestamps": 0,
        "first_at": None,
        "last_at": None,
        "labels_read": 0,
        "labels_stored": 0,
        "labels_updated": 0,
        "labels_unchanged": 0,
        "orphan_labels": 0,
        "orphan_examples": (),
    }
    return BackfillResult(**(values | counts))


def test_summary_says_what_happened() -> None:
    lines = summary_lines(
        _result(
            predictions_read=3,
            predictions_stored=2,
            predictions_already_stored=1,
            scored=2,
            scored_by="shop:abc",
            naive_timestamps=3,
            first_at=datetime(2026, 3, 1, tzinfo=UTC),
            last_at=datetime(2026, 3, 3, tzinfo=UTC),
            labels_read=2,
            labels_stored=2,
            orphan_labels=1,
            orphan_examples=("zz",),
        )
    )
    assert lines == [
        "backfill of shop",
        "  predictions  3 read, 2026-03-01 00:00:00 .. 2026-03-03 00:00:00 UTC: 2 stored,"
        " 1 already there",
        "  scored       2 by champion shop:abc",
        "  time zone    3 timestamps had none and were taken as UTC",
        "  labels       2 read: 2 stored, 0 updated, 0 unchanged",
        "  not loaded   1 label(s) with no prediction of shop, e.g. zz",
    ]
    assert summary_lines(_result(labels_read=4, labels_unchanged=4))[-1] == (
        "nothing new: everything read was already in the store"
    )
