"""Monitoring for real: the alert rules through promtool, and a real Prometheus scraping a real
``bentoml serve`` of the champion's Bento.

The server runs with ``DRIFTLOOP_AUTH=on`` and Prometheus scrapes ``/metrics`` with an admin key,
as a deployment would; it also loads the alert rules, so they are evaluated on the series the
service really exposes. The Grafana dashboard's queries run against that Prometheus too.

Prometheus and promtool come from Debian's ``prometheus`` package (``make observability-tools``).
Where they are missing the module is skipped, except under ``CI=true``: there a skip would hide a
check that never ran, so it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_service import (
    EXAMPLE,
    Champion,
    KeySpec,
    _free_port,
    keyed_server,
    query,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "driftloop-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "driftloop-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "driftloop.json"
TOOLS = ("promtool", "prometheus")
# Scrapes and rule evaluations every second; the loop's state is re-read every 15 s per worker.
WAIT_S = 90.0


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not absent:
        return
    reason = f"{', '.join(absent)} not installed (make observability-tools)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"the monitoring tests must run in CI: {reason}")
    pytest.skip(reason)


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@dataclass(frozen=True)
class Monitored:
    """A served champion (auth on), its keys' tokens, and a Prometheus scraping it."""

    champion: Champion
    url: str
    tokens: dict[str, str]
    prometheus: str

    def post(self, route: str, body: object, key: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.tokens[key]}"} if key else {}
        return httpx.post(f"{self.url}{route}", json=body, headers=headers, timeout=30)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query (fails on a query Prometheus refuses)."""
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=30)
        assert answer.status_code == 200, f"{promql}: {answer.text}"
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def values(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Each series of a query's result by its labels (``__name__`` left out), with its value."""
        return {
            tuple(sorted((k, v) for k, v in row["metric"].items() if k != "__name__")): float(
                row["value"][1]
            )
            for row in self.query(promql)
        }

    def names(self) -> set[str]:
        answer = httpx.get(f"{self.prometheus}/api/v1/label/__name__/values", timeout=30)
        return set(answer.json()["data"])


