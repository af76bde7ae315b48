"""Training and the champion/challenger gates on small in-memory data."""

from __future__ import annotations

import pandas as pd
import pytest

from training.evaluate import Evaluation, evaluate, judge
from training.spec import GatePolicy, ModelSpec, load_spec
from training.synthetic import generate
from training.train import fit


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec()


def test_lightgbm_learns_the_signal(spec: ModelSpec) -> None:
    model = fit(spec, generate(3000, seed=1))
    result = evaluate(model, spec, generate(1500, seed=2))
    assert result.roc_auc > 0.72
    assert 0 < result.log_loss < 0.69
    assert result.rows == 1500


def test_logistic_regression_family_works_too(spec: ModelSpec) -> None:
    linear = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"family": "logistic_regression", "params": {}})
        }
    )
    result = evaluate(fit(linear, generate(3000, seed=1)), linear, generate(1500, seed=2))
    assert result.roc_auc > 0.72


def test_unseen_category_scores_instead_of_failing(spec: ModelSpec) -> None:
    model = fit(spec, generate(2000, seed=1))
    rows = generate(10, seed=5).assign(region="atlantis", contract="lifetime")
    assert evaluate(model, spec, pd.concat([rows, generate(100, seed=6)])).rows == 110


def test_single_class_is_refused(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match="single class"):
        fit(spec, generate(200, seed=1).assign(churned=0))


def test_missing_column_is_named(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match=r"lacks feature column.*region"):
        fit(spec, generate(200, seed=1).drop(columns="region"))


def test_bad_labels_are_named(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match=r"churned.*other than 0/1"):
        fit(spec, generate(200, seed=1).assign(churned=2))


def _evaluation(auc: float, loss: float) -> Evaluation:
    return Evaluation(rows=100, positive_rate=0.3, roc_auc=auc, log_loss=loss, accuracy=0.8, f1=0.5)


def test_gates_pass_a_better_challenger() -> None:
    verdict = judge(_evaluation(0.80, 0.45), _evaluation(0.75, 0.50), GatePolicy(min_auc=0.6))
    assert verdict.passed
    assert verdict.reason == "all gates passed"


def test_gates_reject_a_worse_challenger_and_say_why() -> None:
    verdict = judge(_evaluation(0.74, 0.60), _evaluation(0.75, 0.50), GatePolicy(min_auc=0.6))
    assert not verdict.passed
    assert [g.name for g in verdict.gates if not g.passed] == ["auc_gain", "log_loss"]
    assert "ROC AUC gain over champion -0.0100" in verdict.reason


def test_floor_applies_without_a_champion() -> None:
    verdict = judge(_evaluation(0.55, 0.6), None, GatePolicy(min_auc=0.6))
    assert not verdict.passed
    assert [g.name for g in verdict.gates] == ["min_auc"]
