"""Stable ids for the rows of a table that has no request id, shared by train and backfill.

``driftloop train`` stores a user's table as the champion's training data and ``driftloop backfill``
loads the same kind of table as history; both name a row without a ``request_id`` by the same hash,
so a row loaded by one is known to the other (kept out of a retrain's holdout, not stored twice).
The ids are stored, so the hashed text must never change: pinned in ``tests/unit/test_rowids.py``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from training.spec import ModelSpec

__all__ = ["row_request_ids"]

_CREATED_AT = "created_at"
_MODEL_SEPARATOR = "\x1e"
_VALUE_SEPARATOR = "\x1f"
_MISSING = "\x00"


_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _cells(column: pd.Series) -> NDArray[np.object_]:
    """pandas' string spelling of each value (20.5 -> "20.5", a UTC time -> "2026-03-01
    10:00:00+00:00"), the same per value whatever else the column holds; a null is NUL."""
    # numpy's string functions refuse empty arrays (np.char.replace); there is nothing to spell.
    if len(column) and isinstance(column.dtype, pd.DatetimeTZDtype) and str(column.dt.tz) == "UTC":
        return _utc_times(column)
    text: NDArray[np.object_] = column.astype("string").fillna(_MISSING).to_numpy(dtype=object)
    return text


def _utc_times(column: pd.Series) -> NDArray[np.object_]:
    """What ``astype("string")`` makes of UTC times, about six times faster: numpy spells the
    seconds; the few times with a fraction of a second get pandas' ``.ffffff`` (or nine digits
    where there are nanoseconds) one by one."""
    local = column.dt.tz_localize(None).to_numpy()
    seconds = np.char.replace(np.datetime_as_string(local, unit="s"), "T", " ").astype(object)
    text: NDArray[np.object_] = np.asarray(seconds + "+00:00", dtype=object)
    per_second = _TICKS_PER_SECOND[column.dt.unit]
    ticks = local.view("int64")
    missing = np.isnat(local)
    for position in np.flatnonzero((ticks % per_second != 0) & ~missing):
        nanoseconds = f"{int(ticks[position] % per_second) * (10**9 // per_second):09d}"
        fraction = nanoseconds[:6] if nanoseconds.endswith("000") else nanoseconds
        text[position] = f"{seconds[position]}.{fraction}+00:00"
    text[missing] = _MISSING
    return text


def row_request_ids(spec: ModelSpec, frame: pd.DataFrame) -> pd.Series:
    """A stable id per row: ``row-`` and 32 hex digits of the SHA-256 of the model name and the
    row's feature values (and its ``created_at``, when the spec has a ``time_column``).

    Args:
        spec: the model; its name and feature names are part of the id.
        frame: the spec's features as :func:`training.features.feature_frame` gives them, and
            optionally ``created_at`` (UTC).

    Returns:
        The ids, on ``frame``'s index.
    """
    columns = [*spec.feature_names]
    if spec.time_column and _CREATED_AT in frame.columns:
        columns.append(_CREATED_AT)
    # Joined a column at a time (numpy adds object arrays element by element in C); only the hash
    # itself is a Python call per row.
    rows = _cells(frame[columns[0]])
    for name in columns[1:]:
        rows = rows + _VALUE_SEPARATOR + _cells(frame[name])
    prefix = f"{spec.name}{_MODEL_SEPARATOR}"
    ids = [
        "row-" + hashlib.sha256(f"{prefix}{row}".encode()).hexdigest()[:32] for row in rows.tolist()
    ]
    return pd.Series(ids, index=frame.index, dtype=object)
