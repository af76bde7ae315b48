"""Load a model's history into the feedback store with its own timestamps (``driftloop backfill``).

Live predictions and labels are stamped with the time they reach the service. History loaded here
keeps the time it happened, so it feeds the drift reference, the retrain windows and the
time-ordered holdout as live traffic does.

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
- A label without ``received_at`` is taken to have arrived with its prediction (its timestamp).
- Every row is checked before anything is stored; a table with any problem is refused whole, its
  first problems listed (rows count from 1, the first row after the header).
- Rows without a ``score`` are scored by the model's champion and record its version; a ``score``
  without a ``model_version`` records ``backfill``.
- Everything goes in with COPY, in chunks committed one by one, idempotent on the request id: a
  re-run, or a run after an interruption, stores only what is not there yet (stored predictions
  keep their first version; a label that differs from the stored one replaces it, as a correction).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from training.errors import DriftloopError
from training.features import feature_frame
from training.sources import read_table
from training.spec import Feature, ModelSpec
from training.store import Connection, PredictionRecord, copy_predictions, encode_prediction

__all__ = [
    "CHUNK_ROWS",
    "UNKNOWN_VERSION",
    "BackfillError",
    "BackfillResult",
    "LabelRows",
    "PredictionRows",
    "backfill",
    "derive_request_ids",
    "prepare_labels",
    "prepare_predictions",
]

CHUNK_ROWS = 50_000
# The model_version of rows whose file gives a score but not the version that made it.
UNKNOWN_VERSION = "backfill"
_LISTED = 5
_CATEGORY_MAX_LENGTH = 64  # the serving schema's limit, so history looks like live traffic
_REQUEST_ID = "request_id"
_CREATED_AT = "created_at"
_RECEIVED_AT = "received_at"
_SCORE = "score"
_MODEL_VERSION = "model_version"
# A time of day followed by a zone (Z or an offset): what makes an ISO 8601 text zone-aware.
_ZONE = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
_ISO_EXAMPLE = "ISO 8601 such as 2026-01-31, 2026-01-31 08:00:00 or 2026-01-31T08:00:00+01:00"

Table = pd.DataFrame | Path
Progress = Callable[[str], None]


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


@dataclass(frozen=True)
class BackfillResult:
    """What one backfill read and stored."""

    model_name: str
    predictions_read: int
    predictions_stored: int
    predictions_already_stored: int
    scored: int
    scored_by: str | None
    naive_timestamps: int
    first_at: datetime | None
    last_at: datetime | None
    labels_read: int
    labels_stored: int
    labels_updated: int
    labels_unchanged: int
    orphan_labels: int
    orphan_examples: tuple[str, ...]

    @property
    def nothing_new(self) -> bool:
        return self.predictions_stored == 0 and self.labels_stored == 0 and self.labels_updated == 0


@dataclass
class _Problems:
    """A table's problems: the first few of each column kept for the message, all counted."""

    source: str
    found: list[tuple[int, str, str]] = field(default_factory=list)
    count: int = 0

    def flag(self, mask: NDArray[np.bool_], column: str, describe: Callable[[int], str]) -> None:
        positions = np.flatnonzero(mask)
        self.count += len(positions)
        self.found.extend((int(p) + 1, column, describe(int(p))) for p in positions[:_LISTED])

    def raise_any(self) -> None:
        if not self.count:
            return
        first = sorted(self.found, key=lambda problem: problem[0])[:_LISTED]
        listed = "; ".join(f"row {row} {column}: {detail}" for row, column, detail in first)
        more = f"; and {self.count - len(first)} more" if self.count > len(first) else ""
        raise BackfillError(
            f"{self.source}: {self.count} problem(s), nothing stored: {listed}{more}"
        )


