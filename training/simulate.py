"""Simulated production traffic for the demo: predictions over a timeline, then delayed labels."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from training import registry
from training.evaluate import score
from training.partitions import day_of, ensure_range
from training.store import (
    Connection,
    PredictionRecord,
    record_feedback_many,
    record_predictions,
)
from training.synthetic import NO_DRIFT, Scenario, generate

__all__ = ["Traffic", "simulate_traffic"]


@dataclass(frozen=True)
class Traffic:
    predictions: int
    labelled: int
    drift_starts: datetime
    start: datetime
    end: datetime


def simulate_traffic(
    conn: Connection,
    *,
    model_tag: str,
    n: int,
    start: datetime,
    end: datetime,
    drift: Scenario,
    drift_at: float = 0.5,
    seed: int = 11,
    label_delay_days: tuple[float, float] = (0.5, 3.0),
) -> Traffic:
    """Score ``n`` requests spread evenly over ``[start, end)`` with the model, as the service
    would, log them, and store each label when its delay has passed by ``end``.

    The first ``drift_at`` share of the timeline comes from the undrifted population, the rest
    from ``drift``. Labels arrive 0.5 to 3 days after their prediction, so the newest
    predictions have none yet, as in production.
    """
    pipeline, spec = registry.load_model(model_tag)
    name, _, version = model_tag.partition(":")
    n_before = round(n * drift_at)
    before = generate(n_before, seed=seed, scenario=NO_DRIFT) if n_before else None
    after = generate(n - n_before, seed=seed + 1, scenario=drift) if n > n_before else None
    frames = [f for f in (before, after) if f is not None]
    traffic = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(seed)
    span = (end - start).total_seconds()
    offsets = np.sort(rng.uniform(0, span, size=n))
    traffic["created_at"] = [start + timedelta(seconds=float(s)) for s in offsets]
    traffic["score"] = score(pipeline, spec, traffic)
    traffic["request_id"] = [
        uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i).hex for i in range(n)
    ]

    request_ids: list[str] = traffic["request_id"].tolist()
    created: list[datetime] = traffic["created_at"].tolist()
    scores: list[float] = traffic["score"].astype(float).tolist()
    targets: list[int] = traffic[spec.target].astype(int).tolist()
    features: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()}
        for row in traffic[spec.feature_names].to_dict(orient="records")
    ]
    records = [
        PredictionRecord(
            request_id=request_ids[i],
            model_name=name,
            model_version=version,
            features=features[i],
            score=scores[i],
            label=int(scores[i] >= spec.model.threshold),
            created_at=created[i],
        )
        for i in range(n)
    ]
    # Its days get their own partitions, as the service's days do (none lands in DEFAULT).
    ensure_range(conn, day_of(start), day_of(end))
    record_predictions(conn, records)

    delays = rng.uniform(*label_delay_days, size=n)
    arrived: list[tuple[str, int, datetime | None]] = []
    for i in range(n):
        received = created[i] + timedelta(days=float(delays[i]))
        if received <= end:
            arrived.append((request_ids[i], targets[i], received))
    record_feedback_many(conn, arrived)
    return Traffic(
        predictions=n,
        labelled=len(arrived),
        drift_starts=start + (end - start) * drift_at,
        start=start,
        end=end,
    )
