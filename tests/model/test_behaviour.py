"""Behavioural tests of the trained churn model: direction, invariance and minimum function."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from training.evaluate import evaluate, score
from training.spec import ModelSpec, load_spec
from training.synthetic import generate
from training.train import fit


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec()


@pytest.fixture(scope="module")
def model(spec: ModelSpec) -> Pipeline:
    return fit(spec, generate(5000, seed=1))


def test_minimum_function_passes_the_promotion_floor(spec: ModelSpec, model: Pipeline) -> None:
    assert evaluate(model, spec, generate(2000, seed=9)).roc_auc >= spec.gates.min_auc + 0.05


def test_direction_more_support_calls_more_churn(spec: ModelSpec, model: Pipeline) -> None:
    rows = generate(500, seed=3)
    few, many = rows.assign(support_calls=0.0), rows.assign(support_calls=6.0)
    assert np.mean(score(model, spec, many) - score(model, spec, few)) > 0.15


def test_direction_two_year_contract_less_churn_than_monthly(
    spec: ModelSpec, model: Pipeline
) -> None:
    rows = generate(500, seed=3)
    monthly, two_year = rows.assign(contract="monthly"), rows.assign(contract="two_year")
    assert np.mean(score(model, spec, monthly) - score(model, spec, two_year)) > 0.1


def test_invariance_region_barely_moves_scores(spec: ModelSpec, model: Pipeline) -> None:
    """Region plays no part in the (undrifted) churn process, so it must not steer the model."""
    rows = generate(500, seed=3)
    north, south = rows.assign(region="north"), rows.assign(region="south")
    assert abs(np.mean(score(model, spec, north) - score(model, spec, south))) < 0.03
