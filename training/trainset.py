"""What a challenger trains on and what it is judged on: the spec's training-data policy.

The holdout is the newest part of the labelled window, never a row the champion trained on (its
score there would be in-sample and flatter it). The training rows are the rest of the window and,
by default, a sample of the champion's own training rows, so a retrain on a narrow window does not
forget what the window happens not to show, unless the champion's relation between features and
label has stopped holding (its live ROC AUC fell): then its rows would teach the old relation.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from training.spec import ModelSpec

__all__ = ["TrainingSet", "known_ids", "split_for_challenger"]


def known_ids(frame: pd.DataFrame | None) -> set[str]:
    """The request ids in a frame (none for data that never went through the log)."""
    if frame is None or "request_id" not in frame.columns:
        return set()
    return set(frame["request_id"].dropna().astype(str))


@dataclass(frozen=True)
class TrainingSet:
    train: pd.DataFrame
    holdout: pd.DataFrame
    window_rows: int
    reference_rows: int
    excluded_from_holdout: int
    # Why the champion's rows were left out under the ``auto`` policy (None: they joined, or the
    # policy never adds them).
    reference_left_out: str | None = None

    def describe(self) -> str:
        text = f"{self.window_rows} window rows"
        if self.reference_rows:
            text += f" + {self.reference_rows} of the champion's training rows"
        if self.reference_left_out:
            text += f" (the champion's rows left out: {self.reference_left_out})"
        text += f"; holdout {len(self.holdout)} newest labelled rows"
        if self.excluded_from_holdout:
            text += f" ({self.excluded_from_holdout} the champion trained on left out)"
        return text


def split_for_challenger(
    spec: ModelSpec,
    labelled: pd.DataFrame,
    reference: pd.DataFrame | None,
    *,
    relation_changed: str | None = None,
) -> TrainingSet:
    """Split a labelled window (``created_at``, ``request_id``, features, 0/1 target) by the spec.

    Args:
        spec: its ``gates.holdout_fraction`` sizes the holdout; its ``training`` policy says whether
            the champion's training rows join the window's.
        labelled: the window's labelled rows.
        reference: the champion's training data (None without a champion).
        relation_changed: why the champion's learned relation no longer holds (its live ROC AUC
            fell), or None; under the ``auto`` policy it keeps the champion's rows out.

    Returns:
        The challenger's training rows (window first, then the reference sample) and the holdout.
    """
    ordered = labelled.sort_values(["created_at", "request_id"], kind="stable")
    champion_ids = known_ids(reference)
    seen = ordered["request_id"].astype(str).isin(champion_ids)
    unseen = ordered[~seen]
    cut = round(len(unseen) * (1 - spec.gates.holdout_fraction))
    # The newest unseen rows; the champion's own rows train the challenger too, they just cannot judge.
    holdout = unseen.iloc[cut:]
    window_train = ordered.drop(holdout.index)
    parts = [window_train]
    reference_rows = 0
    policy = spec.training.data
    left_out = relation_changed if policy == "auto" else None
    with_reference = policy == "window_and_reference" or (policy == "auto" and left_out is None)
    if with_reference and reference is not None and len(reference):
        columns = [*spec.feature_names, spec.target]
        pool = reference
        if "request_id" in pool.columns:
            in_window = pool["request_id"].astype(str).isin(set(ordered["request_id"].astype(str)))
            pool = pool[~in_window]
        wanted = min(len(pool), round(spec.training.reference_ratio * len(window_train)))
        if wanted:
            sample = pool.sample(n=wanted, random_state=spec.training.seed)
            keep = [c for c in (*columns, "request_id", "created_at") if c in sample.columns]
            parts.append(sample[keep])
            reference_rows = wanted
    train = pd.concat(parts, ignore_index=True)
    return TrainingSet(
        train=train,
        holdout=holdout.reset_index(drop=True),
        window_rows=len(window_train),
        reference_rows=reference_rows,
        excluded_from_holdout=int(seen.sum()),
        reference_left_out=left_out if reference is not None and len(reference) else None,
    )
