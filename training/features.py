"""Turn a model spec into the preprocessing + estimator pipeline (one artifact, as scikit-learn intends)."""

from __future__ import annotations

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from training.spec import ModelSpec

__all__ = ["build_pipeline", "feature_frame", "fit_params"]


def feature_frame(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The spec's feature columns, in the spec's order and types.

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
        out[name] = out[name].astype("string").fillna("__missing__").astype(object)
    return out


def build_pipeline(spec: ModelSpec) -> Pipeline:
    """An unfitted pipeline for the spec's model family; unseen categories are encoded, not refused."""
    categories = [list(f.categories) for f in spec.features if f.type == "categorical"]
    if spec.model.family == "lightgbm":
        from lightgbm import LGBMClassifier

        encoder = OrdinalEncoder(
            categories=categories, handle_unknown="use_encoded_value", unknown_value=-1
        )
        preprocess = ColumnTransformer(
            [("categorical", encoder, spec.categorical_features)],
            remainder="passthrough",
            verbose_feature_names_out=False,
        )
        estimator = LGBMClassifier(**spec.model.params)
    else:
        preprocess = ColumnTransformer(
            [
                (
                    "categorical",
                    OneHotEncoder(categories=categories, handle_unknown="ignore"),
                    spec.categorical_features,
                ),
                ("numeric", StandardScaler(), spec.numeric_features),
            ],
            verbose_feature_names_out=False,
        )
        estimator = LogisticRegression(max_iter=1000, **spec.model.params)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def fit_params(spec: ModelSpec) -> dict[str, object]:
    """Arguments for ``Pipeline.fit``: LightGBM treats the encoded leading columns as categorical."""
    if spec.model.family == "lightgbm":
        return {"model__categorical_feature": list(range(len(spec.categorical_features)))}
    return {}
