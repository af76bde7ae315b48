"""``driftloop airflow`` for real: api-server, scheduler and dag-processor on PostgreSQL.

The launcher runs as a user would start it; the test logs in with the simple auth manager's
generated password, triggers the retrain DAG through the REST API with its params, waits for the
run to succeed, and stops the launcher with SIGTERM, which must take all three components down.
With an empty store the run takes the skip branch, and the skip is recorded in PostgreSQL.

Then as a person: a real browser (Debian's chromium, driven by playwright) logs in on the login
page, finds the DAG in the DAG list, opens the trigger form, switches ``force`` on, sets
``window_days``, triggers, and sees the run succeed on its page; the run's conf is what the form
said. A drift report (Evidently's HTML) opens in the same browser without a console error.
Screenshots go to ``$DRIFTLOOP_TEST_ARTIFACTS/airflow-ui`` (``test-artifacts/`` by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
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
from urllib.parse import quote, unquote

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


def _ui_address(launcher: Launcher, env: Path) -> tuple[str, str]:
    """The UI's URL and the admin's password, as the launcher's line says where to find them."""
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
    return base_url, json.loads(Path(password_file).read_text())["admin"]


def _listed(client: httpx.Client, launcher: Launcher) -> dict[str, Any]:
    """The DAG, once the dag-processor has parsed it and the API lists it."""

    def listed() -> dict[str, Any] | None:
        dags = _api(client, "GET", "/dags", params={"dag_id_pattern": DAG_ID})["dags"]
        return next((d for d in dags if d["dag_id"] == DAG_ID), None)

    return _poll(f"{DAG_ID} to be parsed and listed", DAG_LISTED_TIMEOUT, listed, launcher)


