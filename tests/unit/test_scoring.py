"""FastScorer against the pipeline it was compiled from: same matrix, same scores, same refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder
from sklearn.tree import DecisionTreeClassifier

from training.evaluate import score
from training.features import build_pipeline, feature_frame, fit_params
from training.scoring import FastScorer
from training.spec import ModelSpec, load_spec
from training.synthetic import generate
from training.train import fit

FAMILIES = ("lightgbm", "logistic_regression")
LR_TOLERANCE = 1e-12
# The features _variant leaves required; every other one is nullable.
REQUIRED = ("age", "contract")


def _variant(spec: ModelSpec, family: str, **params: Any) -> ModelSpec:
    """The spec for ``family`` with every feature but ``REQUIRED`` nullable (extra LightGBM params
    merged)."""
    model = (
        spec.model.model_copy(update={"params": {**spec.model.params, **params}})
        if family == "lightgbm"
        else spec.model.model_copy(update={"family": family, "params": {}})
    )
    features = tuple(
        f.model_copy(update={"nullable": f.name not in REQUIRED}) for f in spec.features
    )
    return ModelSpec.model_validate(
        {
            **spec.model_dump(),
            "features": [f.model_dump() for f in features],
            "model": model.model_dump(),
        }
    )


def _records(spec: ModelSpec, *, n: int, seed: int) -> list[dict[str, Any]]:
    """Generated rows as request dicts, with unseen categories, a wrong case, None values and (for
    nullable features) absent keys; a required number is always there."""
    records: list[dict[str, Any]] = generate(n, seed=seed)[spec.feature_names].to_dict("records")
    rng = np.random.default_rng(seed)
    for record in records:
        for feature in spec.features:
            u = rng.random()
            if feature.type == "categorical":
                if u < 0.08:
                    record[feature.name] = "martian"
                elif u < 0.11:
                    record[feature.name] = feature.categories[0].upper()
                elif u < 0.18:
                    record[feature.name] = None
            elif feature.nullable and u < 0.08:
                record[feature.name] = None
            if feature.nullable and 0.18 <= u < 0.21:
                del record[feature.name]
    return records


def _training(spec: ModelSpec, *, gaps: bool) -> pd.DataFrame:
    """Labelled rows; with ``gaps`` some values of the nullable features are missing, so the model
    learns what a missing value means; without, it never saw one."""
    frame = generate(3000, seed=1)
    if gaps:
        rng = np.random.default_rng(1)
        for feature in spec.features:
            if feature.nullable:
                frame.loc[rng.random(len(frame)) < 0.05, feature.name] = None
    return frame


@dataclass(frozen=True)
class Case:
    spec: ModelSpec
    pipeline: Pipeline
    scorer: FastScorer
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec()


@pytest.fixture(
    scope="module",
    params=[(family, gaps) for family in FAMILIES for gaps in (True, False)],
    ids=lambda p: f"{p[0]}-{'gaps' if p[1] else 'complete'}-training",
)
def case(request: pytest.FixtureRequest, spec: ModelSpec) -> Case:
    family, gaps = request.param
    variant = _variant(spec, family)
    pipeline = fit(variant, _training(variant, gaps=gaps))
    records = _records(variant, n=10_000, seed=11)
    return Case(variant, pipeline, FastScorer.compile(pipeline, variant), records)


def _assert_scores_match(case: Case, got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.float64
    assert got.shape == expected.shape
    if case.spec.model.family == "lightgbm":
        # Bit-identical, not merely close: the same booster on the same matrix.
        assert np.array_equal(got, expected), np.abs(got - expected).max()
    else:
        assert np.abs(got - expected).max() <= LR_TOLERANCE


def test_the_records_exercise_unknown_and_missing_values(case: Case) -> None:
    """Guard against a vacuous comparison: the odd values occur and change the pipeline's scores."""
    spec, records = case.spec, case.records
    known = spec.features[-1].categories[0]
    name = spec.categorical_features[-1]
    odd = [i for i, r in enumerate(records) if r.get(name) not in spec.features[-1].categories]
    assert 1000 < len(odd) < 3000
    assert any(records[i].get(name, "") is None for i in odd)
    assert any(name not in records[i] for i in odd)
    subset = [records[i] for i in odd]
    as_known = [{**r, name: known} for r in subset]
    before = score(case.pipeline, spec, pd.DataFrame(subset))
    after = score(case.pipeline, spec, pd.DataFrame(as_known))
    assert (before != after).mean() > 0.5
    blank = [r for r in records if r.get("tenure_months") is None]
    assert len(blank) > 800
    assert any("tenure_months" not in r for r in blank)
    zeroed = [{**r, "tenure_months": 0.0} for r in blank]
    # A missing number is not read as zero, whether or not the training rows had gaps.
    assert (
        score(case.pipeline, spec, pd.DataFrame(blank))
        != score(case.pipeline, spec, pd.DataFrame(zeroed))
    ).mean() > 0.5


