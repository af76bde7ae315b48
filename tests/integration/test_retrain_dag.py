"""The retrain DAG run for real with ``dag.test()`` (Airflow 3, metadata on PostgreSQL), down every branch.

Each test seeds the store with a champion and simulated traffic, runs the DAG once, then checks the
run's task states and what the loop recorded in PostgreSQL and BentoML's store.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from training.airflow_local import DagTestResult, airflow_env, dag_test, migrate
from training.champion import bootstrap_champion
from training.settings import get_settings
from training.simulate import simulate_traffic
from training.store import connect
from training.synthetic import Scenario, generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_migrated: set[str] = set()


@pytest.fixture
def airflow(env: Path, airflow_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DRIFTLOOP_AIRFLOW_DATABASE_URL", airflow_database_url)
    if airflow_database_url not in _migrated:
        migrate(airflow_env(get_settings()))
        _migrated.add(airflow_database_url)
    return env


def _run(conf: dict[str, Any]) -> DagTestResult:
    result = dag_test(airflow_env(get_settings()), conf)
    assert result.state == "success", result.log[-4000:]
    return result


def _seed(scenario: Scenario, n: int = 4000) -> dict[str, Any]:
    settings = get_settings()
    champion = bootstrap_champion(settings, generate(3000, seed=1))
    end = datetime.now(UTC)
    with connect(settings.database_url or "") as conn:
        simulate_traffic(
            conn,
            model_tag=champion["champion_tag"],
            n=n,
            start=end - timedelta(days=8),
            end=end,
            drift=scenario,
            drift_at=0.125,
            seed=5,
        )
    return champion


def _query(sql: str, *params: object, url: str | None = None) -> list[tuple[Any, ...]]:
    with connect(url or get_settings().database_url or "") as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_drift_trains_validates_and_promotes_a_new_bento(
    airflow: Path, airflow_database_url: str
) -> None:
    """Also Airflow's side: each task pushed one XCom (its dataclass, not one per field), and the
    promotion updated the champion's Asset with the new champion's tags."""
    import bentoml

    first = _seed(Scenario(kind="mixed"))
    result = _run({"window_days": 7, "force": False})

    assert result.tasks["promote"] == "success"
    assert result.tasks["record_skip"] == "skipped"
    # DRIFTLOOP_CONTAINERIZE is off by default: the step passes through without an image.
    assert result.tasks["containerize"] == "success"
    assert _query("SELECT count(*) FROM deployments WHERE target = 'image'") == [(0,)]
    # DRIFTLOOP_ROLLOUT is off by default: no cluster is touched and the task says it was skipped.
    assert result.tasks["rollout"] == "skipped"
    [(decision, reason, share)] = _query("SELECT decision, reason, drift_share FROM drift_runs")
    assert decision == "retrain"
    assert "feature drift" in reason
    assert share >= 0.3
    versions = _query("SELECT version, status, bento_tag FROM model_versions ORDER BY version")
    assert [(v, s) for v, s, _ in versions] == [(1, "retired"), (2, "champion")]
    new_bento = versions[1][2]
    assert new_bento != first["bento_tag"]
    assert bentoml.bentos.get(new_bento).info.labels["model_tag"].startswith("churn.")
    [(status,)] = _query("SELECT status FROM training_runs WHERE run_key = %s", result.run_id)
    assert status == "promoted"
    report = _query("SELECT report_uri FROM drift_runs")[0][0]
    assert Path(report).read_text().lower().count("drift") > 10

    xcoms = _query(
        "SELECT task_id, key, value::text FROM xcom WHERE run_id = %s ORDER BY task_id",
        result.run_id,
        url=airflow_database_url,
    )
    keys = {(task, key) for task, key, _ in xcoms}
    for task in ("extract", "check_drift", "train_challenger", "validate", "promote"):
        assert (task, "return_value") in keys
    # Besides each task's one value, only Airflow's own branch bookkeeping (``skipmixin_key``).
    assert {key for _, key, _ in xcoms} == {"return_value", "skipmixin_key"}, keys
    check_drift = next(value for task, _, value in xcoms if task == "check_drift")
    assert "training.steps.Decision" in check_drift
    [(extra, source_task)] = _query(
        "SELECT e.extra, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id"
        " WHERE a.uri = 'driftloop://churn/champion' AND e.source_run_id = %s",
        result.run_id,
        url=airflow_database_url,
    )
    assert source_task == "promote"
    [(champion_tag,)] = _query("SELECT tag FROM model_versions WHERE status = 'champion'")
    assert extra == {
        "champion_tag": champion_tag,
        "bento_tag": new_bento,
        "version": 2,
        "changed": True,
    }


def test_no_drift_skips_with_its_reason(airflow: Path) -> None:
    _seed(Scenario(kind="none"))
    result = _run({"window_days": 7, "force": False})

    assert result.tasks["record_skip"] == "success", _query(
        "SELECT decision, reason FROM drift_runs"
    )
    assert result.tasks["train_challenger"] == "skipped"
    assert result.tasks["promote"] == "skipped"
    [(decision, reason)] = _query("SELECT decision, reason FROM drift_runs")
    assert decision == "skip"
    assert reason == "no drift and the champion holds its accuracy"
    assert _query("SELECT status, reason FROM training_runs WHERE run_key = %s", result.run_id) == [
        ("skipped", reason)
    ]
    assert _query("SELECT version, status FROM model_versions") == [(1, "champion")]


def test_too_few_labels_ends_green_with_the_skip_recorded(airflow: Path) -> None:
    bootstrap_champion(get_settings(), generate(3000, seed=1))
    result = _run({"window_days": 7, "force": True})

    assert result.tasks["record_skip"] == "success"
    [(status, reason)] = _query(
        "SELECT status, reason FROM training_runs WHERE run_key = %s", result.run_id
    )
    assert status == "skipped"
    assert reason == "too few labelled rows: 0 in the window, 500 needed"


def test_failed_gates_reject_the_challenger_and_keep_the_champion(
    airflow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion = _seed(Scenario(kind="none"))
    builtin = Path(__file__).parents[2] / "training" / "specs" / "churn.yaml"
    strict = tmp_path / "strict.yaml"
    strict.write_text(builtin.read_text().replace("min_auc_gain: 0.0", "min_auc_gain: 0.5"))
    monkeypatch.setenv("DRIFTLOOP_MODEL_SPEC", str(strict))

    result = _run({"window_days": 7, "force": True})

    assert result.tasks["validate"] == "success"
    assert result.tasks["build_bento"] == "skipped"
    assert result.tasks["containerize"] == "skipped"
    assert result.tasks["promote"] == "skipped"
    [(status, reason)] = _query(
        "SELECT status, reason FROM training_runs WHERE run_key = %s", result.run_id
    )
    assert status == "rejected"
    assert "vs required more than +0.5000" in reason
    versions = _query("SELECT tag, status, bento_tag FROM model_versions ORDER BY version")
    assert versions[0] == (champion["champion_tag"], "champion", champion["bento_tag"])
    assert versions[1][1:] == ("rejected", None)


def test_a_failing_step_is_retried_then_records_the_run_failed_and_rejects_its_candidate(
    airflow: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real failure late in the run: containerize with the docker backend and no Docker daemon
    (this machine has the client, not the daemon). It is tried twice (one retry, 1 s apart), and
    only then does the failure callback close the run. Before it, the run stayed ``trained``
    without a finish time and its model a ``candidate`` forever."""
    champion = _seed(Scenario(kind="mixed"))
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_RETRIES", "1")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_RETRY_DELAY_S", "1")
    monkeypatch.setenv("DRIFTLOOP_CONTAINERIZE", "true")
    monkeypatch.setenv("DRIFTLOOP_IMAGE_BACKEND", "docker")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")

    result = dag_test(airflow_env(get_settings()), {"window_days": 7, "force": False})

    assert result.state == "failed", result.log[-4000:]
    assert result.tasks["build_bento"] == "success"
    assert result.tasks["containerize"] == "failed"
    assert result.tries["containerize"] == 2
    assert result.tries["build_bento"] == 1
    [(status, reason, finished)] = _query(
        "SELECT status, reason, finished_at IS NOT NULL FROM training_runs WHERE run_key = %s",
        result.run_id,
    )
    assert status == "failed"
    assert reason.startswith("containerize failed: DriftloopError")
    assert finished
    versions = _query("SELECT tag, status FROM model_versions ORDER BY version")
    assert versions[0] == (champion["champion_tag"], "champion")
    assert versions[1][1] == "rejected"


