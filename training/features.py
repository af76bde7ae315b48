"""Turn a model spec into the preprocessing + estimator pipeline (one artifact, as scikit-learn intends)."""

from __future__ import annotations

from typing import Any, Final

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from training.columns import as_text
from training.spec import Feature, ModelSpec

__all__ = [
    "MISSING_CATEGORY",
    "build_pipeline",
    "category_text",
    "feature_frame",
    "fit_params",
    "refuse_missing",
]

# What an absent categorical value becomes before encoding. A nullable feature's encoder knows it as
# one more category, so the model can learn what a missing value means; for any other feature it is
# an unknown category, as it always was.
MISSING_CATEGORY: Final = "__missing__"


def feature_frame(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The spec's feature columns, in the spec's order and types.

    Numeric values that do not parse (a blank, a stray text) become NaN; absent categorical values
    become ``MISSING_CATEGORY``.

    Raises:
        ValueError: a feature column is missing (the message names it).
    """
    missing = [name for name in spec.feature_names if name not in frame.columns]
    if missing:
        raise ValueError(f"data lacks feature column(s) {', '.join(missing)}")
    out = frame[spec.feature_names].copy()
    for name in spec.numeric_features:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    for name in spec.categorical_features:
        out[name] = category_text(out[name]).fillna(MISSING_CATEGORY).astype(object)
    return out


def category_text(values: pd.Series) -> pd.Series:
    """Categorical values as the text a request sends: a code column that Parquet or pandas holds
    as floats (an integer column with gaps) gives "1", not "1.0"."""
    if pd.api.types.is_float_dtype(values.dtype):
        return values.map(as_text, na_action="ignore").astype("string")
    return values.astype("string")


def refuse_missing(spec: ModelSpec, features: pd.DataFrame) -> None:
    """Refuse missing numbers in non-nullable features where the model family cannot take them.

    LightGBM keeps its own handling of NaN in a non-nullable feature (what it always did); a
    logistic regression has none, and scikit-learn's refusal would name no column.

    Args:
        spec: the spec the features were read for.
        features: ``feature_frame``'s output.

    Raises:
        ValueError: naming the feature, how many values are missing and the spec field to set.
    """
    if spec.model.family == "lightgbm":
        return
    for feature in spec.features:
        if feature.type != "numeric" or feature.nullable:
            continue
        gaps = int(features[feature.name].isna().sum())
        if gaps:
            raise ValueError(
                f"feature {feature.name!r} has {gaps} missing or non-numeric value(s) and is not "
                f"nullable; a {spec.model.family} model needs a number in every row. Mark it "
                "`nullable: true` in the spec to impute it, or clean the data"
            )


def _encoder_categories(feature: Feature) -> list[str]:
    categories = list(feature.categories)
    if feature.nullable and MISSING_CATEGORY not in categories:
        categories.append(MISSING_CATEGORY)
    return categories


def _imputer() -> SimpleImputer:
    # The median, not the mean: charges and counts are skewed, and one huge value should not move
    # what a missing value is read as. keep_empty_features: a nullable feature that happens to be
    # empty in the training rows keeps its column (filled with 0, learnt as constant, so unused),
    # and the pipeline's layout never depends on the data.
    return SimpleImputer(strategy="median", keep_empty_features=True)


def _indicator() -> MissingIndicator:
    # features="all": one 0/1 column per nullable feature whether or not the training rows had a
    # gap in it (sklearn's add_indicator would add columns only for those that did).
    return MissingIndicator(features="all", sparse=False)


def build_pipeline(spec: ModelSpec) -> Pipeline:
    """An unfitted pipeline for the spec's model family; unseen categories are encoded, not refused.

    A nullable numeric feature is imputed with its training median and gets a missing-indicator
    column, in both families. For the logistic regression there is no other way: it cannot take a
    NaN. For LightGBM, whose trees can route NaN themselves, imputing is still chosen: a booster
    whose training rows had no NaN in a feature reads a NaN there as 0.0 at prediction, so a
    missing value would silently mean zero. With the median plus the indicator, a missing value
    means "typical" until the training data shows otherwise, and the trees can still split on the
    indicator to learn what missing means when the training rows have gaps. Non-nullable numeric
    features are as before: passed through to LightGBM (which handles a NaN its own way), scaled
    for the logistic regression (which refuses one; see ``refuse_missing``).
    """
    categories = [_encoder_categories(f) for f in spec.features if f.type == "categorical"]
    nullable = [f.name for f in spec.features if f.type == "numeric" and f.nullable]
    complete = [f.name for f in spec.features if f.type == "numeric" and not f.nullable]
    blocks: list[tuple[str, Any, list[str]]]
    if spec.model.family == "lightgbm":
        from lightgbm import LGBMClassifier

        encoder = OrdinalEncoder(
            categories=categories, handle_unknown="use_encoded_value", unknown_value=-1
        )
        # The categorical block first: fit_params names its columns by position.
        blocks = [
            ("categorical", encoder, spec.categorical_features),
            ("imputed", _imputer(), nullable),
            ("missing", _indicator(), nullable),
        ]
        remainder = "passthrough"
        estimator: Any = LGBMClassifier(**spec.model.params)
    else:
        blocks = [
            (
                "categorical",
                OneHotEncoder(categories=categories, handle_unknown="ignore"),
                spec.categorical_features,
            ),
            ("numeric", StandardScaler(), complete),
            (
                "imputed",
                Pipeline([("impute", _imputer()), ("scale", StandardScaler())]),
                nullable,
            ),
            # Unscaled, as the one-hot columns are: 0/1 already.
            ("missing", _indicator(), nullable),
        ]
        remainder = "drop"
        estimator = LogisticRegression(max_iter=1000, **spec.model.params)
    preprocess = ColumnTransformer(
        # A block reading no column would stay unfitted in the fitted pipeline: leave it out.
        [block for block in blocks if block[2]],
        remainder=remainder,
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def fit_params(spec: ModelSpec) -> dict[str, object]:
    """Arguments for ``Pipeline.fit``: LightGBM treats the encoded leading columns as categorical."""
    if spec.model.family == "lightgbm":
        return {"model__categorical_feature": list(range(len(spec.categorical_features)))}
    return {}
