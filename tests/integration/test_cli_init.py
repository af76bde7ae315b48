"""``driftloop init`` as a user runs it: a spec drafted from a CSV or a SQL query, and its refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg2
import psycopg2.extras
import pytest

from tests.usertable import telco_table
from training.spec import load_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def _driftloop(models: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(models.parent / "home"),
        "DRIFTLOOP_MODELS": str(models),
        **extra_env,
    }
    env.pop("DRIFTLOOP_MODEL_SPEC", None)
    return subprocess.run(
        [sys.executable, "-m", "training.cli", "init", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def telco_csv(tmp_path: Path) -> Path:
    path = tmp_path / "Telco Churn.csv"
    telco_table(rows=1000).to_csv(path, index=False)
    return path


def test_init_writes_a_spec_for_a_csv(telco_csv: Path, models: Path) -> None:
    result = _driftloop(
        models, "--data", str(telco_csv), "--target", "Churn", "--time-column", "signup_date"
    )
    assert result.returncode == 0, result.stderr
    spec_path = models / "telco_churn.yaml"
    spec = load_spec(spec_path)
    assert spec.name == "telco_churn"
    assert (spec.target, spec.positive_label, spec.negative_label) == ("Churn", "Yes", "No")
    assert spec.time_column == "signup_date"
    assert "customerID" not in spec.feature_names
    lines = result.stdout.splitlines()
    total = next(line for line in lines if line.strip().startswith("TotalCharges"))
    assert "numeric" in total
    assert "nullable" in total
    senior = next(line for line in lines if line.strip().startswith("SeniorCitizen"))
    assert "categorical" in senior
    assert "2 categories" in senior
    assert "customerID: a distinct value per row (an id)" in result.stdout
    assert f"wrote {spec_path}" in result.stdout
    assert lines[-1] == f"next: driftloop train --model telco_churn --data '{telco_csv}'"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("Nope", "Telco Churn.csv has no target column 'Nope'"),
        ("Contract", "target 'Contract' has 3 values"),
        ("gender", "target 'gender' has values"),
    ],
)
def test_a_bad_target_is_one_line_and_exit_1(
    telco_csv: Path, models: Path, target: str, message: str
) -> None:
    result = _driftloop(models, "--data", str(telco_csv), "--target", target)
    assert result.returncode == 1
    assert result.stderr.startswith(f"driftloop: error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not models.exists() or not any(models.iterdir())


def test_an_unreadable_file_is_named(tmp_path: Path, models: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    result = _driftloop(models, "--data", str(missing), "--target", "Churn")
    assert result.returncode == 1
    assert result.stderr.strip() == f"driftloop: error: {missing}: no such file"


def test_an_existing_spec_needs_force(telco_csv: Path, tmp_path: Path, models: Path) -> None:
    out = tmp_path / "mine.yaml"
    out.write_text("# my edits\n")
    args = ("--data", str(telco_csv), "--target", "Churn", "--out", str(out))
    refused = _driftloop(models, *args)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"driftloop: error: {out} already exists; pass --force to overwrite it"
    )
    assert out.read_text() == "# my edits\n"

    forced = _driftloop(models, *args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_spec(out).name == "telco_churn"
    # Outside the models folder: train is pointed at the file itself.
    assert forced.stdout.splitlines()[-1].startswith(f"next: driftloop train --spec {out} ")


@pytest.fixture
def telco_query_table(database_url: str) -> Iterator[str]:
    """The telco table in PostgreSQL, its columns typed as a user's table would be."""
    table = f"telco_{uuid.uuid4().hex[:8]}"
    frame = telco_table(rows=400)
    # The public file's blank totals are NULLs in a database.
    totals = pd.to_numeric(frame["TotalCharges"], errors="coerce")
    rows = list(
        zip(
            frame["customerID"],
            frame["SeniorCitizen"].tolist(),
            frame["tenure"].tolist(),
            frame["Contract"],
            frame["MonthlyCharges"].tolist(),
            [None if pd.isna(total) else total for total in totals.tolist()],
            frame["signup_date"].dt.floor("us").dt.to_pydatetime(),
            frame["Churn"],
            strict=True,
        )
    )
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            f'CREATE TABLE {table} ("customerID" text, "SeniorCitizen" integer, tenure integer,'
            ' "Contract" text, "MonthlyCharges" double precision, "TotalCharges" numeric,'
            ' signup_date timestamptz, "Churn" text)'
        )
        psycopg2.extras.execute_values(cur, f"INSERT INTO {table} VALUES %s", rows)
    yield table
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE {table}")


@pytest.mark.parametrize("where", ["--url", "the store"])
def test_init_from_a_sql_query(
    telco_query_table: str, database_url: str, models: Path, where: str
) -> None:
    query = f"SELECT * FROM {telco_query_table} WHERE tenure >= 0"
    args = [
        "--sql",
        query,
        "--name",
        "telco-sql",
        "--target",
        "Churn",
        "--time-column",
        "signup_date",
    ]
    if where == "--url":
        # The store's URL leads nowhere: the query must run where --url says.
        nowhere = "postgresql://nobody@127.0.0.1:1/none"
        result = _driftloop(models, *args, "--url", database_url, DRIFTLOOP_DATABASE_URL=nowhere)
    else:
        result = _driftloop(models, *args, DRIFTLOOP_DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    spec = load_spec(models / "telco-sql.yaml")
    assert {f.name: f.type for f in spec.features} == {
        "SeniorCitizen": "categorical",
        "tenure": "numeric",
        "Contract": "categorical",
        "MonthlyCharges": "numeric",
        "TotalCharges": "numeric",
    }
    assert next(f for f in spec.features if f.name == "TotalCharges").nullable
    assert spec.positive_label == "Yes"
    assert (
        result.stdout.splitlines()[-1] == f"next: driftloop train --model telco-sql --sql '{query}'"
    )


def test_a_query_needs_a_name(models: Path) -> None:
    # Refused before connecting: this URL leads nowhere.
    nowhere = "postgresql://nobody@127.0.0.1:1/none"
    result = _driftloop(models, "--sql", "SELECT 1", "--url", nowhere, "--target", "x")
    assert result.returncode == 1
    assert "--name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
