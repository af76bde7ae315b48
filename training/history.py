"""Read and check a model's history for ``driftloop backfill``: rows as the store will hold them.

The input is either one table holding the features, a timestamp and the target (each row becomes a
prediction and, where its target is filled in, that prediction's label), or a predictions table
and/or a labels table (a request id, the target, optionally ``received_at``):

- Timestamps come from the column named by the caller, else the spec's ``time_column``, else
  ``created_at``: ISO 8601 text (``2026-01-31``, ``2026-01-31 08:00``, ``...+01:00``, ``...Z``) or
  a Parquet timestamp. They are stored in UTC; one without a time zone is taken as UTC.
- Request ids come from the ``request_id`` column (or the one named). Without one, a row's id is
  derived from the model name, the row's features and (when the spec names a ``time_column``)
  its time, as ``driftloop train`` derives the ids of a training table (see
  :func:`derive_request_ids`), so loading the same file again finds every row stored, and rows
  the champion trained on are known as such.
- Every row is checked before anything is stored; a table with any problem is refused whole, its
  first problems listed (rows count from 1, the first row after the header).

Nothing here touches the store: :mod:`training.backfill` loads what these functions return.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from training.columns import (
    Problems,
    as_text,
    flag_nul,
    missing_mask,
    read_categorical,
    read_labels,
    read_numeric,
    read_request_ids,
    read_timestamps,
)
from training.errors import DriftloopError
from training.features import feature_frame
from training.rowids import row_request_ids
from training.spec import Feature, ModelSpec

__all__ = [
    "BackfillError",
    "LabelRows",
    "PredictionRows",
    "derive_request_ids",
    "prepare_labels",
    "prepare_predictions",
]

_REQUEST_ID = "request_id"
_CREATED_AT = "created_at"
_RECEIVED_AT = "received_at"
_SCORE = "score"
_MODEL_VERSION = "model_version"


class BackfillError(DriftloopError):
    """History that cannot be loaded; the message names the table, rows and columns."""


@dataclass(frozen=True)
class LabelRows:
    """Labels ready for the store, one per request id."""

    row_numbers: list[int]
    request_ids: list[str]
    labels: list[int]
    raw_labels: list[str]
    # None: the prediction's own timestamp.
    received_at: list[datetime | None]


@dataclass(frozen=True)
class PredictionRows:
    """Predictions ready for the store; ``labels`` holds those the same table carries."""

    source: str
    request_ids: list[str]
    derived_ids: bool
    created_at: list[datetime]
    features: list[dict[str, Any]]
    scores: list[float | None]
    model_versions: list[str | None]
    naive_timestamps: int
    labels: LabelRows | None


def _refuse_any(problems: Problems) -> None:
    message = problems.report()
    if message is not None:
        raise BackfillError(message)


def derive_request_ids(spec: ModelSpec, frame: pd.DataFrame, created_at: pd.Series) -> list[str]:
    """Request ids for rows that have none: the same rows give the same ids on every run.

    The first of identical rows gets the id ``driftloop train`` gives that row of a training table
    (:func:`training.rowids.row_request_ids`: the model name, the features and, when the spec
    has a ``time_column``, the time, hashed), so history that overlaps the champion's training
    table is known as such and kept out of a retrain's holdout. Each repeat of the row (same
    features, and same time where it counts) gets ``-2``, ``-3``, ... after it, so genuine
    duplicates stay separate predictions.

    Args:
        spec: the model.
        frame: the table, with the spec's feature columns as the file gives them.
        created_at: each row's time, in UTC.
    """
    identity = feature_frame(spec, frame)
    identity["created_at"] = created_at.array  # positional, as the rows are; no Timestamp objects
    seen: dict[str, int] = {}
    ids: list[str] = []
    for request_id in row_request_ids(spec, identity).tolist():
        repeat = seen.get(request_id, 0) + 1
        seen[request_id] = repeat
        ids.append(request_id if repeat == 1 else f"{request_id}-{repeat}")
    return ids


def _time_column(frame: pd.DataFrame, spec: ModelSpec, given: str | None, source: str) -> str:
    if given is not None:
        if given not in frame.columns:
            raise BackfillError(f"{source}: no time column {given!r}")
        return given
    candidates = [c for c in (spec.time_column, _CREATED_AT) if c is not None]
    for candidate in candidates:
        if candidate in frame.columns:
            return candidate
    expected = " or ".join(repr(c) for c in candidates)
    raise BackfillError(
        f"{source}: no timestamp column; expected {expected} (the spec's time_column or "
        "created_at), or name one with --time-column"
    )


def _id_column(frame: pd.DataFrame, given: str | None, source: str) -> str | None:
    if given is not None and given not in frame.columns:
        raise BackfillError(f"{source}: no request id column {given!r}")
    name = given or _REQUEST_ID
    return name if name in frame.columns else None


def prepare_predictions(
    spec: ModelSpec,
    frame: pd.DataFrame,
    *,
    source: str,
    with_labels: bool,
    time_column: str | None = None,
    id_column: str | None = None,
) -> PredictionRows:
    """Check and convert a table of past predictions; nothing is stored.

    Args:
        spec: the model the rows belong to (its features convert and bound the values).
        frame: the table, as :func:`training.sources.read_table` gives it (text or typed columns).
        source: how messages name the table (its path).
        with_labels: the table carries the target too (rows with an empty target are unlabelled).
        time_column: the timestamp column; else the spec's ``time_column``, else ``created_at``.
        id_column: the request id column; else ``request_id``; with neither, ids are derived.

    Raises:
        BackfillError: a column is missing, or rows hold values the spec refuses (the message
            lists the first problems by row and column, and how many there are).
    """
    frame = frame.reset_index(drop=True)
    absent = [name for name in spec.feature_names if name not in frame.columns]
    if with_labels and spec.target not in frame.columns:
        absent.append(spec.target)
    if absent:
        raise BackfillError(f"{source}: no column(s) {', '.join(map(repr, absent))}")
    timestamp = _time_column(frame, spec, time_column, source)
    ids_from = _id_column(frame, id_column, source)
    problems = Problems(source)

    times = read_timestamps(frame[timestamp], timestamp, problems, required=True)
    columns: list[list[Any]] = [
        read_numeric(frame[f.name], f, problems)
        if f.type == "numeric"
        else read_categorical(frame[f.name], f, problems)
        for f in spec.features
    ]
    names = spec.feature_names
    features = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    scores: list[float | None] = [None] * len(frame)
    if _SCORE in frame.columns:
        scores = read_numeric(
            frame[_SCORE],
            Feature(name=_SCORE, type="numeric", min=0.0, max=1.0, nullable=True),
            problems,
        )
    versions: list[str | None] = [None] * len(frame)
    if _MODEL_VERSION in frame.columns:
        missing = missing_mask(frame[_MODEL_VERSION])
        versions = [
            None if gone else as_text(v)
            for v, gone in zip(frame[_MODEL_VERSION].tolist(), missing, strict=True)
        ]
        flag_nul(versions, _MODEL_VERSION, problems)
    ids = read_request_ids(frame[ids_from], ids_from, problems) if ids_from else []
    labels: list[int | None] = []
    raw: list[str | None] = []
    received: list[datetime | None] = [None] * len(frame)
    if with_labels:
        labels, raw = read_labels(spec, frame[spec.target], problems, required=False)
        if _RECEIVED_AT in frame.columns:
            received = read_timestamps(
                frame[_RECEIVED_AT], _RECEIVED_AT, problems, required=False
            ).stamps
    _refuse_any(problems)

    stamps = [at for at in times.stamps if at is not None]  # all of them, once checked
    if not ids_from:
        ids = derive_request_ids(spec, frame, times.parsed)
    label_rows = None
    if with_labels:
        kept = [p for p, label in enumerate(labels) if label is not None]
        label_rows = LabelRows(
            row_numbers=[p + 1 for p in kept],
            request_ids=[ids[p] for p in kept],
            labels=[labels[p] for p in kept],  # type: ignore[misc]  # None filtered out above
            raw_labels=[raw[p] for p in kept],  # type: ignore[misc]  # set wherever a label is
            received_at=[received[p] for p in kept],
        )
    return PredictionRows(
        source=source,
        request_ids=ids,
        derived_ids=ids_from is None,
        created_at=stamps,
        features=features,
        scores=scores,
        model_versions=versions,
        naive_timestamps=times.naive,
        labels=label_rows,
    )


def prepare_labels(
    spec: ModelSpec, frame: pd.DataFrame, *, source: str, id_column: str | None = None
) -> LabelRows:
    """Check and convert a table of labels (request id, the target, optionally ``received_at``).

    Raises:
        BackfillError: the id or target column is missing, or rows hold an empty or unknown label,
            an empty or repeated request id, or an unreadable ``received_at``.
    """
    frame = frame.reset_index(drop=True)
    ids_from = _id_column(frame, id_column, source)
    if ids_from is None:
        raise BackfillError(
            f"{source}: no {_REQUEST_ID!r} column to say which prediction each label belongs to "
            "(name another with --id-column)"
        )
    if spec.target not in frame.columns:
        raise BackfillError(f"{source}: no target column {spec.target!r}")
    problems = Problems(source)
    ids = read_request_ids(frame[ids_from], ids_from, problems)
    labels, raw = read_labels(spec, frame[spec.target], problems, required=True)
    received: list[datetime | None] = [None] * len(frame)
    if _RECEIVED_AT in frame.columns:
        received = read_timestamps(
            frame[_RECEIVED_AT], _RECEIVED_AT, problems, required=False
        ).stamps
    _refuse_any(problems)
    return LabelRows(
        row_numbers=list(range(1, len(frame) + 1)),
        request_ids=ids,
        labels=[label for label in labels if label is not None],
        raw_labels=[text for text in raw if text is not None],
        received_at=received,
    )
