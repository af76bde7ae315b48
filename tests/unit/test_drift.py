"""Evidently drift detection through the spec's column mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.drift import detect_drift
from training.spec import load_spec
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
