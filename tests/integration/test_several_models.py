"""Two models in one deployment: each its spec in the models folder, its champion trained from a
table, its retrain DAG (``driftloop_retrain__<name>``) run side by side with the other's, its rows.

The telco model starts the way a user's does: ``driftloop train`` from a labelled table with a
Yes/No target, then history whose labels arrive in the data's own words.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.cli import driftloop, query
from tests.usertable import telco_table
from training.airflow_local import DagTestResult, airflow_env, dag_test, migrate
from training.settings import get_settings
from training.store import connect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TELCO_SPEC = """\
name: telco
description: Customers who leave (the public telco table's shape).
target: Churn
positive_label: "Yes"
negative_label: "No"
time_column: signup_date
features:
  - {name: gender, type: categorical, categories: ["Female", "Male"]}
  - {name: SeniorCitizen, type: categorical, categories: ["0", "1"]}
  - {name: Partner, type: categorical, categories: ["No", "Yes"]}
  - {name: tenure, type: numeric, min: 0, max: 80}
  - {name: InternetService, type: categorical, categories: ["DSL", "Fiber optic", "No"]}
  - {name: Contract, type: categorical, categories: ["Month-to-month", "One year", "Two year"]}
  - name: PaymentMethod
    type: categorical
    categories: ["Electronic check", "Mailed check", "Bank transfer (automatic)",
                 "Credit card (automatic)"]
  - {name: MonthlyCharges, type: numeric, min: 0, max: 130}
  - {name: TotalCharges, type: numeric, min: 0, max: 10000, nullable: true}
model:
  family: lightgbm
  params: {n_estimators: 60, learning_rate: 0.1, num_leaves: 15, random_state: 7, verbose: -1}
gates:
  min_labelled_rows: 300
  min_auc: 0.6
  # The mechanics are under test here, not whether a retrain wins.
  min_auc_gain: -0.2
  max_log_loss_increase: 0.5
"""


@pytest.fixture
def deployment(
    env: Path, tmp_path: Path, airflow_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    builtin = Path(__file__).parents[2] / "training" / "specs" / "churn.yaml"
    (models / "churn.yaml").write_text(builtin.read_text())
    (models / "telco.yaml").write_text(TELCO_SPEC)
    monkeypatch.setenv("DRIFTLOOP_MODELS", str(models))
    monkeypatch.setenv("DRIFTLOOP_AIRFLOW_DATABASE_URL", airflow_database_url)
    migrate(airflow_env(get_settings()))
    return models


def _telco_traffic(champion_tag: str, end: datetime) -> int:
    """A week of telco predictions by the champion, most labelled in the data's own words."""
    from training import registry
    from training.evaluate import score
    from training.store import PredictionRecord, record_feedback_many, record_predictions

    pipeline, spec = registry.load_model(champion_tag)
    frame = telco_table(1500, seed=9, start="2026-06-01")
    # A shifted population: the drift the DAG must see.
    frame["MonthlyCharges"] = (frame["MonthlyCharges"] * 1.1).clip(upper=130).round(2)
    frame["TotalCharges"] = pd.to_numeric(frame["TotalCharges"], errors="coerce")
    scores = score(pipeline, spec, frame)
    times = pd.date_range(end - timedelta(days=7), end - timedelta(hours=1), periods=len(frame))
    records = []
    for i, (row, s, at) in enumerate(zip(frame.to_dict("records"), scores, times, strict=True)):
        features = {f: row[f] for f in spec.feature_names}
        features["SeniorCitizen"] = str(features["SeniorCitizen"])
        if pd.isna(features["TotalCharges"]):
            features["TotalCharges"] = None
        records.append(
            PredictionRecord(
                f"telco-{i}",
                "telco",
                champion_tag.split(":")[1],
                features,
                float(s),
                int(s >= 0.5),
                at.to_pydatetime(),
            )
        )
    labelled = [
        (f"telco-{i}", spec.label_of(row["Churn"]), None)
        for i, row in enumerate(frame.to_dict("records"))
        if i < len(frame) * 0.9
    ]
    with connect(get_settings().database_url or "") as conn:
        record_predictions(conn, records)
        record_feedback_many(conn, labelled)
    return len(records)


def test_two_models_train_and_retrain_side_by_side(deployment: Path, tmp_path: Path) -> None:
    import bentoml

    from training.champion import bootstrap_champion
    from training.models import select_spec
    from training.simulate import simulate_traffic
    from training.synthetic import Scenario, generate

    settings = get_settings()
    # Several models: the CLI refuses to guess.
    ambiguous = driftloop("serve")
    assert ambiguous.returncode == 1
    assert "2 models (churn, telco); say which with --model" in ambiguous.stderr

    # The telco champion comes from a table with the CLI, as a user's first model does.
    table = tmp_path / "telco.csv"
    telco_table(3000, seed=1).to_csv(table, index=False)
    trained = driftloop("train", "--model", "telco", "--data", str(table))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "time-ordered holdout" in trained.stdout
    assert "driftloop serve --model telco" in trained.stdout
    [(telco_tag, telco_bento)] = query(
        "SELECT tag, bento_tag FROM model_versions WHERE model_name = 'telco'"
    )
    assert telco_bento.startswith("telco_service:")
    assert bentoml.bentos.get(telco_bento).info.args["model_tag"] == telco_tag

    churn = bootstrap_champion(
        settings, generate(3000, seed=1), spec=select_spec(settings, "churn")
    )
    end = datetime.now(UTC)
    with connect(settings.database_url or "") as conn:
        simulate_traffic(
            conn,
            model_tag=churn["champion_tag"],
            n=3000,
            start=end - timedelta(days=8),
            end=end,
            drift=Scenario(kind="none"),
            seed=5,
        )
    _telco_traffic(telco_tag, end)

    setup = airflow_env(settings)
    assert set(setup.models) == {"churn", "telco"}
    # As Airflow's dag-processor would before any run: otherwise the two dag.test() processes
    # race to insert both DAGs' first rows (a harness race, not one a scheduler has).
    reserialized = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"],
        env=setup.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert reserialized.returncode == 0, reserialized.stderr[-2000:]
    with ThreadPoolExecutor(2) as pool:
        churn_run = pool.submit(dag_test, setup, {"window_days": 7, "force": False}, "churn")
        telco_run = pool.submit(dag_test, setup, {"window_days": 7, "force": True}, "telco")
        results: dict[str, DagTestResult] = {
            "churn": churn_run.result(),
            "telco": telco_run.result(),
        }
    for name, result in results.items():
        assert result.state == "success", (name, result.log[-3000:])

    assert results["churn"].tasks["record_skip"] == "success"
    assert results["telco"].tasks["promote"] == "success"
    runs = query("SELECT model_name, decision FROM drift_runs ORDER BY model_name")
    assert runs == [("churn", "skip"), ("telco", "retrain")]
    versions = query(
        "SELECT model_name, version, status FROM model_versions ORDER BY model_name, version"
    )
    assert versions == [
        ("churn", 1, "champion"),
        ("telco", 1, "retired"),
        ("telco", 2, "champion"),
    ]

    # The training-data policy: the challenger trained on the window plus the champion's rows,
    # and was judged only on rows the champion never trained on.
    from training.runs import read_frame

    [(first_uri,)] = query("SELECT train_data_uri FROM model_versions WHERE tag = %s", telco_tag)
    [(second_uri,)] = query(
        "SELECT train_data_uri FROM model_versions WHERE model_name = 'telco' AND version = 2"
    )
    first_rows = set(read_frame(settings, first_uri)["request_id"])
    second = read_frame(settings, second_uri)
    assert second["request_id"].isin(first_rows).sum() > 0
    assert second["request_id"].str.startswith("telco-").sum() > 0
    assert set(second["Churn"].unique()) == {0, 1}
