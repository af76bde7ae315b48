"""Row ids of tables without a request id: pinned values and the first implementation as a
reference, so a faster one (or a pandas upgrade) cannot quietly change the ids of rows already
stored or trained on; and train and backfill give a table's rows the same ids."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.usertable import telco_table
from training.champion import prepare_table
from training.history import prepare_predictions
from training.rowids import row_request_ids
from training.sources import read_table
from training.spec import ModelSpec

# Computed with the row-by-row implementation (pandas agg + map) these ids were first made with.
TIMED = [
    "row-9a5dc0e7f95c95b747e408cdb76fd688",
    "row-4bbe439451a07b83f11075a7cd9bb777",
    "row-5578e08cc23d96993a47e35b38e0a8de",
    "row-47c849f3c2ad354fce36932ac556ddf0",
    "row-dd6f32cbc50687fb295b934c0b0c4ea3",
]
UNTIMED = [
    "row-7aef55add8b804986f98e36bba4eeee0",
    "row-659ac798df6ce1268a165e6f227a55fa",
    "row-c93140017bff8d7e52b7da093d087d5d",
    "row-84ebb099f8d324fff4fe1c438690f71d",
    "row-27441b02eabb6fdb05329bf038618f93",
]


def _spec(time_column: str | None) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "shop",
            "target": "bought",
            "positive_label": "Yes",
            "negative_label": "No",
            "time_column": time_column,
            "features": [
                {"name": "price", "type": "numeric"},
                {"name": "discount", "type": "numeric", "nullable": True},
                {"name": "store", "type": "categorical", "categories": ["1", "2"]},
                {"name": "channel", "type": "categorical", "categories": ["web"], "nullable": True},
            ],
            "model": {"family": "lightgbm"},
        }
    )


def _frame() -> pd.DataFrame:
    """Feature values as ``feature_frame`` gives them (floats, NaN, ``__missing__``) and UTC times,
    with the awkward ones: float repr, -0.0, non-ASCII text, fractions of a second."""
    return pd.DataFrame(
        {
            "price": [10.0, 20.5, 0.1 + 0.2, 1e16, -0.0],
            "discount": [1.0, math.nan, 1e-7, 123456789.125, math.nan],
            "store": ["1", "2", "é ü", "__missing__", "1"],
            "channel": ["web", "__missing__", "web", "a b", "__missing__"],
            "created_at": pd.to_datetime(
                [
                    "2026-03-01T10:00:00Z",
                    "2026-03-02 10:30:00.5+00:00",
                    "2026-03-03T00:00:00.000000001Z",
                    "2026-03-04T23:59:59-02:00",
                    "2026-03-01T10:00:00Z",
                ],
                format="ISO8601",
                utc=True,
            ),
        }
    )


def test_ids_are_the_pinned_values() -> None:
    assert row_request_ids(_spec("seen_at"), _frame()).tolist() == TIMED


def test_the_time_counts_only_when_the_spec_has_a_time_column() -> None:
    assert row_request_ids(_spec(None), _frame()).tolist() == UNTIMED
    assert row_request_ids(_spec("seen_at"), _frame().drop(columns="created_at")).tolist() == (
        UNTIMED
    )


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_the_time_unit_does_not_matter(unit: str) -> None:
    frame = _frame().iloc[[0, 3, 4]]
    frame["created_at"] = frame["created_at"].dt.as_unit(unit)
    assert row_request_ids(_spec("seen_at"), frame).tolist() == [TIMED[0], TIMED[3], TIMED[4]]


def test_ids_keep_the_frames_index() -> None:
    frame = _frame().set_axis([7, 3, 9, 1, 0])
    ids = row_request_ids(_spec("seen_at"), frame)
    assert ids.index.tolist() == [7, 3, 9, 1, 0]
    assert ids.tolist() == TIMED


def test_an_empty_table_has_no_ids() -> None:
    ids = row_request_ids(_spec("seen_at"), _frame().iloc[:0])
    assert isinstance(ids, pd.Series)
    assert ids.empty


def _reference_ids(spec: ModelSpec, frame: pd.DataFrame) -> list[str]:
    """The first implementation, row by row."""
    columns = [*spec.feature_names]
    if spec.time_column and "created_at" in frame.columns:
        columns.append("created_at")
    text = frame[columns].astype("string").fillna("\x00").agg("\x1f".join, axis=1)
    return [
        "row-" + hashlib.sha256(f"{spec.name}\x1e{row}".encode()).hexdigest()[:32] for row in text
    ]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_ids_agree_with_the_first_implementation(unit: str) -> None:
    rng = np.random.default_rng(3)
    rows = 400
    ticks = rng.integers(-(10**9), 3 * 10**9, rows) * 10**6  # 1938 .. 2065, in microseconds
    # Whole seconds, whole microseconds and nanoseconds, as times come.
    ticks = np.where(rng.random(rows) < 0.5, ticks // 10**6 * 10**6, ticks) * 1000
    ticks = np.where(rng.random(rows) < 0.2, ticks + rng.integers(1, 1000, rows), ticks)
    times = pd.Series(ticks.astype("datetime64[ns]")).dt.tz_localize("UTC").dt.as_unit(unit)
    times = times.mask(rng.random(rows) < 0.05)  # NaT
    prices = rng.normal(0, 1e3, rows)
    frame = pd.DataFrame(
        {
            "price": np.where(rng.random(rows) < 0.5, prices.round(), prices),
            "discount": np.where(rng.random(rows) < 0.3, math.nan, rng.random(rows)),
            "store": rng.choice(["1", "2", "é", "__missing__"], rows),
            "channel": rng.choice(["web", "__missing__"], rows),
            "created_at": times,
        }
    )
    assert row_request_ids(_spec("seen_at"), frame).tolist() == _reference_ids(
        _spec("seen_at"), frame
    )


TELCO = ModelSpec.model_validate(
    {
        "name": "telco",
        "target": "Churn",
        "positive_label": "Yes",
        "negative_label": "No",
        "time_column": "signup_date",
        "features": [
            {"name": "gender", "type": "categorical", "categories": ["Female", "Male"]},
            {"name": "SeniorCitizen", "type": "numeric", "min": 0, "max": 1},
            {"name": "Partner", "type": "categorical", "categories": ["No", "Yes"]},
            {"name": "tenure", "type": "numeric", "min": 0, "max": 100},
            {
                "name": "InternetService",
                "type": "categorical",
                "categories": ["DSL", "Fiber optic", "No"],
            },
            {"name": "MonthlyCharges", "type": "numeric", "min": 0, "max": 200},
            {"name": "TotalCharges", "type": "numeric", "min": 0, "nullable": True},
        ],
        "model": {"family": "lightgbm"},
    }
)


def test_train_and_backfill_give_a_telco_tables_rows_the_same_ids(tmp_path: Path) -> None:
    table = telco_table(300, seed=4)
    path = tmp_path / "telco.csv"
    table.to_csv(path, index=False)
    for frame in (table, read_table(path)):
        trained = prepare_table(TELCO, frame)["request_id"].tolist()
        loaded = prepare_predictions(TELCO, frame, source="telco", with_labels=True)
        assert loaded.derived_ids
        assert loaded.request_ids == trained
        assert len(set(trained)) == len(trained)
