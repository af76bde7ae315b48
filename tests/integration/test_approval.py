"""A person approves or rejects a promotion: the retrain DAG run for real with ``dag.test()``.

``dag.test()`` parks the ``approve_promotion`` task in Airflow's ``awaiting_input`` state and waits
for an answer from outside. A second process answers it as the REST API does
(``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/approve_promotion/-1/hitlDetails``): it
calls that endpoint's own function with a user, on the same metadata database. Or it lets the wait
run out and does what the scheduler does then (``dag.test()`` has no scheduler): runs the
scheduler's own sweep of timed-out ``awaiting_input`` tasks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_retrain_dag import (  # noqa: F401 - `airflow` is a fixture
    _query,
    _seed,
    airflow,
)
from tests.specs import approval_spec
from training.airflow_local import DagTestResult, airflow_env, dag_test
from training.settings import get_settings
from training.synthetic import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "driftloop_retrain__churn"

_ANSWER = """
import json, logging, sys, time, types
from datetime import UTC, datetime
from sqlalchemy import select
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

dag_id, answer, user, comment, timeout = sys.argv[1:6]
deadline = time.monotonic() + float(timeout)
asked = None
while asked is None and time.monotonic() < deadline:
    # The session commits when the block ends: the answer, and the task set to run again.
    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.task_id == "approve_promotion",
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
            )
        )
        if ti is not None and answer == "nobody":
            if ti.trigger_timeout is not None and ti.trigger_timeout < datetime.now(UTC):
                # Of the scheduler, the sweep uses only its logger.
                scheduler = types.SimpleNamespace(log=logging.getLogger("sweep"))
                SchedulerJobRunner.check_awaiting_input_timeouts(scheduler, session=session)
                asked = {"run_id": ti.run_id, "timeout": ti.trigger_timeout.isoformat()}
        elif ti is not None:
            detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
            asked = {"subject": detail.subject, "body": detail.body, "options": detail.options}
            update_hitl_detail(
                dag_id=dag_id,
                dag_run_id=ti.run_id,
                task_id=ti.task_id,
                update_hitl_detail_payload=UpdateHITLDetailPayload(
                    chosen_options=[answer], params_input={"comment": comment}
                ),
                user=SimpleAuthManagerUser(username=user, role="admin"),
                session=session,
                map_index=-1,
            )
            asked["run_id"] = ti.run_id
    time.sleep(1)
if asked is None:
    sys.exit(f"no approve_promotion task awaited input within {timeout} s")
print("ANSWERED=" + json.dumps(asked))
"""


def _run_and_answer(
    conf: dict[str, object], answer: str, comment: str
) -> tuple[DagTestResult, dict[str, object]]:
    """Run the DAG once while a second process answers its approval as user ``reviewer``:
    ``Approve`` or ``Reject`` with ``comment``, or ``nobody`` (the wait runs out)."""
    setup = airflow_env(get_settings())
    person = subprocess.Popen(
        [sys.executable, "-c", _ANSWER, DAG_ID, answer, "reviewer", comment, "840"],
        env=setup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Bounded: should nobody answer, dag.test() would wait for ever.
        result = dag_test(setup, conf, timeout=900)
    except BaseException:
        person.kill()
        raise
    finally:
        out, err = person.communicate(timeout=60)
    assert person.returncode == 0, err[-3000:]
    asked = json.loads(next(line for line in out.splitlines() if line.startswith("ANSWERED="))[9:])
    assert asked["run_id"] == result.run_id
    return result, asked


def test_an_approved_challenger_is_promoted_with_who_approved_it(
    airflow: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Approval switched on in the spec; the person sees what they approve, and the promotion
    record names them and their comment."""
    first = _seed(Scenario(kind="mixed"))
    monkeypatch.setenv("DRIFTLOOP_MODEL_SPEC", str(approval_spec(tmp_path)))

    result, asked = _run_and_answer({"window_days": 7}, "Approve", "looks right")
    assert result.state == "success", result.log[-4000:]

    assert result.tasks["needs_approval"] == "success"
    assert result.tasks["approve_promotion"] == "success"
    assert result.tasks["promote"] == "success"
    [(challenger,)] = _query("SELECT tag FROM model_versions WHERE version = 2")
    assert asked["subject"] == f"Promote {challenger} to champion of churn?"
    assert asked["options"] == ["Approve", "Reject"]
    assert "roc_auc" in str(asked["body"])
    assert first["champion_tag"] in str(asked["body"])
    assert _query("SELECT version, status FROM model_versions ORDER BY version") == [
        (1, "retired"),
        (2, "champion"),
    ]
    [(by, reason, action)] = _query(
        "SELECT by, reason, action FROM promotions WHERE tag = %s", challenger
    )
    assert (by, action) == ("reviewer", "retrain")
    assert reason == (
        f"passed its gates against {first['champion_tag']}; approved by reviewer: looks right"
        f" (run {result.run_id})"
    )
    [(status, run_reason)] = _query(
        "SELECT status, reason FROM training_runs WHERE run_key = %s", result.run_id
    )
    assert status == "promoted"
    assert run_reason == "promoted to champion v2, approved by reviewer: looks right"


