"""Read one column of a user's table as a model's spec says, flagging each bad value by its row.

The values become what the store holds (numbers, category text, UTC timestamps, 0/1 labels, request
ids); a value that cannot is recorded in :class:`Problems`, the first few by row for the message and
all of them counted, so a whole table is checked before anything of it is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from training.spec import Feature, ModelSpec

__all__ = [
    "LISTED",
    "ParsedTimes",
    "Problems",
    "Times",
    "as_text",
    "flag_nul",
    "missing_mask",
    "not_a_time",
    "parse_times",
    "read_categorical",
    "read_labels",
    "read_numeric",
    "read_request_ids",
    "read_timestamps",
]

# How many problems a message lists (and how many request ids a backfill names as examples).
LISTED = 5
_CATEGORY_MAX_LENGTH = 64  # the serving schema's limit, so history looks like live traffic
# A time of day followed by a zone (Z or an offset): what makes an ISO 8601 text zone-aware.
_ZONE = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
_ISO_EXAMPLE = "ISO 8601 such as 2026-01-31, 2026-01-31 08:00:00 or 2026-01-31T08:00:00+01:00"


@dataclass
class Problems:
    """A table's problems: the first few of each column kept for the message, all counted."""

    source: str
    found: list[tuple[int, str, str]] = field(default_factory=list)
    count: int = 0

    def flag(self, mask: NDArray[np.bool_], column: str, describe: Callable[[int], str]) -> None:
        """Record a problem at each row where ``mask`` holds; ``describe(position)`` says what."""
        positions = np.flatnonzero(mask)
        self.count += len(positions)
        self.found.extend((int(p) + 1, column, describe(int(p))) for p in positions[:LISTED])

    def report(self) -> str | None:
        """The first problems by row and how many there are; None when there are none."""
        if not self.count:
            return None
        first = sorted(self.found, key=lambda problem: problem[0])[:LISTED]
        listed = "; ".join(f"row {row} {column}: {detail}" for row, column, detail in first)
        more = f"; and {self.count - len(first)} more" if self.count > len(first) else ""
        return f"{self.source}: {self.count} problem(s), nothing stored: {listed}{more}"


