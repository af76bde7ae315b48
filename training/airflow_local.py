"""Run Airflow on this machine for driftloop: its environment, migrations, ``dags test``, and the UI.

Airflow runs in subprocesses with an environment built here, so this module never imports Airflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.error import URLError
from urllib.request import urlopen

from training.bento import PROJECT_ROOT
from training.errors import DriftloopError
from training.models import dag_id, model_entries
from training.postgres import database_url
from training.private_files import open_private, private_dirs, private_home, tighten
from training.settings import Settings
from training.supervise import Supervisor

__all__ = [
    "AirflowSetup",
    "DagTestResult",
    "airflow_env",
    "dag_test",
    "dags_test",
    "migrate",
    "passwords_file",
    "run_ui",
]

LOCAL_ENV = PROJECT_ROOT / "airflow" / "local.env"
# Airflow's processes create files readable by their owner only: the admin password file, logs
# (the api-server's prints the password), task logs with every window's data in their lines.
AIRFLOW_UMASK = 0o077
# Airflow chmods the folders and files of task logs to these itself (its defaults: 0o775, 0o664).
_LOG_PERMISSIONS = {
    "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FOLDER_PERMISSIONS": "0o700",
    "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS": "0o600",
}


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# Airflow signs its JWTs with HS512, for which PyJWT wants a key of at least 64 bytes.
_JWT_SECRET_BYTES = 64


def _jwt_secret(home: Path) -> str:
    # api-server, scheduler and task workers must sign and check task tokens with one secret.
    path = home / "jwt_secret"
    if not path.exists() or len(path.read_text().strip()) < _JWT_SECRET_BYTES:
        # A short secret from an older launcher is replaced: tokens are short-lived and every
        # component gets the new one on its next start.
        with open_private(path) as out:
            out.write(secrets.token_urlsafe(_JWT_SECRET_BYTES))
    return path.read_text().strip()


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1).replace(
        "postgres://", "postgresql+psycopg2://", 1
    )


@dataclass(frozen=True)
class AirflowSetup:
    home: Path
    env: dict[str, str]
    port: int
    # The deployment's models, each with its retrain DAG.
    models: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def airflow_env(settings: Settings, *, port: int = 8080) -> AirflowSetup:
    """The environment for every Airflow process of this project (metadata DB on PostgreSQL).

    Airflow's home is made private (mode 0700, under the private data dir), with whatever an
    earlier run left in it readable by its owner only: the admin password file and logs included.
    """
    private_home(settings.home)
    home = private_dirs(settings.airflow_home)
    home.chmod(0o700)
    tighten(home)
    # database_url() returns the configured URL as it is when one is set, else the embedded
    # server's `airflow` database.
    metadata = settings.airflow_database_url or database_url(settings, "airflow")
    env = dict(os.environ)
    for key, value in (_read_env_file(LOCAL_ENV) | _LOG_PERMISSIONS).items():
        env.setdefault(key, value)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _sqlalchemy_url(metadata),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(home),
            "DRIFTLOOP_HOME": str(settings.home),
            # Absolute, so Airflow's processes (other working dirs) find the same model specs.
            "DRIFTLOOP_MODELS": str(settings.models),
        }
    )
    if settings.model_spec is not None:
        env["DRIFTLOOP_MODEL_SPEC"] = str(settings.model_spec.expanduser().resolve())
    if settings.database_url:
        env["DRIFTLOOP_DATABASE_URL"] = settings.database_url
    # Read here, so a broken spec stops the command with its message instead of a DAG import error.
    models = tuple(model_entries(settings))
    return AirflowSetup(home=home, env=env, port=port, models=models)


def _airflow(setup: AirflowSetup, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "airflow", *args]
    return subprocess.run(
        command, env=setup.env, capture_output=True, text=True, check=False, umask=AIRFLOW_UMASK
    )


_TASK_EVENT = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\S+)")
# dag.test() logs this every second while a human-in-the-loop task waits for its answer.
_AWAITING = re.compile(r"Waiting for Human-in-the-loop input for tasks: \['([^']+)'")


def migrate(setup: AirflowSetup) -> None:
    """``airflow db migrate`` (idempotent; a few seconds when there is nothing to do).

    Raises:
        DriftloopError: the migration failed (the message carries Airflow's last line).
    """
    result = _airflow(setup, "db", "migrate")
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise DriftloopError(f"airflow db migrate failed: {' '.join(tail)}")


def dags_test(
    setup: AirflowSetup,
    model: str,
    conf: dict[str, object],
    log: Path,
    on_task: Callable[[str, str], None] | None = None,
) -> None:
    """Run ``model``'s retrain DAG once, for real, with ``airflow dags test`` (tasks run in this machine's
    processes against the metadata DB); the full log goes to ``log``.

    Args:
        on_task: called with (task id, "started" | "ended" | "awaiting input") as the run goes,
            for progress output; "awaiting input" once per task that waits for a person.

    Raises:
        DriftloopError: the run failed (see the log).
    """
    dag = dag_id(model)
    command = [sys.executable, "-m", "airflow", "dags", "test", dag, "--conf", json.dumps(conf)]
    with (
        open_private(log) as out,
        subprocess.Popen(
            command,
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            umask=AIRFLOW_UMASK,
        ) as process,
    ):
        assert process.stdout is not None
        waiting: set[str] = set()
        for line in process.stdout:
            out.write(line)
            event = _TASK_EVENT.search(line)
            if event and on_task is not None:
                on_task(event.group(2), "started" if event.group(1) == "starting" else "ended")
            awaiting = _AWAITING.search(line)
            if awaiting and on_task is not None and awaiting.group(1) not in waiting:
                waiting.add(awaiting.group(1))
                on_task(awaiting.group(1), "awaiting input")
    failed = "failed" in _final_state(log)
    if process.returncode != 0 or failed:
        raise DriftloopError(f"the {dag} run failed; its log is {log}")


_DAG_TEST = """
import json, runpy, sys
namespace = runpy.run_path(sys.argv[1], run_name="driftloop_dag_test")
run = namespace[sys.argv[3]].test(run_conf=json.loads(sys.argv[2]))
tis = run.get_task_instances()
tasks = {ti.task_id: str(ti.state) for ti in tis}
tries = {ti.task_id: ti.try_number for ti in tis}
found = {"state": str(run.state), "run_id": run.run_id, "tasks": tasks, "tries": tries}
print("DAG_TEST_RESULT=" + json.dumps(found))
"""


@dataclass(frozen=True)
class DagTestResult:
    state: str
    run_id: str
    tasks: dict[str, str]
    log: str
    # How many times each task ran (more than 1: it was retried).
    tries: dict[str, int] = field(default_factory=dict)


def dag_test(
    setup: AirflowSetup,
    conf: dict[str, object],
    model: str = "churn",
    timeout: float | None = None,
) -> DagTestResult:
    """Run ``model``'s retrain DAG once with ``dag.test()`` in a fresh interpreter.

    Airflow reads its configuration when first imported, so the caller (a test, say) keeps its own
    process free of Airflow and hands this run the project's environment instead.

    Args:
        timeout: seconds before the run is stopped (``dag.test()`` waits for an approval as long as
            nobody answers).

    Raises:
        DriftloopError: the interpreter failed, or ran out of ``timeout``, before the run could
            report (the log's tail says why).
    """
    dag_file = PROJECT_ROOT / "dags" / "retrain.py"
    try:
        result = subprocess.run(
            [sys.executable, "-c", _DAG_TEST, str(dag_file), json.dumps(conf), dag_id(model)],
            env=setup.env,
            capture_output=True,
            text=True,
            check=False,
            umask=AIRFLOW_UMASK,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        tail = _text(exc.stdout) + _text(exc.stderr)
        raise DriftloopError(
            f"dag.test() did not finish within {timeout:g} s: "
            + " | ".join(tail.strip().splitlines()[-5:])
        ) from None
    log = result.stdout + result.stderr
    for line in result.stdout.splitlines():
        if line.startswith("DAG_TEST_RESULT="):
            found = json.loads(line.removeprefix("DAG_TEST_RESULT="))
            return DagTestResult(
                found["state"], found["run_id"], found["tasks"], log, found.get("tries", {})
            )
    raise DriftloopError(f"dag.test() did not finish: {' | '.join(log.strip().splitlines()[-5:])}")


def _text(output: str | bytes | None) -> str:
    # What a timed-out run had printed (bytes, despite text=True, on some Python versions).
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _final_state(log: Path) -> str:
    # `dags test` ends its log with the DagRun's repr, which carries the run's state.
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if "DagRun" in line and "state=" in line:
            return line
    return ""


def _wait_for(url: str, timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (URLError, OSError):
            pass
        time.sleep(1)
    return False


def _echo(message: str) -> None:
    # Flushed: under a pipe (tee, a test, a supervisor) the login line must show up at once.
    print(message, flush=True)


def passwords_file(setup: AirflowSetup) -> Path:
    """Where the simple auth manager keeps the users' generated passwords (JSON, user -> password).

    Airflow's default is ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``; an
    ``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE`` in the environment moves it.
    """
    configured = setup.env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    return (
        Path(configured)
        if configured
        else setup.home / "simple_auth_manager_passwords.json.generated"
    )


def _login_user(setup: AirflowSetup) -> str:
    # The first of the simple auth manager's "user:role" pairs (airflow/local.env: admin:admin).
    users = setup.env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS") or "admin:admin"
    return users.split(",")[0].split(":")[0].strip()


class _Stop(Exception):
    """SIGTERM arrived: leave the wait loop and stop the components."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run_ui(
    setup: AirflowSetup,
    *,
    echo: Callable[[str], None] = _echo,
    stop_after: float | None = None,
    backoff_s: float = 2.0,
) -> int:
    """Start api-server, scheduler and dag-processor; print where to log in; restart a component
    that dies (after a back-off that doubles with each restart in a row, up to a minute, with a
    line saying so); stop all on Ctrl-C or SIGTERM.

    Returns the exit code: 0 after a clean stop, 1 when a component never came up.
    """
    migrate(setup)
    logs = private_dirs(setup.home / "logs")
    components = Supervisor(env=setup.env, echo=echo, backoff_s=backoff_s, umask=AIRFLOW_UMASK)
    # SIGTERM (a supervisor, `kill`, a test) must stop the components like Ctrl-C does; Python's
    # default would end the launcher at once and orphan them in their own sessions.
    previous = signal.signal(signal.SIGTERM, _raise_stop)

    def start(component: str, *args: str) -> None:
        # The api-server's log holds the generated admin password.
        command = [sys.executable, "-m", "airflow", component, *args]
        components.start(component, command, logs / f"{component}.log")

    def all_alive() -> bool:
        return all(components.alive(name) for name in components.components)

    try:
        start("api-server")
        start("dag-processor")
        echo(f"starting Airflow (logs in {logs}) ...")
        # A component that dies before the UI is up is a setup problem (a taken port, a broken
        # config): say so at once rather than restart it forever.
        if not _wait_for(f"{setup.url}/api/v2/monitor/health", 300, all_alive):
            dead = [name for name in components.components if not components.alive(name)]
            echo(f"Airflow did not come up (stopped: {', '.join(dead) or 'none'}); see {logs}")
            return 1
        # Made under AIRFLOW_UMASK already; kept 0600 should Airflow ever set its mode itself.
        with contextlib.suppress(FileNotFoundError):
            passwords_file(setup).chmod(0o600)
        # The scheduler starts once the API answers: its task workers report to the execution API
        # from their first second, and with the daily schedule live a run is due right away.
        # --skip-serve-logs: the workers write their logs to this machine's disk, where the
        # api-server reads them; Airflow's log server would listen on all interfaces at a fixed
        # port (8793), which is neither local-only nor safe to run twice on one machine.
        start("scheduler", "--skip-serve-logs")
        echo(
            f"Airflow UI: {setup.url}  (user {_login_user(setup)}, password in {passwords_file(setup)})"
        )
        dags = ", ".join(dag_id(name) for name in setup.models)
        echo(f"DAGs {dags}: scheduled daily; trigger them with params from the UI. Ctrl-C stops.")
        deadline = None if stop_after is None else time.monotonic() + stop_after
        while deadline is None or time.monotonic() < deadline:
            components.check()
            time.sleep(1)
        return 0
    except (KeyboardInterrupt, _Stop):
        echo("stopping Airflow ...")
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the shutdown short and orphan a component.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            components.stop()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)
