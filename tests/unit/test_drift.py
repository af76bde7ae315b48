"""Evidently drift detection through the spec's column mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.drift import detect_drift
from training.spec import ModelSpec, load_spec
from training.synthetic import Scenario, generate


def test_no_drift_on_the_same_population(tmp_path: Path) -> None:
    spec = load_spec()
    result = detect_drift(spec, generate(3000, seed=1), generate(2000, seed=2), tmp_path / "r.html")
    assert not result.drifted
    assert result.drift_share < spec.drift.share_threshold
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_covariate_shift_is_found_in_the_shifted_columns() -> None:
    spec = load_spec()
    shifted = generate(
        2000,
        seed=2,
        scenario=Scenario(kind="covariate", columns=("monthly_charges", "usage_hours")),
    )
    result = detect_drift(spec, generate(3000, seed=1), shifted)
    drifted = {c.column for c in result.columns if c.drifted}
    assert drifted == {"monthly_charges", "usage_hours"}
    assert result.drift_share == pytest.approx(2 / 8)
    assert {c.column for c in result.most_drifted(2)} == drifted


def test_label_prior_shift_shows_in_the_target_only() -> None:
    spec = load_spec()
    result = detect_drift(
        spec, generate(3000, seed=1), generate(2000, seed=2, scenario=Scenario(kind="prior"))
    )
    assert result.drift_share == 0
    assert result.target is not None
    assert result.target.drifted


def test_empty_window_is_refused() -> None:
    spec = load_spec()
    with pytest.raises(ValueError, match="rows on both sides"):
        detect_drift(spec, generate(100, seed=1), generate(100, seed=1).iloc[:0])


def _all_nullable() -> ModelSpec:
    spec = load_spec()
    return ModelSpec.model_validate(
        {
            **spec.model_dump(),
            "features": [f.model_dump() | {"nullable": True} for f in spec.features],
        }
    )


@pytest.mark.parametrize(
    ("reference_rows", "rows"), [(800, 200), (3000, 2000)], ids=["small", "large"]
)
def test_gaps_in_nullable_features_are_compared_without_failing(
    reference_rows: int, rows: int
) -> None:
    """Evidently picks other tests for small and large windows; both take a window with gaps
    (and a reference with some of its own), and a missing category is a category of its own."""
    spec = _all_nullable()
    reference, current = generate(reference_rows, seed=1), generate(rows, seed=2)
    reference.loc[reference.index[: reference_rows // 20], "usage_hours"] = np.nan
    current.loc[current.index[: rows // 10], ["tenure_months", "age"]] = np.nan
    current.loc[current.index[: rows // 2], "region"] = None

    result = detect_drift(spec, reference, current)

    by_column = {c.column: c for c in result.columns}
    assert list(by_column) == spec.feature_names
    assert not by_column["tenure_months"].drifted
    assert not by_column["usage_hours"].drifted
    assert by_column["region"].drifted  # half the window lacks a region


def test_a_feature_missing_from_every_row_of_the_window_is_drift() -> None:
    """An upstream field that stopped coming: Evidently refuses an empty column, so it is judged
    apart, as drifted, and the other columns are compared as usual."""
    spec = _all_nullable()
    current = generate(2000, seed=2).assign(usage_hours=np.nan)
    shifted = detect_drift(spec, generate(3000, seed=1), current)
    usage = next(c for c in shifted.columns if c.column == "usage_hours")
    assert usage.drifted
    assert usage.method == "no values in the current window"
    assert [c.column for c in shifted.columns if c.drifted] == ["usage_hours"]
    assert shifted.most_drifted(1) == [usage]

    reference = generate(3000, seed=1).assign(usage_hours=np.nan)
    both = detect_drift(spec, reference, current)
    assert not next(c for c in both.columns if c.column == "usage_hours").drifted


def test_unlabelled_rows_count_toward_feature_drift() -> None:
    """The newest days of a window still wait for their labels. Before, once 30 labels existed,
    every unlabelled row was dropped before the feature test: a shift in them went unseen."""
    import pandas as pd

    spec = load_spec()
    labelled = generate(1000, seed=2)
    waiting = generate(
        3000,
        seed=3,
        scenario=Scenario(kind="covariate", columns=("monthly_charges", "usage_hours")),
    )
    waiting[spec.target] = None
    window = pd.concat([labelled, waiting], ignore_index=True)

    result = detect_drift(spec, generate(3000, seed=1), window)

    assert result.rows_current == len(window)
    assert {c.column for c in result.columns if c.drifted} == {"monthly_charges", "usage_hours"}
    # The label is still compared on the labelled rows only: no shift there.
    assert result.target is not None
    assert not result.target.drifted
