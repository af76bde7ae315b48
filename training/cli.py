"""The ``driftloop`` command: the demo, the store, Airflow, serving and status."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from training.errors import DriftloopError
from training.settings import Settings, get_settings

__all__ = ["main"]


class Progress:
    """Timestamped progress lines, so long steps show they are alive and how long they took."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)


def _task_progress(step: Progress) -> Callable[[str, str], None]:
    def report(task_id: str, event: str) -> None:
        if event == "ended":
            step(f"  task {task_id} done")

    return report


def _store(settings: Settings) -> str:
    from training.postgres import ensure_database

    return ensure_database(settings)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from training.postgres import stop_embedded

    if args.action == "stop":
        stopped = stop_embedded(settings)
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    url = _store(settings)
    if args.action == "url":
        print(url)
    else:
        from training.store import applied_migrations, connect

        with connect(url) as conn:
            versions = applied_migrations(conn)
        print(f"PostgreSQL ready at {url} (migrations applied: {versions})")
    return 0


def _summary(settings: Settings, url: str, model_name: str) -> dict[str, Any]:
    from training.store import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT run_key, window_start, window_end, rows, labelled_rows, drift_share, drifted,"
            " columns, performance, dataset_uri, report_uri, decision, reason"
            " FROM drift_runs WHERE model_name = %s ORDER BY id DESC LIMIT 1",
            (model_name,),
        )
        drift = cur.fetchone()
        training: tuple[Any, ...] | None = None
        if drift is not None:
            cur.execute(
                "SELECT status, reason, metrics, gates, challenger_tag FROM training_runs"
                " WHERE model_name = %s AND run_key = %s",
                (model_name, drift[0]),
            )
            training = cur.fetchone()
        cur.execute(
            "SELECT version, tag, bento_tag FROM model_versions"
            " WHERE model_name = %s AND status = 'champion'",
            (model_name,),
        )
        champion = cur.fetchone()
        image = None
        if champion is not None:
            cur.execute(
                "SELECT detail FROM deployments WHERE bento_tag = %s AND target = 'image'"
                " ORDER BY created_at DESC LIMIT 1",
                (champion[2],),
            )
            image = cur.fetchone()
    return {"drift": drift, "training": training, "champion": champion, "image": image}


