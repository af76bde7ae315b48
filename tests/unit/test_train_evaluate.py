"""Training and the champion/challenger gates on small in-memory data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.usertable import telco_table
from training.evaluate import Evaluation, evaluate, judge, score
from training.spec import GatePolicy, ModelSpec, load_spec
from training.synthetic import generate
from training.train import fit, labels

FAMILIES = ("lightgbm", "logistic_regression")


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
    with pytest.raises(ValueError, match=r"target 'churned' has 200 row\(s\).*: 2 \(200 rows\)"):
        fit(spec, generate(200, seed=1).assign(churned=2))


def _family(spec: ModelSpec, family: str) -> ModelSpec:
    params = spec.model.params if family == spec.model.family else {}
    return spec.model_copy(
        update={"model": spec.model.model_copy(update={"family": family, "params": params})}
    )


def _telco_spec(family: str, **fields: Any) -> ModelSpec:
    """A spec for tests.usertable's telco table: Yes/No target, blanks in TotalCharges."""
    return ModelSpec.model_validate(
        {
            "name": "telco",
            "target": "Churn",
            "positive_label": "Yes",
            "negative_label": "No",
            "features": [
                {"name": "tenure", "type": "numeric", "min": 0},
                {"name": "MonthlyCharges", "type": "numeric", "min": 0},
                {"name": "TotalCharges", "type": "numeric", "min": 0, "nullable": True},
                {"name": "SeniorCitizen", "type": "categorical", "categories": [0, 1]},
                {
                    "name": "Contract",
                    "type": "categorical",
                    "categories": ["Month-to-month", "One year", "Two year"],
                },
                {
                    "name": "PaymentMethod",
                    "type": "categorical",
                    "categories": ["Electronic check", "Mailed check"],
                    "nullable": True,
                },
            ],
            "model": {
                "family": family,
                "params": {"n_estimators": 60, "verbose": -1} if family == "lightgbm" else {},
            },
        }
        | fields
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_users_table_trains_with_its_own_labels_and_blanks(family: str) -> None:
    """The telco table as published: a Yes/No target and " " for new customers' TotalCharges
    (a nullable feature), in every family."""
    spec = _telco_spec(family)
    train, test = telco_table(2000, seed=0), telco_table(1000, seed=1)
    assert (train["TotalCharges"] == " ").sum() > 10
    result = evaluate(fit(spec, train), spec, test)
    assert result.roc_auc > 0.7
    assert result.positive_rate == pytest.approx((test["Churn"] == "Yes").mean())


def test_labels_accept_every_spelling_of_the_spec_labels_and_1_0() -> None:
    spec = _telco_spec("lightgbm")
    frame = pd.DataFrame({"Churn": ["Yes", "No", " yes", "NO", 1, 0, True, False, "1", 1.0]})
    assert labels(spec, frame).tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 1]
    booleans = _telco_spec("lightgbm", positive_label=True, negative_label=False)
    assert labels(booleans, pd.DataFrame({"Churn": [True, False, 1, "false"]})).tolist() == [
        1,
        0,
        1,
        0,
    ]


def test_unexpected_labels_are_named_with_counts_and_what_the_spec_expects() -> None:
    spec = _telco_spec("lightgbm")
    frame = pd.DataFrame({"Churn": ["Yes", "No", "Maybe", "Maybe", None, "Y"]})
    with pytest.raises(ValueError, match=r"target 'Churn' has 4 row\(s\)") as error:
        labels(spec, frame)
    message = str(error.value)
    assert "'Maybe' (2 rows)" in message
    assert "missing (1 row)" in message
    assert "'Y' (1 row)" in message
    assert "positive_label 'Yes'" in message
    assert "negative_label 'No'" in message
    assert "YAML" not in message


def test_unquoted_yes_no_in_the_spec_is_explained(tmp_path: Path) -> None:
    """``positive_label: Yes`` unquoted is the boolean true to YAML; the data says "Yes"."""
    from training.spec import load_spec as read

    raw = _telco_spec("lightgbm").model_dump(mode="json")
    text = yaml.safe_dump(raw, sort_keys=False).replace("'Yes'", "Yes").replace("'No'", "No")
    assert "positive_label: Yes\n" in text
    path = tmp_path / "telco.yaml"
    path.write_text(text)
    spec = read(path)
    assert spec.positive_label is True
    with pytest.raises(ValueError, match="YAML read an unquoted yes/no as a boolean; quote them"):
        fit(spec, telco_table(300, seed=2))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_missing_number_is_never_read_as_zero(spec: ModelSpec, family: str) -> None:
    """A nullable feature whose training rows were all complete: a missing value scores as the
    training median would, not as 0 (LightGBM's own reading of a NaN it never saw)."""
    variant = ModelSpec.model_validate(
        {
            **_family(spec, family).model_dump(),
            "features": [
                f.model_dump() | {"nullable": f.name == "tenure_months"} for f in spec.features
            ],
        }
    )
    train = generate(2000, seed=1)
    model = fit(variant, train)
    rows = generate(300, seed=5)
    median = float(train["tenure_months"].median())
    missing = score(model, variant, rows.assign(tenure_months=np.nan))
    assert np.array_equal(missing, score(model, variant, rows.assign(tenure_months=median)))
    zero = score(model, variant, rows.assign(tenure_months=0.0))
    assert (missing != zero).mean() > 0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_a_nullable_categorys_missing_value_is_learnt_not_unknown(
    spec: ModelSpec, family: str
) -> None:
    """A missing value of a nullable categorical is a category of its own (here: churners often
    leave the region blank), not the same as a category the model never saw."""
    variant = ModelSpec.model_validate(
        {
            **_family(spec, family).model_dump(),
            "features": [f.model_dump() | {"nullable": f.name == "region"} for f in spec.features],
        }
    )
    train = generate(3000, seed=1)
    blank = (train["churned"] == 1) & (np.random.default_rng(0).random(len(train)) < 0.5)
    train.loc[blank, "region"] = None
    model = fit(variant, train)
    rows = generate(300, seed=5)
    missing = score(model, variant, rows.assign(region=None))
    unknown = score(model, variant, rows.assign(region="atlantis"))
    assert missing.mean() > unknown.mean() + 0.1


def test_logistic_regression_names_a_non_nullable_feature_with_gaps(spec: ModelSpec) -> None:
    linear = _family(spec, "logistic_regression")
    rows = generate(500, seed=1)
    rows.loc[rows.index[:7], "tenure_months"] = np.nan
    with pytest.raises(
        ValueError, match=r"feature 'tenure_months' has 7 missing .* `nullable: true`"
    ):
        fit(linear, rows)


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


def test_a_tie_is_not_promoted() -> None:
    """Two forced runs in a row trained byte-identical models: a gain of +0.0000 met
    ``min_auc_gain: 0`` and swapped the champion for its twin."""
    same = _evaluation(0.80, 0.45)
    verdict = judge(same, same, GatePolicy(min_auc=0.6))
    assert not verdict.passed
    assert [g.name for g in verdict.gates if not g.passed] == ["auc_gain"]
    assert "gain over champion +0.0000 vs required more than +0.0000" in verdict.reason
