"""Data drift of a window against the champion's training data, with Evidently."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from training.features import feature_frame
from training.spec import ModelSpec

__all__ = ["ColumnDrift", "DriftResult", "detect_drift"]


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    rows_reference: int
    rows_current: int
    drift_share: float
    drifted: bool
    columns: tuple[ColumnDrift, ...]
    target: ColumnDrift | None = None
    report_path: Path | None = field(default=None, compare=False)

    def most_drifted(self, n: int = 3) -> list[ColumnDrift]:
        """The drifted columns first, each group by how far past its threshold it is."""

        def severity(c: ColumnDrift) -> float:
            # p-values drift when small, distances when large: bring both to "bigger is worse".
            if "p_value" in c.method:
                return c.threshold / max(c.score, 1e-300)
            return c.score / c.threshold if c.threshold else c.score

        return sorted(self.columns, key=lambda c: (c.drifted, severity(c)), reverse=True)[:n]

    def columns_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            c.column: {
                "method": c.method,
                "score": c.score,
                "threshold": c.threshold,
                "drifted": c.drifted,
            }
            for c in self.columns
        }
        if self.target is not None:
            out["__target__"] = {
                "column": self.target.column,
                "method": self.target.method,
                "score": self.target.score,
                "threshold": self.target.threshold,
                "drifted": self.target.drifted,
            }
        return out


def _sample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    return frame.sample(n=max_rows, random_state=0) if len(frame) > max_rows else frame


def _column_drift(metric: dict[str, Any]) -> ColumnDrift:
    config = metric["config"]
    method = str(config["method"])
    score = float(metric["value"])
    threshold = float(config["threshold"])
    drifted = score < threshold if "p_value" in method else score >= threshold
    return ColumnDrift(config["column"], method, score, threshold, drifted)


def _empty_side(column: str, ref: pd.DataFrame, cur: pd.DataFrame) -> ColumnDrift | None:
    """The verdict on a numeric column one side has no value of (Evidently refuses to compare it).

    A nullable feature missing in every row of the window (an upstream field that stopped coming)
    or of the reference is drift; missing on both sides, nothing changed.
    """
    empty_ref, empty_cur = bool(ref[column].isna().all()), bool(cur[column].isna().all())
    if not (empty_ref or empty_cur):
        return None
    if empty_ref and empty_cur:
        return ColumnDrift(column, "no values on either side", 0.0, 1.0, drifted=False)
    side = "current window" if empty_cur else "reference"
    return ColumnDrift(column, f"no values in the {side}", 1.0, 1.0, drifted=True)


def _label_drift(
    spec: ModelSpec, reference: pd.DataFrame, current: pd.DataFrame, options: dict[str, Any]
) -> ColumnDrift | None:
    """The label's drift, on the window's labelled rows only (at least 30), in a report of its own
    so that the features' test keeps every row."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if spec.target not in reference or spec.target not in current:
        return None
    ref = _sample(reference[[spec.target]].dropna(), spec.drift.max_rows).astype("string")
    cur = _sample(current[[spec.target]].dropna(), spec.drift.max_rows).astype("string")
    if len(cur) < 30 or ref.empty:
        return None
    definition = DataDefinition(categorical_columns=[spec.target])
    snapshot = Report([DataDriftPreset(**{**options, "columns": [spec.target]})]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    return next(
        (
            _column_drift(m)
            for m in snapshot.dict()["metrics"]
            if m["config"].get("type", "").endswith("ValueDrift")
        ),
        None,
    )


def detect_drift(
    spec: ModelSpec,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    report_path: Path | None = None,
) -> DriftResult:
    """Compare the feature distributions (and the label's, where both sides have it).

    Args:
        spec: names the features and their types, and the drift policy.
        reference: the champion's training data.
        current: the recent window.
        report_path: where to write Evidently's HTML report, if anywhere.

    Raises:
        ValueError: either side is empty or lacks a feature column.

    Missing values of nullable features: a categorical's are a category of their own (so a change
    in how often one is missing shows as drift); a numeric's are left out of its comparison, and a
    numeric missing in every row of one side is drifted without Evidently (which refuses it).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if reference.empty or current.empty:
        raise ValueError(
            f"drift needs rows on both sides (reference {len(reference)}, current {len(current)})"
        )
    policy = spec.drift
    ref = feature_frame(spec, _sample(reference, policy.max_rows))
    cur = feature_frame(spec, _sample(current, policy.max_rows))
    categorical = list(spec.categorical_features)
    empty = {
        c.column: c
        for c in (_empty_side(name, ref, cur) for name in spec.numeric_features)
        if c is not None
    }
    ref, cur = ref.drop(columns=list(empty)), cur.drop(columns=list(empty))
    numerical = [name for name in spec.numeric_features if name not in empty]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    options: dict[str, Any] = {
        "columns": list(ref.columns),
        "drift_share": policy.share_threshold,
    }
    if policy.method is not None:
        options["method"] = policy.method
    if policy.column_threshold is not None:
        options["threshold"] = policy.column_threshold
    # Features: every row of the window, labelled or not (the newest days still wait for their
    # labels, and they are the ones most likely to have moved).
    snapshot = Report([DataDriftPreset(**options)]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report_path))
    per_column = [
        _column_drift(m)
        for m in snapshot.dict()["metrics"]
        if m["config"].get("type", "").endswith("ValueDrift")
    ]
    compared = {c.column: c for c in per_column} | empty
    features = tuple(compared[name] for name in spec.feature_names if name in compared)
    target = _label_drift(spec, reference, current, options)
    share = sum(c.drifted for c in features) / len(features)
    return DriftResult(
        rows_reference=len(ref),
        rows_current=len(cur),
        drift_share=share,
        drifted=share >= policy.share_threshold,
        columns=features,
        target=target,
        report_path=report_path,
    )
