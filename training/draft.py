"""Draft a model spec from a user's table: infer each column's type, bounds and categories.

The draft is a starting point a person reads and edits (``driftloop init`` writes it): every
inference is stated in a comment or a note, and anything left out says why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.columns import not_a_time, parse_times
from training.errors import DriftloopError
from training.features import category_text
from training.spec import (
    BUILTIN_SPEC,
    Feature,
    GatePolicy,
    Label,
    ModelSpec,
    label_key,
    load_spec,
)
from training.spec_yaml import render_spec

__all__ = [
    "BOUND_MARGIN",
    "CODE_VALUES_MAX",
    "MAX_CATEGORIES",
    "Draft",
    "DraftError",
    "Inferred",
    "LeftOut",
    "draft_spec",
    "name_from_path",
]

# Listed categories per feature: the most frequent ones; the rest count as unknown when seen.
MAX_CATEGORIES = 50
# Numbers with at most this many distinct values are codes (0/1 flags, 1-5 grades): categorical.
CODE_VALUES_MAX = 10
# Numeric bounds: the data's range widened by this share of it on each side.
BOUND_MARGIN = 0.1
# The serving request's longest categorical value (spec.request_model's max_length).
_REQUEST_TEXT_MAX = 64
# The least labelled rows a spec may ask of a window (GatePolicy) and the most the draft asks.
_MIN_LABELLED_FLOOR = 10
_MIN_LABELLED_DEFAULT = 500

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_ID_NAME = re.compile(r"(id|key|number|num|no)$", re.IGNORECASE)
# Text a numeric column may hold for "no value"; the training pipeline reads them as NaN too.
_MISSING_MARKERS = ("na", "n/a", "nan", "null", "none")
# Target value pairs whose positive side is obvious (compared case-insensitively).
_OBVIOUS_POSITIVE = {
    frozenset({"yes", "no"}): "yes",
    frozenset({"true", "false"}): "true",
    frozenset({"1", "0"}): "1",
    frozenset({"1.0", "0.0"}): "1.0",  # a float column written out as text
    frozenset({"y", "n"}): "y",
}
_TABLE_SUFFIXES = (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq")
_TIMESTAMPS = "timestamps, not a feature"
# Wrap long category lists of the YAML at this width (as the house's line length).


class DraftError(DriftloopError):
    """The table cannot be drafted into a spec; the message names the column and what to do."""


@dataclass(frozen=True)
class Inferred:
    """One feature as drafted, with what the data showed."""

    feature: Feature
    missing: int
    distinct: int
    # A numeric feature's smallest and largest finite value in the data.
    seen: tuple[float, float] | None = None

    @property
    def observed(self) -> str:
        """What the data held, e.g. "seen 0 .. 72" or "2 values"."""
        if self.seen is not None:
            return f"seen {_fmt(self.seen[0])} .. {_fmt(self.seen[1])}"
        listed = len(self.feature.categories)
        if self.distinct > listed:
            return f"{self.distinct} values, the {listed} most frequent listed"
        return f"{self.distinct} value" if self.distinct == 1 else f"{self.distinct} values"


@dataclass(frozen=True)
class LeftOut:
    """A column that is not a feature, and why."""

    column: str
    reason: str


@dataclass(frozen=True)
class Draft:
    """A drafted spec, its YAML for a person to edit, and what they should check."""

    spec: ModelSpec
    text: str
    features: tuple[Inferred, ...]
    left_out: tuple[LeftOut, ...]
    notes: tuple[str, ...]
    rows: int
    labelled_rows: int


def name_from_path(path: Path) -> str:
    """A model name from a data file's name: ``WA_Telco-Churn.csv.gz`` gives ``wa_telco-churn``."""
    stem = path.name
    while stem.lower().endswith(_TABLE_SUFFIXES):
        stem = stem[: stem.rindex(".")]
    name = re.sub(r"[^a-z0-9_-]", "_", stem.lower())
    # Model names start with a letter.
    return name if _MODEL_NAME.match(name) else f"model_{name}".rstrip("_")