def _print_summary(summary: dict[str, Any]) -> None:
    drift, training, champion = summary["drift"], summary["training"], summary["champion"]
    print()
    print("=" * 72)
    if drift is None:
        print("no retrain run recorded yet")
        return
    (
        run_key,
        start,
        end,
        rows,
        labelled,
        share,
        _,
        columns,
        perf,
        dataset,
        report,
        decision,
        reason,
    ) = drift
    print(f"retrain run {run_key}")
    print(
        f"  window            {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC: {rows} predictions, {labelled} labelled"
    )
    if share is not None:
        drifted = sorted(
            ((name, c) for name, c in columns.items() if name != "__target__"),
            key=lambda item: (not item[1]["drifted"], -item[1]["score"] / item[1]["threshold"]),
        )[:3]
        top = ", ".join(
            f"{name} ({c['method']} {c['score']:.3f}{' DRIFTED' if c['drifted'] else ''})"
            for name, c in drifted
        )
        print(f"  drift share       {share:.0%} of features drifted; most drifted: {top}")
        target = columns.get("__target__")
        if target:
            moved = "moved" if target["drifted"] else "stable"
            print(f"  label             {moved} ({target['method']} {target['score']:.3f})")
    if perf:
        print(
            f"  champion ROC AUC  {perf['baseline_auc']:.3f} when trained, {perf['recent_auc']:.3f} on the window's labels"
        )
    print(f"  decision          {decision}: {reason}")
    if training is not None:
        status, why, metrics, _, challenger = training
        champ_m, chall_m = metrics.get("champion"), metrics.get("challenger")
        if chall_m:
            print("                    ROC AUC   log loss  accuracy  (same holdout)")
            if champ_m:
                print(
                    f"  champion          {champ_m['roc_auc']:.4f}    {champ_m['log_loss']:.4f}    {champ_m['accuracy']:.4f}"
                )
            print(
                f"  challenger        {chall_m['roc_auc']:.4f}    {chall_m['log_loss']:.4f}    {chall_m['accuracy']:.4f}  {challenger}"
            )
        print(f"  outcome           {status}: {why}")
    if champion is not None:
        version, tag, bento = champion
        print(f"  serving           champion v{version} {tag}, Bento {bento}")
        if summary.get("image"):
            detail = summary["image"][0]
            size = f", {detail['size_bytes'] / 1e6:.0f} MB" if detail.get("size_bytes") else ""
            print(f"  image             {detail['image']} ({detail['backend']}{size})")
        else:
            print("  image             not built (`make image`, or DRIFTLOOP_CONTAINERIZE=true)")
    print(f"  drift report      {report}")
    print(f"  window dataset    {dataset}")
    print("=" * 72)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from training import registry
    from training.airflow_local import airflow_env, dags_test, migrate
    from training.retrain import bootstrap_champion
    from training.simulate import simulate_traffic
    from training.spec import load_spec
    from training.store import connect, reset
    from training.synthetic import Scenario, generate

    step = Progress()
    spec = load_spec(settings.model_spec)
    url = _store(settings)
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM predictions WHERE model_name = %s", (spec.name,))
        existing = cur.fetchone()[0]  # type: ignore[index]
    if existing and not args.reset:
        raise DriftloopError(
            f"the store already holds {existing} predictions of {spec.name}; "
            "run `driftloop demo --reset` to drop them and start over"
        )
    if args.reset:
        with connect(url) as conn:
            reset(conn)
        url = _store(settings)
    step(f"PostgreSQL ready ({url})")

    initial = generate(args.initial_rows, seed=args.seed)
    champion = bootstrap_champion(settings, initial)
    step(
        f"champion v{champion['version']} trained on {args.initial_rows} synthetic subscribers "
        f"(ROC AUC {champion['metrics']['roc_auc']:.3f}); Bento {champion['bento_tag']}"
    )

    end = datetime.now(UTC)
    start = end - timedelta(days=args.days)
    scenario = Scenario(kind=args.scenario)
    with connect(url) as conn:
        traffic = simulate_traffic(
            conn,
            model_tag=champion["champion_tag"],
            n=args.predictions,
            start=start,
            end=end,
            drift=scenario,
            seed=args.seed + 1,
        )
    step(
        f"production: {traffic.predictions} predictions logged over {args.days} days, "
        f"'{args.scenario}' drift from {traffic.drift_starts:%Y-%m-%d %H:%M}; "
        f"{traffic.labelled} delayed labels arrived"
    )

    setup = airflow_env(settings)
    migrate(setup)
    step(f"Airflow metadata DB migrated ({setup.home})")
    log = setup.home / "demo-dags-test.log"
    step(f"running the retrain DAG with `airflow dags test` (log: {log}) ...")
    dags_test(setup, {"window_days": args.window_days, "force": False}, log, _task_progress(step))
    step("retrain DAG run succeeded")

    _print_summary(_summary(settings, url, spec.name))
    with connect(url) as conn:
        current = registry.champion(conn, spec.name)
    if current is not None:
        print(f"\nserve it:  uv run driftloop serve      (= bentoml serve {current.bento_tag})")
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from training.airflow_local import airflow_env, dags_test, migrate
    from training.spec import load_spec

    step = Progress()
    url = _store(settings)
    setup = airflow_env(settings)
    migrate(setup)
    log = setup.home / f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    step(f"running the retrain DAG (log: {log}) ...")
    dags_test(
        setup, {"window_days": args.window_days, "force": args.force}, log, _task_progress(step)
    )
    step("retrain DAG run succeeded")
    _print_summary(_summary(settings, url, load_spec(settings.model_spec).name))
    return 0


