"""A model spec as commented YAML: what ``driftloop init`` writes for a person to check and edit.

Every string is quoted, so YAML never reads a category or label such as Yes, No or On as a boolean,
and the text loads back (``load_spec``) to the same spec.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from training.spec import Feature, ModelSpec

__all__ = ["render_spec", "scalar"]

# Category lists wrap past this width.
_LINE_WIDTH = 100


def scalar(value: Any) -> str:
    """One YAML scalar; every string quoted, so YAML never reads 'Yes' or 'On' as a boolean."""
    if isinstance(value, str):
        if value.isprintable():
            return "'" + value.replace("'", "''") + "'"
        # Line breaks and control characters: PyYAML's own escapes in a double-quoted scalar.
        return yaml.safe_dump(value, default_style='"', width=math.inf).strip()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return yaml.safe_dump(value, width=math.inf).removesuffix("\n...\n").strip()


def _comment(text: str) -> str:
    return " ".join(text.split())


def _feature_lines(feature: Feature) -> list[str]:
    """A feature as one flow mapping, its categories wrapped over lines when they are long."""
    fields = [f"name: {scalar(feature.name)}", f"type: {scalar(feature.type)}"]
    if feature.type == "numeric":
        fields += [f"min: {scalar(feature.min)}", f"max: {scalar(feature.max)}"]
    fields.append(f"nullable: {scalar(feature.nullable)}")
    head = "  - {" + ", ".join(fields)
    if feature.type == "numeric":
        return [head + "}"]
    categories = [scalar(c) for c in feature.categories]
    line = f"{head}, categories: [{', '.join(categories)}]}}"
    if len(line) <= _LINE_WIDTH:
        return [line]
    lines = [f"{head}, categories: ["]
    row = "     "
    for category in categories:
        if len(row) + len(category) + 2 > _LINE_WIDTH and row.strip():
            lines.append(row.rstrip())
            row = "     "
        row += f" {category},"
    lines.append(row.removesuffix(",") + "]}")
    return lines


def render_spec(
    spec: ModelSpec,
    *,
    source: str,
    rows: int,
    labelled: int,
    positive_share: float,
    feature_notes: dict[str, str],
    left_out: list[tuple[str, str]],
    bound_margin: float,
) -> str:
    """The spec as YAML a person can check and edit: a comment on each section and feature.

    Args:
        source: where the data came from (a path or "the query").
        rows: how many rows it had; ``labelled`` of them had a target.
        positive_share: the share of labelled rows with the positive label.
        feature_notes: per feature, what the data held (shown above its line).
        left_out: columns not used, with why.
        bound_margin: how far numeric bounds were widened past the data's range.
    """
    s = scalar
    drift, gates, training = spec.drift, spec.gates, spec.training
    lines = [
        f"# Drafted by `driftloop init` from {_comment(source)} ({rows} rows). Every value below was",
        "# inferred from that data: read it through and edit what the data could not know.",
        "# Serving schema, training pipeline and drift column mapping all derive from this file.",
        f"name: {s(spec.name)}",
        f"description: {s(spec.description)}",
        "# The column to predict and its two values as the data spells them (feedback may also",
        f"# send 1/0). Check the positive one: here {positive_share:.0%} of {labelled} labelled rows.",
        f"target: {s(spec.target)}",
        f"positive_label: {s(spec.positive_label)}",
        f"negative_label: {s(spec.negative_label)}",
        "# When each row happened (a time-ordered holdout, backfilled history); null for none.",
        f"time_column: {s(spec.time_column)}",
        "# One line per input column; check each type, and:",
        f"#   numeric min/max: the data's range plus {bound_margin:.0%}; requests outside are refused",
        "#   categories: values outside them count as unknown (the drift the loop watches for)",
        "#   nullable: a request may leave the field out, a training row may lack it",
        "features:",
    ]
    for feature in spec.features:
        note = feature_notes.get(feature.name)
        if note:
            lines.append(f"  # {_comment(feature.name)}: {_comment(note)}")
        lines += _feature_lines(feature)
    if left_out:
        lines.append("# Left out (add a line above to use one as a feature):")
        lines += [f"#   {_comment(column)}: {_comment(reason)}" for column, reason in left_out]
    lines += [
        "model:",
        "  # lightgbm or logistic_regression; params go to the estimator as they are",
        f"  family: {s(spec.model.family)}",
        "  # a probability at or above this is predicted positive",
        f"  threshold: {s(spec.model.threshold)}",
        "  params:",
        *(f"    {key}: {s(value)}" for key, value in spec.model.params.items()),
        "drift:",
        "  # A window's tests (each feature, the champion's score, the label) share one false-alarm",
        "  # budget: alpha, split by the correction (holm, bonferroni or none). A column drifts when",
        "  # its test is significant AND its distance reaches the floor for its type (docs/drift.md).",
        f"  alpha: {s(drift.alpha)}",
        f"  correction: {s(drift.correction)}",
        "  # numbers and the score: K-S test, Wasserstein distance in reference standard deviations",
        f"  numeric_min_distance: {s(drift.numeric_min_distance)}",
        f"  prediction_min_distance: {s(drift.prediction_min_distance)}",
        "  # categories and the label: chi-squared test, Jensen-Shannon distance",
        f"  categorical_min_distance: {s(drift.categorical_min_distance)}",
        f"  label_min_distance: {s(drift.label_min_distance)}",
        "  # feature drift: at least this many drifted columns, or this share of them",
        f"  min_drifted_columns: {s(drift.min_drifted_columns)}",
        f"  share_threshold: {s(drift.share_threshold)}",
        "  # moved scores alone retrain (off: the champion's scores on its own training rows are",
        "  # more spread than on new rows; recorded either way)",
        f"  prediction_retrains: {s(drift.prediction_retrains)}",
        "  # the tests use at most this many rows of each side, the champion scores at most",
        "  # prediction_max_rows of them (seeded samples of the whole window)",
        f"  max_test_rows: {s(drift.max_test_rows)}",
        f"  prediction_max_rows: {s(drift.prediction_max_rows)}",
        "  # retrain when the champion's ROC AUC on the labelled window fell by more than this",
        f"  max_performance_drop: {s(drift.max_performance_drop)}",
        "  # rows of each side in Evidently's HTML report (the statistics use every row)",
        f"  max_rows: {s(drift.max_rows)}",
        "gates:",
        "  # below this many labelled rows in the window, the run skips with its reason recorded",
        f"  min_labelled_rows: {s(gates.min_labelled_rows)}",
        "  # the most recent share of the labelled window, held out to compare champion and challenger",
        f"  holdout_fraction: {s(gates.holdout_fraction)}",
        "  # the challenger must reach at least this ROC AUC on the holdout",
        f"  min_auc: {s(gates.min_auc)}",
        "  # and beat the champion by at least this much on the same holdout (negative: may lose this much)",
        f"  min_auc_gain: {s(gates.min_auc_gain)}",
        "  # and not be worse calibrated than the champion by more than this (log loss)",
        f"  max_log_loss_increase: {s(gates.max_log_loss_increase)}",
        "training:",
        "  # window: the labelled window only; window_and_reference: plus a sample of the champion's",
        "  # own training rows, so a retrain does not forget what the window happens not to show;",
        "  # auto: window_and_reference, but the window alone once the champion's live ROC AUC fell",
        "  # by more than drift.max_performance_drop (the relation it learned no longer holds)",
        f"  data: {s(training.data)}",
        "  # the reference sample's size, as a multiple of the window's training rows",
        f"  reference_ratio: {s(training.reference_ratio)}",
        f"  seed: {s(training.seed)}",
        "promotion:",
        "  # a person approves each promotion in Airflow's Required Actions (the run's require_approval",
        "  # param overrides this for one run); no answer within the timeout fails the run and rejects",
        "  # the challenger (docs/retrain.md)",
        f"  approval: {s(spec.promotion.approval)}",
        f"  approval_timeout_hours: {s(spec.promotion.approval_timeout_hours)}",
    ]
    return "\n".join(lines) + "\n"