# Put on the task process's PYTHONPATH: the first `registry.set_bento` (build_bento recording the
# Bento it has just built) meets PostgreSQL gone for a moment, as psycopg2 reports it; later calls
# go through. The marker file makes it once across processes.
_DATABASE_BLIP = """
import os
from pathlib import Path

import psycopg2
import training.registry as registry

_marker = Path(os.environ["DRIFTLOOP_TEST_FAULT_MARKER"])
_set_bento = registry.set_bento


def set_bento(conn, tag, bento_tag):
    if not _marker.exists():
        _marker.write_text(bento_tag)
        raise psycopg2.OperationalError("server closed the connection unexpectedly")
    return _set_bento(conn, tag, bento_tag)


registry.set_bento = set_bento
"""


def test_a_transient_database_error_is_retried_and_leaves_no_duplicate(
    airflow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_bento builds the Bento, then cannot record it (the database drops the connection);
    its retry finds the Bento that try built instead of building another, and the run ends as if
    nothing had happened: one training run, one new model version, one Bento, one promotion."""
    import bentoml

    first = _seed(Scenario(kind="mixed"))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_DATABASE_BLIP)
    marker = tmp_path / "fault-injected"
    monkeypatch.setenv("DRIFTLOOP_TEST_FAULT_MARKER", str(marker))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_RETRIES", "1")
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_RETRY_DELAY_S", "1")
    # The suite shares one BentoML home: count only what this run adds to it.
    models_before = {str(m.tag) for m in bentoml.models.list("churn")}

    result = _run({"window_days": 7, "force": False})

    assert marker.exists(), "the fault was never injected"
    assert result.tasks["build_bento"] == "success"
    assert result.tasks["promote"] == "success"
    assert {task: n for task, n in result.tries.items() if n > 1} == {"build_bento": 2}
    assert _query(
        "SELECT count(*), min(status) FROM training_runs WHERE run_key = %s", result.run_id
    ) == [(1, "promoted")]
    versions = _query("SELECT tag, status, bento_tag FROM model_versions ORDER BY version")
    assert [status for _, status, _ in versions] == ["retired", "champion"]
    challenger, _, bento_tag = versions[1]
    assert bento_tag == marker.read_text()
    model_label = challenger.replace(":", ".")
    built = [b for b in bentoml.bentos.list() if b.info.labels.get("model_tag") == model_label]
    assert [str(b.tag) for b in built] == [bento_tag]
    assert {str(m.tag) for m in bentoml.models.list("churn")} - models_before == {challenger}
    assert first["champion_tag"] != challenger
    assert _query("SELECT count(*) FROM promotions WHERE tag = %s", challenger) == [(1,)]
