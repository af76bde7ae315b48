"""The retrain loop's state as the service publishes it, read from a real store: an empty one, one
with champions and runs, and one that stops answering."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bentos.loop_metrics import LoopMetrics
from tests.integration.test_service import _free_port
from training.loop_status import loop_status
from training.settings import Settings

pytestmark = pytest.mark.integration


def _series(text: str) -> dict[str, float]:
    """Each sample's value by its name (the state has one sample per name but the decision's)."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name != "driftloop_drift_decision"
    }


def test_loop_status_follows_promotions_and_finished_runs(store_url: str) -> None:
    """Nothing yet: no champion, no run, no check. Then the newest champion, the latest run that
    reached its end (a run still training does not count; another model's runs neither), and the
    latest drift check."""
    from training import registry
    from training.store import connect

    with connect(store_url) as conn:
        empty = loop_status(conn, "churn")
        assert (empty.champion_version, empty.last_success_at, empty.drift_share) == (None,) * 3

        for version in ("aaa", "bbb"):
            registry.register(
                conn, model_name="churn", tag=f"churn:{version}", metrics={}, train_data_uri="x"
            )
            registry.promote(conn, f"churn:{version}")
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO training_runs (model_name, run_key, status, reason, finished_at)"
                " VALUES ('churn', 'r1', 'skipped', 'no drift', now() - interval '2 days'),"
                " ('churn', 'r2', 'promoted', 'better', now() - interval '1 day'),"
                " ('churn', 'r3', 'trained', 'running', NULL),"
                " ('loans', 'r4', 'rejected', 'gate', now())"
                " RETURNING finished_at"
            )
            finished = [row[0] for row in cur.fetchall()]
            for share, decision in ((0.1, "skip"), (0.5, "retrain")):
                cur.execute(
                    "INSERT INTO drift_runs (model_name, run_key, window_start, window_end, rows,"
                    " labelled_rows, drift_share, drifted, decision)"
                    " VALUES ('churn', %s, now(), now(), 10, 10, %s, %s, %s)",
                    (decision, share, share > 0.3, decision),
                )
        conn.commit()
        status = loop_status(conn, "churn")

    assert status.champion_version == 2
    assert status.champion_model_version == "bbb"
    assert status.champion_promoted_at is not None
    assert status.last_success_at == finished[1]
    assert (status.drift_share, status.drifted, status.decision) == (0.5, True, "retrain")


def test_the_published_state_keeps_its_last_values_when_the_store_is_away(store_url: str) -> None:
    """Read through LoopMetrics (no cache): with the store, the champion and ok=1; once the store's
    address no longer answers, the same champion and ok=0."""
    from training import registry
    from training.store import connect

    with connect(store_url) as conn:
        registry.register(conn, model_name="churn", tag="churn:ccc", metrics={}, train_data_uri="x")
        promoted = registry.promote(conn, "churn:ccc").promoted_at
    assert promoted is not None
    settings = Settings(database_url=store_url, db_connect_timeout_s=2)
    published = LoopMetrics(store_url, settings, "churn", 0.3, ttl_s=0)

    assert _series(published.text()) == {
        "driftloop_loop_status_ok": 1.0,
        "driftloop_champion_version": 1.0,
        "driftloop_champion_info": 1.0,
        "driftloop_champion_promoted_timestamp_seconds": promoted.timestamp(),
        "driftloop_drift_share_threshold": 0.3,
    }
    published.database_url = f"postgresql://nobody@127.0.0.1:{_free_port()}/none"
    away = _series(published.text())
    assert away["driftloop_loop_status_ok"] == 0.0
    assert away["driftloop_champion_version"] == 1.0
