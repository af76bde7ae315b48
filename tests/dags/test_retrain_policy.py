"""The retrain DAG's retry, timeout and Asset settings, as Airflow parses them (no database)."""

from __future__ import annotations

from pathlib import Path

from tests.dags.parsing import DAGS, parse_dag_file
from tests.specs import approval_spec

DAG_FILE = DAGS / "retrain.py"

_PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["driftloop_retrain__churn"]
task = dag.get_task("extract")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "retries": task.retries,
    "retry_delay": task.retry_delay.total_seconds(),
    "backoff": task.retry_exponential_backoff,
    "max_retry_delay": task.max_retry_delay.total_seconds(),
    "timeout": dag.dagrun_timeout.total_seconds(),
    "outlets": {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets},
    "approval": {
        "retries": dag.get_task("approve_promotion").retries,
        "response_timeout": dag.get_task("approve_promotion").response_timeout.total_seconds(),
        "options": dag.get_task("approve_promotion").options,
        "params": sorted(dag.get_task("approve_promotion").params),
        "promote_trigger_rule": dag.get_task("promote").trigger_rule.value,
        "after_needs_approval": sorted(dag.get_task("needs_approval").downstream_task_ids),
    },
}))
"""


def _parse(tmp_path: Path, **extra_env: str) -> dict[str, object]:
    return parse_dag_file(_PARSE, DAG_FILE, tmp_path, **extra_env)


def test_retries_back_off_and_the_timeout_come_from_the_settings(tmp_path: Path) -> None:
    defaults = _parse(tmp_path)
    assert defaults["errors"] == {}
    assert (defaults["retries"], defaults["retry_delay"], defaults["backoff"]) == (2, 60.0, 2.0)
    assert defaults["max_retry_delay"] == 1800.0
    assert defaults["timeout"] == 6 * 3600.0

    tuned = _parse(
        tmp_path,
        DRIFTLOOP_RETRAIN_RETRIES="0",
        DRIFTLOOP_RETRAIN_RETRY_DELAY_S="5",
        DRIFTLOOP_RETRAIN_TIMEOUT_HOURS="0.5",
    )
    assert (tuned["retries"], tuned["retry_delay"], tuned["timeout"]) == (0, 5.0, 1800.0)


def test_only_promote_updates_the_champions_asset(tmp_path: Path) -> None:
    assert _parse(tmp_path)["outlets"] == {"promote": ["driftloop://churn/champion"]}


def test_approval_waits_once_for_its_timeout_and_a_spec_that_asks_for_it_lengthens_the_run(
    tmp_path: Path,
) -> None:
    """The approval task is never retried (a second wait would double it); the run's timeout makes
    room for the wait only when the spec asks for approval (the param alone keeps the 6 h)."""
    defaults = _parse(tmp_path)
    assert defaults["approval"] == {
        "retries": 0,
        "response_timeout": 12 * 3600.0,
        "options": ["Approve", "Reject"],
        "params": ["comment"],
        "promote_trigger_rule": "none_failed_min_one_success",
        "after_needs_approval": ["approve_promotion", "promote"],
    }
    assert defaults["timeout"] == 6 * 3600.0

    asking = _parse(tmp_path, DRIFTLOOP_MODEL_SPEC=str(approval_spec(tmp_path, timeout_hours=2)))
    assert asking["approval"]["response_timeout"] == 2 * 3600.0  # type: ignore[index]
    assert asking["timeout"] == (6 + 2) * 3600.0
