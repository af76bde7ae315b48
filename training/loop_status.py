"""Where a model's retrain loop stands, read from the store: what monitoring alerts on.

Read-only and small (three indexed lookups), so the service can read it when Prometheus scrapes
(:mod:`bentos.loop_metrics`) without a process of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from training.store import Connection

__all__ = ["SUCCESSFUL_RUNS", "LoopStatus", "loop_status"]

# A retrain run that reached its end: it decided to skip, or trained a challenger that was then
# promoted or rejected by its gates. A run that failed stays 'trained' with no finished_at.
SUCCESSFUL_RUNS = ("skipped", "rejected", "promoted")

_CHAMPION = (
    "SELECT version, tag, promoted_at FROM model_versions"
    " WHERE model_name = %(m)s AND status = 'champion'"
)
_LAST_SUCCESS = (
    "SELECT max(finished_at) FROM training_runs"
    " WHERE model_name = %(m)s AND status = ANY(%(ok)s) AND finished_at IS NOT NULL"
)
_LAST_DRIFT = (
    "SELECT created_at, drift_share, drifted, decision FROM drift_runs"
    " WHERE model_name = %(m)s ORDER BY id DESC LIMIT 1"
)


@dataclass(frozen=True)
class LoopStatus:
    """A model's loop as the store has it; None where nothing happened yet."""

    model: str
    champion_version: int | None
    # The version part of the champion's model tag, as predictions carry it (``model_version``).
    champion_model_version: str | None
    champion_promoted_at: datetime | None
    last_success_at: datetime | None
    drift_checked_at: datetime | None
    # None when the last check measured no drift (no champion yet, or an empty window).
    drift_share: float | None
    drifted: bool | None
    decision: str | None


def loop_status(conn: Connection, model: str) -> LoopStatus:
    """The champion, the last successful retrain run and the last drift check of ``model``."""
    params = {"m": model, "ok": list(SUCCESSFUL_RUNS)}
    with conn.cursor() as cur:
        cur.execute(_CHAMPION, params)
        champion = cur.fetchone()
        cur.execute(_LAST_SUCCESS, params)
        success = cur.fetchone()
        cur.execute(_LAST_DRIFT, params)
        drift = cur.fetchone()
    return LoopStatus(
        model=model,
        champion_version=int(champion[0]) if champion else None,
        champion_model_version=str(champion[1]).partition(":")[2] if champion else None,
        champion_promoted_at=champion[2] if champion else None,
        last_success_at=success[0] if success else None,
        drift_checked_at=drift[0] if drift else None,
        drift_share=float(drift[1]) if drift and drift[1] is not None else None,
        drifted=bool(drift[2]) if drift and drift[2] is not None else None,
        decision=str(drift[3]) if drift and drift[3] is not None else None,
    )
