"""The drift statistics behind a verdict: one test and one distance per column, on every row.

A column drifts when its test is significant after a correction for testing many columns at once
(Holm by default) AND its distance reaches the policy's floor. The test keeps small windows quiet
(a 1,000-row sample differs from its reference by chance); the floor keeps large windows quiet
(at 100,000 rows a p-value flags differences too small to matter). See docs/drift.md.

Numbers, scores: two-sample Kolmogorov-Smirnov test, Wasserstein distance in reference standard
deviations (Evidently's "normed Wasserstein"). Categories, labels: chi-squared test of the 2 x k
table, Jensen-Shannon distance of the two frequency vectors (natural log, as Evidently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats  # type: ignore[import-untyped]  # no stubs installed
from scipy.spatial import distance  # type: ignore[import-untyped]

__all__ = ["Comparison", "categorical", "corrected", "numeric"]

Correction = Literal["holm", "bonferroni", "none"]

NUMERIC_METHOD = "K-S test + Wasserstein distance (reference σ)"
CATEGORICAL_METHOD = "chi-squared test + Jensen-Shannon distance"


@dataclass(frozen=True)
class Comparison:
    method: str
    p_value: float
    distance: float


def numeric(reference: np.ndarray, current: np.ndarray) -> Comparison:
    """K-S p-value and normed Wasserstein distance of two samples (missing values left out)."""
    ref = reference[~np.isnan(reference)]
    cur = current[~np.isnan(current)]
    # The asymptotic p-value: the exact one is quadratic in the sample sizes.
    p_value = float(stats.ks_2samp(ref, cur, method="asymp").pvalue)
    # A constant reference column has no spread to measure a shift in; Evidently's floor.
    scale = max(float(np.std(ref)), 0.001)
    return Comparison(NUMERIC_METHOD, p_value, float(stats.wasserstein_distance(ref, cur)) / scale)


def categorical(reference: pd.Series, current: pd.Series) -> Comparison:
    """Chi-squared p-value and Jensen-Shannon distance of two samples of categories."""
    ref_counts = reference.value_counts()
    cur_counts = current.value_counts()
    levels = ref_counts.index.union(cur_counts.index)
    table = np.vstack(
        [
            ref_counts.reindex(levels, fill_value=0).to_numpy(dtype="float64"),
            cur_counts.reindex(levels, fill_value=0).to_numpy(dtype="float64"),
        ]
    )
    if table.shape[1] < 2:
        # One category on both sides: nothing can have moved.
        return Comparison(CATEGORICAL_METHOD, 1.0, 0.0)
    p_value = float(stats.chi2_contingency(table, correction=False).pvalue)
    ref_share, cur_share = table[0] / table[0].sum(), table[1] / table[1].sum()
    return Comparison(
        CATEGORICAL_METHOD, p_value, float(distance.jensenshannon(ref_share, cur_share))
    )


def corrected(p_values: list[float], alpha: float, correction: Correction) -> list[float]:
    """The p-value threshold each test faces so that the chance of any false alarm among all of
    them stays at ``alpha`` (Holm's step-down, Bonferroni's single step, or none).

    A test is significant when its p-value is below its threshold. Holm's thresholds for tests
    after the first one Holm keeps are 0 (step-down stops there).
    """
    m = len(p_values)
    if correction == "none":
        return [alpha] * m
    if correction == "bonferroni":
        return [alpha / m] * m
    thresholds = [0.0] * m
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        level = alpha / (m - rank)
        if p_values[index] >= level:
            # Holm stops at the first test it keeps: this one and every later one stay quiet.
            thresholds[index] = level
            break
        thresholds[index] = level
    return thresholds