def test_matrix_is_the_preprocess_output(case: Case) -> None:
    frame = feature_frame(case.spec, pd.DataFrame(case.records))
    expected = case.pipeline.named_steps["preprocess"].transform(frame)
    got = case.scorer.matrix(case.records)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)  # NaN in the same places counts as equal


def test_scores_equal_the_pipeline(case: Case) -> None:
    expected = score(case.pipeline, case.spec, pd.DataFrame(case.records))
    got = case.scorer.score(case.records)
    _assert_scores_match(case, got, expected)
    assert got.std() > 0.05  # a real model, not a constant


def test_one_thread_as_a_server_worker_uses_gives_the_same_scores(case: Case) -> None:
    """The service compiles with ``num_threads=1``; thread counts may change speed, never scores."""
    expected = score(case.pipeline, case.spec, pd.DataFrame(case.records))
    one_thread = FastScorer.compile(case.pipeline, case.spec, num_threads=1)
    _assert_scores_match(case, one_thread.score(case.records), expected)


def test_single_records_equal_the_batch(case: Case) -> None:
    batch = case.scorer.score(case.records)
    picked = np.random.default_rng(3).choice(len(case.records), size=400, replace=False)
    singles = np.concatenate([case.scorer.score([case.records[i]]) for i in picked])
    _assert_scores_match(case, singles, batch[picked])
    for i in picked[:15]:
        # One-row DataFrames infer dtypes differently (a lone None is an object column), and an
        # omitted field is no column at all unless named.
        one = [case.records[i]]
        _assert_scores_match(
            case,
            case.scorer.score(one),
            score(case.pipeline, case.spec, pd.DataFrame(one, columns=case.spec.feature_names)),
        )


def test_a_missing_feature_key_is_named(case: Case) -> None:
    records = [dict(r) for r in case.records[:5]]
    records[3].pop("contract")
    with pytest.raises(ValueError, match=r"record 3 lacks feature 'contract'"):
        case.scorer.score(records)
    lone = {k: v for k, v in case.records[0].items() if k != "age"}
    with pytest.raises(ValueError, match="'age'"):
        case.scorer.score([lone])


def test_an_absent_nullable_feature_scores_as_null(case: Case) -> None:
    """A request may omit a nullable field: it scores as if it had sent null, as the pipeline
    scores a row whose value is missing."""
    full = {**case.records[0], "age": 40.0, "contract": "annual"}
    nulls = {**full, "tenure_months": None, "region": None}
    omitted = {k: v for k, v in full.items() if k not in ("tenure_months", "region")}
    expected = score(case.pipeline, case.spec, pd.DataFrame([nulls]))
    _assert_scores_match(case, case.scorer.score([omitted]), expected)
    _assert_scores_match(case, case.scorer.score([omitted, nulls])[:1], expected)
    assert case.scorer.score([omitted]) != case.scorer.score([full])


def test_extra_keys_are_ignored_and_nothing_scores_empty(case: Case) -> None:
    record = {**case.records[0], "customer_id": "c-1"}
    assert case.scorer.score([record]) == case.scorer.score([case.records[0]])
    assert case.scorer.score([]).shape == (0,)
    assert case.scorer.matrix([]).shape[0] == 0


@pytest.mark.parametrize("value", [None, float("nan"), float("inf")])
def test_logistic_regression_refuses_a_missing_required_number(
    spec: ModelSpec, value: float | None
) -> None:
    variant = _variant(spec, "logistic_regression")
    pipeline = fit(variant, generate(1000, seed=1))
    record = {**generate(1, seed=4)[variant.feature_names].to_dict("records")[0], "age": value}
    with pytest.raises(ValueError, match="'age'"):
        FastScorer.compile(pipeline, variant).score([record])
    # The pipeline refuses it too (training.features names a missing one, sklearn infinity).
    with pytest.raises(ValueError, match=r"'age' has 1 missing|infinity"):
        score(pipeline, variant, pd.DataFrame([record]))


@pytest.mark.parametrize("family", FAMILIES)
def test_an_infinite_nullable_number_is_refused_as_the_pipeline_does(
    spec: ModelSpec, family: str
) -> None:
    """A nullable number is imputed when missing; infinity is not missing, and sklearn's imputer
    refuses it, so the scorer does too (the service's schema never lets one through)."""
    variant = _variant(spec, family)
    pipeline = fit(variant, generate(1000, seed=1))
    record = generate(1, seed=4)[variant.feature_names].to_dict("records")[0]
    record["usage_hours"] = float("inf")
    with pytest.raises(ValueError, match="'usage_hours' is infinite"):
        FastScorer.compile(pipeline, variant).score([record])
    with pytest.raises(ValueError, match="infinity"):
        score(pipeline, variant, pd.DataFrame([record]))


