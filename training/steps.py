"""What the retrain DAG's steps hand each other: small frozen dataclasses, never data.

Airflow's XCom serializes a dataclass as its fields and rebuilds it in the next task
(``cls(**fields)``), so a task reads ``decision.champion_tag`` instead of a string key, and a task
returning one value pushes one XCom (a ``dict`` return would push every key as its own). Fields are
therefore plain values (str, int, float, bool, lists and dicts of them): a nested dataclass would come
back as a dict. This module imports nothing heavy, so the DAG file may import it at parse time to
allow these classes' deserialization (:data:`STEP_TYPES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "STEP_TYPES",
    "Built",
    "Decision",
    "Extracted",
    "Promotion",
    "Skipped",
    "Trained",
    "Validation",
]


@dataclass(frozen=True)
class Extracted:
    dataset_uri: str
    window_start: str
    window_end: str
    rows: int
    labelled_rows: int


@dataclass(frozen=True)
class Decision:
    drift_run_id: int
    decision: Literal["retrain", "skip"]
    reason: str
    drift_share: float | None
    most_drifted: list[str]
    report_uri: str | None
    champion_tag: str | None
    # Why the champion's learned relation no longer holds (None: it does), for the training policy.
    relation_changed: str | None = None


@dataclass(frozen=True)
class Skipped:
    training_run_id: int
    reason: str


@dataclass(frozen=True)
class Trained:
    training_run_id: int
    challenger_tag: str
    holdout_uri: str
    train_rows: int
    holdout_rows: int
    training_data: str
    # True when a re-run of the step found this run's challenger already registered.
    reused: bool = False


@dataclass(frozen=True)
class Validation:
    passed: bool
    reason: str
    challenger_tag: str
    champion_tag: str | None
    challenger: dict[str, float]
    champion: dict[str, float] | None
    gates: list[dict[str, Any]]


@dataclass(frozen=True)
class Built:
    challenger_tag: str
    bento_tag: str
    image: str | None = None
    image_size_bytes: int | None = None
    image_skipped: str | None = None
    reused: bool = False


@dataclass(frozen=True)
class Promotion:
    champion_tag: str
    previous_champion: str | None
    bento_tag: str
    version: int
    # False when the challenger was already the champion (a re-run of the step changes nothing).
    changed: bool = True


STEP_TYPES: tuple[type, ...] = (
    Extracted,
    Decision,
    Skipped,
    Trained,
    Validation,
    Built,
    Promotion,
)
