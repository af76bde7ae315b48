"""A table shaped like the public telco churn data (the issue's probe), made here with real signal.

Column names, the Yes/No target, codes stored as 0/1, blanks in ``TotalCharges`` for new customers
and an id column are as in the public file, so init, train and backfill meet the same traps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["telco_table"]


def telco_table(
    rows: int = 3000,
    seed: int = 0,
    start: str = "2026-01-01",
    days: float = 180,
    shift: float = 0.0,
) -> pd.DataFrame:
    """``rows`` customers signed up over ``days`` from ``start``; ``shift`` (0..1) moves the
    population (more fibre, month-to-month and higher bills) and what makes people leave."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 73, rows)
    monthly_share = 0.55 + 0.3 * shift
    contract = rng.choice(
        ["Month-to-month", "One year", "Two year"],
        rows,
        p=[monthly_share, (1 - monthly_share) * 0.21 / 0.45, (1 - monthly_share) * 0.24 / 0.45],
    )
    fibre = 0.44 + 0.3 * shift
    internet = rng.choice(["DSL", "Fiber optic", "No"], rows, p=[0.78 - fibre, fibre, 0.22])
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
        + rng.normal(0, 10, rows)
        + 15 * shift,
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
        # After a shift, price drives leaving more than the contract does.
        + shift * (0.04 * (monthly - 60) - 1.0 * (contract == "Month-to-month"))
    )
    churn = rng.random(rows) < 1 / (1 + np.exp(-logit))
    total = np.round(monthly * tenure, 2).astype(object)
    total[tenure == 0] = " "  # the public file's blanks: new customers have no total yet
    signup = (
        pd.Timestamp(start, tz="UTC")
        + pd.to_timedelta(np.sort(rng.uniform(0, days, rows)), unit="D")
    ).floor("s")
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


def _write_examples(folder: str) -> None:
    """The README's example: a labelled table from the last half year (to train on) and the last
    30 days of history, after the market moved (to backfill)."""
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    now = pd.Timestamp.now(tz="UTC").floor("D")
    past = telco_table(7000, seed=1, start=str(now - pd.Timedelta(days=210)), days=180)
    recent = telco_table(3000, seed=2, start=str(now - pd.Timedelta(days=30)), days=30, shift=1.0)
    recent["customerID"] = "H" + recent["customerID"]
    past.to_csv(out / "telco.csv", index=False)
    recent.to_csv(out / "telco_history.csv", index=False)
    print(
        f"wrote {out / 'telco.csv'} ({len(past)} customers, {past['signup_date'].min():%Y-%m-%d} .. "
        f"{past['signup_date'].max():%Y-%m-%d}) and {out / 'telco_history.csv'} ({len(recent)} "
        "predictions of the last 30 days, with their outcomes)"
    )


if __name__ == "__main__":
    # `python -m tests.usertable FOLDER`: the README's example tables.
    import sys

    _write_examples(sys.argv[1] if len(sys.argv) > 1 else "examples")