def test_a_rejected_challenger_is_recorded_and_the_champion_stays(
    airflow: Path,  # noqa: F811 - the fixture imported above
) -> None:
    """Approval switched on for one run by its param (the spec leaves it off); the rejection ends
    the run green, with the run and the challenger ``rejected`` by the person, for their reason."""
    first = _seed(Scenario(kind="mixed"))

    result, _ = _run_and_answer(
        {"window_days": 7, "require_approval": True}, "Reject", "not before the audit"
    )
    assert result.state == "success", result.log[-4000:]

    assert result.tasks["approve_promotion"] == "success"
    assert result.tasks["promote"] == "skipped"
    assert result.tasks["rollout"] == "skipped"
    [(challenger,)] = _query("SELECT tag FROM model_versions WHERE version = 2")
    assert _query("SELECT tag, status FROM model_versions ORDER BY version") == [
        (first["champion_tag"], "champion"),
        (challenger, "rejected"),
    ]
    assert _query("SELECT count(*) FROM promotions WHERE tag = %s", challenger) == [(0,)]
    [(status, reason, finished)] = _query(
        "SELECT status, reason, finished_at IS NOT NULL FROM training_runs WHERE run_key = %s",
        result.run_id,
    )
    assert (status, reason, finished) == (
        "rejected",
        "rejected by reviewer: not before the audit",
        True,
    )


def test_nobody_answering_in_time_fails_the_run_and_rejects_the_challenger(
    airflow: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait runs out (18 s here) with no answer: the scheduler's sweep fails the task, which is
    not retried; its failure callback closes the run ``failed`` with the reason and rejects the
    challenger; the champion stays."""
    first = _seed(Scenario(kind="mixed"))
    monkeypatch.setenv("DRIFTLOOP_MODEL_SPEC", str(approval_spec(tmp_path, timeout_hours=0.005)))
    monkeypatch.setenv("DRIFTLOOP_RETRAIN_RETRIES", "1")

    result, _ = _run_and_answer({"window_days": 7}, "nobody", "")

    assert result.state == "failed", result.log[-4000:]
    assert result.tasks["approve_promotion"] == "failed"
    assert result.tries["approve_promotion"] == 1
    assert result.tasks["promote"] == "upstream_failed"
    [(status, reason, finished)] = _query(
        "SELECT status, reason, finished_at IS NOT NULL FROM training_runs WHERE run_key = %s",
        result.run_id,
    )
    assert (status, finished) == ("failed", True)
    assert reason == "approve_promotion failed: nobody answered within 0.005 h (approval timed out)"
    [(challenger,)] = _query("SELECT tag FROM model_versions WHERE version = 2")
    assert _query("SELECT tag, status FROM model_versions ORDER BY version") == [
        (first["champion_tag"], "champion"),
        (challenger, "rejected"),
    ]
