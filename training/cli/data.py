"""The data commands: ``init`` drafts a model spec from a user's table."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

from training.errors import DriftloopError
from training.settings import Settings

__all__ = ["add_parsers"]


def _name_taken(folder: Path, name: str, out: Path) -> Path | None:
    """Another spec in the models folder that already uses ``name`` (unreadable ones ignored:
    they are not init's to judge)."""
    from training.spec import SpecError, load_spec

    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.y*ml")):
        if path.suffix not in (".yaml", ".yml") or path.resolve() == out.resolve():
            continue
        try:
            if load_spec(path).name == name:
                return path
        except SpecError:
            continue
    return None


def _write(out: Path, text: str) -> None:
    """Write the spec whole or not at all: a half-written spec would break every command."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(text)
    os.replace(partial, out)


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from training.cli.common import store
    from training.draft import draft_spec, name_from_path
    from training.sources import read_table

    if args.sql is not None and args.name is None:
        raise DriftloopError("--sql: name the model with --name (a query has no file name to use)")
    if args.sql is None and args.url is not None:
        raise DriftloopError("--url is where --sql runs; with --data it has no use")
    name = args.name or name_from_path(args.data)
    out: Path = args.out or settings.models / f"{name}.yaml"
    if out.exists() and not args.force:
        raise DriftloopError(f"{out} already exists; pass --force to overwrite it")
    other = _name_taken(settings.models, name, out)
    if other is not None:
        raise DriftloopError(
            f"{other} already defines a model named {name!r}; choose another with --name"
        )

    if args.sql is not None:
        frame = read_table(sql=args.sql, url=args.url or store(settings))
        source = "a SQL query"
    else:
        frame = read_table(args.data)
        source = args.data.name
    draft = draft_spec(
        frame,
        args.target,
        name=name,
        positive=args.positive,
        time_column=args.time_column,
        source=source,
    )
    _write(out, draft.text)

    print(
        f"drafted model {name!r} from {source}: {draft.rows} rows, target {args.target}, "
        f"{len(draft.features)} features"
    )
    width = max(len(item.feature.name) for item in draft.features)
    for item in draft.features:
        feature = item.feature
        if feature.type == "numeric":
            shape = f"{feature.min:.10g} .. {feature.max:.10g} ({item.observed})"
        elif item.distinct > len(feature.categories):
            shape = f"{len(feature.categories)} categories ({item.observed})"
        else:
            shape = f"{len(feature.categories)} categories"
        nullable = f", nullable ({item.missing} missing)" if feature.nullable else ""
        print(f"  {feature.name:<{width}}  {feature.type:<11}  {shape}{nullable}")
    if draft.left_out:
        print("left out:")
        for left in draft.left_out:
            print(f"  {left.column}: {left.reason}")
    print("check:")
    for note in draft.notes:
        print(f"  - {note}")
    print(f"wrote {out}: read it through and edit it before training")
    if out.parent.resolve() == settings.models:
        model = f"--model {name}"
    else:
        model = f"--spec {shlex.quote(str(out))}"
        print(
            f"  (the retrain DAG and `driftloop serve` know the specs in {settings.models}: "
            f"move it there, or set DRIFTLOOP_MODELS={out.parent.resolve()})"
        )
    data = (
        f"--data {shlex.quote(str(args.data))}"
        if args.sql is None
        else f"--sql {shlex.quote(args.sql)}"
    )
    print(f"next: driftloop train {model} {data}")
    return 0


def add_parsers(sub: Any) -> None:
    init = sub.add_parser(
        "init",
        help="draft a model spec from your table (CSV, TSV, Parquet or a SQL query)",
        description="Draft a model spec from a table: types, bounds, categories and the target's "
        "labels are inferred, written as commented YAML for you to check and edit.",
    )
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="PATH", help=".csv, .tsv or .parquet file")
    source.add_argument("--sql", metavar="QUERY", help="a SELECT whose rows are the table")
    init.add_argument(
        "--url", metavar="POSTGRES_URL", help="where --sql runs (default: driftloop's store)"
    )
    init.add_argument("--target", required=True, metavar="COLUMN", help="the column to predict")
    init.add_argument(
        "--positive",
        metavar="VALUE",
        help="the target value that is the positive outcome (inferred for Yes/No, True/False, 1/0)",
    )
    init.add_argument("--name", help="the model's name (default: from the data file's name)")
    init.add_argument(
        "--time-column", metavar="COLUMN", help="the column saying when each row happened"
    )
    init.add_argument(
        "--out", type=Path, metavar="SPEC", help="where to write it (default: <models>/<name>.yaml)"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing --out")
    init.set_defaults(func=cmd_init)