def cmd_airflow(args: argparse.Namespace, settings: Settings) -> int:
    from training.airflow_local import airflow_env, run_ui

    _store(settings)
    return run_ui(airflow_env(settings, port=args.port))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from training import registry
    from training.store import connect

    url = _store(settings)
    model_tag, bento_tag, version = _champion_bento(settings, url)
    command = ["bentoml", "serve", bento_tag, "--port", str(args.port), "--host", args.host]
    env = dict(os.environ, DRIFTLOOP_HOME=str(settings.home), DRIFTLOOP_DATABASE_URL=url)
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
        registry.record_deployment(
            conn,
            model_tag,
            bento_tag,
            target="local",
            status="serving",
            detail={"host": args.host, "port": args.port, "workers": args.workers or 1},
        )
    # This interpreter's bentoml, so it works without the venv on PATH; replaces this process.
    os.execve(sys.executable, [sys.executable, "-m", *command], env)
    return 0  # pragma: no cover


def _champion_bento(settings: Settings, url: str) -> tuple[str, str, int]:
    from training import registry
    from training.spec import load_spec
    from training.store import connect

    name = load_spec(settings.model_spec).name
    with connect(url) as conn:
        current = registry.champion(conn, name)
    if current is None or current.bento_tag is None:
        raise DriftloopError(f"no champion of {name} with a Bento yet; run `driftloop demo` first")
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
    from training import container, registry

    step = Progress()
    url = _store(settings)
    if args.bento:
        bento_tag = args.bento
        model_tag = _bento_model_tag(bento_tag)
    else:
        model_tag, bento_tag, _ = _champion_bento(settings, url)
    backend = container.resolve_backend(args.backend or settings.image_backend, dict(os.environ))
    built = container.containerize(
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
    container.record_image(url, model_tag, built)
    if args.check:
        # The Bento's own model's spec: the environment may describe another model.
        request = registry.model_spec(model_tag).example_request()
        smoke = container.smoke_test(
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
        container.push(settings, built.image, backend)
        step(f"pushed {built.image}")
    print(built.image)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from training.spec import load_spec

    url = _store(settings)
    _print_summary(_summary(settings, url, load_spec(settings.model_spec).name))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole loop on embedded defaults, with a summary")
    demo.add_argument("--reset", action="store_true", help="drop driftloop's tables first")
    demo.add_argument("--initial-rows", type=int, default=8000)
    demo.add_argument("--predictions", type=int, default=10000)
    demo.add_argument("--days", type=float, default=14.0, help="length of the simulated traffic")
    demo.add_argument("--window-days", type=float, default=7.0, help="the retrain DAG's window")
    demo.add_argument(
        "--scenario",
        default="mixed",
        choices=["none", "covariate", "concept", "prior", "mixed"],
        help="drift injected half-way through the traffic",
    )
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=cmd_demo)

    db = sub.add_parser("db", help="the feedback store (embedded PostgreSQL unless configured)")
    db.add_argument("action", choices=["start", "stop", "url"])
    db.set_defaults(func=cmd_db)

    retrain = sub.add_parser("retrain", help="run the retrain DAG once with `airflow dags test`")
    retrain.add_argument("--force", action="store_true", help="retrain even without drift")
    retrain.add_argument("--window-days", type=float, default=7.0)
    retrain.set_defaults(func=cmd_retrain)

    airflow = sub.add_parser("airflow", help="Airflow UI, scheduler and dag-processor")
    airflow.add_argument("--port", type=int, default=8080)
    airflow.set_defaults(func=cmd_airflow)

    serve = sub.add_parser("serve", help="bentoml serve the champion's Bento")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        help="server worker processes (default: the Bento's own, 1); each has its own spool",
    )
    serve.set_defaults(func=cmd_serve)

    image = sub.add_parser(
        "image",
        help="bentoml containerize the champion's Bento into an OCI image",
        description="Build the OCI image of the champion's Bento (or --bento) with `bentoml "
        "containerize`, tagged <repository>:<Bento version>. Defaults come from DRIFTLOOP_IMAGE_*.",
    )
    image.add_argument("--bento", help="a Bento tag instead of the champion's")
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

    status = sub.add_parser("status", help="the champion and the last retrain run")
    status.set_defaults(func=cmd_status)
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


if __name__ == "__main__":
    sys.exit(main())