def _shown(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _missing(column: pd.Series) -> NDArray[np.bool_]:
    """Null, NaN, or text that is empty or blank (the public telco file's " ")."""
    missing = column.isna().to_numpy(dtype=bool)
    if pd.api.types.infer_dtype(column, skipna=True) == "string":
        missing |= column.str.strip().eq("").fillna(False).to_numpy(dtype=bool)
    elif column.dtype == object:
        blank = column.map(lambda v: isinstance(v, str) and not v.strip(), na_action="ignore")
        missing |= blank.fillna(False).to_numpy(dtype=bool)
    return missing


def _text(value: Any) -> str:
    """A category, id or version as text: Parquet's 2019 and 2019.0 both become "2019"."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _numeric(column: pd.Series, feature: Feature, problems: _Problems) -> list[float | None]:
    name = feature.name
    missing = _missing(column)
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


def _categorical(column: pd.Series, feature: Feature, problems: _Problems) -> list[str | None]:
    name = feature.name
    missing = _missing(column)
    texts: list[str | None] = [
        None if absent else _text(value)
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
    _flag_nul(texts, name, problems)
    if not feature.nullable:
        problems.flag(missing, name, lambda p: "is missing and the spec does not allow nulls here")
    return texts


def _flag_nul(texts: Sequence[str | None], column: str, problems: _Problems) -> None:
    nul = np.fromiter((t is not None and "\x00" in t for t in texts), bool, len(texts))
    problems.flag(nul, column, lambda p: "holds the NUL character, which PostgreSQL cannot store")


@dataclass(frozen=True)
class _Times:
    parsed: pd.Series  # datetime64 in UTC, NaT where empty or unreadable
    stamps: list[datetime | None]  # the same, floored to microseconds as PostgreSQL keeps them
    naive: int  # how many had no time zone (taken as UTC)


def _timestamps(column: pd.Series, name: str, problems: _Problems, *, required: bool) -> _Times:
    missing = _missing(column)
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        if column.dt.tz is None:
            naive = int((~missing).sum())
            parsed = column.dt.tz_localize("UTC")
        else:
            naive = 0
            parsed = column.dt.tz_convert("UTC")
    else:
        texts = pd.Series(
            [
                None if absent else (v.isoformat() if isinstance(v, datetime) else _text(v).strip())
                for v, absent in zip(column.tolist(), missing, strict=True)
            ],
            dtype=object,
        )
        parsed = pd.to_datetime(texts, utc=True, errors="coerce", format="ISO8601")
        unread = ~missing & parsed.isna().to_numpy(dtype=bool)
        problems.flag(
            unread, name, lambda p: f"{_shown(column.iloc[p])} is not a timestamp ({_ISO_EXAMPLE})"
        )
        zoned = texts.map(lambda t: bool(_ZONE.search(t)), na_action="ignore")
        naive = int((~missing & ~unread & ~zoned.fillna(False).to_numpy(dtype=bool)).sum())
    if required:
        problems.flag(missing, name, lambda p: "is empty; every row needs its time")
    stamps: list[datetime | None] = [
        None if stamp is pd.NaT else stamp.to_pydatetime() for stamp in parsed.dt.floor("us")
    ]
    return _Times(parsed=parsed.reset_index(drop=True), stamps=stamps, naive=naive)


def _raw_label(value: Any) -> str:
    """The label as the data spells it; booleans and numbers as JSON spells them."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, str) else json.dumps(value)


def _labels(
    spec: ModelSpec, column: pd.Series, problems: _Problems, *, required: bool
) -> tuple[list[int | None], list[str | None]]:
    name = spec.target
    missing = _missing(column)
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


def _explicit_ids(column: pd.Series, name: str, problems: _Problems) -> list[str]:
    missing = _missing(column)
    ids = [
        "" if absent else _text(value)
        for value, absent in zip(column.tolist(), missing, strict=True)
    ]
    problems.flag(missing, name, lambda p: "is empty; every row needs its request id")
    _flag_nul(ids, name, problems)
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


def derive_request_ids(spec: ModelSpec, frame: pd.DataFrame, created_at: pd.Series) -> list[str]:
    """Request ids for rows that have none: the same rows give the same ids on every run.

    The first of identical rows gets the id ``driftloop train`` gives that row of a training table
    (:func:`training.champion.row_request_ids`: the model name, the features and, when the spec
    has a ``time_column``, the time, hashed), so history that overlaps the champion's training
    table is known as such and kept out of a retrain's holdout. Each repeat of the row (same
    features, and same time where it counts) gets ``-2``, ``-3``, ... after it, so genuine
    duplicates stay separate predictions.

    Args:
        spec: the model.
        frame: the table, with the spec's feature columns as the file gives them.
        created_at: each row's time, in UTC.
    """
    from training.champion import row_request_ids

    identity = feature_frame(spec, frame)
    identity["created_at"] = created_at.to_numpy()
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
    problems = _Problems(source)

    times = _timestamps(frame[timestamp], timestamp, problems, required=True)
    columns: list[list[Any]] = [
        _numeric(frame[f.name], f, problems)
        if f.type == "numeric"
        else _categorical(frame[f.name], f, problems)
        for f in spec.features
    ]
    names = spec.feature_names
    features = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    scores: list[float | None] = [None] * len(frame)
    if _SCORE in frame.columns:
        scores = _numeric(
            frame[_SCORE],
            Feature(name=_SCORE, type="numeric", min=0.0, max=1.0, nullable=True),
            problems,
        )
    versions: list[str | None] = [None] * len(frame)
    if _MODEL_VERSION in frame.columns:
        missing = _missing(frame[_MODEL_VERSION])
        versions = [
            None if gone else _text(v)
            for v, gone in zip(frame[_MODEL_VERSION].tolist(), missing, strict=True)
        ]
        _flag_nul(versions, _MODEL_VERSION, problems)
    ids = _explicit_ids(frame[ids_from], ids_from, problems) if ids_from else []
    labels: list[int | None] = []
    raw: list[str | None] = []
    received: list[datetime | None] = [None] * len(frame)
    if with_labels:
        labels, raw = _labels(spec, frame[spec.target], problems, required=False)
        if _RECEIVED_AT in frame.columns:
            received = _timestamps(
                frame[_RECEIVED_AT], _RECEIVED_AT, problems, required=False
            ).stamps
    problems.raise_any()

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
    problems = _Problems(source)
    ids = _explicit_ids(frame[ids_from], ids_from, problems)
    labels, raw = _labels(spec, frame[spec.target], problems, required=True)
    received: list[datetime | None] = [None] * len(frame)
    if _RECEIVED_AT in frame.columns:
        received = _timestamps(frame[_RECEIVED_AT], _RECEIVED_AT, problems, required=False).stamps
    problems.raise_any()
    return LabelRows(
        row_numbers=list(range(1, len(frame) + 1)),
        request_ids=ids,
        labels=[label for label in labels if label is not None],
        raw_labels=[text for text in raw if text is not None],
        received_at=received,
    )


# --- the store --------------------------------------------------------------------------------

_STORED_IDS = "SELECT request_id, model_name FROM predictions WHERE request_id = ANY(%s)"
_CREATE_FEEDBACK_STAGING = (
    "CREATE TEMP TABLE feedback_backfill (row_number bigint, request_id text, label smallint,"
    " raw_label text, received_at timestamptz) ON COMMIT DROP"
)
_COPY_FEEDBACK_STAGING = (
    "COPY pg_temp.feedback_backfill (row_number, request_id, label, raw_label, received_at)"
    " FROM STDIN WITH (FORMAT csv)"
)
_ORPHANS = """
SELECT count(*), (array_agg(s.request_id ORDER BY s.row_number))[1:%(listed)s]
FROM pg_temp.feedback_backfill s
WHERE NOT EXISTS (
    SELECT 1 FROM predictions p WHERE p.request_id = s.request_id AND p.model_name = %(model)s
)
"""
# A differing label is a correction (counted in revisions, received_at moves); the same label
# only fills in a raw spelling the row lacks (labels stored before migration 0002).
_UPSERT_FEEDBACK = """
WITH written AS (
    INSERT INTO feedback (request_id, label, raw_label, received_at)
    SELECT s.request_id, s.label, s.raw_label, COALESCE(s.received_at, p.created_at)
    FROM pg_temp.feedback_backfill s
    JOIN predictions p ON p.request_id = s.request_id AND p.model_name = %(model)s
    ON CONFLICT (request_id) DO UPDATE SET
        label = EXCLUDED.label,
        raw_label = CASE WHEN feedback.label IS DISTINCT FROM EXCLUDED.label
            THEN EXCLUDED.raw_label ELSE COALESCE(feedback.raw_label, EXCLUDED.raw_label) END,
        received_at = CASE WHEN feedback.label IS DISTINCT FROM EXCLUDED.label
            THEN EXCLUDED.received_at ELSE feedback.received_at END,
        revisions = feedback.revisions
            + CASE WHEN feedback.label IS DISTINCT FROM EXCLUDED.label THEN 1 ELSE 0 END
    WHERE feedback.label IS DISTINCT FROM EXCLUDED.label OR feedback.raw_label IS NULL
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""
_DROP_FEEDBACK_STAGING = "DROP TABLE pg_temp.feedback_backfill"


@dataclass
class _Tally:
    predictions_stored: int = 0
    labels_stored: int = 0
    labels_updated: int = 0
    labels_unchanged: int = 0
    orphans: int = 0
    orphan_examples: list[str] = field(default_factory=list)


def _stored_ids(conn: Connection, ids: Sequence[str], chunk_rows: int) -> dict[str, str]:
    """Which of ``ids`` the store holds already, with the model each belongs to."""
    found: dict[str, str] = {}
    with conn.cursor() as cur:
        for start in range(0, len(ids), chunk_rows):
            cur.execute(_STORED_IDS, (list(ids[start : start + chunk_rows]),))
            found.update(cur.fetchall())
    return found


def _store_labels(
    conn: Connection, model_name: str, rows: LabelRows, part: range, tally: _Tally
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for p in part:
        at = rows.received_at[p]
        writer.writerow(
            (
                rows.row_numbers[p],
                rows.request_ids[p],
                rows.labels[p],
                rows.raw_labels[p],
                "" if at is None else at.isoformat(),
            )
        )
    buffer.seek(0)
    with conn.cursor() as cur:
        cur.execute(_CREATE_FEEDBACK_STAGING)
        cur.copy_expert(_COPY_FEEDBACK_STAGING, buffer)
        cur.execute(_ORPHANS, {"model": model_name, "listed": _LISTED})
        orphans, examples = cur.fetchone() or (0, None)
        cur.execute(_UPSERT_FEEDBACK, {"model": model_name})
        stored, updated = cur.fetchone() or (0, 0)
        cur.execute(_DROP_FEEDBACK_STAGING)
    tally.labels_stored += stored
    tally.labels_updated += updated
    tally.labels_unchanged += len(part) - orphans - stored - updated
    tally.orphans += orphans
    tally.orphan_examples.extend((examples or [])[: _LISTED - len(tally.orphan_examples)])


def _champion_scores(
    conn: Connection,
    spec: ModelSpec,
    rows: PredictionRows,
    unscored: Sequence[int],
    chunk_rows: int,
    say: Progress,
) -> tuple[dict[int, float], str, str]:
    """Scores of the ``unscored`` rows by the champion; also its tag and version."""
    from training import registry
    from training.scoring import FastScorer

    current = registry.champion(conn, spec.name)
    if current is None:
        raise BackfillError(
            f"{rows.source}: {len(unscored)} row(s) have no score and model {spec.name} has no "
            "champion to score them; run `driftloop train` first, or give the table a score column"
        )
    pipeline, trained_with = registry.load_model(current.tag)
    lacking = [n for n in trained_with.feature_names if n not in spec.feature_names]
    if lacking:
        raise BackfillError(
            f"champion {current.tag} needs feature(s) {', '.join(lacking)} that the spec of "
            f"{spec.name} no longer lists; give the table a score column"
        )
    scorer = FastScorer.compile(pipeline, trained_with)
    scores: dict[int, float] = {}
    for start in range(0, len(unscored), chunk_rows):
        part = unscored[start : start + chunk_rows]
        values = scorer.score([rows.features[p] for p in part])
        if not np.isfinite(values).all():
            raise BackfillError(
                f"champion {current.tag} gives no score for some rows of {rows.source} "
                "(missing values its model family cannot handle); give the table a score column"
            )
        scores.update(zip(part, values.tolist(), strict=True))
        say(f"scored {start + len(part):,} of {len(unscored):,} rows with {current.tag}")
    return scores, current.tag, current.tag.partition(":")[2]


def _store_predictions(
    conn: Connection,
    spec: ModelSpec,
    rows: PredictionRows,
    chunk_rows: int,
    say: Progress,
    tally: _Tally,
) -> tuple[int, str | None]:
    """Load the rows (and the labels they carry), one committed chunk at a time.

    Returns:
        How many rows the champion scored, and its tag (None when none was needed).
    """
    total = len(rows.request_ids)
    known = _stored_ids(conn, rows.request_ids, chunk_rows)
    foreign = [rid for rid, model in known.items() if model != spec.name]
    if foreign:
        raise BackfillError(
            f"{rows.source}: {len(foreign)} request id(s) belong to predictions of another model "
            f"(e.g. {', '.join(foreign[:_LISTED])}); nothing stored"
        )
    fresh = [p for p, rid in enumerate(rows.request_ids) if rid not in known]
    unscored = [p for p in fresh if rows.scores[p] is None]
    scored: dict[int, float] = {}
    tag: str | None = None
    champion_version = UNKNOWN_VERSION
    if unscored:
        scored, tag, champion_version = _champion_scores(
            conn, spec, rows, unscored, chunk_rows, say
        )
    threshold = spec.model.threshold
    fresh_set = set(fresh)
    for start in range(0, total, chunk_rows):
        part = range(start, min(start + chunk_rows, total))
        lines = []
        for p in part:
            if p not in fresh_set:
                continue
            given = rows.scores[p]
            score = scored[p] if given is None else given
            version = champion_version if given is None else rows.model_versions[p]
            lines.append(
                encode_prediction(
                    PredictionRecord(
                        request_id=rows.request_ids[p],
                        model_name=spec.name,
                        model_version=version or UNKNOWN_VERSION,
                        features=rows.features[p],
                        score=score,
                        label=int(score >= threshold),
                        created_at=rows.created_at[p],
                    )
                )
            )
        tally.predictions_stored += copy_predictions(conn, b"".join(lines))
        if rows.labels is not None:
            # The labels of this chunk's rows: their positions in LabelRows are ascending.
            labels = rows.labels
            first = np.searchsorted(labels.row_numbers, start + 1)
            last = np.searchsorted(labels.row_numbers, part.stop + 1)
            if last > first:
                _store_labels(conn, spec.name, labels, range(int(first), int(last)), tally)
        conn.commit()
        say(
            f"{rows.source}: {part.stop:,} of {total:,} rows loaded "
            f"({tally.predictions_stored:,} new predictions)"
        )
    return len(unscored), tag


def _read(table: Table, role: str, say: Progress) -> tuple[pd.DataFrame, str]:
    if isinstance(table, Path):
        say(f"reading {table}")
        return read_table(table), str(table)
    return table, role


def backfill(
    conn: Connection,
    spec: ModelSpec,
    *,
    data: Table | None = None,
    predictions: Table | None = None,
    labels: Table | None = None,
    time_column: str | None = None,
    id_column: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Progress | None = None,
) -> BackfillResult:
    """Load past predictions and labels of ``spec``'s model into the store (see the module doc).

    Every table is read and checked before anything is stored. Then predictions go in first, in
    chunks of ``chunk_rows`` rows, each committed with the labels it carries; a labels table
    follows, its labels stored only for predictions of this model (the others are counted and
    the first few named in the result, not stored).

    Args:
        conn: a store connection (not in autocommit mode); committed after each chunk.
        spec: the model the history belongs to.
        data: one table of features, a timestamp and the target (not with the other two).
        predictions: a table of features and a timestamp, optionally ``score``,
            ``model_version`` and a request id.
        labels: a table of request ids and the target, optionally ``received_at`` (else the
            prediction's timestamp).
        time_column: the predictions' timestamp column (else the spec's, else ``created_at``).
        id_column: the request id column of every table (else ``request_id``).
        chunk_rows: rows per COPY and commit.
        progress: called with a line after each chunk.

    Raises:
        BackfillError: a table is refused (nothing of it stored), or rows need a score and the
            model has no champion.
        training.sources.SourceError: a file cannot be read.
    """
    if data is not None and (predictions is not None or labels is not None):
        raise ValueError("give one data table, or predictions and/or labels tables, not both")
    if data is None and predictions is None and labels is None:
        raise ValueError("give a data table, or predictions and/or labels tables")
    say = progress or (lambda _: None)
    rows: PredictionRows | None = None
    history, role = (data, "data") if data is not None else (predictions, "predictions")
    if history is not None:
        frame, source = _read(history, role, say)
        rows = prepare_predictions(
            spec,
            frame,
            source=source,
            with_labels=data is not None,
            time_column=time_column,
            id_column=id_column,
        )
        say(f"{source}: {len(rows.request_ids):,} rows checked")
    label_rows: LabelRows | None = None
    label_source = "labels"
    if labels is not None:
        frame, label_source = _read(labels, "labels", say)
        label_rows = prepare_labels(spec, frame, source=label_source, id_column=id_column)
        say(f"{label_source}: {len(label_rows.request_ids):,} labels checked")

    tally = _Tally()
    scored, scored_by = 0, None
    if rows is not None:
        scored, scored_by = _store_predictions(conn, spec, rows, chunk_rows, say, tally)
    if label_rows is not None:
        total = len(label_rows.request_ids)
        for start in range(0, total, chunk_rows):
            part = range(start, min(start + chunk_rows, total))
            _store_labels(conn, spec.name, label_rows, part, tally)
            conn.commit()
            say(f"{label_source}: {part.stop:,} of {total:,} labels loaded")
    read = len(rows.request_ids) if rows else 0
    carried = rows.labels if rows else None
    return BackfillResult(
        model_name=spec.name,
        predictions_read=read,
        predictions_stored=tally.predictions_stored,
        predictions_already_stored=read - tally.predictions_stored,
        scored=scored,
        scored_by=scored_by,
        naive_timestamps=rows.naive_timestamps if rows else 0,
        first_at=min(rows.created_at) if rows else None,
        last_at=max(rows.created_at) if rows else None,
        labels_read=sum(len(r.request_ids) for r in (carried, label_rows) if r is not None),
        labels_stored=tally.labels_stored,
        labels_updated=tally.labels_updated,
        labels_unchanged=tally.labels_unchanged,
        orphan_labels=tally.orphans,
        orphan_examples=tuple(tally.orphan_examples),
    )
