"""The loop's commands: the store, the demo, a retrain run, the Airflow UI and the status summary."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from training.cli.common import Progress, add_model_argument, store, task_progress
from training.errors import DriftloopError
from training.redact import redact_url
from training.settings import Settings

if TYPE_CHECKING:
    from training.runs import RunSummary

__all__ = ["add_parsers", "print_summary"]


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from training.postgres import stop_embedded

    if args.action == "stop":
        stopped = stop_embedded(settings)
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    url = store(settings)
    if args.action == "url":
        # The whole URL, password included: this is the command's output for scripts
        # (DRIFTLOOP_DATABASE_URL=$(driftloop db url)); every other line driftloop prints hides it.
        print(url)
    else:
        from training.store import applied_migrations, connect

        with connect(url) as conn:
            versions = applied_migrations(conn)
        print(f"PostgreSQL ready at {redact_url(url)} (migrations applied: {versions})")
    return 0


def print_summary(summary: RunSummary) -> None:
    drift, training, champion = summary.drift, summary.training, summary.champion
    print()
    print("=" * 72)
    if drift is None:
        print("no retrain run recorded yet")
        if champion is not None:
            print(f"  serving           champion v{champion[0]} {champion[1]}, Bento {champion[2]}")
        print("=" * 72)
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
            ((name, c) for name, c in columns.items() if not name.startswith("__")),
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
        scores = columns.get("__prediction__")
        if scores:
            moved = "moved" if scores["drifted"] else "stable"
            print(f"  champion's scores {moved} ({scores['method']} {scores['score']:.3f})")
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
        if summary.image:
            detail = summary.image[0]
            size = f", {detail['size_bytes'] / 1e6:.0f} MB" if detail.get("size_bytes") else ""
            print(f"  image             {detail['image']} ({detail['backend']}{size})")
        else:
            print("  image             not built (`make image`, or DRIFTLOOP_CONTAINERIZE=true)")
    print(f"  drift report      {report}")
    print(f"  window dataset    {dataset}")
    print("=" * 72)


# The demo's --reset forgets its own model only: other models of the deployment keep their data.
_FORGET_MODEL = (
    "DELETE FROM feedback_history WHERE request_id IN"
    " (SELECT request_id FROM predictions WHERE model_name = %(m)s)",
    "DELETE FROM feedback WHERE request_id IN"
    " (SELECT request_id FROM predictions WHERE model_name = %(m)s)",
    "DELETE FROM predictions WHERE model_name = %(m)s",
    "DELETE FROM deployments WHERE model_name = %(m)s",
    "DELETE FROM promotions WHERE model_name = %(m)s",
    "DELETE FROM model_versions WHERE model_name = %(m)s",
    "DELETE FROM training_runs WHERE model_name = %(m)s",
    "DELETE FROM drift_runs WHERE model_name = %(m)s",
)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from training import registry
    from training.airflow_local import airflow_env, dags_test, migrate
    from training.champion import bootstrap_champion
    from training.runs import run_summary
    from training.simulate import simulate_traffic
    from training.spec import BUILTIN_SPEC, load_spec
    from training.store import connect
    from training.synthetic import Scenario, generate

    step = Progress()
    # The demo's data is synthetic churn: it always runs the built-in spec (and only its DAG),
    # whatever models the deployment's folder holds.
    settings = settings.model_copy(update={"model_spec": BUILTIN_SPEC})
    spec = load_spec(BUILTIN_SPEC)
    url = store(settings)
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM predictions WHERE model_name = %s", (spec.name,))
        existing = cur.fetchone()[0]  # type: ignore[index]
    if existing and not args.reset:
        raise DriftloopError(
            f"the store already holds {existing} predictions of {spec.name}; "
            "run `driftloop demo --reset` to drop them and start over"
        )
    if args.reset:
        with connect(url) as conn, conn.cursor() as cur:
            for statement in _FORGET_MODEL:
                cur.execute(statement, {"m": spec.name})
    step(f"PostgreSQL ready ({redact_url(url)})")

    initial = generate(args.initial_rows, seed=args.seed)
    champion = bootstrap_champion(settings, initial, spec=spec)
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
    dags_test(
        setup,
        spec.name,
        {"window_days": args.window_days, "force": False},
        log,
        task_progress(step),
    )
    step("retrain DAG run succeeded")

    print_summary(run_summary(url, spec.name))
    with connect(url) as conn:
        current = registry.champion(conn, spec.name)
    if current is not None:
        print(
            f"\nserve it:  uv run driftloop serve --model {spec.name}"
            f"      (= bentoml serve {current.bento_tag})"
        )
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from training.airflow_local import airflow_env, dags_test, migrate
    from training.models import dag_id, select_spec
    from training.runs import run_summary

    step = Progress()
    name = select_spec(settings, args.model).name
    url = store(settings)
    setup = airflow_env(settings)
    migrate(setup)
    log = setup.home / f"retrain-{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    step(f"running {dag_id(name)} (log: {log}) ...")
    dags_test(
        setup,
        name,
        {"window_days": args.window_days, "force": args.force},
        log,
        task_progress(step),
    )
    step("retrain DAG run succeeded")
    print_summary(run_summary(url, name))
    return 0


def cmd_airflow(args: argparse.Namespace, settings: Settings) -> int:
    from training.airflow_local import airflow_env, run_ui

    store(settings)
    return run_ui(airflow_env(settings, port=args.port))


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from training.models import model_entries
    from training.runs import run_summary

    names = [args.model] if args.model else list(model_entries(settings))
    if args.model:
        from training.models import select_spec

        select_spec(settings, args.model)
    url = store(settings)
    for name in names:
        if len(names) > 1:
            print(f"\n# model {name}")
        print_summary(run_summary(url, name))
    return 0


def add_parsers(sub: Any) -> None:
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

    db = sub.add_parser(
        "db",
        help="the feedback store (embedded PostgreSQL unless configured)",
        description="start: start the store (the embedded server unless DRIFTLOOP_DATABASE_URL "
        "is set) and apply migrations; stop: stop the embedded server; url: print the store's "
        "URL for scripts, e.g. DRIFTLOOP_DATABASE_URL=$(driftloop db url). `url` prints the "
        "password in full (any other output shows it as ***): keep it out of logs and shared "
        "terminals.",
    )
    db.add_argument("action", choices=["start", "stop", "url"])
    db.set_defaults(func=cmd_db)

    retrain = sub.add_parser("retrain", help="run the retrain DAG once with `airflow dags test`")
    retrain.add_argument("--force", action="store_true", help="retrain even without drift")
    retrain.add_argument("--window-days", type=float, default=7.0)
    add_model_argument(retrain)
    retrain.set_defaults(func=cmd_retrain)

    airflow = sub.add_parser("airflow", help="Airflow UI, scheduler and dag-processor")
    airflow.add_argument("--port", type=int, default=8080)
    airflow.set_defaults(func=cmd_airflow)

    status = sub.add_parser("status", help="each model's champion and last retrain run")
    status.add_argument("--model", help="one model only (default: every model)")
    status.set_defaults(func=cmd_status)