def _shown(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def missing_mask(column: pd.Series) -> NDArray[np.bool_]:
    """Null, NaN, or text that is empty or blank (the public telco file's " ")."""
    missing = column.isna().to_numpy(dtype=bool)
    if pd.api.types.infer_dtype(column, skipna=True) == "string":
        missing |= column.str.strip().eq("").fillna(False).to_numpy(dtype=bool)
    elif column.dtype == object:
        blank = column.map(lambda v: isinstance(v, str) and not v.strip(), na_action="ignore")
        missing |= blank.fillna(False).to_numpy(dtype=bool)
    return missing


def as_text(value: Any) -> str:
    """A category, id or version as text: Parquet's 2019 and 2019.0 both become "2019"."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_numeric(column: pd.Series, feature: Feature, problems: Problems) -> list[float | None]:
    """A numeric feature's values (None where missing), checked against its bounds and nulls."""
    name = feature.name
    missing = missing_mask(column)
    if pd.api.types.is_bool_dtype(column.dtype):
        values = column.astype("float64").to_numpy()
    else:
        values = pd.to_numeric(column.where(~missing), errors="coerce").astype("float64").to_numpy()
    unread = ~missing & np.isnan(values)
    for position in np.flatnonzero(unread):
        # "NaN" spelled out is a missing value, as NaN in a Parquet float column is.
        if str(column.iloc[position]).strip().casefold() == "nan":
            unread[position] = False
            missing[position] = True
    problems.flag(unread, name, lambda p: f"{_shown(column.iloc[p])} is not a number")
    infinite = ~missing & ~unread & np.isinf(values)
    problems.flag(infinite, name, lambda p: f"{_shown(values[p])} is not finite")
    present = ~missing & ~unread & ~infinite
    with np.errstate(invalid="ignore"):
        if feature.min is not None:
            below = present & (values < feature.min)
            problems.flag(
                below, name, lambda p: f"{_shown(values[p])} is below the minimum {feature.min}"
            )
        if feature.max is not None:
            above = present & (values > feature.max)
            problems.flag(
                above, name, lambda p: f"{_shown(values[p])} is above the maximum {feature.max}"
            )
    if not feature.nullable:
        problems.flag(missing, name, lambda p: "is missing and the spec does not allow nulls here")
    converted = values.astype(object)
    converted[missing | unread] = None
    as_list: list[float | None] = converted.tolist()
    return as_list


def read_categorical(column: pd.Series, feature: Feature, problems: Problems) -> list[str | None]:
    """A categorical feature's values as text (None where missing), checked as serving would."""
    name = feature.name
    missing = missing_mask(column)
    texts: list[str | None] = [
        None if absent else as_text(value)
        for value, absent in zip(column.tolist(), missing, strict=True)
    ]
    too_long = np.fromiter(
        (t is not None and len(t) > _CATEGORY_MAX_LENGTH for t in texts), bool, len(texts)
    )
    problems.flag(
        too_long,
        name,
        lambda p: f"{_shown(texts[p])} is longer than {_CATEGORY_MAX_LENGTH} characters",
    )
    flag_nul(texts, name, problems)
    if not feature.nullable:
        problems.flag(missing, name, lambda p: "is missing and the spec does not allow nulls here")
    return texts


def flag_nul(texts: Sequence[str | None], column: str, problems: Problems) -> None:
    """Flag texts holding NUL, which PostgreSQL refuses."""
    nul = np.fromiter((t is not None and "\x00" in t for t in texts), bool, len(texts))
    problems.flag(nul, column, lambda p: "holds the NUL character, which PostgreSQL cannot store")


@dataclass(frozen=True)
class ParsedTimes:
    """A column of times read by :func:`parse_times`, by position (row 1 is position 0)."""

    utc: pd.Series  # datetime64 in UTC on a 0..n-1 index, NaT where empty or unreadable
    empty: NDArray[np.bool_]
    unreadable: NDArray[np.bool_]
    naive: int  # how many had no time zone (taken as UTC)


def parse_times(column: pd.Series) -> ParsedTimes:
    """The one rule ``driftloop train`` and ``driftloop backfill`` read a table's times by.

    A time is ISO 8601 text (``2026-01-31``, ``2026-01-31 08:00``, ``...+01:00``, ``...Z``) or a
    real timestamp (Parquet's, or a datetime in a frame); one without a time zone is UTC. Nothing
    else is read as a time: not ``01/02/2026`` (which day?) nor a number (seconds or nanoseconds
    since 1970?). Empty values, as :func:`missing_mask` finds them, are told apart from unreadable
    ones.
    """
    empty = missing_mask(column)
    unreadable = np.zeros(len(column), dtype=bool)
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        if column.dt.tz is None:
            naive = int((~empty).sum())
            parsed = column.dt.tz_localize("UTC")
        else:
            naive = 0
            parsed = column.dt.tz_convert("UTC")
    else:
        texts = pd.Series(
            [
                None
                if absent
                else (v.isoformat() if isinstance(v, datetime) else as_text(v).strip())
                for v, absent in zip(column.tolist(), empty, strict=True)
            ],
            dtype=object,
        )
        parsed = pd.to_datetime(texts, utc=True, errors="coerce", format="ISO8601")
        unreadable = ~empty & parsed.isna().to_numpy(dtype=bool)
        zoned = texts.map(lambda t: bool(_ZONE.search(t)), na_action="ignore")
        naive = int((~empty & ~unreadable & ~zoned.fillna(False).to_numpy(dtype=bool)).sum())
    return ParsedTimes(
        utc=parsed.reset_index(drop=True), empty=empty, unreadable=unreadable, naive=naive
    )


def not_a_time(value: Any) -> str:
    """What is wrong with a value :func:`parse_times` cannot read, and what it expects."""
    return f"{_shown(value)} is not a timestamp ({_ISO_EXAMPLE})"


@dataclass(frozen=True)
class Times:
    """A column of timestamps as read."""

    parsed: pd.Series  # datetime64 in UTC, NaT where empty or unreadable
    stamps: list[datetime | None]  # the same, floored to microseconds as PostgreSQL keeps them
    naive: int  # how many had no time zone (taken as UTC)


def read_timestamps(column: pd.Series, name: str, problems: Problems, *, required: bool) -> Times:
    """Times by :func:`parse_times`, each unreadable one (and, if ``required``, empty) flagged."""
    times = parse_times(column)
    problems.flag(times.unreadable, name, lambda p: not_a_time(column.iloc[p]))
    if required:
        problems.flag(times.empty, name, lambda p: "is empty; every row needs its time")
    stamps: list[datetime | None] = [
        None if stamp is pd.NaT else stamp.to_pydatetime() for stamp in times.utc.dt.floor("us")
    ]
    return Times(parsed=times.utc, stamps=stamps, naive=times.naive)


def _raw_label(value: Any) -> str:
    """The label as the data spells it; booleans and numbers as JSON spells them."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, str) else json.dumps(value)


def read_labels(
    spec: ModelSpec, column: pd.Series, problems: Problems, *, required: bool
) -> tuple[list[int | None], list[str | None]]:
    """The target's labels as 0/1 and as spelled (None where empty), by the spec's labels."""
    name = spec.target
    missing = missing_mask(column)
    values = column.tolist()
    known: dict[tuple[type, Any], int | str] = {}
    labels: list[int | None] = []
    raw: list[str | None] = []
    refused: dict[int, str] = {}
    for position, (value, absent) in enumerate(zip(values, missing, strict=True)):
        if absent:
            labels.append(None)
            raw.append(None)
            continue
        key = (type(value), value)
        if key not in known:
            try:
                known[key] = spec.label_of(value.item() if isinstance(value, np.generic) else value)
            except ValueError as exc:
                known[key] = str(exc)
        outcome = known[key]
        if isinstance(outcome, str):
            refused[position] = outcome
            labels.append(None)
        else:
            labels.append(outcome)
        raw.append(_raw_label(value))
    bad = np.zeros(len(values), dtype=bool)
    bad[list(refused)] = True
    problems.flag(bad, name, lambda p: refused[p])
    if required:
        problems.flag(missing, name, lambda p: "is empty; every label row needs its label")
    return labels, raw


def read_request_ids(column: pd.Series, name: str, problems: Problems) -> list[str]:
    """Given request ids as text; each row needs one, and no two rows the same."""
    missing = missing_mask(column)
    ids = [
        "" if absent else as_text(value)
        for value, absent in zip(column.tolist(), missing, strict=True)
    ]
    problems.flag(missing, name, lambda p: "is empty; every row needs its request id")
    flag_nul(ids, name, problems)
    first: dict[str, int] = {}
    repeats: dict[int, int] = {}
    for position, request_id in enumerate(ids):
        if request_id and first.setdefault(request_id, position) != position:
            repeats[position] = first[request_id]
    repeated = np.zeros(len(ids), dtype=bool)
    repeated[list(repeats)] = True
    problems.flag(
        repeated,
        name,
        lambda p: f"{_shown(ids[p])} repeats the request id of row {repeats[p] + 1}",
    )
    return ids
