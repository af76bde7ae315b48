"""Model commands: list the deployment's models, and train a champion from a table."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.cli.common import Progress, add_model_argument, store
from training.settings import Settings

__all__ = ["add_parsers"]


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from training import registry
    from training.models import dag_id, model_entries
    from training.store import connect

    entries = model_entries(settings)
    url = store(settings)
    with connect(url) as conn:
        champions = {name: registry.champion(conn, name) for name in entries}
    print(f"{'model':<20} {'champion':<12} {'retrain DAG':<40} spec")
    for name, entry in entries.items():
        champ = champions[name]
        current = f"v{champ.version}" if champ else "none"
        print(f"{name:<20} {current:<12} {dag_id(name):<40} {entry.path}")
    return 0


def _spec_for(args: argparse.Namespace, settings: Settings) -> Any:
    from training.models import model_entries, select_spec
    from training.spec import load_spec

    if args.spec is None:
        return select_spec(settings, args.model)
    spec = load_spec(args.spec)
    if args.model and args.model != spec.name:
        raise ValueError(f"--model {args.model} but the spec {args.spec} is named {spec.name!r}")
    if spec.name not in model_entries(settings):
        print(
            f"note: {args.spec} is not among the deployment's specs ({settings.models}); the "
            f"retrain DAG and `driftloop serve` only know models there",
            flush=True,
        )
    return spec


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from training.champion import prepare_table, train_champion
    from training.sources import read_table

    step = Progress()
    spec = _spec_for(args, settings)
    url = store(settings)
    table = read_table(args.data, sql=args.sql, url=args.url or url)
    step(f"read {len(table)} rows x {len(table.columns)} columns from {args.data or 'the query'}")
    rows = prepare_table(spec, table)
    positives = int(rows[spec.target].sum())
    step(
        f"{len(rows)} labelled rows, {positives} {spec.positive_label!r} "
        f"({positives / len(rows):.1%}) and {len(rows) - positives} {spec.negative_label!r}"
    )
    run_key = f"train-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    run = train_champion(settings, spec, rows, run_key=run_key, progress=step)
    print()
    print(f"model {run.model_tag} ({run.holdout} holdout, {run.holdout_rows} rows)")
    print("              ROC AUC   log loss  accuracy  F1")
    if run.champion_metrics:
        m = run.champion_metrics
        print(
            f"  champion    {m['roc_auc']:.4f}    {m['log_loss']:.4f}    {m['accuracy']:.4f}"
            f"    {m['f1']:.4f}  {run.previous_champion}"
        )
    m = run.metrics
    print(
        f"  new model   {m['roc_auc']:.4f}    {m['log_loss']:.4f}    {m['accuracy']:.4f}"
        f"    {m['f1']:.4f}"
    )
    if not run.promoted:
        print(f"\nnot promoted: {run.reason}; the champion keeps serving")
        return 1
    print(f"\nchampion v{run.version} of {spec.name}: Bento {run.bento_tag}")
    print(f"serve it:  driftloop serve --model {spec.name}      (= bentoml serve {run.bento_tag})")
    return 0


def add_parsers(sub: Any) -> None:
    models = sub.add_parser("models", help="the deployment's models, their champions and DAGs")
    models.set_defaults(func=cmd_models)

    train = sub.add_parser(
        "train",
        help="train a champion from a labelled table (the first one, or a new one by hand)",
        description="Train a model from a labelled table, judge it on a holdout (the newest rows "
        "by the spec's time_column, else a random one) with the spec's gates, and when it passes "
        "(and beats the current champion, if any) register it, build its Bento and promote it.",
    )
    add_model_argument(train)
    train.add_argument("--spec", type=Path, help="a spec file instead of --model")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a .csv, .tsv or .parquet file")
    source.add_argument("--sql", help="a SELECT run against PostgreSQL (see --url)")
    train.add_argument("--url", help="the PostgreSQL URL --sql runs against (default: the store)")
    train.set_defaults(func=cmd_train)
