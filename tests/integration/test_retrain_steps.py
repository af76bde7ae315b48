"""The retrain steps called directly (no Airflow) on a real store: what data cannot be judged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from training import retrain
from training.champion import bootstrap_champion
from training.settings import get_settings
from training.simulate import simulate_traffic
from training.store import connect
from training.synthetic import Scenario, generate

pytestmark = pytest.mark.integration


def test_a_holdout_of_one_class_is_a_recorded_skip_not_a_crash(env: Path) -> None:
    """A window whose newest labelled rows hold one class crashed ``validate`` ("evaluation data
    holds a single class") with no record at all; now the drift step skips, forced or not, and
    says why."""
    settings = get_settings()
    champion = bootstrap_champion(settings, generate(3000, seed=1))
    end = datetime.now(UTC)
    with connect(settings.database_url or "") as conn:
        simulate_traffic(
            conn,
            model_tag=champion["champion_tag"],
            n=3000,
            start=end - timedelta(days=8),
            end=end,
            drift=Scenario(kind="mixed"),
            seed=5,
        )
        with conn.cursor() as cur:
            # Every label of the newest half of the labelled rows becomes 0.
            cur.execute(
                "UPDATE feedback f SET label = 0 FROM (SELECT request_id FROM predictions p"
                " JOIN feedback USING (request_id) ORDER BY p.created_at DESC"
                " LIMIT (SELECT count(*) / 2 FROM feedback)) newest"
                " WHERE f.request_id = newest.request_id"
            )

    extracted = retrain.extract(settings, "churn", "one-class", end, 7)
    decision = retrain.check_drift(settings, "churn", "one-class", extracted, force=True)

    assert decision["decision"] == "skip"
    assert decision["reason"].startswith("cannot judge a challenger: the holdout (")
    assert "holds only class 0" in decision["reason"]
    with connect(settings.database_url or "") as conn, conn.cursor() as cur:
        cur.execute("SELECT decision, reason FROM drift_runs WHERE run_key = 'one-class'")
        assert cur.fetchone() == ("skip", decision["reason"])
