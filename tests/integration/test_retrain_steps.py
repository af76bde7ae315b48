"""The retrain steps called directly (no Airflow) on a real store and BentoML store: what data cannot
be judged, every step run twice for one run key (a cleared task), and runs a crash left open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from training import retrain
from training.champion import bootstrap_champion
from training.retrain import StepContext
from training.runs import record_failure
from training.settings import get_settings
from training.simulate import simulate_traffic
from training.store import connect
from training.synthetic import Scenario, generate

pytestmark = pytest.mark.integration


def _seed(scenario: Scenario, n: int = 4000) -> tuple[dict[str, Any], datetime]:
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
    return champion, end


def _query(sql: str, *params: object) -> list[tuple[Any, ...]]:
    with connect(get_settings().database_url or "") as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_a_holdout_of_one_class_is_a_recorded_skip_not_a_crash(env: Path) -> None:
    """A window whose newest labelled rows hold one class crashed ``validate`` ("evaluation data
    holds a single class") with no record at all; now the drift step skips, forced or not, and
    says why."""
    _, end = _seed(Scenario(kind="mixed"))
    with connect(get_settings().database_url or "") as conn, conn.cursor() as cur:
        # Every label of the newest half of the labelled rows becomes 0.
        cur.execute(
            "UPDATE feedback f SET label = 0 FROM (SELECT request_id FROM predictions p"
            " JOIN feedback USING (request_id) ORDER BY p.created_at DESC"
            " LIMIT (SELECT count(*) / 2 FROM feedback)) newest"
            " WHERE f.request_id = newest.request_id"
        )

    ctx = StepContext.build(get_settings(), "churn", "one-class")
    decision = retrain.check_drift(ctx, retrain.extract(ctx, end, 7), force=True)

    assert decision.decision == "skip"
    assert decision.reason.startswith("cannot judge a challenger: the holdout (")
    assert "holds only class 0" in decision.reason
    assert _query("SELECT decision, reason FROM drift_runs WHERE run_key = 'one-class'") == [
        ("skip", decision.reason)
    ]


def _bentoml_counts() -> tuple[int, int]:
    import bentoml

    return len(bentoml.models.list("churn")), len(bentoml.bentos.list())


def test_every_step_run_twice_for_one_run_key_adds_nothing_the_first_did_not(env: Path) -> None:
    """Clearing a task (or the whole run) runs its step again with the same run key: no second
    drift run, training run, model version, BentoML model, Bento or promotion."""
    champion, end = _seed(Scenario(kind="mixed"))
    ctx = StepContext.build(get_settings(), "churn", "manual__twice")
    models_before, bentos_before = _bentoml_counts()

    extracted = [retrain.extract(ctx, end, 7) for _ in range(2)]
    assert extracted[0] == extracted[1]
    decisions = [retrain.check_drift(ctx, extracted[0]) for _ in range(2)]
    assert decisions[0].decision == "retrain"
    assert decisions[0].drift_run_id == decisions[1].drift_run_id
    trained = [retrain.train_challenger(ctx, decisions[0], extracted[0].dataset_uri)]
    trained.append(retrain.train_challenger(ctx, decisions[0], extracted[0].dataset_uri))
    assert (trained[0].reused, trained[1].reused) == (False, True)
    assert trained[0].challenger_tag == trained[1].challenger_tag
    assert trained[0].training_run_id == trained[1].training_run_id
    validations = [retrain.validate(ctx, trained[1]) for _ in range(2)]
    assert validations[0] == validations[1]
    assert validations[0].passed, validations[0].reason
    built = [retrain.build_challenger_bento(ctx, trained[0].challenger_tag) for _ in range(2)]
    assert (built[0].reused, built[1].reused) == (False, True)
    assert built[0].bento_tag == built[1].bento_tag
    promoted = [retrain.promote(ctx, retrain.containerize_bento(ctx, b)) for b in built]
    assert (promoted[0].changed, promoted[1].changed) == (True, False)
    assert promoted[1].previous_champion == champion["champion_tag"]
    assert promoted[0].version == promoted[1].version == 2
    # A validate cleared after the promotion judges against the champion it replaced.
    assert retrain.validate(ctx, trained[0]).champion_tag == champion["champion_tag"]

    assert _query("SELECT count(*) FROM drift_runs") == [(1,)]
    assert _query("SELECT run_key, status FROM training_runs WHERE run_key <> 'bootstrap'") == [
        ("manual__twice", "promoted")
    ]
    assert _query("SELECT version, status FROM model_versions ORDER BY version") == [
        (1, "retired"),
        (2, "champion"),
    ]
    assert _query("SELECT tag, previous_tag FROM promotions ORDER BY id")[-1] == (
        trained[0].challenger_tag,
        champion["champion_tag"],
    )
    assert _query("SELECT count(*) FROM promotions") == [(2,)]  # bootstrap's, then this run's
    assert _bentoml_counts() == (models_before + 1, bentos_before + 1)


def test_a_run_cleared_after_a_failure_trains_no_second_challenger(env: Path) -> None:
    """A failed task rejects the run's candidate; clearing the run tries again with that same
    challenger (a candidate once more) instead of training another."""
    _, end = _seed(Scenario(kind="mixed"))
    ctx = StepContext.build(get_settings(), "churn", "manual__cleared")
    extracted = retrain.extract(ctx, end, 7)
    decision = retrain.check_drift(ctx, extracted)
    first = retrain.train_challenger(ctx, decision, extracted.dataset_uri)
    assert record_failure(ctx.url, "churn", ctx.run_key, "build_bento", "OSError: disk full")
    assert _query("SELECT status FROM model_versions WHERE tag = %s", first.challenger_tag) == [
        ("rejected",)
    ]

    again = retrain.train_challenger(ctx, decision, extracted.dataset_uri)

    assert again.challenger_tag == first.challenger_tag
    assert again.reused
    assert _query("SELECT status FROM model_versions WHERE tag = %s", first.challenger_tag) == [
        ("candidate",)
    ]
    assert _query(
        "SELECT status, finished_at FROM training_runs WHERE run_key = %s", ctx.run_key
    ) == [("trained", None)]
    assert _query("SELECT count(*) FROM model_versions") == [(2,)]


def test_the_next_run_closes_training_runs_a_crash_left_open(env: Path) -> None:
    """Hand-made rows as a crash leaves them (``trained``, no finish time, the model a
    ``candidate``): the next run's first step fails the one older than the timeout, with the
    reason, and rejects its candidate; a run younger than the timeout may still be working."""
    champion, end = _seed(Scenario(kind="none"), n=600)
    with connect(get_settings().database_url or "") as conn, conn.cursor() as cur:
        for key, age in (("crashed", "7 hours"), ("recent", "1 hour")):
            cur.execute(
                "INSERT INTO training_runs (model_name, run_key, status, reason, challenger_tag,"
                " created_at) VALUES ('churn', %s, 'trained', 'drift', %s,"
                " now() - %s::interval) RETURNING id",
                (key, f"churn:{key}", age),
            )
            (run_id,) = cur.fetchone()  # type: ignore[misc]
            cur.execute(
                "INSERT INTO model_versions (model_name, version, tag, status, metrics,"
                " train_data_uri, training_run_id) VALUES ('churn', %s, %s, 'candidate', '{}',"
                " 'x', %s)",
                (2 if key == "crashed" else 3, f"churn:{key}", run_id),
            )

    ctx = StepContext.build(get_settings(), "churn", "scheduled__next")
    assert ctx.settings.retrain_timeout_hours == 6
    retrain.extract(ctx, end, 7)

    rows = _query(
        "SELECT run_key, status, reason, finished_at IS NOT NULL FROM training_runs"
        " WHERE run_key IN ('crashed', 'recent') ORDER BY run_key"
    )
    assert rows == [
        (
            "crashed",
            "failed",
            "interrupted: no step finished it within 6:00:00 (closed by run scheduled__next)",
            True,
        ),
        ("recent", "trained", "drift", False),
    ]
    assert _query("SELECT tag, status FROM model_versions ORDER BY version") == [
        (champion["champion_tag"], "champion"),
        ("churn:crashed", "rejected"),
        ("churn:recent", "candidate"),
    ]
