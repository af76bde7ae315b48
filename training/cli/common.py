"""What every ``driftloop`` command shares: progress lines, the store, argument types."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from training.settings import Settings

__all__ = ["Progress", "add_model_argument", "positive_int", "store", "task_progress"]


class Progress:
    """Timestamped progress lines, so long steps show they are alive and how long they took."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)


def task_progress(step: Progress) -> Callable[[str, str], None]:
    def report(task_id: str, event: str) -> None:
        if event == "ended":
            step(f"  task {task_id} done")
        elif event == "awaiting input":
            step(
                f"  task {task_id} waits for a person: answer it in the Airflow UI's Required"
                " Actions (`driftloop airflow`) or its REST API (docs/retrain.md#approval)"
            )

    return report


def store(settings: Settings) -> str:
    from training.postgres import ensure_database

    return ensure_database(settings)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="which model (a spec's name); needed when the deployment has several",
    )
