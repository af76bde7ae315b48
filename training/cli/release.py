"""Release commands: ``driftloop rollout`` puts a Bento's image on the Kubernetes cluster through
a canary, promoted or rolled back on its health (docs/rollout.md)."""

from __future__ import annotations

import argparse
from typing import Any

from training.cli.common import Progress, add_model_argument
from training.settings import Settings

__all__ = ["add_parsers"]


def cmd_rollout(args: argparse.Namespace, settings: Settings) -> int:
    from training.models import select_spec
    from training.release.deploy import rollout_bento, undo_rollout
    from training.release.rollout import RolloutFailed

    step = Progress()
    name = select_spec(settings, args.model).name
    if args.undo:
        if args.bento_tag or args.image:
            raise ValueError("--undo takes no BENTO_TAG or --image: it goes back to the last image")
        done = undo_rollout(settings, name, progress=step)
        step(f"{done.target}: back to {done.image} (was {done.previous_image})")
        return 0
    try:
        done = rollout_bento(settings, name, args.bento_tag, image=args.image, progress=step)
    except RolloutFailed as failure:
        step(f"rolled back: {failure.reason}; the stable Deployment was not changed")
        return 1
    if done.outcome == "unchanged":
        step(f"{done.target} already runs {done.image}: nothing to do")
    else:
        step(f"{done.target}: {done.image} promoted (was {done.previous_image})")
    return 0


def add_parsers(sub: Any) -> None:
    rollout = sub.add_parser(
        "rollout",
        help="roll a Bento's image out to Kubernetes through a canary",
        description=(
            "Start a canary Deployment with the Bento's image beside the stable one (the same "
            "Service), wait for it, bake it, then promote it or roll it back. Configured by "
            "DRIFTLOOP_KUBECONFIG, DRIFTLOOP_K8S_* and DRIFTLOOP_ROLLOUT_* (docs/rollout.md)."
        ),
    )
    rollout.add_argument(
        "bento_tag", nargs="?", metavar="BENTO_TAG", help="the Bento (default: the champion's)"
    )
    rollout.add_argument(
        "--image",
        metavar="REF",
        help="the image to roll out (default: the last one built of the Bento)",
    )
    rollout.add_argument(
        "--undo",
        action="store_true",
        help="set the stable Deployment back to the image it ran before the last promotion",
    )
    add_model_argument(rollout)
    rollout.set_defaults(func=cmd_rollout)
