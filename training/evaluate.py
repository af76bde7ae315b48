"""Metrics of a model on labelled data, and the champion/challenger gates."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline

from training.decision import LiveCheck
from training.features import feature_frame, refuse_missing
from training.spec import GatePolicy, ModelSpec
from training.train import labels

__all__ = ["Evaluation", "Gate", "Verdict", "evaluate", "judge", "live_check", "score"]


@dataclass(frozen=True)
class Evaluation:
    rows: int
    positive_rate: float
    roc_auc: float
    log_loss: float
    accuracy: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    gates: tuple[Gate, ...]

    @property
    def reason(self) -> str:
        failed = [g.detail for g in self.gates if not g.passed]
        return "; ".join(failed) if failed else "all gates passed"


def score(pipeline: Pipeline, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class for each row.

    Raises:
        ValueError: a feature column is missing, or a non-nullable number is missing where the
            family cannot take it (the message names the feature).
    """
    features = feature_frame(spec, frame)
    refuse_missing(spec, features)
    proba = pipeline.predict_proba(features)
    return np.asarray(proba[:, 1], dtype="float64")


def evaluate(pipeline: Pipeline, spec: ModelSpec, frame: pd.DataFrame) -> Evaluation:
    """Metrics of ``pipeline`` on labelled rows.

    Raises:
        ValueError: fewer than two classes in the labels (ROC AUC is undefined).
    """
    y = labels(spec, frame).to_numpy()
    if len(np.unique(y)) < 2:
        raise ValueError("evaluation data holds a single class; ROC AUC is undefined")
    p = score(pipeline, spec, frame)
    predicted = (p >= spec.model.threshold).astype(int)
    return Evaluation(
        rows=len(y),
        positive_rate=float(y.mean()),
        roc_auc=float(roc_auc_score(y, p)),
        log_loss=float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])),
        accuracy=float(accuracy_score(y, predicted)),
        f1=float(f1_score(y, predicted, zero_division=0)),
    )


def judge(challenger: Evaluation, champion: Evaluation | None, policy: GatePolicy) -> Verdict:
    """Apply the promotion gates: both models were scored on the same holdout."""
    gates = [
        Gate(
            "min_auc",
            challenger.roc_auc >= policy.min_auc,
            f"challenger ROC AUC {challenger.roc_auc:.4f} vs floor {policy.min_auc:.4f}",
        )
    ]
    if champion is not None:
        gain = challenger.roc_auc - champion.roc_auc
        gates.append(
            Gate(
                "auc_gain",
                # Strictly more: a challenger that only ties (an identical model retrained on the
                # same rows gains exactly 0) would swap the champion and build a Bento for nothing.
                gain > policy.min_auc_gain,
                f"ROC AUC gain over champion {gain:+.4f} vs required more than "
                f"{policy.min_auc_gain:+.4f}",
            )
        )
        increase = challenger.log_loss - champion.log_loss
        gates.append(
            Gate(
                "log_loss",
                increase <= policy.max_log_loss_increase,
                f"log loss change {increase:+.4f} vs allowed +{policy.max_log_loss_increase:.4f}",
            )
        )
    return Verdict(passed=all(g.passed for g in gates), gates=tuple(gates))


def live_check(
    pipeline: Pipeline,
    spec: ModelSpec,
    labelled: pd.DataFrame,
    champion_ids: set[str],
    baseline_auc: float | None,
) -> LiveCheck | None:
    """The champion's ROC AUC on the window's labelled rows it never trained on, against its own
    when trained (``baseline_auc``; None: this measurement stands in for it), or None when those
    rows do not hold both classes.

    Scoring every labelled row was most of the drift step's time at 1M rows; a seeded sample of
    ``drift.max_test_rows`` puts the ROC AUC's standard error near 0.002, far below the drop the
    policy allows.
    """
    unseen = labelled[~labelled["request_id"].astype(str).isin(champion_ids)]
    cap = spec.drift.max_test_rows
    if len(unseen) > cap:
        unseen = unseen.sample(n=cap, random_state=spec.training.seed)
    if unseen[spec.target].nunique() != 2:
        return None
    recent = evaluate(pipeline, spec, unseen).roc_auc
    return LiveCheck(
        baseline_auc=recent if baseline_auc is None else baseline_auc, recent_auc=recent
    )