def eventually(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """``check()``'s first truthy result, retried until ``timeout_s``; fails with its last one."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what}: not seen within {timeout_s:.0f} s (last: {last!r})")


def _start_prometheus(target: str, token: str, folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "driftloop",
                        "authorization": {"type": "Bearer", "credentials": token},
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    with (folder / "prometheus.log").open("ab") as out:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            log = (folder / "prometheus.log").read_text(errors="replace")
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log[-3000:]}")
        with suppress(httpx.TransportError):
            return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
        return False

    eventually("Prometheus ready", ready)
    return url, process


def _stop(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def monitored(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    keys: list[KeySpec] = [
        ("both", ["predict", "feedback"], None),
        ("predictor", ["predict"], None),
        ("slow", ["predict"], 1.0),
        ("admin", ["admin"], None),
    ]
    home = tmp_path_factory.mktemp("observability-home")
    with keyed_server(server_url, home, keys) as (champion, url, tokens):
        target = url.removeprefix("http://")
        prometheus, process = _start_prometheus(target, tokens["admin"], home)
        try:
            yield Monitored(champion, url, tokens, prometheus)
        finally:
            _stop(process)


def _record_loop(champion: Champion) -> datetime:
    """A drift check (5 of 8 features drifted: retrain) and a finished retrain run of churn, as
    the retrain DAG records them; returns when the run finished."""
    from training.runs import record_training_run
    from training.settings import get_settings
    from training.store import connect

    run_key = f"manual__{uuid.uuid4().hex[:8]}"
    end = datetime.now(UTC)
    with connect(champion.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO drift_runs (model_name, run_key, window_start, window_end, champion_tag,"
            " rows, labelled_rows, drift_share, drifted, decision, reason)"
            " VALUES ('churn', %s, %s, %s, %s, 1000, 800, 0.625, true, 'retrain', 'drift')",
            (run_key, end - timedelta(days=7), end, champion.model_tag),
        )
    record_training_run(get_settings(), "churn", run_key, status="rejected", reason="a gate failed")
    (finished,) = query(
        champion.database_url,
        "SELECT finished_at FROM training_runs WHERE run_key = %s",
        (run_key,),
    )[0]
    assert isinstance(finished, datetime)
    return finished


@dataclass(frozen=True)
class Traffic:
    """What the module's requests should show in the series."""

    labels: dict[str, int]
    predicted: int
    refused: dict[str, int]
    finished: datetime


@pytest.fixture(scope="module")
def traffic(monitored: Monitored) -> Traffic:
    """Predictions one by one and in a batch, feedback of every status, a bad request, and
    refusals of each kind; then the loop's records in the store."""
    answers = [monitored.post("/predict", EXAMPLE, "both") for _ in range(6)]
    batch = monitored.post("/predict_batch", {"records": [EXAMPLE] * 5}, "both")
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert batch.status_code == 200, batch.text
    predictions = [a.json() for a in answers] + batch.json()

    rid = predictions[0]["request_id"]
    statuses = [
        monitored.post("/feedback", {"request_id": rid, "label": label}, "both").json()["status"]
        for label in (1, 1, 0)
    ]
    assert statuses == ["created", "unchanged", "updated"]
    unknown = monitored.post("/feedback", {"request_id": "f" * 32, "label": 1}, "both")
    assert unknown.status_code == 404

    assert monitored.post("/predict", {"tenure": "many"}, "both").status_code == 400
    assert monitored.post("/predict", EXAMPLE, None).status_code == 401
    assert monitored.post(
        "/feedback", {"request_id": rid, "label": 1}, "predictor"
    ).status_code == (403)
    limited = 0
    for _ in range(200):
        answer = monitored.post("/predict", EXAMPLE, "slow")
        if answer.status_code == 429:
            limited += 1
            break
        assert answer.status_code == 200, answer.text
        predictions.append(answer.json())
    assert limited == 1, "the 1/s key was never limited"

    labels = {"0": 0, "1": 0}
    for prediction in predictions:
        labels[str(prediction["label"])] += 1
    return Traffic(
        labels=labels,
        predicted=len(predictions),
        refused={"unauthenticated": 1, "forbidden": 1, "rate_limited": 1},
        finished=_record_loop(monitored.champion),
    )


def test_prometheus_sees_the_serving_series(monitored: Monitored, traffic: Traffic) -> None:
    """Through Prometheus' query API: predictions by label and version, one score and one batch
    size per prediction, the batch request's size, feedback by status, requests by route and
    status, refusals by reason, the log writer caught up; and BentoML's own series beside them."""
    version = monitored.champion.version
    by_label = eventually(
        "every prediction counted",
        lambda: (
            got
            if sum(
                (got := monitored.values("sum by (label) (driftloop_predictions_total)")).values()
            )
            == traffic.predicted
            else None
        ),
    )
    assert by_label == {(("label", label),): float(n) for label, n in traffic.labels.items()}
    assert monitored.values("sum by (model_version) (driftloop_predictions_total)") == {
        (("model_version", version),): float(traffic.predicted)
    }
    assert monitored.values("sum(driftloop_prediction_score_count)") == {(): traffic.predicted}
    scores = monitored.values(
        'sum by (le) (driftloop_prediction_score_bucket{le=~"0.5|1.0|\\\\+Inf"})'
    )
    assert scores[(("le", "+Inf"),)] == traffic.predicted
    assert scores[(("le", "1.0"),)] == traffic.predicted
    assert scores[(("le", "0.5"),)] == traffic.labels["0"]
    assert monitored.values("sum by (endpoint) (driftloop_batch_size_count)") == {
        # Sent one after the other: each single-record request is an adaptive batch of its own.
        (("endpoint", "predict"),): float(traffic.predicted - 5),
        (("endpoint", "predict_batch"),): 1.0,
    }
    assert monitored.values('sum(driftloop_batch_size_sum{endpoint="predict_batch"})') == {(): 5}
    assert monitored.values('sum(driftloop_batch_size_sum{endpoint="predict"})') == {
        (): traffic.predicted - 5
    }

    assert monitored.values("sum by (status) (driftloop_feedback_total)") == {
        (("status", status),): 1.0 for status in ("created", "unchanged", "updated", "not_found")
    }
    requests = monitored.values("sum by (route, status) (driftloop_requests_total)")
    assert requests[(("route", "/predict"), ("status", "200"))] == traffic.predicted - 5
    assert requests[(("route", "/predict"), ("status", "400"))] == 1
    assert requests[(("route", "/predict"), ("status", "401"))] == 1
    assert requests[(("route", "/predict"), ("status", "429"))] == 1
    assert requests[(("route", "/predict_batch"), ("status", "200"))] == 1
    assert requests[(("route", "/feedback"), ("status", "200"))] == 3
    assert requests[(("route", "/feedback"), ("status", "404"))] == 1
    assert requests[(("route", "/feedback"), ("status", "403"))] == 1
    assert (
        monitored.values("sum by (route) (driftloop_request_duration_seconds_count)")[
            (("route", "/predict"),)
        ]
        == traffic.predicted - 5 + 3
    )
    assert monitored.values('sum by (reason) (driftloop_refused_total{transport="http"})') == {
        (("reason", reason),): float(n) for reason, n in traffic.refused.items()
    }
    assert monitored.values("driftloop_served_model_info")
    eventually(
        "the log writer caught up",
        lambda: monitored.values("sum(driftloop_spool_records)") == {(): 0.0},
    )
    assert monitored.values("min(driftloop_log_store_ok)") == {(): 1.0}
    # BentoML's own, for the routes its app answers (the feedback routes pass through it).
    bentoml_requests = monitored.values("sum by (endpoint) (bentoml_service_request_total)")
    assert bentoml_requests[(("endpoint", "/feedback"),)] >= 3


def test_prometheus_sees_the_retrain_loop_state(monitored: Monitored, traffic: Traffic) -> None:
    """The champion's version, the last successful run's end and the last drift check, as the
    store has them (read by the service at scrape time)."""
    model = (("model", "churn"),)
    eventually(
        "the drift check recorded after the server started",
        lambda: monitored.values("max by (model) (driftloop_drift_share)") == {model: 0.625},
    )
    assert monitored.values("max by (model) (driftloop_champion_version)") == {model: 1.0}
    assert monitored.values("max by (model, model_version) (driftloop_champion_info)") == {
        (("model", "churn"), ("model_version", monitored.champion.version)): 1.0
    }
    finished = monitored.values("max by (model) (driftloop_retrain_last_success_timestamp_seconds)")
    assert finished[model] == pytest.approx(traffic.finished.timestamp(), abs=1e-3)
    assert monitored.values("max by (model) (driftloop_drift_share_threshold)") == {model: 0.3}
    assert monitored.values("max by (model, decision) (driftloop_drift_decision)") == {
        (("decision", "retrain"), ("model", "churn")): 1.0,
        (("decision", "skip"), ("model", "churn")): 0.0,
    }
    assert monitored.values("min(driftloop_loop_status_ok)") == {(): 1.0}


def test_alert_rules_evaluate_on_the_served_series(monitored: Monitored, traffic: Traffic) -> None:
    """Prometheus evaluates every rule without error on what the service exposes; the drift over
    the spec's threshold makes its alert pending, while the alerts of a healthy service stay
    quiet."""

    def alerts() -> dict[str, str]:
        answer = httpx.get(f"{monitored.prometheus}/api/v1/alerts", timeout=30).json()
        return {a["labels"]["alertname"]: a["state"] for a in answer["data"]["alerts"]}

    eventually("the drift alert", lambda: "DriftloopDriftShareHigh" in alerts())
    rules = httpx.get(f"{monitored.prometheus}/api/v1/rules", timeout=30).json()["data"]
    health = {
        rule["name"]: (rule["health"], rule.get("lastError", ""))
        for group in rules["groups"]
        for rule in group["rules"]
    }
    assert len(health) == 11
    assert all(state == "ok" for state, _ in health.values()), health
    firing = alerts()
    assert firing["DriftloopDriftShareHigh"] == "pending"
    for quiet in (
        "DriftloopScrapeFailing",
        "DriftloopLogStoreDown",
        "DriftloopHighErrorRate",
        "DriftloopServingOldChampion",
        "DriftloopNoSuccessfulRetrain",
        "DriftloopLoopStatusUnavailable",
    ):
        assert quiet not in firing, firing


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "job")
    return [*exprs, variable["query"]["query"].replace("label_values(", "").split(",")[0]]


def test_the_dashboard_queries_series_the_service_exposes(
    monitored: Monitored, traffic: Traffic
) -> None:
    """Every metric name in the Grafana dashboard is one Prometheus scraped from the service, and
    every panel's query runs and returns data (Grafana's variables set as a user would)."""
    queries = _dashboard_queries()
    assert len(queries) > 20
    eventually(
        "the loop's state scraped",
        lambda: monitored.values("max by (model) (driftloop_drift_share)"),
    )
    names = monitored.names()
    used = {name for q in queries for name in re.findall(r"\b(?:driftloop|bentoml)_\w+", q)}
    assert used - names == set()
    for promql in queries:
        concrete = promql.replace("$__rate_interval", "5m").replace("$job", ".*")
        assert monitored.query(concrete), f"no data for {promql}"
