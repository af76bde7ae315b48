"""Model commands: the deployment's models and their versions, training a champion from a table,
and choosing the champion by hand (promote, rollback)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from training.cli.common import Progress, add_model_argument, store
from training.settings import Settings

__all__ = ["add_parsers"]


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from training import registry
    from training.models import dag_id, model_entries
    from training.store import connect

    entries = model_entries(settings)
    url = store(settings)
    if args.model is not None:
        if args.model not in entries:
            raise ValueError(f"--model {args.model}: no such model (models: {', '.join(entries)})")
        with connect(url) as conn:
            _print_versions(registry.versions(conn, args.model))
            _print_lineage(registry.versions(conn, args.model))
            _print_promotions(registry.promotions(conn, args.model))
        return 0
    with connect(url) as conn:
        champions = {name: registry.champion(conn, name) for name in entries}
    print(f"{'model':<20} {'champion':<12} {'retrain DAG':<40} spec")
    for name, entry in entries.items():
        champ = champions[name]
        current = f"v{champ.version}" if champ else "none"
        print(f"{name:<20} {current:<12} {dag_id(name):<40} {entry.path}")
    print("\nversions of one model: driftloop models --model NAME")
    return 0


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at else "-"


def _print_versions(versions: list[Any]) -> None:
    print(f"{'version':<9} {'status':<10} {'ROC AUC':>8}  {'promoted':<17} {'retired':<17} Bento")
    for v in versions:
        auc = v.metrics.get("roc_auc")
        print(
            f"v{v.version:<8} {v.status:<10} {f'{auc:.4f}' if auc is not None else '-':>8}  "
            f"{_when(v.promoted_at):<17} {_when(v.retired_at):<17} {v.bento_tag or '-'}"
        )


def _print_lineage(versions: list[Any]) -> None:
    """What each version was made from (recorded at training; none before lineage was kept)."""
    known = [v for v in versions if v.data_sha256]
    if not known:
        return
    print("\nlineage (training rows' time span, their sha256, code, packages; export)")
    for v in known:
        span = f"{_when(v.data_start)} .. {_when(v.data_end)}" if v.data_start else "no time column"
        print(f"  v{v.version:<6} {span}  {v.data_rows} rows  sha256 {v.data_sha256[:16]}")
        print(f"  {'':<7} code {v.code_revision}")
        packages = " ".join(f"{n}=={p}" for n, p in sorted((v.packages or {}).items()))
        print(f"  {'':<7} {packages}")
        if v.bento_uri:
            print(f"  {'':<7} Bento export {v.bento_uri}")


def _print_promotions(promotions: list[Any]) -> None:
    if not promotions:
        return
    print("\npromotions (newest first)")
    for p in promotions:
        previous = f" (replacing {p.previous_tag})" if p.previous_tag else ""
        print(f"  {_when(p.at)}  {p.action:<8} {p.tag}{previous} by {p.by}: {p.reason}")


def _who(command: str) -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (driftloop {command})"
    except (KeyError, OSError):  # no name for this uid (a container's user)
        return f"driftloop {command}"


def _promote(
    settings: Settings, tag: str, action: Literal["promote", "rollback"], reason: str
) -> int:
    from training import registry
    from training.model_retention import refuse_pruned
    from training.store import connect

    with connect(store(settings)) as conn:
        refuse_pruned(conn, tag)
        before = registry.champion(conn, registry.get_version(conn, tag).model_name)
        promoted = registry.promote(conn, tag, by=_who(action), reason=reason, action=action)
    print(
        f"champion of {promoted.model_name}: v{promoted.version} ({promoted.tag}, Bento "
        f"{promoted.bento_tag}), replacing {before.tag if before else 'no champion'}"
    )
    print(
        f"a running server keeps its model until restarted: driftloop serve --model "
        f"{promoted.model_name} serves this one"
    )
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    tag = args.tag if ":" in args.tag else None
    if tag is None:
        raise ValueError(
            f"TAG must be <model>:<version tag> (see driftloop models --model), got {args.tag!r}"
        )
    return _promote(settings, tag, "promote", args.reason)


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from training import registry
    from training.models import select_spec
    from training.store import connect

    name = select_spec(settings, args.model).name
    with connect(store(settings)) as conn:
        target = registry.rollback_target(conn, name)
    return _promote(settings, target.tag, "rollback", args.reason)


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
    models = sub.add_parser(
        "models",
        help="the deployment's models, their champions and DAGs; with --model, its versions",
    )
    models.add_argument("--model", metavar="NAME", help="list this model's versions and promotions")
    models.set_defaults(func=cmd_models)

    promote = sub.add_parser(
        "promote",
        help="make a model version the champion by hand (recorded with who and why)",
        description="Make TAG (a candidate, or a retired version with a Bento) the champion; the "
        "current champion retires. Recorded in the promotions log with your user name and --reason.",
    )
    promote.add_argument("tag", metavar="TAG", help="the version's tag, <model>:<version tag>")
    promote.add_argument("--reason", required=True, help="why, for the promotions log")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser(
        "rollback",
        help="make the previous champion the champion again (recorded with who and why)",
        description="The champion goes back to the version it replaced (a rollback's own "
        "promotions are skipped, so a second rollback goes further back).",
    )
    add_model_argument(rollback)
    rollback.add_argument("--reason", required=True, help="why, for the promotions log")
    rollback.set_defaults(func=cmd_rollback)

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
