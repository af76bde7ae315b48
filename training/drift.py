"""Drift of a window against the champion's training data: features, the champion's score, the label.

The statistics (training/drift_stats.py) run on every row with numpy and scipy; Evidently draws the
HTML report for people, on a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training import drift_stats
from training.drift_stats import Comparison
from training.features import feature_frame
from training.spec import ModelSpec

__all__ = ["PREDICTION", "ColumnDrift", "DriftResult", "detect_drift"]

# The prediction drift's name among the window's tests (and in ``columns_json``).
PREDICTION = "__prediction__"
# The fewest labelled rows of a window whose label distribution is compared at all.
MIN_LABELS = 30


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict: ``score`` is its distance, ``threshold`` the policy's floor for it;
    ``p_value`` its test's, ``p_threshold`` what the correction let that test face."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool
    p_value: float | None = None
    p_threshold: float | None = None


@dataclass(frozen=True)
class DriftResult:
    rows_reference: int
    rows_current: int
    drift_share: float
    drifted: bool
    columns: tuple[ColumnDrift, ...]
    target: ColumnDrift | None = None
    report_path: Path | None = field(default=None, compare=False)
    # The champion's score on the window against its score on its own training data.
    prediction: ColumnDrift | None = None

    def most_drifted(self, n: int = 3) -> list[ColumnDrift]:
        """The drifted columns first, each group by how far past its distance floor it is."""

        def severity(c: ColumnDrift) -> float:
            return c.score / c.threshold if c.threshold else c.score

        return sorted(self.columns, key=lambda c: (c.drifted, severity(c)), reverse=True)[:n]

    def columns_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {c.column: _as_json(c) for c in self.columns}
        if self.target is not None:
            out["__target__"] = {"column": self.target.column, **_as_json(self.target)}
        if self.prediction is not None:
            out["__prediction__"] = {"column": self.prediction.column, **_as_json(self.prediction)}
        return out


def _as_json(c: ColumnDrift) -> dict[str, Any]:
    return {
        "method": c.method,
        "score": c.score,
        "threshold": c.threshold,
        "drifted": c.drifted,
        "p_value": c.p_value,
        "p_threshold": c.p_threshold,
    }


def _sample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    return frame.sample(n=max_rows, random_state=0) if len(frame) > max_rows else frame


def _empty_side(column: str, ref: pd.DataFrame, cur: pd.DataFrame) -> ColumnDrift | None:
    """The verdict on a numeric column one side has no value of (no test can compare it).

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


def _labels(spec: ModelSpec, frame: pd.DataFrame) -> pd.Series | None:
    if spec.target not in frame:
        return None
    return frame[spec.target].dropna().astype("string")


def _write_report(
    spec: ModelSpec, ref: pd.DataFrame, cur: pd.DataFrame, numerical: list[str], path: Path
) -> None:
    """Evidently's HTML report on a seeded sample of each side, for a person to look at.

    Its per-column verdicts follow Evidently's own defaults; the decision uses this module's.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref = _sample(ref, spec.drift.max_rows)
    cur = _sample(cur, spec.drift.max_rows)
    definition = DataDefinition(
        numerical_columns=numerical, categorical_columns=list(spec.categorical_features)
    )
    snapshot = Report([DataDriftPreset(columns=list(ref.columns))]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))


def detect_drift(
    spec: ModelSpec,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    report_path: Path | None = None,
    score: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> DriftResult:
    """Compare the features, the champion's score and the label of a window with the reference.

    Args:
        spec: names the features and their types, and the drift policy.
        reference: the champion's training data.
        current: the recent window: every row for the features and the score, its labelled rows
            for the label.
        report_path: where to write Evidently's HTML report (on a sample), if anywhere.
        score: the champion's scoring function; without it there is no prediction drift.

    Raises:
        ValueError: either side is empty or lacks a feature column.

    Missing values of nullable features: a categorical's are a category of their own (so a change
    in how often one is missing shows as drift); a numeric's are left out of its comparison, and a
    numeric missing in every row of one side is drifted without a test.
    """
    if reference.empty or current.empty:
        raise ValueError(
            f"drift needs rows on both sides (reference {len(reference)}, current {len(current)})"
        )
    policy = spec.drift
    rows_reference, rows_current = len(reference), len(current)
    # A uniform seeded sample of the whole window (labelled or not) beyond max_test_rows: at that
    # size the distance floors decide, and the step stays fast on million-row windows.
    reference = _sample(reference, policy.max_test_rows)
    current = _sample(current, policy.max_test_rows)
    ref = feature_frame(spec, reference)
    cur = feature_frame(spec, current)
    empty = {
        c.column: c
        for c in (_empty_side(name, ref, cur) for name in spec.numeric_features)
        if c is not None
    }
    numerical = [name for name in spec.numeric_features if name not in empty]

    # Every test of the window, named, with its comparison and distance floor: one family for
    # the correction, since any one of them firing retrains.
    tests: list[tuple[str, Comparison, float]] = []
    for name in spec.feature_names:
        if name in empty:
            continue
        if name in numerical:
            comparison = drift_stats.numeric(ref[name].to_numpy(), cur[name].to_numpy())
            tests.append((name, comparison, policy.numeric_min_distance))
        else:
            comparison = drift_stats.categorical(ref[name], cur[name])
            tests.append((name, comparison, policy.categorical_min_distance))
    if score is not None:
        # Scoring is the step's one costly part (a model over every row); past a sample this size
        # the score's distance floor, not the sample, decides (docs/drift.md).
        cap = policy.prediction_max_rows
        comparison = drift_stats.numeric(
            score(_sample(reference, cap)), score(_sample(current, cap))
        )
        tests.append((PREDICTION, comparison, policy.prediction_min_distance))
    ref_labels, cur_labels = _labels(spec, reference), _labels(spec, current)
    if (
        ref_labels is not None
        and cur_labels is not None
        and len(cur_labels) >= MIN_LABELS
        and len(ref_labels)
    ):
        comparison = drift_stats.categorical(ref_labels, cur_labels)
        tests.append((spec.target, comparison, policy.label_min_distance))

    levels = drift_stats.corrected(
        [c.p_value for _, c, _ in tests], policy.alpha, policy.correction
    )
    verdicts = {
        name: ColumnDrift(
            name,
            f"{c.method}, {policy.correction}",
            c.distance,
            floor,
            drifted=c.p_value < level and c.distance >= floor,
            p_value=c.p_value,
            p_threshold=level,
        )
        for (name, c, floor), level in zip(tests, levels, strict=True)
    }
    compared = verdicts | empty
    features = tuple(compared[name] for name in spec.feature_names)
    if report_path is not None:
        _write_report(
            spec,
            ref.drop(columns=list(empty)),
            cur.drop(columns=list(empty)),
            numerical,
            report_path,
        )
    drifted_columns = sum(c.drifted for c in features)
    share = drifted_columns / len(features)
    return DriftResult(
        rows_reference=rows_reference,
        rows_current=rows_current,
        drift_share=share,
        drifted=drifted_columns >= policy.min_drifted_columns or share >= policy.share_threshold,
        columns=features,
        target=verdicts.get(spec.target),
        report_path=report_path,
        prediction=verdicts.get(PREDICTION),
    )
