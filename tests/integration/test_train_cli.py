"""``driftloop train`` from a user's table: holdouts, gates, and what it refuses.

Each test runs the real command (subprocess) against the session's PostgreSQL and BentoML store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import driftloop, query
from tests.usertable import telco_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = """\
name: {name}
target: Churn
positive_label: "Yes"
negative_label: "No"
{time}
features:
  - {{name: SeniorCitizen, type: categorical, categories: ["0", "1"]}}
  - {{name: tenure, type: numeric, min: 0, max: 80}}
  - {{name: InternetService, type: categorical, categories: ["DSL", "Fiber optic", "No"]}}
  - {{name: Contract, type: categorical, categories: ["Month-to-month", "One year", "Two year"]}}
  - {{name: MonthlyCharges, type: numeric, min: 0, max: 130}}
  - {{name: TotalCharges, type: numeric, min: 0, max: 10000, nullable: true}}
model:
  family: {family}
  params: {params}
gates:
  min_auc: {min_auc}
"""


def _spec(
    folder: Path,
    name: str,
    *,
    time: bool = True,
    family: str = "lightgbm",
    min_auc: float = 0.6,
) -> Path:
    params = "{n_estimators: 40, verbose: -1}" if family == "lightgbm" else "{}"
    path = folder / f"{name}.yaml"
    path.write_text(
        SPEC.format(
            name=name,
            time="time_column: signup_date" if time else "",
            family=family,
            params=params,
            min_auc=min_auc,
        )
    )
    return path


@pytest.fixture
def models(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("DRIFTLOOP_MODELS", str(folder))
    return folder


def test_parquet_without_time_column_trains_logistic_regression_with_nulls_on_a_random_holdout(
    models: Path, tmp_path: Path
) -> None:
    _spec(models, "telco_lr", time=False, family="logistic_regression")
    table = telco_table(2000, seed=3)
    table["TotalCharges"] = table["TotalCharges"].replace(" ", None).astype("float64")
    assert table["TotalCharges"].isna().any()
    data = tmp_path / "telco.parquet"
    table.to_parquet(data)

    result = driftloop("train", "--data", str(data))  # one model: --model may be left out

    assert result.returncode == 0, result.stdout + result.stderr
    assert "random holdout, 600 rows" in result.stdout
    assert "champion v1 of telco_lr: Bento telco_lr_service:" in result.stdout
    [(status, metrics)] = query("SELECT status, metrics FROM model_versions")
    assert status == "champion"
    assert metrics["roc_auc"] > 0.65


def test_a_first_model_below_its_floor_is_refused_and_nothing_is_registered(
    models: Path, tmp_path: Path
) -> None:
    _spec(models, "strict", min_auc=0.99)
    data = tmp_path / "telco.csv"
    telco_table(1500, seed=4).to_csv(data, index=False)

    result = driftloop("train", "--model", "strict", "--data", str(data))

    assert result.returncode == 1
    assert "driftloop: error: the first model of strict fails its gates: challenger ROC AUC" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert query("SELECT count(*) FROM model_versions") == [(0,)]


def test_a_new_model_by_hand_must_beat_the_champion(models: Path, tmp_path: Path) -> None:
    spec = _spec(models, "telco")
    data = tmp_path / "telco.csv"
    telco_table(2000, seed=5).to_csv(data, index=False)
    assert driftloop("train", "--data", str(data)).returncode == 0

    # The same data again, but the new model must now beat the champion by a margin it cannot.
    spec.write_text(spec.read_text() + "  min_auc_gain: 0.2\n")
    second = driftloop("train", "--model", "telco", "--data", str(data))

    assert second.returncode == 1, second.stdout + second.stderr
    assert "champion " in second.stdout
    assert "not promoted: ROC AUC gain over champion" in second.stdout
    versions = query("SELECT version, status FROM model_versions ORDER BY version")
    assert versions == [(1, "champion"), (2, "rejected")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"Churn": "Maybe"},
            "target 'Churn'",
        ),
        ({"signup_date": "last tuesday"}, "time_column 'signup_date'"),
    ],
)
def test_bad_rows_are_named(
    models: Path, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    _spec(models, "telco")
    table = telco_table(500, seed=6).astype({"signup_date": "string"})
    for column, value in change.items():
        table.loc[7, column] = value
    data = tmp_path / "telco.csv"
    table.to_csv(data, index=False)

    result = driftloop("train", "--data", str(data))

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_and_unknown_model_are_one_line_errors(models: Path, tmp_path: Path) -> None:
    _spec(models, "telco")
    missing = driftloop("train", "--data", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"driftloop: error: {tmp_path / 'nope.csv'}: no such file"
    unknown = driftloop("train", "--model", "fraud", "--data", str(tmp_path / "nope.csv"))
    assert unknown.returncode == 1
    assert "no model named 'fraud' (known: telco" in unknown.stderr


def test_train_from_a_sql_query(models: Path, database_url: str) -> None:
    """The table can live in PostgreSQL: --sql runs against --url (here the store's own database)."""
    import psycopg2

    _spec(models, "telco")
    table = telco_table(1500, seed=8)
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS customers")
        cur.execute(
            "CREATE TABLE customers (SeniorCitizen int, tenure int, InternetService text,"
            " Contract text, MonthlyCharges float8, TotalCharges text, signup_date timestamptz,"
            " Churn text)"
        )
        rows = (
            table[
                [
                    "SeniorCitizen",
                    "tenure",
                    "InternetService",
                    "Contract",
                    "MonthlyCharges",
                    "TotalCharges",
                    "signup_date",
                    "Churn",
                ]
            ]
            .astype(object)
            .values.tolist()
        )
        cur.executemany("INSERT INTO customers VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)

    result = driftloop(
        "train",
        "--sql",
        'SELECT seniorcitizen AS "SeniorCitizen", tenure, internetservice AS "InternetService",'
        ' contract AS "Contract", monthlycharges AS "MonthlyCharges",'
        ' NULLIF(trim(totalcharges), \'\') AS "TotalCharges", signup_date, churn AS "Churn"'
        " FROM customers",
        "--url",
        database_url,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "read 1500 rows x 8 columns from the query" in result.stdout
    assert "time-ordered holdout" in result.stdout
