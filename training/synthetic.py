"""Seeded synthetic churn data with named drift scenarios, for the demo, tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["SCENARIOS", "Scenario", "generate"]

ScenarioKind = Literal["none", "covariate", "concept", "prior", "mixed"]
SCENARIOS: tuple[ScenarioKind, ...] = ("none", "covariate", "concept", "prior", "mixed")
COVARIATE_COLUMNS = ("monthly_charges", "usage_hours", "support_calls", "contract")


@dataclass(frozen=True)
class Scenario:
    """A drift to inject into generated data.

    Attributes:
        kind: ``covariate`` moves the chosen features' distributions (the label relation stays),
            ``concept`` changes how features relate to churn (the features stay), ``prior`` raises
            the base churn rate (the features stay), ``mixed`` is covariate and concept at once
            (a market shift: prices and usage move, and so do the reasons people leave).
        columns: for ``covariate``, which features move (all four movable ones by default).
        strength: 0 is no drift, 1 the full shift.
    """

    kind: ScenarioKind = "none"
    columns: tuple[str, ...] = field(default=COVARIATE_COLUMNS)
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCENARIOS:
            raise ValueError(f"scenario kind {self.kind!r} is not one of {', '.join(SCENARIOS)}")
        unknown = sorted(set(self.columns) - set(COVARIATE_COLUMNS))
        if unknown:
            raise ValueError(
                f"covariate columns {unknown} cannot be shifted; choose from {list(COVARIATE_COLUMNS)}"
            )
        if not 0 <= self.strength <= 3:
            raise ValueError(f"scenario strength must be within 0..3, got {self.strength}")


NO_DRIFT = Scenario()


def generate(n: int, *, seed: int, scenario: Scenario = NO_DRIFT) -> pd.DataFrame:
    """Generate ``n`` subscribers with the churn label, under an optional drift scenario.

    The label is drawn from a logistic model of the features, so a classifier can learn it
    (ROC AUC around 0.8 without drift) but not perfectly.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    s = scenario.strength
    shifted = set(scenario.columns) if scenario.kind in ("covariate", "mixed") else set()

    contract_p = np.array([0.55, 0.30, 0.15])
    if "contract" in shifted:
        contract_p = (1 - 0.6 * s) * contract_p + 0.6 * s * np.array([0.9, 0.08, 0.02])
        contract_p = contract_p / contract_p.sum()
    contract = rng.choice(["monthly", "annual", "two_year"], size=n, p=contract_p)
    payment = rng.choice(
        ["card", "bank_transfer", "paypal", "invoice"], size=n, p=[0.4, 0.25, 0.2, 0.15]
    )
    region = rng.choice(["north", "south", "east", "west"], size=n)

    tenure = np.clip(rng.gamma(1.6, 16.0, size=n), 0, 240).round(0)
    base_charge = np.select(
        [contract == "monthly", contract == "annual"], [75.0, 62.0], default=55.0
    )
    charges = base_charge + rng.normal(0, 18, size=n)
    if "monthly_charges" in shifted:
        charges = charges + 35.0 * s
    charges = np.clip(charges, 5, 1000).round(2)
    calls_rate = 1.4 * (1 + 1.2 * s) if "support_calls" in shifted else 1.4
    calls = np.clip(rng.poisson(calls_rate, size=n), 0, 100).astype(float)
    usage = rng.gamma(4.0, 12.0, size=n)
    if "usage_hours" in shifted:
        usage = usage * (1 - 0.5 * min(s, 1.0))
    usage = np.clip(usage, 0, 744).round(1)
    age = np.clip(rng.normal(42, 13, size=n), 16, 110).round(0)

    logit = (
        -1.1
        + 1.3 * (contract == "monthly")
        - 0.9 * (contract == "two_year")
        - 0.035 * tenure
        + 0.018 * (charges - 70)
        + 0.38 * calls
        - 0.022 * (usage - 48)
        + 0.45 * (payment == "invoice")
        - 0.01 * (age - 42)
    )
    if scenario.kind in ("concept", "mixed"):
        # The relation turns: long-tenure heavy users now leave (a competitor's offer), calls matter less.
        logit = (
            -1.4
            + 0.4 * (contract == "monthly")
            + 0.05 * s * (tenure - 25)
            - 0.3 * s * calls
            + 0.38 * (1 - s) * calls
            + 0.04 * s * (usage - 48)
            + 1.2 * s * (region == "south")
        )
    elif scenario.kind == "prior":
        logit = logit + 1.4 * s
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": calls,
            "usage_hours": usage,
            "age": age,
            "contract": contract,
            "payment_method": payment,
            "region": region,
            "churned": churned,
        }
    )
