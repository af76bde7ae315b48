"""Serving commands: ``bentoml serve`` the champion, and build (and check) its OCI image."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from training.cli.common import Progress, add_model_argument, positive_int, store
from training.errors import DriftloopError
from training.private_files import private_home
from training.settings import Settings

__all__ = ["add_parsers", "champion_bento"]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from training import runs
    from training.models import select_spec
    from training.store import connect

    url = store(settings)
    model_tag, bento_tag, version = champion_bento(settings, url, args.model)
    # The workers' prediction spools are folders of the data dir (unless DRIFTLOOP_SPOOL_DIR).
    private_home(settings.home)
    env = dict(os.environ, DRIFTLOOP_HOME=str(settings.home), DRIFTLOOP_DATABASE_URL=url)
    if args.follow:
        from training.serve_follow import Follower, serve_following

        follower = Follower(
            settings,
            url,
            select_spec(settings, args.model).name,
            host=args.host,
            port=args.port,
            workers=args.workers,
            env=env,
        )
        return serve_following(follower)
    command = ["bentoml", "serve", bento_tag, "--port", str(args.port), "--host", args.host]
    if args.workers is not None:
        # BentoML reads per-service worker counts from its configuration; the option adds to (and
        # wins over) whatever BENTOML_CONFIG_OPTIONS already says.
        service_name = bento_tag.partition(":")[0]
        option = f"services.{service_name}.workers={args.workers}"
        env["BENTOML_CONFIG_OPTIONS"] = " ".join(
            part for part in (os.environ.get("BENTOML_CONFIG_OPTIONS", ""), option) if part
        )
    workers = f", {args.workers} workers" if args.workers else ""
    print(f"serving champion v{version} ({model_tag}{workers}): {' '.join(command)}", flush=True)
    with connect(url) as conn:
        runs.record_deployment(
            conn,
            model_tag,
            bento_tag,
            target="local",
            status="serving",
            detail={"host": args.host, "port": args.port, "workers": args.workers or 1},
        )
    # This interpreter's bentoml, so it works without the venv on PATH; replaces this process.
    # training.process_manager is `bentoml` with circusd's control endpoints moved from 127.0.0.1
    # TCP ports (which any local user could reach) to Unix sockets only this user can enter.
    os.execve(sys.executable, [sys.executable, "-m", "training.process_manager", *command[1:]], env)
    return 0  # pragma: no cover


def champion_bento(settings: Settings, url: str, model: str | None) -> tuple[str, str, int]:
    from training import registry
    from training.models import select_spec
    from training.store import connect

    name = select_spec(settings, model).name
    with connect(url) as conn:
        current = registry.champion(conn, name)
    if current is None or current.bento_tag is None:
        first = (
            "run `driftloop demo` first"
            if name == "churn"
            else f"train one with `driftloop train --model {name} --data PATH`"
        )
        raise DriftloopError(f"no champion of {name} with a Bento yet; {first}")
    return current.tag, current.bento_tag, current.version


def _bento_model_tag(bento_tag: str) -> str:
    """The tag of the model a Bento serves: its ``model_tag`` build argument.

    Raises:
        NotFoundError: no such Bento in the store, or it was not built by driftloop.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from training.errors import NotFoundError

    try:
        bento = bentoml.get(bento_tag)
    except NotFound as exc:
        raise NotFoundError(
            f"no Bento {bento_tag} in the BentoML store (`bentoml list` shows them)"
        ) from exc
    model_tag = bento.info.args.get("model_tag")
    if not isinstance(model_tag, str) or not model_tag:
        raise NotFoundError(
            f"Bento {bento.tag} carries no model_tag argument; build it with driftloop "
            "(or `bentoml build --arg model_tag=<name>:<version>`)"
        )
    return model_tag


