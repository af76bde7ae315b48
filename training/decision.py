"""Retrain or skip: the rules, as one pure function of what the drift step measured.

:func:`decide` reads no data and writes no record: ``training.retrain.check_drift`` measures (drift,
the champion's live ROC AUC, whether a challenger could be judged at all), asks it, and records the
answer. Every rule is therefore testable on tiny values, without Evidently, PostgreSQL or Airflow.

The rules, in order:

1. Fewer labelled rows in the window than ``gates.min_labelled_rows``: skip (nothing to train on).
2. A challenger could not be judged (its holdout, the newest labelled rows the champion never
   trained on, holds one class or too few rows of one): skip, naming the problem. A forced run skips
   too: training a model nobody can compare would only crash later.
3. ``force``: retrain, with whatever reasons there were.
4. No champion yet, feature drift (``drift.min_drifted_columns`` columns, or
   ``drift.share_threshold`` of them), the champion's scores moved (prediction drift, when
   ``drift.prediction_retrains``), the label's
   distribution moved, or the champion's live ROC AUC fell more than
   ``drift.max_performance_drop``: retrain, with every reason that applies.
5. Otherwise skip: no drift and the champion holds its accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from training.drift import DriftResult
from training.spec import ModelSpec

__all__ = ["LiveCheck", "Verdict", "decide", "judgeable", "relation_changed"]

# The fewest rows of each class a holdout needs for a ROC AUC worth comparing.
MIN_CLASS_ROWS = 5


@dataclass(frozen=True)
class LiveCheck:
    """The champion's ROC AUC when trained and on the window's labelled rows it never saw."""

    baseline_auc: float
    recent_auc: float

    @property
    def drop(self) -> float:
        return self.baseline_auc - self.recent_auc


def relation_changed(spec: ModelSpec, live: LiveCheck | None) -> str | None:
    """Why the relation the champion learned no longer holds (its live ROC AUC fell by more than
    the policy allows), or None. The training-data policy reads it: the champion's rows would teach
    a challenger that old relation."""
    if live is None or live.drop <= spec.drift.max_performance_drop:
        return None
    return f"its live ROC AUC fell {live.drop:.3f}"


@dataclass(frozen=True)
class Verdict:
    decision: Literal["retrain", "skip"]
    reason: str


def judgeable(holdout: pd.DataFrame, target: str) -> str | None:
    """Why a challenger could not be judged on ``holdout`` (0/1 ``target``), or None if it can."""
    counts = holdout[target].value_counts()
    if len(holdout) == 0:
        return "no labelled rows the champion never trained on to judge a challenger by"
    if len(counts) < 2:
        only = counts.index[0]
        return (
            f"the holdout ({len(holdout)} newest labelled rows the champion never trained on) "
            f"holds only class {only}: ROC AUC cannot compare models there"
        )
    fewest = int(counts.min())
    if fewest < MIN_CLASS_ROWS:
        return (
            f"the holdout ({len(holdout)} newest labelled rows the champion never trained on) has "
            f"{fewest} row(s) of class {counts.idxmin()}, {MIN_CLASS_ROWS} needed to compare models"
        )
    return None


def decide(
    spec: ModelSpec,
    *,
    labelled_rows: int,
    has_champion: bool,
    drift: DriftResult | None,
    live: LiveCheck | None,
    unjudgeable: str | None,
    force: bool,
) -> Verdict:
    """Retrain or skip, and why (see the module's rules)."""
    if labelled_rows < spec.gates.min_labelled_rows:
        return Verdict(
            "skip",
            f"too few labelled rows: {labelled_rows} in the window, "
            f"{spec.gates.min_labelled_rows} needed",
        )
    if unjudgeable is not None:
        return Verdict("skip", f"cannot judge a challenger: {unjudgeable}")
    reasons: list[str] = []
    if not has_champion:
        reasons.append("no champion yet")
    if drift is not None:
        if drift.drifted:
            top = ", ".join(c.column for c in drift.most_drifted() if c.drifted)
            reasons.append(f"feature drift in {drift.drift_share:.0%} of columns: {top}")
        if (
            spec.drift.prediction_retrains
            and drift.prediction is not None
            and drift.prediction.drifted
        ):
            reasons.append(
                f"the champion's scores moved (Wasserstein {drift.prediction.score:.3f} reference "
                f"σ, >= {drift.prediction.threshold:.3f})"
            )
        if drift.target is not None and drift.target.drifted:
            reasons.append(
                f"label distribution moved ({drift.target.method} {drift.target.score:.3f})"
            )
    if live is not None and relation_changed(spec, live):
        reasons.append(
            f"champion ROC AUC fell {live.drop:.3f} (from {live.baseline_auc:.3f} to "
            f"{live.recent_auc:.3f})"
        )
    if force:
        detail = f" ({'; '.join(reasons)})" if reasons else ""
        return Verdict("retrain", f"forced by the run's params{detail}")
    if reasons:
        return Verdict("retrain", "; ".join(reasons))
    return Verdict("skip", "no drift and the champion holds its accuracy")
