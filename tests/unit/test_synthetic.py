"""The synthetic churn generator: seeded, learnable, and each drift scenario moves what it names."""

from __future__ import annotations

import pandas as pd
import pytest

from training.spec import load_spec
from training.synthetic import Scenario, generate


def test_same_seed_same_data() -> None:
    pd.testing.assert_frame_equal(generate(500, seed=3), generate(500, seed=3))
    assert not generate(500, seed=3).equals(generate(500, seed=4))


def test_columns_match_the_spec_and_stay_in_bounds() -> None:
    spec = load_spec()
    frame = generate(5000, seed=1)
    assert list(frame.columns) == [*spec.feature_names, spec.target]
    for feature in spec.features:
        column = frame[feature.name]
        if feature.type == "numeric":
            assert column.min() >= feature.min
            assert column.max() <= feature.max
        else:
            assert set(column) <= set(feature.categories)
    assert 0.2 < frame[spec.target].mean() < 0.5


def test_covariate_shift_moves_only_the_chosen_columns() -> None:
    base = generate(20000, seed=1)
    shifted = generate(
        20000, seed=1, scenario=Scenario(kind="covariate", columns=("monthly_charges",))
    )
    assert shifted["monthly_charges"].mean() - base["monthly_charges"].mean() > 30
    for column in ("usage_hours", "tenure_months", "age"):
        assert shifted[column].mean() == pytest.approx(base[column].mean(), rel=0.01)


def test_prior_shift_raises_churn_but_keeps_features() -> None:
    base = generate(20000, seed=1)
    shifted = generate(20000, seed=1, scenario=Scenario(kind="prior"))
    assert shifted["churned"].mean() > base["churned"].mean() + 0.15
    pd.testing.assert_frame_equal(shifted.drop(columns="churned"), base.drop(columns="churned"))


def test_concept_drift_changes_the_label_relation_only() -> None:
    base = generate(20000, seed=1)
    shifted = generate(20000, seed=1, scenario=Scenario(kind="concept"))
    pd.testing.assert_frame_equal(shifted.drop(columns="churned"), base.drop(columns="churned"))
    calls_effect = lambda f: f.groupby(f["support_calls"] >= 3)["churned"].mean().diff().iloc[-1]  # noqa: E731
    assert calls_effect(base) > 0.1
    assert calls_effect(shifted) < 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sideways"}, "not one of"),
        ({"kind": "covariate", "columns": ("age",)}, "cannot be shifted"),
        ({"kind": "prior", "strength": 9}, "within 0..3"),
    ],
)
def test_bad_scenarios_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scenario(**kwargs)  # type: ignore[arg-type]


def test_n_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate(0, seed=1)
