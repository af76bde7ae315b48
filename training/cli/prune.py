"""Retention of the store: ``driftloop prune --older-than DAYS [--dry-run]`` drops whole days."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from training.cli.common import positive_int, store
from training.errors import DriftloopError
from training.settings import Settings

if TYPE_CHECKING:
    from training.retention import PrunePlan

__all__ = ["add_parsers", "plan_lines"]


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MB"


def plan_lines(plan: PrunePlan) -> list[str]:
    """The days a prune drops, one line each, and their total."""
    if not plan.days:
        return [f"nothing to prune: the store holds no day before {plan.first_kept}"]
    lines = [f"{'day':<12} {'predictions':>12} {'labels':>12} {'on disk':>12}"]
    for day in plan.days:
        lines.append(
            f"{day.day!s:<12} {f'~{day.predictions:,}':>12} {f'~{day.labels:,}':>12}"
            f" {_size(day.bytes):>12}"
        )
    lines.append(
        f"{len(plan.days)} day(s) before {plan.first_kept}, {_size(sum(d.bytes for d in plan.days))}"
        " (row counts are the planner's estimates)"
    )
    if plan.in_default:
        lines.append(
            f"{plan.in_default:,} of their predictions are in the DEFAULT partition: they are"
            " moved into their days first"
        )
    return lines


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg2

    url = store(settings)
    try:
        return _prune(args, url)
    except psycopg2.errors.LockNotAvailable as exc:
        raise DriftloopError(
            "the store stayed busy (a long query holds one of its tables, a retrain's extraction "
            "perhaps); the days before were dropped, the rest were not: run prune again"
        ) from exc


def _prune(args: argparse.Namespace, url: str) -> int:
    from training.retention import PruneRefused, plan_prune, prune, refusal
    from training.store import connect

    with connect(url) as conn:
        if args.dry_run:
            plan = plan_prune(conn, args.older_than)
            for line in plan_lines(plan):
                print(line)
            if plan.blocked:
                raise PruneRefused(refusal(plan).replace("Nothing was dropped", "It would refuse"))
            print("dry run: nothing dropped")
            return 0
        result = prune(conn, args.older_than)
    for line in plan_lines(result.plan):
        print(line)
    if result.moved_from_default:
        print(f"moved {result.moved_from_default:,} predictions out of the DEFAULT partition")
    print(f"dropped {len(result.dropped)} day(s) in {result.seconds:.2f} s")
    return 0


def add_parsers(sub: Any) -> None:
    prune = sub.add_parser(
        "prune",
        help="drop the store's days older than DAYS (whole partitions, never row by row)",
        description=(
            "Drop every day of predictions and labels before the day DAYS days ago (UTC), each as "
            "whole partitions (detach, then drop). Refused, with nothing dropped, when such a day "
            "holds rows of a champion's, candidate's or rollback target's training set, or of "
            "the window of a run that made one of them or has not finished: the message names "
            "them and the --older-than that keeps them. See docs/store.md."
        ),
    )
    prune.add_argument(
        "--older-than",
        type=positive_int,
        required=True,
        metavar="DAYS",
        help="drop the days before the day DAYS days ago",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="print what would be dropped; change nothing"
    )
    prune.set_defaults(func=cmd_prune)