def cmd_image(args: argparse.Namespace, settings: Settings) -> int:
    from training import registry, release
    from training.bento import ensure_recorded_bento

    step = Progress()
    url = store(settings)
    if args.bento:
        bento_tag = args.bento
    else:
        model_tag, bento_tag, _ = champion_bento(settings, url, args.model)
    # A machine whose BentoML store lacks the Bento (CI, a fresh checkout) imports its export.
    imported = ensure_recorded_bento(settings, url, bento_tag)
    if imported:
        step(f"imported {bento_tag} from {imported}")
    if args.bento:
        model_tag = _bento_model_tag(bento_tag)
    backend = release.resolve_backend(args.backend or settings.image_backend, dict(os.environ))
    built = release.containerize(
        settings,
        bento_tag,
        backend=backend,
        base_image=args.base_image,
        extra_ca=args.extra_ca,
        repository=args.repository or settings.image_repository,
        progress=step,
    )
    size = f"{built.size_bytes / 1e6:.0f} MB" if built.size_bytes else "size unknown"
    step(
        f"image {built.image} built with {built.backend} on {built.base_image} in "
        f"{built.seconds:.0f}s ({size})"
    )
    release.record_image(url, model_tag, built)
    if args.check:
        # The Bento's own model's spec: the environment may describe another model.
        request = registry.model_spec(model_tag).example_request()
        smoke = release.smoke_test(
            settings, built.image, url, request, backend=backend, progress=step
        )
        step(
            f"checked: /readyz after {smoke.ready_seconds:.0f}s, a prediction from model version "
            f"{smoke.model_version}, serving as uid {smoke.uid}"
        )
        expected = bento_tag.partition(":")[2]
        if smoke.model_version != expected:
            raise DriftloopError(
                f"{built.image} served model version {smoke.model_version}, expected {expected}"
            )
    if args.push:
        step(f"pushing {built.image} ...")
        release.push(settings, built.image, backend)
        step(f"pushed {built.image}")
    print(built.image)
    return 0


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="bentoml serve the champion's Bento, and switch to each new champion",
        description="Serve the champion's Bento with `bentoml serve`. The registry is read every "
        "DRIFTLOOP_SERVE_FOLLOW_POLL_S seconds: a new champion's Bento is started beside the running "
        "one on the same socket and takes over once its /readyz answers, with no failed request "
        "(docs/serving.md). --no-follow serves the champion of the moment until stopped.",
    )
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--workers",
        type=positive_int,
        help="server worker processes (default: the Bento's own, 1); each has its own spool",
    )
    serve.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="serve today's champion only (exec `bentoml serve`, no follower process)",
    )
    add_model_argument(serve)
    serve.set_defaults(func=cmd_serve)

    image = sub.add_parser(
        "image",
        help="bentoml containerize the champion's Bento into an OCI image",
        description="Build the OCI image of the champion's Bento (or --bento) with `bentoml "
        "containerize`, tagged <repository>:<Bento version>. Defaults come from DRIFTLOOP_IMAGE_*.",
    )
    image.add_argument("--bento", help="a Bento tag instead of the champion's")
    add_model_argument(image)
    image.add_argument(
        "--backend",
        choices=["docker", "buildx", "buildah", "podman", "auto"],
        help="docker/buildx need a Docker daemon; buildah needs none; auto: docker where a daemon "
        "answers, else buildah (default: DRIFTLOOP_IMAGE_BACKEND, else docker)",
    )
    image.add_argument(
        "--base-image",
        help="'local' (Debian bookworm + Python 3.11 + uv made here with debootstrap, cached) or an "
        "image with Python 3.11 and uv (default: DRIFTLOOP_IMAGE_BASE, else python:3.11-slim)",
    )
    image.add_argument(
        "--extra-ca",
        type=Path,
        action="append",
        help="PEM file or folder of .crt files the build trusts (proxies); never put in the image",
    )
    image.add_argument("--repository", help="image name, e.g. ghcr.io/acme/churn_service")
    image.add_argument(
        "--check",
        action="store_true",
        help="run the image (podman or docker) against the store: /readyz, one prediction, non-root",
    )
    image.add_argument("--push", action="store_true", help="push the image after it is built")
    image.set_defaults(func=cmd_image)