def _unpause(client: httpx.Client, dag: dict[str, Any]) -> None:
    """Unpause the DAG: the scheduler then runs its latest interval at once, unless it ran it."""
    if dag["is_paused"]:
        _api(client, "PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    assert _api(client, "GET", f"/dags/{DAG_ID}")["is_paused"] is False


def test_launcher_serves_schedules_and_runs_the_retrain_dag(launcher: Launcher, env: Path) -> None:
    base_url, password = _ui_address(launcher, env)

    with httpx.Client(base_url=base_url, timeout=30) as client:
        health = client.get("/api/v2/monitor/health")
        assert health.status_code == 200, health.text

        _log_in(client, password)
        dag = _listed(client, launcher)
        # Airflow shows the @daily preset as its cron expression.
        assert dag["timetable_summary"] in ("@daily", "0 0 * * *"), dag
        _unpause(client, dag)

        details = _api(client, "GET", f"/dags/{DAG_ID}/details")
        assert set(details["params"]) >= {"force", "window_days", "require_approval"}

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

    _as_a_person(base_url, password, launcher)


def _log_in(client: httpx.Client, password: str) -> None:
    token = client.post("/auth/token", json={"username": "admin", "password": password})
    assert token.status_code == 201, token.text
    client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"


def _browser() -> str:
    # Debian's chromium; GitHub's Ubuntu runners ship Google Chrome instead.
    chromium = next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: `make browser-tools` installs Debian's chromium")
        pytest.skip("chromium is not installed (`make browser-tools`)")
    return chromium


def _screenshots() -> Path:
    shots = Path(os.environ.get("DRIFTLOOP_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
    shots = shots / "airflow-ui"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _signed_in(browser: Any, base_url: str, password: str, screenshot: Path | None = None) -> Any:
    """A page of ``browser`` after signing in on the login page as admin."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{base_url}/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    if screenshot is not None:
        page.screenshot(path=screenshot)
    page.get_by_role("button", name="Sign in").click()
    return page


def _as_a_person(base_url: str, password: str, launcher: Launcher) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    shots = _screenshots()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        _log_in(client, password)

        # Unpaused, the DAG's latest scheduled interval runs at once; while a run is active the
        # DAG's page refreshes itself and re-renders an open form under the pointer.
        def calm() -> bool | None:
            runs = _api(client, "GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
            return True if all(r["state"] not in ("queued", "running") for r in runs) else None

        _poll("no run of the DAG in progress", RUN_TIMEOUT, calm, launcher)
    with sync_playwright() as playwright:
        # --no-sandbox: the suite may run as root, where chromium refuses its sandbox.
        browser = playwright.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
        try:
            page = _signed_in(browser, base_url, password, shots / "1-login.png")

            page.get_by_role("link", name="Dags", exact=True).first.click()
            # The DAG list shows it; its page is where a person triggers it with params.
            expect(page.get_by_role("link", name=DAG_ID, exact=True).first).to_be_visible()
            page.goto(f"{base_url}/dags/{DAG_ID}")
            form = page.get_by_role("dialog")
            # A click before the page has wired its buttons does nothing: click again, as a
            # person would when the form does not open.
            for _ in range(10):
                page.get_by_role("button", name="Trigger Dag").click()
                with contextlib.suppress(PlaywrightTimeout):
                    form.get_by_text("Run Parameters").wait_for(timeout=6_000)
                    break
            # The form re-renders while the page refreshes its data: type as a person would
            # rather than set an element's value that may be replaced meanwhile.
            form.get_by_text("Run Parameters").wait_for()
            form.locator("input[name=element_window_days]").click()
            page.keyboard.press("Control+A")
            page.keyboard.type("3")
            form.locator("label[id='switch:element_force']").click(force=True)
            expect(form.locator("input[name=element_window_days]")).to_have_value("3")
            expect(form.locator("input[name=element_force]")).to_be_checked()
            page.screenshot(path=shots / "2-trigger-form.png")
            # The form's own button (the page's header has a "Trigger" button too).
            page.get_by_role("button", name="Trigger", exact=True).last.click()

            # The UI opens the new run's page.
            page.wait_for_url(f"**/dags/{DAG_ID}/runs/**")
            run_id = unquote(page.url.rsplit("/runs/", 1)[1])
            deadline = time.monotonic() + RUN_TIMEOUT
            badge = page.get_by_text("Success", exact=True).first
            # "Success" also labels a finished task on the run's page, so the badge alone can show
            # while the run is still going: wait until the API says the run has finished too.
            with httpx.Client(base_url=base_url, timeout=30) as client:
                _log_in(client, password)
                run_path = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
                while True:
                    run = _api(client, "GET", run_path)
                    if run["state"] not in ("queued", "running") and badge.is_visible():
                        break
                    if time.monotonic() > deadline:
                        page.screenshot(path=shots / "3-run-timeout.png")
                        pytest.fail(f"the UI never showed {run_id} succeed:\n{launcher.output()}")
                    page.wait_for_timeout(3000)
                    page.reload()
            page.screenshot(path=shots / "3-run-succeeded.png")
        finally:
            browser.close()

        assert run["state"] == "success", run
        # The form sends every param: require_approval left unset (the spec decides).
        conf = run["conf"]
        assert conf == {"force": True, "window_days": 3, "require_approval": None}, conf
        assert run["run_type"] == "manual"

        _a_drift_report_opens_cleanly(playwright, shots)


def _a_drift_report_opens_cleanly(playwright: Any, shots: Path) -> None:
    from training.drift import detect_drift
    from training.spec import load_spec
    from training.synthetic import Scenario, generate

    report = shots / "drift_report.html"
    detect_drift(
        load_spec(),
        generate(2000, seed=1),
        generate(1000, seed=2, scenario=Scenario(kind="covariate")),
        report,
    )
    browser = playwright.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
        page.goto(report.as_uri(), wait_until="load")
        page.get_by_text("monthly_charges").first.wait_for()
        page.screenshot(path=shots / "4-drift-report.png")
        assert problems == [], problems
    finally:
        browser.close()


# A run that retrains: it scores the window, trains, validates and builds a Bento before it asks.
APPROVAL_RUN_TIMEOUT = 900.0


@pytest.fixture
def approval_on(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Before the launcher starts (ask for this fixture first): the churn spec with approval on,
    and a champion whose traffic drifted, so the DAG's first scheduled run retrains and then asks
    a person. Returns the champion's tag."""
    from tests.integration.test_retrain_dag import _seed
    from tests.specs import approval_spec
    from training.synthetic import Scenario

    monkeypatch.setenv("DRIFTLOOP_MODEL_SPEC", str(approval_spec(tmp_path)))
    return str(_seed(Scenario(kind="mixed"))["champion_tag"])


def _task_state(client: httpx.Client, run_id: str, task_id: str) -> str | None:
    run = quote(run_id, safe="")
    state: str | None = _api(
        client, "GET", f"/dags/{DAG_ID}/dagRuns/{run}/taskInstances/{task_id}"
    )["state"]
    return state


def test_a_person_approves_a_promotion_in_the_ui(
    approval_on: str, launcher: Launcher, env: Path
) -> None:
    """With approval on in the spec, the scheduled run retrains on drifted traffic and waits; a
    person finds the request from the DAG's page (the waiting task's Required Action tab), reads
    it, writes a comment, approves, and the run promotes the challenger with the person named in
    the promotion record."""
    from playwright.sync_api import expect, sync_playwright

    base_url, password = _ui_address(launcher, env)
    shots = _screenshots()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        _log_in(client, password)
        dag = _listed(client, launcher)
        # Runs of earlier tests share this metadata database: the run to approve is a new one.
        before = {
            r["dag_run_id"]: r for r in _api(client, "GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
        }
        _unpause(client, dag)
        if any(r["run_type"] == "scheduled" for r in before.values()):
            # An earlier test's scheduled run took the latest interval: ask for a run instead.
            _api(client, "POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {}})

        def waiting() -> str | None:
            for run in _api(client, "GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]:
                if run["dag_run_id"] in before:
                    continue
                if run["state"] == "failed":
                    pytest.fail(
                        f"run {run['dag_run_id']} failed before asking:\n{launcher.output()}"
                    )
                if _task_state(client, run["dag_run_id"], "approve_promotion") == "awaiting_input":
                    return str(run["dag_run_id"])
            return None

        run_id = _poll("a run to wait for approval", APPROVAL_RUN_TIMEOUT, waiting, launcher)

    comment = "holdout checked by hand"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
        try:
            page = _signed_in(browser, base_url, password)
            page.get_by_role("link", name="Dags", exact=True).first.click()
            page.get_by_role("link", name=DAG_ID, exact=True).first.click()
            # The grid shows the waiting task; its page has the Required Action tab.
            page.get_by_test_id(f"grid-{run_id}-approve_promotion").click()
            page.get_by_role("link", name="Required Action").click()
            expect(page.get_by_text("to champion of churn?").first).to_be_visible()
            expect(page.get_by_text(approval_on).first).to_be_visible()
            field = page.locator("input[name=element_comment]")
            # The page refreshes while the run is active and may re-render the form: type as a
            # person would, and again if the text was lost.
            for _ in range(5):
                field.click()
                page.keyboard.press("Control+A")
                page.keyboard.type(comment)
                if field.input_value() == comment:
                    break
                page.wait_for_timeout(1000)
            expect(field).to_have_value(comment)
            page.screenshot(path=shots / "5-required-action.png")
            page.get_by_test_id("hitl-option-Approve").click()
            expect(page.get_by_text("Response received").first).to_be_visible()
            page.screenshot(path=shots / "6-approved.png")

            deadline = time.monotonic() + RUN_TIMEOUT
            with httpx.Client(base_url=base_url, timeout=30) as client:
                _log_in(client, password)
                run_path = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
                while (run := _api(client, "GET", run_path))["state"] in ("queued", "running"):
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"{run_id} did not finish after the approval:\n{launcher.output()}"
                        )
                    time.sleep(3)
                promote = _task_state(client, run_id, "promote")
            page.goto(f"{base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
            page.get_by_text("Success", exact=True).first.wait_for()
            page.screenshot(path=shots / "7-promoted.png")
        finally:
            browser.close()

    assert run["state"] == "success", run
    assert promote == "success"
    with psycopg2.connect(os.environ["DRIFTLOOP_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT p.by, p.reason, v.status FROM promotions p"
            " JOIN model_versions v ON v.tag = p.tag WHERE p.previous_tag = %s",
            (approval_on,),
        )
        promotions = cur.fetchall()
        cur.execute("SELECT status, reason FROM training_runs WHERE run_key = %s", (run_id,))
        training = cur.fetchall()
    conn.close()
    [(by, reason, status)] = promotions
    assert (by, status) == ("admin", "champion")
    assert f"approved by admin: {comment} (run {run_id})" in reason
    assert training == [("promoted", f"promoted to champion v2, approved by admin: {comment}")]
