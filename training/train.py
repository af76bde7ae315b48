"""Fit a model for a spec on labelled data."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.pipeline import Pipeline

from training.features import build_pipeline, feature_frame, fit_params, refuse_missing
from training.spec import ModelSpec

__all__ = ["fit", "labels"]

# How many unexpected target values an error lists (the most frequent first).
_SHOWN_VALUES = 5
# Spellings YAML 1.1 reads as booleans when unquoted (what a spec's labels may have become).
_YAML_BOOLEAN_WORDS = frozenset({"yes", "no", "y", "n", "on", "off"})


def labels(spec: ModelSpec, frame: pd.DataFrame) -> pd.Series:
    """The target as 0/1 integers, read the way the data spells it.

    Each value may be the spec's ``positive_label`` or ``negative_label`` as the data spells it
    (text compares without case or surrounding blanks, numbers by value: "Yes", " yes", 1.0, True),
    or 1/0 (see ``ModelSpec.label_of``).

    Raises:
        ValueError: the target column is missing, or holds other values or gaps; the message names
            the column, the first few unexpected values with their counts, and what the spec expects.
    """
    if spec.target not in frame.columns:
        raise ValueError(f"data lacks the target column {spec.target!r}")
    target = frame[spec.target]
    codes: dict[Any, int] = {}
    unexpected: list[tuple[Any, int]] = []
    counts = target.value_counts(dropna=False)
    # tolist() gives Python values (an int64 or bool column's numpy scalars), as label_of reads them.
    for value, count in zip(counts.index.tolist(), counts.tolist(), strict=True):
        if pd.isna(value):
            unexpected.append((None, count))
            continue
        try:
            codes[value] = spec.label_of(value)
        except ValueError:
            unexpected.append((value, count))
    if unexpected:
        raise ValueError(_unexpected_labels(spec, unexpected))
    return target.map(codes).astype("int64")


def _unexpected_labels(spec: ModelSpec, unexpected: list[tuple[Any, int]]) -> str:
    rows = sum(count for _, count in unexpected)
    shown = ", ".join(
        f"missing ({count} row{'s' if count > 1 else ''})"
        if value is None
        else f"{value!r} ({count} row{'s' if count > 1 else ''})"
        for value, count in unexpected[:_SHOWN_VALUES]
    )
    if len(unexpected) > _SHOWN_VALUES:
        shown += f" and {len(unexpected) - _SHOWN_VALUES} more value(s)"
    message = (
        f"target {spec.target!r} has {rows} row(s) whose value is neither the spec's "
        f"positive_label {spec.positive_label!r} nor its negative_label {spec.negative_label!r} "
        f"(nor 1/0): {shown}"
    )
    said_boolean = isinstance(spec.positive_label, bool) or isinstance(spec.negative_label, bool)
    seen_words = {
        str(value).strip().casefold() for value, _ in unexpected if isinstance(value, str)
    }
    if said_boolean and seen_words & _YAML_BOOLEAN_WORDS:
        message += (
            ". The spec's labels are booleans but the data holds yes/no text: YAML read an "
            "unquoted yes/no as a boolean; quote them in the spec, e.g. positive_label: 'Yes' "
            "and negative_label: 'No'"
        )
    return message


def fit(spec: ModelSpec, frame: pd.DataFrame) -> Pipeline:
    """Fit the spec's pipeline on labelled rows.

    Raises:
        ValueError: no rows, one class only, labels the spec does not know, columns missing, or
            missing numbers in a non-nullable feature the family cannot take (the message says
            which).
    """
    if frame.empty:
        raise ValueError("no labelled rows to train on")
    y = labels(spec, frame)
    if y.nunique() < 2:
        raise ValueError(f"target {spec.target!r} has a single class; cannot train a classifier")
    features = feature_frame(spec, frame)
    refuse_missing(spec, features)
    pipeline = build_pipeline(spec)
    pipeline.fit(features, y, **fit_params(spec))
    return pipeline
