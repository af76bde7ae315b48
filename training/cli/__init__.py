"""The ``driftloop`` command: the demo, the store, Airflow, serving and status."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from training.cli import data, history, keys, loop, models, prune, recovery, release, serving
from training.errors import DriftloopError
from training.settings import get_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (data, history, keys, loop, models, prune, recovery, release, serving):
        commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
        code: int = args.func(args, settings)
        return code
    except DriftloopError as exc:
        print(f"driftloop: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, subprocess.SubprocessError) as exc:
        # Settings, specs and files: the message names the field or path.
        print(
            f"driftloop: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
