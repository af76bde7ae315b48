"""The training-data policy: what a challenger trains on and what judges it."""

from __future__ import annotations

import pandas as pd
import pytest

from training.spec import ModelSpec, TrainingPolicy, load_spec
from training.trainset import split_for_challenger


def _spec(**training: object) -> ModelSpec:
    return load_spec().model_copy(update={"training": TrainingPolicy(**training)})


def _window(n: int, prefix: str = "w") -> pd.DataFrame:
    spec = load_spec()
    rows = [spec.example_request() | {spec.target: i % 2} for i in range(n)]
    frame = pd.DataFrame(rows)
    frame["request_id"] = [f"{prefix}{i:04d}" for i in range(n)]
    frame["created_at"] = pd.date_range("2026-03-01", periods=n, freq="h", tz="UTC")
    return frame


def test_holdout_is_the_newest_share_of_the_window() -> None:
    window = _window(100)
    split = split_for_challenger(_spec(data="window"), window, None)
    assert len(split.holdout) == 30
    assert split.holdout["created_at"].min() > split.train["created_at"].max()
    assert split.reference_rows == 0
    assert len(split.train) == 70


def test_rows_the_champion_trained_on_never_judge() -> None:
    window = _window(100)
    # The champion trained on the newest 20 rows of this very window (an overlapping earlier run).
    reference = window.iloc[80:].copy()
    split = split_for_challenger(_spec(data="window"), window, reference)
    assert not set(split.holdout["request_id"]) & set(reference["request_id"])
    assert len(split.holdout) == round(80 * 0.3)
    assert split.excluded_from_holdout == 20
    # They still train the challenger: nothing labelled is thrown away.
    assert set(reference["request_id"]) <= set(split.train["request_id"])
    assert len(split.train) + len(split.holdout) == 100


def test_window_and_reference_adds_a_sample_of_the_champions_rows() -> None:
    window = _window(100)
    reference = _window(500, prefix="ref")
    spec = _spec(data="window_and_reference")
    split = split_for_challenger(spec, window, reference)
    assert split.window_rows == 70
    assert split.reference_rows == 70
    from_reference = split.train["request_id"].str.startswith("ref")
    assert from_reference.sum() == 70
    assert not split.holdout["request_id"].str.startswith("ref").any()
    again = split_for_challenger(spec, window, reference)
    assert list(again.train["request_id"]) == list(split.train["request_id"]), "seeded"


@pytest.mark.parametrize(("ratio", "expected"), [(0.5, 35), (3.0, 210), (100.0, 500)])
def test_reference_share_follows_the_ratio_and_the_reference_size(
    ratio: float, expected: int
) -> None:
    split = split_for_challenger(
        _spec(reference_ratio=ratio), _window(100), _window(500, prefix="ref")
    )
    assert split.reference_rows == expected


def test_reference_without_request_ids_is_sampled_whole() -> None:
    # The demo's synthetic first champion trained on rows that never went through the log.
    reference = _window(50).drop(columns=["request_id", "created_at"])
    split = split_for_challenger(_spec(), _window(100), reference)
    assert split.reference_rows == 50
    assert split.excluded_from_holdout == 0


def test_auto_policy_adds_the_champions_rows_while_its_relation_holds() -> None:
    spec = load_spec()
    assert spec.training.data == "auto"
    split = split_for_challenger(spec, _window(100), _window(500, prefix="ref"))
    assert split.reference_rows == 70
    assert split.reference_left_out is None


def test_auto_policy_leaves_the_champions_rows_out_once_its_relation_changed() -> None:
    # Concept drift: the champion's rows would teach the challenger the relation that just failed.
    split = split_for_challenger(
        load_spec(),
        _window(100),
        _window(500, prefix="ref"),
        relation_changed="its live ROC AUC fell 0.120",
    )
    assert split.reference_rows == 0
    assert len(split.train) == 70
    assert "left out: its live ROC AUC fell 0.120" in split.describe()


def test_an_explicit_policy_ignores_the_relation_check() -> None:
    reference = _window(500, prefix="ref")
    kept = split_for_challenger(
        _spec(data="window_and_reference"), _window(100), reference, relation_changed="fell"
    )
    assert kept.reference_rows == 70
    assert kept.reference_left_out is None
