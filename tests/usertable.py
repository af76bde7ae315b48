"""A table shaped like the public telco churn data (the issue's probe), made here with real signal.

Column names, the Yes/No target, codes stored as 0/1, blanks in ``TotalCharges`` for new customers
and an id column are as in the public file, so init, train and backfill meet the same traps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["telco_table"]


def telco_table(rows: int = 3000, seed: int = 0, start: str = "2026-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 73, rows)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], rows, p=[0.55, 0.21, 0.24])
    internet = rng.choice(["DSL", "Fiber optic", "No"], rows, p=[0.34, 0.44, 0.22])
    payment = rng.choice(
        [
            "Electronic check",
            "Mailed check",
            "Bank transfer (automatic)",
            "Credit card (automatic)",
        ],
        rows,
    )
    monthly = np.round(
        np.where(internet == "No", 20, np.where(internet == "DSL", 55, 85))
        + rng.normal(0, 10, rows),
        2,
    ).clip(18.25, 118.75)
    senior = (rng.random(rows) < 0.16).astype(int)
    partner = rng.choice(["Yes", "No"], rows)
    logit = (
        -1.2
        - 0.04 * tenure
        + 1.3 * (contract == "Month-to-month")
        + 0.8 * (internet == "Fiber optic")
        + 0.5 * (payment == "Electronic check")
        + 0.3 * senior
        + 0.01 * (monthly - 60)
    )
    churn = rng.random(rows) < 1 / (1 + np.exp(-logit))
    total = np.round(monthly * tenure, 2).astype(object)
    total[tenure == 0] = " "  # the public file's blanks: new customers have no total yet
    signup = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(
        np.sort(rng.uniform(0, 180, rows)), unit="D"
    )
    return pd.DataFrame(
        {
            "customerID": [f"{i:04d}-{rng.integers(1e5):05X}" for i in range(rows)],
            "gender": rng.choice(["Female", "Male"], rows),
            "SeniorCitizen": senior,
            "Partner": partner,
            "tenure": tenure,
            "InternetService": internet,
            "Contract": contract,
            "PaymentMethod": payment,
            "MonthlyCharges": monthly,
            "TotalCharges": total,
            "signup_date": signup,
            "Churn": np.where(churn, "Yes", "No"),
        }
    )