def draft_spec(
    frame: pd.DataFrame,
    target: str,
    *,
    name: str,
    positive: str | None = None,
    time_column: str | None = None,
    source: str = "the table",
) -> Draft:
    """Draft a spec for predicting ``target`` from the other columns of ``frame``.

    Args:
        frame: the table, as ``training.sources.read_table`` gives it (text or typed columns).
        target: the column to predict; it must hold exactly two values.
        name: the model's name.
        positive: the target value that is the positive outcome, compared case-insensitively
            (``1`` matches ``1.0`` and ``True``); inferred for yes/no, true/false, 1/0 and y/n.
        time_column: the column saying when each row happened; left out of the features.
        source: where the table came from, for messages and the YAML's header.

    Raises:
        DraftError: a bad name, no such target or time column, a target without exactly two
            values, an ambiguous positive value, too few labelled rows, or no usable feature.
    """
    if not _MODEL_NAME.match(name):
        raise DraftError(
            f"model name {name!r}: use lowercase letters, digits, _ and -, starting with a letter"
        )
    frame = frame.rename(columns=str)
    columns = list(frame.columns)
    for role, column in (("target column", target), ("time column", time_column)):
        if column is not None and column not in columns:
            raise DraftError(f"{source} has no {role} {column!r} (columns: {', '.join(columns)})")
    if time_column == target:
        raise DraftError(f"{target!r} cannot be both the target and the time column")

    notes: list[str] = []
    label = _target(frame[target], target, positive, notes)
    if label.labelled < _MIN_LABELLED_FLOOR:
        raise DraftError(
            f"target {target!r} has a value in only {label.labelled} row(s) of {source}; a draft "
            f"needs at least {_MIN_LABELLED_FLOOR} labelled rows (and training far more)"
        )
    if time_column is not None:
        labelled_rows = _present(frame[target]).index
        notes.append(_check_time_column(frame[time_column], labelled_rows, time_column))

    inferred, left_out = _features(frame, target, time_column, notes)
    if not inferred:
        why = "; ".join(f"{item.column}: {item.reason}" for item in left_out) or "no other columns"
        raise DraftError(f"{source} has no column usable as a feature ({why})")
    timestamps = [item.column for item in left_out if item.reason == _TIMESTAMPS]
    if time_column is None and timestamps:
        notes.append(
            f"no time column: if {' or '.join(timestamps)} says when each row happened, pass it "
            "as --time-column (a time-ordered holdout and backfilled history use it)"
        )

    min_labelled = min(_MIN_LABELLED_DEFAULT, max(_MIN_LABELLED_FLOOR, label.labelled // 4))
    if min_labelled < _MIN_LABELLED_DEFAULT:
        notes.append(
            f"gates.min_labelled_rows is {min_labelled} (a quarter of the {label.labelled} "
            "labelled rows here): a retrain window with fewer labels is skipped; raise it if "
            "production sees more"
        )
    if any(item.feature.type == "numeric" for item in inferred):
        notes.append(
            f"numeric bounds are the data's range plus {BOUND_MARGIN:.0%} each side: requests "
            "outside them are refused, so widen them where production may go further"
        )
    # The built-in spec's model, drift and gate settings: a known-good start for a tabular model.
    builtin = load_spec(BUILTIN_SPEC)
    spec = ModelSpec(
        name=name,
        description=f"Probability that {target} is {label.positive!r} (drafted from {source}).",
        target=target,
        positive_label=label.positive,
        negative_label=label.negative,
        time_column=time_column,
        features=tuple(item.feature for item in inferred),
        model=builtin.model,
        drift=builtin.drift,
        gates=GatePolicy(**(builtin.gates.model_dump() | {"min_labelled_rows": min_labelled})),
    )
    return Draft(
        spec=spec,
        text=render_spec(
            spec,
            source=source,
            rows=len(frame),
            labelled=label.labelled,
            positive_share=label.positive_share,
            feature_notes={
                item.feature.name: item.observed
                + (f"; {item.missing} missing" if item.missing else "")
                for item in inferred
            },
            left_out=[(item.column, item.reason) for item in left_out],
            bound_margin=BOUND_MARGIN,
        ),
        features=tuple(inferred),
        left_out=tuple(left_out),
        notes=tuple(notes),
        rows=len(frame),
        labelled_rows=label.labelled,
    )


# --- the target ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    positive: Label
    negative: Label
    labelled: int
    positive_share: float


def _label_value(value: Any) -> Label:
    """A target value as a spec label, keeping its type: text stays text, 1.0 becomes 1."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if float(value).is_integer() else str(value)
    return str(value).strip()


def _target(values: pd.Series, column: str, positive: str | None, notes: list[str]) -> _Target:
    present = _present(values)
    counts = present.value_counts()
    # Spellings label_of takes for one value ("Yes", "yes"), most frequent first.
    spellings: dict[str, list[Any]] = {}
    for value in counts.index:
        spellings.setdefault(label_key(value), []).append(value)
    shown = ", ".join(repr(_label_value(group[0])) for group in list(spellings.values())[:10])
    if len(spellings) != 2:
        if not spellings:
            raise DraftError(f"target {column!r} has no values")
        what = "one value" if len(spellings) == 1 else f"{len(spellings)} values"
        more = ", ..." if len(spellings) > 10 else ""
        raise DraftError(
            f"target {column!r} has {what} ({shown}{more}); it needs exactly two "
            "(the outcome happened or not)"
        )
    if positive is None:
        positive_key = _OBVIOUS_POSITIVE.get(frozenset(spellings))
        if positive_key is None:
            raise DraftError(
                f"target {column!r} has values {shown}: say which is the positive outcome with "
                "--positive VALUE"
            )
        how = "inferred; --positive chooses the other"
    else:
        positive_key = label_key(positive)
        if positive_key not in spellings:
            raise DraftError(
                f"--positive {positive!r} is not a value of target {column!r} (its values: {shown})"
            )
        how = "from --positive"
    negative_key = next(key for key in spellings if key != positive_key)
    label = _Target(
        positive=_label_value(spellings[positive_key][0]),
        negative=_label_value(spellings[negative_key][0]),
        labelled=len(present),
        positive_share=sum(counts[v] for v in spellings[positive_key]) / len(present),
    )
    notes.append(
        f"target {column}: positive {label.positive!r} ({how}; {label.positive_share:.0%} of "
        f"{label.labelled} labelled rows), negative {label.negative!r}"
    )
    for group in spellings.values():
        if len(group) > 1:
            notes.append(
                f"target {column}: {', '.join(map(repr, group))} count as one value, "
                f"{_label_value(group[0])!r}"
            )
    blank = int(values.notna().sum()) - label.labelled
    empty = len(values) - label.labelled - blank
    if empty:
        notes.append(f"{empty} row(s) have no {column} value: training skips them")
    if blank:
        notes.append(
            f"{blank} row(s) hold blank text as {column}, which `driftloop train` refuses as a "
            "label: drop them or leave them empty"
        )
    return label


def _check_time_column(values: pd.Series, labelled: pd.Index, column: str) -> str:
    """A note on the time column's span, read as ``driftloop train`` reads it.

    Raises:
        DraftError: it holds numbers, or text that is not a date or time (the message shows one).
    """
    present = _present(values)
    if present.empty:
        raise DraftError(f"time column {column!r} has no values")
    if pd.api.types.is_numeric_dtype(present) or _numbers(present) is not None:
        raise DraftError(
            f"time column {column!r} holds numbers (e.g. {present.iloc[0]!r}), not times: "
            "convert it to dates such as 2026-01-31 or 2026-01-31T12:00:00Z first"
        )
    parsed = parse_times(present)
    if parsed.unreadable.any():
        example = present.iloc[int(parsed.unreadable.argmax())]
        raise DraftError(
            f"time column {column!r} holds {int(parsed.unreadable.sum())} value(s) that are not "
            f"times: {not_a_time(example)}"
        )
    times = parsed.utc
    note = f"time column {column}: {times.min():%Y-%m-%d %H:%M} .. {times.max():%Y-%m-%d %H:%M}"
    untimed = len(labelled.difference(present.index))
    if untimed:
        note += (
            f"; {untimed} labelled row(s) have no time, which `driftloop train` refuses: "
            "fill or drop them"
        )
    return note


# --- the features ----------------------------------------------------------------------------


def _features(
    frame: pd.DataFrame, target: str, time_column: str | None, notes: list[str]
) -> tuple[list[Inferred], list[LeftOut]]:
    """Every column but the target, as a feature or left out with the reason."""
    inferred: list[Inferred] = []
    left_out: list[LeftOut] = []
    for column in frame.columns:
        if column == target:
            continue
        if column == time_column:
            left_out.append(LeftOut(column, "the time column"))
        elif not _IDENTIFIER.match(column):
            rename = re.sub(r"\W", "_", column.strip())
            rename = rename if _IDENTIFIER.match(rename) else f"_{rename}"
            left_out.append(
                LeftOut(column, f"not a valid feature name: rename it, e.g. to {rename}")
            )
        else:
            outcome = _infer(column, frame[column], len(frame), notes)
            if isinstance(outcome, LeftOut):
                left_out.append(outcome)
            else:
                inferred.append(outcome)
    return inferred, left_out


def _present(values: pd.Series) -> pd.Series:
    """The values that are there: missing and blank (whitespace-only) text are not."""
    values = values[values.notna()]
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        values = values[values.astype("string").str.strip() != ""]
    return values


def _numbers(values: pd.Series) -> tuple[pd.Series, int] | None:
    """The values as floats and how many were missing markers ("NA", "null", ...), or None
    when some value is not a number."""
    if pd.api.types.is_bool_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64"), 0
    if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
        return None
    text = values.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce").astype("Float64")
    unparsed = numbers.isna()
    if (unparsed & ~text.str.casefold().isin(_MISSING_MARKERS)).any() or unparsed.all():
        return None
    return numbers[~unparsed].astype("float64"), int(unparsed.sum())


def _is_timestamps(values: pd.Series) -> bool:
    """Whether the values are times: a datetime column, or text all in ISO 8601 (stricter than
    ``driftloop train``'s reading of a time column, so that codes and words never look like times)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)) or values.empty:
        return False
    distinct = pd.Series(values.astype("string").str.strip().unique()).astype(object)
    parsed = pd.to_datetime(distinct, format="ISO8601", errors="coerce", utc=True)
    return not parsed.isna().any()


def _infer(column: str, values: pd.Series, rows: int, notes: list[str]) -> Inferred | LeftOut:
    present = _present(values)
    if present.empty:
        return LeftOut(column, "no values")
    parsed = _numbers(present)
    if parsed is None and _is_timestamps(present):
        return LeftOut(column, _TIMESTAMPS)
    if parsed is not None:
        numbers, markers = parsed
        if markers:
            spelled = sorted(set(present.drop(numbers.index).astype("string").str.strip()))
            notes.append(
                f"{column}: {markers} value(s) {', '.join(map(repr, spelled))} read as missing"
            )
        present = present.loc[numbers.index]
        missing = len(values) - len(numbers)
        distinct = numbers.nunique()
        if distinct > CODE_VALUES_MAX:
            return _numeric(column, numbers, missing, rows, notes)
        if distinct > 1 or missing:
            shown = ", ".join(_fmt(v) for v in sorted(numbers.unique()))
            notes.append(
                f"{column}: only the numbers {shown}, drafted as categorical codes; make it "
                "numeric (with min and max) if their order matters"
            )
    missing = len(values) - len(present)
    return _categorical(column, present, missing, rows, notes)


def _numeric(
    column: str, numbers: pd.Series, missing: int, rows: int, notes: list[str]
) -> Inferred | LeftOut:
    finite = numbers[np.isfinite(numbers)]
    if finite.empty:
        return LeftOut(column, "no finite numbers")
    if len(finite) < len(numbers):
        notes.append(
            f"{column}: {len(numbers) - len(finite)} infinite value(s): requests cannot send them"
        )
    whole = bool((finite % 1 == 0).all())
    unique_per_row = not missing and finite.nunique() == rows
    if whole and unique_per_row:
        if _ID_NAME.search(column):
            return LeftOut(column, "a distinct whole number per row (an id)")
        notes.append(f"{column}: a distinct whole number per row; if it is an id, delete it")
    low, high = float(finite.min()), float(finite.max())
    lower, upper = _bounds(low, high, whole=whole)
    feature = Feature(name=column, type="numeric", min=lower, max=upper, nullable=missing > 0)
    return Inferred(feature, missing, int(finite.nunique()), seen=(low, high))


def _bounds(low: float, high: float, *, whole: bool) -> tuple[float, float]:
    """The range widened by ``BOUND_MARGIN`` each side, rounded outwards (to whole numbers for
    whole-number data); not below 0 when the data has no negatives."""
    span = high - low
    margin = span * BOUND_MARGIN if span > 0 else max(abs(high) * BOUND_MARGIN, 1.0)
    # Round to a tenth of the margin's order of magnitude: tidy numbers, still about 10%.
    step = 10.0 ** (math.floor(math.log10(margin)) - 1)
    if whole:
        step = max(step, 1.0)
    digits = max(0, -math.floor(math.log10(step)))
    lower = round(math.floor((low - margin) / step) * step, digits)
    upper = round(math.ceil((high + margin) / step) * step, digits)
    if low >= 0:
        lower = max(lower, 0.0)
    return lower + 0.0, upper + 0.0  # + 0.0: no -0.0


def _categorical(
    column: str, present: pd.Series, missing: int, rows: int, notes: list[str]
) -> Inferred | LeftOut:
    # As the training pipeline turns a categorical value into text (features.feature_frame).
    counts = category_text(present).value_counts()
    if len(counts) == rows:
        return LeftOut(column, "a distinct value per row (an id)")
    if len(counts) == 1 and not missing:
        return LeftOut(column, f"one value only ({counts.index[0]!r}): nothing to learn from")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = [str(value) for value, _ in ranked[:MAX_CATEGORIES]]
    if len(counts) > MAX_CATEGORIES:
        covered = sum(count for _, count in ranked[:MAX_CATEGORIES]) / len(present)
        notes.append(
            f"{column}: {len(counts)} distinct values; the {MAX_CATEGORIES} most frequent are "
            f"listed ({covered:.0%} of rows), the rest count as unknown"
        )
        if len(counts) > rows / 2:
            notes.append(f"{column}: mostly distinct values: free text or an id? remove it if so")
    too_long = [value for value in kept if len(value) > _REQUEST_TEXT_MAX]
    if too_long:
        notes.append(
            f"{column}: {len(too_long)} of its categories are longer than {_REQUEST_TEXT_MAX} "
            "characters, which requests cannot send; shorten them in the data"
        )
    feature = Feature(
        name=column,
        type="categorical",
        categories=tuple(sorted(kept, key=_category_order)),
        nullable=missing > 0,
    )
    return Inferred(feature, missing, len(counts))


def _category_order(value: str) -> tuple[int, float, str]:
    """Codes in numeric order, then text alphabetically."""
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, value.casefold())
    return (0, number, value) if math.isfinite(number) else (1, 0.0, value.casefold())


def _fmt(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:.6g}"
