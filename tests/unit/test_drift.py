"""Drift detection through the spec's column mapping and its drift policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.drift import detect_drift
from training.drift_stats import corrected
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


def _charges_shift(sigmas: float, reference: pd.DataFrame) -> Scenario:
    """A covariate scenario moving monthly_charges alone by ``sigmas`` reference sigmas (the
    generator adds 35 * strength to it)."""
    std = float(reference["monthly_charges"].std())
    return Scenario(kind="covariate", columns=("monthly_charges",), strength=sigmas * std / 35)


def test_one_column_moved_by_a_fifth_of_a_sigma_is_a_drifted_window() -> None:
    """The policy's point: one feature moving is enough (min_drifted_columns 1), at 1,000 rows."""
    spec = load_spec()
    reference = generate(20000, seed=1)
    window = generate(1000, seed=2, scenario=_charges_shift(0.2, reference))
    result = detect_drift(spec, reference, window)
    assert [c.column for c in result.columns if c.drifted] == ["monthly_charges"]
    assert result.drifted
    charges = result.columns[spec.feature_names.index("monthly_charges")]
    assert charges.p_value is not None
    assert charges.p_threshold is not None
    assert charges.p_value < charges.p_threshold
    assert charges.score == pytest.approx(0.2, abs=0.06)


def test_a_significant_but_tiny_shift_at_a_large_window_is_not_drift() -> None:
    """At 100,000 rows K-S finds a 0.04 sigma move; the Wasserstein floor (0.1 sigma) keeps it quiet."""
    spec = load_spec()
    reference = generate(100_000, seed=1)
    window = generate(100_000, seed=2, scenario=_charges_shift(0.04, reference))
    result = detect_drift(spec, reference, window)
    charges = result.columns[spec.feature_names.index("monthly_charges")]
    assert charges.p_value is not None
    assert charges.p_value < 1e-6
    assert charges.score < spec.drift.numeric_min_distance
    assert not charges.drifted
    assert not result.drifted


def test_prediction_drift_compares_the_champions_scores() -> None:
    """A stand-in score (the bill, scaled) moves with the bill; a real champion is the pipeline
    benchmark's and the DAG tests' business."""
    spec = load_spec()
    reference = generate(5000, seed=1)

    def score(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(frame["monthly_charges"], dtype="float64") / 100

    same = detect_drift(spec, reference, generate(2000, seed=2), score=score)
    assert same.prediction is not None
    assert not same.prediction.drifted
    moved = detect_drift(
        spec,
        reference,
        generate(2000, seed=2, scenario=_charges_shift(0.5, reference)),
        score=score,
    )
    assert moved.prediction is not None
    assert moved.prediction.drifted
    assert moved.prediction.score == pytest.approx(0.5, abs=0.1)
    assert moved.columns_json()["__prediction__"]["drifted"] is True
    assert detect_drift(spec, reference, generate(2000, seed=2)).prediction is None


def test_holm_bonferroni_and_no_correction_on_tiny_values() -> None:
    p = [0.001, 0.02, 0.004, 0.5]
    assert corrected(p, 0.04, "none") == [0.04] * 4
    assert corrected(p, 0.04, "bonferroni") == [0.01] * 4
    # Holm: smallest first against 0.04/4, then 0.04/3, then 0.04/2 (0.02 is not below: stop).
    assert corrected(p, 0.04, "holm") == pytest.approx([0.01, 0.02, 0.04 / 3, 0.0])
    significant = [v < t for v, t in zip(p, corrected(p, 0.04, "holm"), strict=True)]
    assert significant == [True, False, True, False]


def test_specs_with_evidentlys_old_overrides() -> None:
    """Unset, the retired keys load (specs written before); set, they are refused by name."""
    data = load_spec().model_dump()
    old = ModelSpec.model_validate(
        {**data, "drift": {**data["drift"], "method": None, "column_threshold": None}}
    )
    assert old.drift == load_spec().drift
    with pytest.raises(ValueError, match=r"drift\.method is no longer used"):
        ModelSpec.model_validate({**data, "drift": {**data["drift"], "method": "ks"}})
