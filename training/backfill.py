"""Load a model's history into the feedback store with its own timestamps (``driftloop backfill``).

Live predictions and labels are stamped with the time they reach the service. History loaded here
keeps the time it happened, so it feeds the drift reference, the retrain windows and the
time-ordered holdout as live traffic does.

The tables (one with the target, or predictions and/or labels) are read and checked whole by
:mod:`training.history`, which says what they may hold and how request ids are derived; then:

- A label without ``received_at`` is taken to have arrived with its prediction (its timestamp).
- Rows without a ``score`` are scored by the model's champion and record its version; a ``score``
  without a ``model_version`` records ``backfill``.
- Everything goes in with COPY, in chunks committed one by one, idempotent on the request id: a
  re-run, or a run after an interruption, stores only what is not there yet (stored predictions
  keep their first version; a label that differs from the stored one replaces it, as a correction).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from training.columns import LISTED
from training.history import (
    BackfillError,
    LabelRows,
    PredictionRows,
    prepare_labels,
    prepare_predictions,
)
from training.partitions import day_of, ensure_days
from training.sources import read_table
from training.spec import ModelSpec
from training.store import Connection, PredictionRecord, copy_predictions, encode_prediction

__all__ = ["CHUNK_ROWS", "UNKNOWN_VERSION", "BackfillResult", "backfill"]

CHUNK_ROWS = 50_000
# The model_version of rows whose file gives a score but not the version that made it.
UNKNOWN_VERSION = "backfill"

Table = pd.DataFrame | Path
Progress = Callable[[str], None]


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
# A row written with no previous one was inserted (the rows there are locked first, and a
# partitioned table's RETURNING cannot read xmax). A differing label is a correction (counted in revisions, received_at moves, key_id cleared: no
# API key posted it) and the label it replaces is kept in feedback_history, as the service keeps
# it; the same label only fills in a raw spelling the row lacks (labels stored before migration
# 0002). _LOCK_FEEDBACK_STAGED first, as training.store does: the rows to replace are read by this
# statement's snapshot, so a concurrent correction must wait.
_LOCK_FEEDBACK_STAGED = """
SELECT 1 FROM feedback f JOIN pg_temp.feedback_backfill s USING (request_id)
ORDER BY f.request_id, f.predicted_at FOR UPDATE OF f
"""
# A label goes beside its prediction: predicted_at is the prediction's created_at. A label with no
# received_at is taken as the prediction's own time (history arriving late), unless it corrects
# a stored one: that correction is made now, so the audit trail never runs backwards.
_UPSERT_FEEDBACK = """
WITH previous AS (
    SELECT f.request_id, f.predicted_at, f.label, f.raw_label, f.key_id, f.received_at
    FROM feedback f JOIN pg_temp.feedback_backfill s USING (request_id)
), written AS (
    INSERT INTO feedback (request_id, predicted_at, label, raw_label, received_at)
    SELECT s.request_id, p.created_at, s.label, s.raw_label,
           COALESCE(s.received_at, CASE WHEN o.label IS DISTINCT FROM s.label AND o.label IS NOT NULL
                                        THEN now() ELSE p.created_at END)
    FROM pg_temp.feedback_backfill s
    JOIN predictions p ON p.request_id = s.request_id AND p.model_name = %(model)s
    LEFT JOIN previous o ON o.request_id = s.request_id AND o.predicted_at = p.created_at
    ON CONFLICT (request_id, predicted_at) DO UPDATE SET
        label = EXCLUDED.label,
        raw_label = CASE WHEN feedback.label IS DISTINCT FROM EXCLUDED.label
            THEN EXCLUDED.raw_label ELSE COALESCE(feedback.raw_label, EXCLUDED.raw_label) END,
        received_at = CASE WHEN feedback.label IS DISTINCT FROM EXCLUDED.label
            THEN EXCLUDED.received_at ELSE feedback.received_at END,
        key_id = CASE WHEN feedback.label IS DISTINCT FROM EXCLUDED.label
            THEN NULL ELSE feedback.key_id END,
        revisions = feedback.revisions
            + CASE WHEN feedback.label IS DISTINCT FROM EXCLUDED.label THEN 1 ELSE 0 END
    WHERE feedback.label IS DISTINCT FROM EXCLUDED.label OR feedback.raw_label IS NULL
    RETURNING request_id, predicted_at, label
), kept AS (
    INSERT INTO feedback_history
        (request_id, predicted_at, label, raw_label, key_id, received_at, replaced_by)
    SELECT p.request_id, p.predicted_at, p.label, p.raw_label, p.key_id, p.received_at, NULL
    FROM previous p JOIN written w USING (request_id, predicted_at)
    WHERE p.label IS DISTINCT FROM w.label
)
SELECT count(*) FILTER (WHERE p.request_id IS NULL), count(*) FILTER (WHERE p.request_id IS NOT NULL)
FROM written w LEFT JOIN previous p USING (request_id, predicted_at)
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
        cur.execute(_ORPHANS, {"model": model_name, "listed": LISTED})
        orphans, examples = cur.fetchone() or (0, None)
        cur.execute(_LOCK_FEEDBACK_STAGED)
        cur.execute(_UPSERT_FEEDBACK, {"model": model_name})
        stored, updated = cur.fetchone() or (0, 0)
        cur.execute(_DROP_FEEDBACK_STAGING)
    tally.labels_stored += stored
    tally.labels_updated += updated
    tally.labels_unchanged += len(part) - orphans - stored - updated
    tally.orphans += orphans
    tally.orphan_examples.extend((examples or [])[: LISTED - len(tally.orphan_examples)])


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
            f"(e.g. {', '.join(foreign[:LISTED])}); nothing stored"
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
    # The days of the history get their own partitions first, so nothing lands in the DEFAULT one.
    made = ensure_days(conn, {day_of(rows.created_at[p]) for p in fresh})
    conn.commit()
    if made:
        say(f"{rows.source}: partitions made for {len(made):,} day(s) of history")
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
