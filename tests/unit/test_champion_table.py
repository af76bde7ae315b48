"""training.champion.prepare_table's times: the rule backfill reads them by, so a table
``driftloop train`` takes is one ``driftloop backfill`` takes (with the same ids), and a bad time is
one line naming the column, the row and the value."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
import pytest

from training.champion import prepare_table
from training.history import BackfillError, prepare_predictions
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
            {"name": "store", "type": "categorical", "categories": ["1", "2"]},
        ],
        "model": {"family": "lightgbm"},
    }
)
ISO = "ISO 8601 such as 2026-01-31, 2026-01-31 08:00:00 or 2026-01-31T08:00:00+01:00"


def _table(seen_at: list[Any], bought: list[Any] | None = None) -> pd.DataFrame:
    rows = len(seen_at)
    return pd.DataFrame(
        {
            "seen_at": seen_at,
            "price": [str(10 + p) for p in range(rows)],
            "store": ["1", "2"] * (rows // 2) + ["1"] * (rows % 2),
            "bought": bought or ["Yes", "No"] * (rows // 2) + ["Yes"] * (rows % 2),
        }
    )


def _refusal(table: pd.DataFrame) -> str:
    with pytest.raises(ValueError, match=r"^time_column ") as refused:
        prepare_table(SPEC, table)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_iso_text_is_read_in_utc_and_without_a_zone_as_utc() -> None:
    rows = prepare_table(
        SPEC,
        _table(["2026-03-01", "2026-03-02 10:30", "2026-03-03T08:00:00+02:00", "2026-03-04T09Z"]),
    )
    assert rows["created_at"].tolist() == [
        pd.Timestamp("2026-03-01", tz="UTC"),
        pd.Timestamp("2026-03-02 10:30", tz="UTC"),
        pd.Timestamp("2026-03-03 06:00", tz="UTC"),
        pd.Timestamp("2026-03-04 09:00", tz="UTC"),
    ]
    assert str(rows["created_at"].dtype) == "datetime64[ns, UTC]"


@pytest.mark.parametrize(
    "times",
    [
        pd.to_datetime(
            ["2026-03-01 10:00", "2026-03-02"], format="ISO8601"
        ),  # a Parquet timestamp without a zone
        pd.to_datetime(["2026-03-01 11:00", "2026-03-02 01:00"]).tz_localize("Europe/Paris"),
        [datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 2)],
        [pd.Timestamp("2026-03-01 10:00"), date(2026, 3, 2)],
    ],
)
def test_real_timestamps_are_read_in_utc(times: Any) -> None:
    rows = prepare_table(SPEC, _table(list(times)))
    assert rows["created_at"].tolist() == [
        pd.Timestamp("2026-03-01 10:00", tz="UTC"),
        pd.Timestamp("2026-03-02 00:00", tz="UTC"),
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("01/02/2026", "'01/02/2026'"),  # January or February?
        ("31.01.2026", "'31.01.2026'"),
        ("last tuesday", "'last tuesday'"),
        (1767225600, "1767225600"),  # seconds since 1970, or nanoseconds?
        (1767225600.5, "1767225600.5"),
    ],
)
def test_a_time_backfill_refuses_is_refused_by_row_and_value(value: Any, shown: str) -> None:
    table = _table(["2026-03-01", value, "2026-03-03"])
    message = _refusal(table)
    assert message == f"time_column 'seen_at': row 2: {shown} is not a timestamp ({ISO})"
    with pytest.raises(BackfillError, match=f"row 2 seen_at: {shown}"):
        prepare_predictions(SPEC, table, source="t.csv", with_labels=True)


def test_an_epoch_number_column_is_refused() -> None:
    message = _refusal(_table([1767225600, 1767312000]))
    assert message.startswith("time_column 'seen_at': row 1: 1767225600 is not a timestamp")
    assert message.endswith("; and 1 more row(s)")


def test_rows_count_unlabelled_rows_and_only_labelled_rows_need_a_time() -> None:
    # Row 2 has no label: its empty time is no problem, but it still counts as a row.
    table = _table(["2026-03-01", " ", "soon", None], bought=["Yes", None, "No", "Yes"])
    assert _refusal(table) == (
        f"time_column 'seen_at': row 3: 'soon' is not a timestamp ({ISO}); and 1 more row(s)"
    )
    assert _refusal(table.iloc[[0, 1, 3]]) == (
        "time_column 'seen_at': row 3: is empty; every labelled row needs its time"
    )
    rows = prepare_table(SPEC, table.iloc[:2])
    assert rows["created_at"].tolist() == [pd.Timestamp("2026-03-01", tz="UTC")]


@pytest.mark.parametrize(
    "seen_at",
    [
        ["2026-03-01", "2026-03-02T10:00:00.123456789Z"],
        ["20260301", "2026-03-02 10:00:00-05:00"],
        [datetime(2026, 3, 1, 12, 30), "2026-03-02"],
        list(
            pd.to_datetime(["2026-03-01", "2026-03-02 10:00"], format="ISO8601").tz_localize("UTC")
        ),
    ],
)
def test_train_and_backfill_read_the_same_times_and_give_the_same_ids(seen_at: list[Any]) -> None:
    table = _table(seen_at)
    trained = prepare_table(SPEC, table)
    loaded = prepare_predictions(SPEC, table, source="t.csv", with_labels=True)
    assert trained["request_id"].tolist() == loaded.request_ids
    assert [t.to_pydatetime() for t in trained["created_at"].dt.floor("us")] == loaded.created_at
