"""Recovery commands: back up the store and the models, restore a backup, prune old models."""

from __future__ import annotations

import argparse
from typing import Any

from training.cli.common import Progress, positive_int
from training.settings import Settings

__all__ = ["add_parsers"]


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from training.backup import backup

    uri, manifest = backup(settings, to=args.to, keep=args.keep, progress=Progress())
    for model, champion in sorted(manifest.champions.items()):
        print(f"  {model}: champion v{champion['version']} {champion['tag']}")
    if manifest.left_out:
        print(f"  {len(manifest.left_out)} left out (see {uri}/manifest.json)")
    print(f"restore it with: driftloop restore {uri}")
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from training.restore import restore

    done = restore(settings, args.uri, force=args.force, progress=Progress())
    manifest = done.manifest
    print(f"restored backup {manifest.id} in {done.seconds:.1f}s")
    for model, champion in sorted(manifest.champions.items()):
        print(f"  {model}: champion v{champion['version']} {champion['tag']}")
    print("serve it:  driftloop serve")
    return 0


def cmd_prune_models(args: argparse.Namespace, settings: Settings) -> int:
    from training.model_retention import prune_models

    pruned = prune_models(
        settings, keep=args.keep, dry_run=args.dry_run, model=args.model, progress=Progress()
    )
    verb = "would prune" if args.dry_run else "pruned"
    count = f"{len(pruned)} version" + ("" if len(pruned) == 1 else "s")
    print(f"{verb} {count}" + (" (dry run: nothing deleted)" if args.dry_run else ""))
    return 0


def _non_negative(text: str) -> int:
    if text.strip() == "0":
        return 0
    return positive_int(text)


def add_parsers(sub: Any) -> None:
    backup = sub.add_parser(
        "backup",
        help="back up the store (pg_dump) and every registered model's Bento, with a manifest",
        description="A consistent pg_dump of the store, each registered version's Bento (or model) "
        "and training set, and a manifest (sizes, sha256, versions, champions), written to "
        "<artifacts>/backups/<id>/ or under --to.",
    )
    backup.add_argument(
        "--to",
        metavar="URI",
        help="a folder or s3://bucket/prefix to keep backups in (default: <artifacts root>/backups)",
    )
    backup.add_argument(
        "--keep",
        type=positive_int,
        metavar="N",
        help="after a successful backup, delete all but the newest N there",
    )
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser(
        "restore",
        help="restore a backup into an empty store and BentoML home",
        description="Check the backup's sha256 checksums, then pg_restore the store and import its "
        "Bentos and models. URI is a backup (as `driftloop backup` prints it) or a folder of "
        "backups (the newest is restored). The store and the BentoML home must be empty.",
    )
    restore.add_argument("uri", metavar="URI", help="a backup, or a folder of backups")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore over a store that holds rows (the backup's tables are replaced, others "
        "kept) and beside Bentos and models already in the BentoML home",
    )
    restore.set_defaults(func=cmd_restore)

    prune = sub.add_parser(
        "prune-models",
        help="delete old models and Bentos: keep the champion, the N before it and all in use",
        description="Keep each model's champion, the N champions before it, the rollback target, "
        "candidates and whatever an unfinished run or a deployment uses; delete the other "
        "versions' Bentos and models from the BentoML store and their Bento exports, each "
        "deletion recorded (deployments, target retention).",
    )
    prune.add_argument(
        "--keep",
        type=_non_negative,
        default=3,
        metavar="N",
        help="champions before the current one to keep (default 3)",
    )
    prune.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    prune.add_argument("--model", metavar="NAME", help="one model only (default: every model)")
    prune.set_defaults(func=cmd_prune_models)
