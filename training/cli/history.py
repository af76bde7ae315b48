"""History: ``driftloop backfill`` loads a model's past predictions and labels into the store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.cli.common import Progress, store
from training.errors import DriftloopError
from training.settings import Settings

if TYPE_CHECKING:
    from training.backfill import BackfillResult

__all__ = ["add_parsers", "summary_lines"]


def summary_lines(result: BackfillResult) -> list[str]:
    """The end-of-run summary of a backfill, one line per fact."""
    lines = [f"backfill of {result.model_name}"]
    if result.first_at is not None and result.last_at is not None:
        lines.append(
            f"  predictions  {result.predictions_read:,} read, {result.first_at:%Y-%m-%d %H:%M:%S}"
            f" .. {result.last_at:%Y-%m-%d %H:%M:%S} UTC: {result.predictions_stored:,} stored,"
            f" {result.predictions_already_stored:,} already there"
        )
        if result.scored:
            lines.append(f"  scored       {result.scored:,} by champion {result.scored_by}")
        if result.naive_timestamps:
            lines.append(
                f"  time zone    {result.naive_timestamps:,} timestamps had none and were taken"
                " as UTC"
            )
    if result.labels_read:
        lines.append(
            f"  labels       {result.labels_read:,} read: {result.labels_stored:,} stored,"
            f" {result.labels_updated:,} updated, {result.labels_unchanged:,} unchanged"
        )
    if result.orphan_labels:
        lines.append(
            f"  not loaded   {result.orphan_labels:,} label(s) with no prediction of"
            f" {result.model_name}, e.g. {', '.join(result.orphan_examples)}"
        )
    if result.nothing_new:
        lines.append("nothing new: everything read was already in the store")
    return lines


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from training.backfill import backfill
    from training.models import select_spec
    from training.store import connect

    if args.data is None and args.predictions is None and args.labels is None:
        raise DriftloopError("give --data PATH, or --predictions PATH and/or --labels PATH")
    if args.data is not None and args.labels is not None:
        raise DriftloopError(
            "--data carries its labels in the target column; --labels goes with --predictions, "
            "or alone for predictions already in the store"
        )
    spec = select_spec(settings, args.model)
    step = Progress()
    url = store(settings)
    with connect(url) as conn:
        result = backfill(
            conn,
            spec,
            data=args.data,
            predictions=args.predictions,
            labels=args.labels,
            time_column=args.time_column,
            id_column=args.id_column,
            progress=step,
        )
    for line in summary_lines(result):
        print(line)
    return 0


def add_parsers(sub: Any) -> None:
    backfill = sub.add_parser(
        "backfill",
        help="load a model's past predictions and labels with their own timestamps",
        description=(
            "Load history into the store: --data (features, a timestamp and the target in one "
            "table), or --predictions and/or --labels (request_id and the target). CSV, TSV or "
            "Parquet. Timestamps are stored in UTC (those without a zone are taken as UTC); rows "
            "without a score are scored by the champion; rows without a request_id get the id "
            "driftloop train gives the same row, so a re-run stores nothing new. "
            "A table with any bad row is refused whole (rows count from 1 after the header)."
        ),
    )
    backfill.add_argument("--model", metavar="NAME", help="the model (needed when several)")
    history = backfill.add_mutually_exclusive_group()
    history.add_argument("--data", type=Path, metavar="PATH", help="features, time and target")
    history.add_argument(
        "--predictions",
        type=Path,
        metavar="PATH",
        help="features and time; optional request_id, score, model_version",
    )
    backfill.add_argument(
        "--labels",
        type=Path,
        metavar="PATH",
        help="request_id and the target; optional received_at",
    )
    backfill.add_argument(
        "--time-column",
        metavar="COL",
        help="the timestamp column (default: the spec's time_column, else created_at)",
    )
    backfill.add_argument(
        "--id-column", metavar="COL", help="the request id column (default: request_id)"
    )
    backfill.set_defaults(func=cmd_backfill)
