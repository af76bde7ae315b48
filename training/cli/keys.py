"""API key commands: create (the secret is shown once), list, revoke."""

from __future__ import annotations

import argparse
from typing import Any

from training.cli.common import store
from training.settings import Settings

__all__ = ["add_parsers"]


def _rate(text: str) -> float:
    from training.keys import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from training.keys import create_key
    from training.store import connect

    with connect(store(settings)) as conn:
        key, token = create_key(conn, args.name, args.scope, args.rate)
    rate = f"{key.rate_per_s:g}/s" if key.rate_per_s else "the default rate"
    print(
        f"created API key {key.name} (id {key.id}, scopes {', '.join(sorted(key.scopes))}, {rate})"
    )
    print("its secret is shown this once; store it now (only its hash is kept):")
    print(token)
    if settings.auth == "off":
        print("note: DRIFTLOOP_AUTH is off, so the service asks for no key (set it to on)")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from training.keys import list_keys
    from training.store import connect

    with connect(store(settings)) as conn:
        keys = list_keys(conn)
    if not keys:
        print("no API keys (driftloop keys create --name NAME --scope predict)")
        return 0
    print(f"{'id':<13} {'name':<20} {'scopes':<24} {'rate':<9} {'uses':>9}  state")
    for key in keys:
        rate = f"{key.rate_per_s:g}/s" if key.rate_per_s else "default"
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        scopes = ",".join(sorted(key.scopes))
        print(f"{key.id:<13} {key.name:<20} {scopes:<24} {rate:<9} {key.uses:>9}  {state}")
    return 0


def cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from training.keys import revoke_key
    from training.store import connect

    with connect(store(settings)) as conn:
        key = revoke_key(conn, args.key)
    print(
        f"revoked API key {key.name} (id {key.id}); running services refuse it within "
        f"{settings.auth_cache_s:g} s (their key cache)"
    )
    return 0


def add_parsers(sub: Any) -> None:
    from training.keys import SCOPES

    keys = sub.add_parser("keys", help="API keys of the service (DRIFTLOOP_AUTH=on)")
    commands = keys.add_subparsers(dest="keys_command", required=True)

    create = commands.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--name", required=True, help="who or what uses it (unique)")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=SCOPES,
        help="what it may do (repeat: --scope predict --scope feedback); admin may do all",
    )
    create.add_argument(
        "--rate",
        type=_rate,
        help="its own limit, e.g. 10/s or 600/min (burst: one second's worth); default: "
        "DRIFTLOOP_RATE_LIMIT and DRIFTLOOP_RATE_BURST",
    )
    create.set_defaults(func=cmd_create)

    listing = commands.add_parser("list", help="every key: id, name, scopes, rate, uses, state")
    listing.set_defaults(func=cmd_list)

    revoke = commands.add_parser("revoke", help="revoke a key by name or id")
    revoke.add_argument("key", metavar="NAME|ID")
    revoke.set_defaults(func=cmd_revoke)
