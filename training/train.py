"""Fit a model for a spec on labelled data."""

from __future__ import annotations

import pandas as pd
from sklearn.pipeline import Pipeline

from training.features import build_pipeline, feature_frame, fit_params
from training.spec import ModelSpec

__all__ = ["fit", "labels"]


def labels(spec: ModelSpec, frame: pd.DataFrame) -> pd.Series:
    """The target as 0/1 integers.

    Raises:
        ValueError: the target column is missing or holds something other than 0/1.
    """
    if spec.target not in frame.columns:
        raise ValueError(f"data lacks the target column {spec.target!r}")
    target = pd.to_numeric(frame[spec.target], errors="coerce")
    bad = target.isna() | ~target.isin([0, 1])
    if bad.any():
        raise ValueError(f"target {spec.target!r} has {int(bad.sum())} value(s) other than 0/1")
    return (target == spec.positive_label).astype("int64")


def fit(spec: ModelSpec, frame: pd.DataFrame) -> Pipeline:
    """Fit the spec's pipeline on labelled rows.

    Raises:
        ValueError: no rows, one class only, or columns missing (the message says which).
    """
    if frame.empty:
        raise ValueError("no labelled rows to train on")
    y = labels(spec, frame)
    if y.nunique() < 2:
        raise ValueError(f"target {spec.target!r} has a single class; cannot train a classifier")
    pipeline = build_pipeline(spec)
    pipeline.fit(feature_frame(spec, frame), y, **fit_params(spec))
    return pipeline