def test_prediction_early_stopping_is_forwarded_as_sklearn_does(spec: ModelSpec) -> None:
    """LGBMClassifier passes its params to Booster.predict; pred_early_stop* change the scores."""
    variant = _variant(
        spec, "lightgbm", pred_early_stop=True, pred_early_stop_freq=5, pred_early_stop_margin=1.0
    )
    pipeline = fit(variant, generate(2000, seed=1))
    records = _records(variant, n=2000, seed=5)
    scorer = FastScorer.compile(pipeline, variant)
    expected = score(pipeline, variant, pd.DataFrame(records))
    assert np.array_equal(scorer.score(records), expected)
    plain = pipeline.named_steps["model"].booster_.predict(scorer.matrix(records))
    assert not np.array_equal(plain, expected)  # so the forwarding is what made them equal


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_category_listed_in_the_spec_is_honoured(spec: ModelSpec, family: str) -> None:
    """feature_frame turns None into "__missing__"; if the spec knows it, it is not unknown."""
    base = _variant(spec, family).model_dump()
    for feature in base["features"]:
        if feature["name"] == "region":
            feature["categories"] = [*feature["categories"], "__missing__"]
    variant = ModelSpec.model_validate(base)
    train = generate(2000, seed=1)
    train.loc[train.index % 5 == 0, "region"] = None
    pipeline = fit(variant, train)
    records = _records(variant, n=2000, seed=6)
    scorer = FastScorer.compile(pipeline, variant)
    matrix = scorer.matrix(records)
    np.testing.assert_array_equal(
        matrix,
        pipeline.named_steps["preprocess"].transform(feature_frame(variant, pd.DataFrame(records))),
    )
    got = scorer.score(records)
    expected = score(pipeline, variant, pd.DataFrame(records))
    if family == "lightgbm":
        assert np.array_equal(got, expected)
    else:
        assert np.abs(got - expected).max() <= LR_TOLERANCE


def _fitted_lightgbm(spec: ModelSpec) -> Pipeline:
    return fit(spec, generate(500, seed=2))


def _tree_pipeline(spec: ModelSpec) -> Pipeline:
    pipeline = build_pipeline(spec)
    pipeline.steps[-1] = ("model", DecisionTreeClassifier(max_depth=3))
    pipeline.fit(feature_frame(spec, generate(500, seed=2)), generate(500, seed=2)["churned"])
    return pipeline


def _strict_encoder_pipeline(spec: ModelSpec) -> Pipeline:
    categories = [list(f.categories) for f in spec.features if f.type == "categorical"]
    preprocess = ColumnTransformer(
        [("categorical", OrdinalEncoder(categories=categories), spec.categorical_features)],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    pipeline = Pipeline([("preprocess", preprocess), ("model", LGBMClassifier(verbose=-1))])
    data = generate(500, seed=2)
    pipeline.fit(feature_frame(spec, data), data["churned"])
    return pipeline


def _dropping_pipeline(spec: ModelSpec) -> Pipeline:
    pipeline = build_pipeline(spec)
    pipeline.steps[0][1].set_params(remainder="drop")
    data = generate(500, seed=2)
    pipeline.fit(feature_frame(spec, data), data["churned"])
    return pipeline


def _flag_only_missing_seen(spec: ModelSpec) -> Pipeline:
    variant = _variant(spec, "lightgbm")
    pipeline = build_pipeline(variant)
    pipeline.set_params(preprocess__missing__features="missing-only")
    data = _training(variant, gaps=True)
    pipeline.fit(feature_frame(variant, data), data["churned"], **fit_params(variant))
    return pipeline


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (build_pipeline, "not fitted"),
        (lambda s: _fitted_lightgbm(s).steps[-1][1], "two-step sklearn Pipeline"),
        (_tree_pipeline, "unsupported model DecisionTreeClassifier"),
        (_strict_encoder_pipeline, "encode unknown categories"),
        (_dropping_pipeline, "drops features"),
        (_flag_only_missing_seen, "flag NaN in every feature"),
    ],
)
def test_a_pipeline_of_another_shape_is_refused(spec: ModelSpec, make: Any, message: str) -> None:
    variant = _variant(spec, "lightgbm") if make is _flag_only_missing_seen else spec
    with pytest.raises(ValueError, match=message):
        FastScorer.compile(make(spec), variant)


def test_a_spec_of_another_family_is_refused(spec: ModelSpec) -> None:
    linear = _variant(spec, "logistic_regression")
    with pytest.raises(ValueError, match="lightgbm model but the spec says logistic_regression"):
        FastScorer.compile(_fitted_lightgbm(spec), linear)
