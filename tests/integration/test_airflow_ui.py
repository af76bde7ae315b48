"""``driftloop airflow`` for real: api-server, scheduler and dag-processor on PostgreSQL.

The launcher runs as a user would start it; the test logs in with the simple auth manager's
generated password, triggers the retrain DAG through the REST API with its params, waits for the
run to succeed, and stops the launcher with SIGTERM, which must take all three components down.
With an empty store the run takes the skip branch, and the skip is recorded in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg2
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "driftloop_retrain__churn"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Generous bounds: a fresh metadata DB is migrated first, and the machine is small and shared.
STARTUP_TIMEOUT = 420.0
DAG_LISTED_TIMEOUT = 180.0
RUN_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0

T = TypeVar("T")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Launcher:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines[-40:])


def _read_output(launcher: Launcher) -> None:
    # A thread drains the pipe so the launcher never blocks on a full buffer.
    assert launcher.process.stdout is not None
    for line in launcher.process.stdout:
        launcher.lines.append(line.rstrip("\n"))


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc), to check later that the launcher stopped them."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name sits in parentheses and may hold spaces; the parent pid follows it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _poll(what: str, timeout: float, probe: Callable[[], T | None], launcher: Launcher) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.process.poll() is not None:
            pytest.fail(f"the launcher exited while waiting for {what}:\n{launcher.output()}")
        found = probe()
        if found is not None:
            return found
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{launcher.output()}")


def _stop(process: subprocess.Popen[str]) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        pytest.fail("the launcher ignored SIGTERM and had to be killed")


@pytest.fixture
def launcher(
    env: Path, airflow_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Launcher]:
    monkeypatch.setenv("DRIFTLOOP_AIRFLOW_DATABASE_URL", airflow_database_url)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "airflow", "--port", str(port)],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    started = Launcher(process)
    reader = threading.Thread(target=_read_output, args=(started,), daemon=True)
    reader.start()
    components: set[int] = set()
    try:
        yield started
    finally:
        if process.poll() is None:
            components = _children(process.pid)
        code = _stop(process)
        reader.join(timeout=10)
        # The components run in sessions of their own, so only the launcher can stop them.
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and any(_alive(pid) for pid in components):
            time.sleep(1)
        left = sorted(pid for pid in components if _alive(pid))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert not left, f"Airflow processes outlived the launcher: {left}"
        assert code == 0, f"the launcher exited with {code}:\n{started.output()}"


def _api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = client.request(method, f"/api/v2{path}", **kwargs)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json()


def test_launcher_serves_schedules_and_runs_the_retrain_dag(launcher: Launcher, env: Path) -> None:
    url_line = _poll(
        "the launcher's URL line",
        STARTUP_TIMEOUT,
        lambda: next((line for line in launcher.lines if "Airflow UI: http" in line), None),
        launcher,
    )
    match = re.search(r"(http://127\.0\.0\.1:\d+)\s+\(user (\w+), password in (\S+)\)", url_line)
    assert match, url_line
    base_url, user, password_file = match.groups()
    assert user == "admin"
    assert Path(password_file) == env / "airflow" / "simple_auth_manager_passwords.json.generated"

    with httpx.Client(base_url=base_url, timeout=30) as client:
        health = client.get("/api/v2/monitor/health")
        assert health.status_code == 200, health.text

        password = json.loads(Path(password_file).read_text())["admin"]
        token = client.post("/auth/token", json={"username": "admin", "password": password})
        assert token.status_code == 201, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

        def listed() -> dict[str, Any] | None:
            dags = _api(client, "GET", "/dags", params={"dag_id_pattern": DAG_ID})["dags"]
            return next((d for d in dags if d["dag_id"] == DAG_ID), None)

        dag = _poll(f"{DAG_ID} to be parsed and listed", DAG_LISTED_TIMEOUT, listed, launcher)
        # Airflow shows the @daily preset as its cron expression.
        assert dag["timetable_summary"] in ("@daily", "0 0 * * *"), dag
        if dag["is_paused"]:
            _api(client, "PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        assert _api(client, "GET", f"/dags/{DAG_ID}")["is_paused"] is False

        details = _api(client, "GET", f"/dags/{DAG_ID}/details")
        assert set(details["params"]) >= {"force", "window_days"}

        run = _api(
            client,
            "POST",
            f"/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"window_days": 7, "force": False}},
        )
        run_id = run["dag_run_id"]

        def finished() -> str | None:
            state: str = _api(client, "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        state = _poll(f"run {run_id} to finish", RUN_TIMEOUT, finished, launcher)
        tasks = {
            ti["task_id"]: ti["state"]
            for ti in _api(client, "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[
                "task_instances"
            ]
        }
        assert state == "success", f"run {run_id} {state}: {tasks}\n{launcher.output()}"
        assert tasks["record_skip"] == "success", tasks
        assert tasks["train_challenger"] == "skipped", tasks
        # The daily schedule is live: the scheduler has a next run lined up.
        assert _api(client, "GET", f"/dags/{DAG_ID}")["next_dagrun_run_after"] is not None

    with psycopg2.connect(os.environ["DRIFTLOOP_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status, reason FROM training_runs WHERE run_key = %s",
            (run_id,),
        )
        rows = cur.fetchall()
    conn.close()
    assert len(rows) == 1, rows
    status, reason = rows[0]
    assert status == "skipped"
    assert "too few labelled rows" in reason
