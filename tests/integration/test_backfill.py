"""``driftloop backfill`` against a real store: history keeps its own times and labels, loads once,
and a table with a bad row stores nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.integration.cli import driftloop
from tests.usertable import telco_table
from training import registry
from training.backfill import BackfillResult, backfill
from training.extract import extract_window
from training.history import BackfillError
from training.spec import ModelSpec, load_spec
from training.store import connect
from training.train import fit

pytestmark = pytest.mark.integration

TELCO_SPEC = """\
name: telco
target: Churn
positive_label: "Yes"
negative_label: "No"
time_column: signup_date
features:
  - {name: gender, type: categorical, categories: ["Female", "Male"]}
  - {name: SeniorCitizen, type: numeric, min: 0, max: 1}
  - {name: Partner, type: categorical, categories: ["No", "Yes"]}
  - {name: tenure, type: numeric, min: 0, max: 100}
  - {name: InternetService, type: categorical, categories: ["DSL", "Fiber optic", "No"]}
  - {name: Contract, type: categorical, categories: ["Month-to-month", "One year", "Two year"]}
  - name: PaymentMethod
    type: categorical
    categories: ["Electronic check", "Mailed check", "Bank transfer (automatic)",
                 "Credit card (automatic)"]
  - {name: MonthlyCharges, type: numeric, min: 0, max: 200}
  - {name: TotalCharges, type: numeric, min: 0, nullable: true}
model:
  family: lightgbm
  params: {n_estimators: 30, num_leaves: 7, random_state: 7, verbose: -1, n_jobs: 1}
"""
ROWS = 300
# telco_table's signup dates fall in the 180 days from 2026-01-01.
HISTORY_START = datetime(2026, 1, 1, tzinfo=UTC)
HISTORY_END = datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "telco.yaml"
    path.write_text(TELCO_SPEC)
    return path


@pytest.fixture(scope="module")
def spec(spec_path: Path) -> ModelSpec:
    return load_spec(spec_path)


@pytest.fixture(scope="module")
def model_tag(spec: ModelSpec) -> str:
    """A telco model in the BentoML model store (trained once for the module)."""
    pipeline = fit(spec, telco_table(1500, seed=1))
    return registry.save_model(spec, pipeline, metrics={}, train_data_uri="memory://test")


@pytest.fixture
def champion(store_url: str, model_tag: str, spec: ModelSpec) -> registry.ModelVersion:
    """The model registered and promoted in this test's (empty) store."""
    with connect(store_url) as conn:
        registry.register(conn, model_name=spec.name, tag=model_tag, metrics={}, train_data_uri="")
        return registry.promote(conn, model_tag)


@pytest.fixture
def history() -> pd.DataFrame:
    return telco_table(ROWS, seed=3)


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _load(store_url: str, spec: ModelSpec, **tables: Any) -> BackfillResult:
    with connect(store_url) as conn:
        return backfill(conn, spec, **tables)


def _rows(store_url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with connect(store_url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _counts(store_url: str) -> tuple[int, int]:
    ((predictions, feedback),) = _rows(
        store_url, "SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM feedback)"
    )
    return predictions, feedback


def test_one_table_keeps_its_times_and_labels(
    store_url: str,
    spec: ModelSpec,
    champion: registry.ModelVersion,
    history: pd.DataFrame,
    tmp_path: Path,
) -> None:
    result = _load(store_url, spec, data=_csv(history, tmp_path / "history.csv"))

    assert (result.predictions_read, result.predictions_stored) == (ROWS, ROWS)
    assert result.predictions_already_stored == 0
    assert (result.scored, result.scored_by) == (ROWS, champion.tag)
    assert (result.labels_read, result.labels_stored, result.orphan_labels) == (ROWS, ROWS, 0)
    # PostgreSQL keeps microseconds; telco_table's times have nanoseconds.
    times = history["signup_date"].dt.floor("us")
    assert result.first_at == times.min().to_pydatetime()
    assert result.last_at == times.max().to_pydatetime()
    assert result.naive_timestamps == 0

    with connect(store_url) as conn:
        window = extract_window(conn, spec, HISTORY_START, HISTORY_END)
        before = extract_window(conn, spec, datetime(2025, 1, 1, tzinfo=UTC), HISTORY_START)
    assert before.empty
    assert len(window) == ROWS
    expected = history.assign(created_at=times).sort_values("created_at")
    stored = window.sort_values("created_at")
    assert stored["created_at"].tolist() == expected["created_at"].tolist()
    assert stored["Churn"].tolist() == (expected["Churn"] == "Yes").astype(int).tolist()
    assert stored["tenure"].tolist() == expected["tenure"].astype(float).tolist()
    blanks = (expected["TotalCharges"] == " ").to_numpy()
    assert blanks.any()
    assert stored["TotalCharges"].isna().to_numpy().tolist() == blanks.tolist()
    assert set(stored["model_version"]) == {champion.tag.partition(":")[2]}
    assert stored["score"].between(0, 1).all()
    assert stored["score"].nunique() > 10

    raw = _rows(store_url, "SELECT label, raw_label, count(*) FROM feedback GROUP BY 1, 2")
    assert {(label, text) for label, text, _ in raw} == {(1, "Yes"), (0, "No")}
    times = _rows(
        store_url,
        "SELECT count(*) FROM feedback f JOIN predictions p USING (request_id)"
        " WHERE f.received_at = p.created_at",
    )
    assert times == [(ROWS,)]  # a label without received_at is as old as its prediction


def test_a_second_run_stores_nothing_new(
    store_url: str,
    spec: ModelSpec,
    champion: registry.ModelVersion,
    history: pd.DataFrame,
    tmp_path: Path,
) -> None:
    path = _csv(history, tmp_path / "history.csv")
    _load(store_url, spec, data=path)
    scores = _rows(store_url, "SELECT request_id, score FROM predictions ORDER BY 1")
    # Rows already stored are not scored again: a re-run works without a champion.
    with connect(store_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE model_versions SET status = 'retired'")

    again = _load(store_url, spec, data=path, chunk_rows=70)

    assert again.nothing_new
    assert (again.predictions_stored, again.predictions_already_stored) == (0, ROWS)
    assert (again.scored, again.scored_by) == (0, None)
    assert (again.labels_stored, again.labels_updated, again.labels_unchanged) == (0, 0, ROWS)
    assert _counts(store_url) == (ROWS, ROWS)
    assert _rows(store_url, "SELECT request_id, score FROM predictions ORDER BY 1") == scores
    assert _rows(store_url, "SELECT max(revisions) FROM feedback") == [(0,)]


def test_predictions_and_labels_tables_with_their_own_ids(
    store_url: str,
    spec: ModelSpec,
    champion: registry.ModelVersion,
    history: pd.DataFrame,
    tmp_path: Path,
) -> None:
    given = history.index % 2 == 0
    predictions = history.drop(columns=["Churn"]).rename(columns={"customerID": "request_id"})
    predictions["score"] = pd.Series(0.25, index=history.index).where(given)
    predictions["model_version"] = pd.Series("v0", index=history.index).where(given)
    labels = pd.DataFrame(
        {
            "request_id": [*history["customerID"], "nobody-1", "nobody-2"],
            "Churn": [*history["Churn"], "Yes", "No"],
            "received_at": "2026-08-01T12:00:00+02:00",
        }
    )

    result = _load(
        store_url,
        spec,
        predictions=_csv(predictions, tmp_path / "predictions.csv"),
        labels=_csv(labels, tmp_path / "labels.csv"),
    )

    assert (result.predictions_stored, result.scored) == (ROWS, ROWS - int(given.sum()))
    assert (result.labels_read, result.labels_stored) == (ROWS + 2, ROWS)
    assert result.orphan_labels == 2
    assert result.orphan_examples == ("nobody-1", "nobody-2")
    stored = dict(
        _rows(store_url, "SELECT request_id, (score, model_version)::text FROM predictions")
    )
    assert set(stored) == set(history["customerID"])
    given_ids = set(history.loc[given, "customerID"])
    assert {stored[i] for i in given_ids} == {"(0.25,v0)"}
    version = champion.tag.partition(":")[2]
    assert all(stored[i].endswith(f",{version})") for i in set(stored) - given_ids)
    assert _rows(store_url, "SELECT DISTINCT received_at FROM feedback") == [
        (datetime(2026, 8, 1, 10, tzinfo=UTC),)
    ]
    assert _rows(
        store_url, "SELECT count(*) FROM feedback WHERE request_id LIKE %s", "nobody%"
    ) == [(0,)]


def test_a_labels_table_corrects_stored_labels(
    store_url: str,
    spec: ModelSpec,
    champion: registry.ModelVersion,
    history: pd.DataFrame,
    tmp_path: Path,
) -> None:
    history = history.rename(columns={"customerID": "request_id"})
    _load(store_url, spec, data=_csv(history, tmp_path / "history.csv"))
    first = history["request_id"].iloc[0]
    flipped = "No" if history["Churn"].iloc[0] == "Yes" else "Yes"
    corrections = pd.DataFrame({"request_id": history["request_id"], "Churn": history["Churn"]})
    corrections.loc[0, "Churn"] = flipped

    result = _load(store_url, spec, labels=_csv(corrections, tmp_path / "labels.csv"))

    assert (result.labels_stored, result.labels_updated, result.labels_unchanged) == (
        0,
        1,
        ROWS - 1,
    )
    assert result.predictions_read == 0
    assert _rows(
        store_url,
        "SELECT label, raw_label, revisions, key_id FROM feedback WHERE request_id = %s",
        first,
    ) == [(int(flipped == "Yes"), flipped, 1, None)]
    # The label it replaced is kept, as a correction through the service keeps it; the others,
    # unchanged, leave no history.
    original = history["Churn"].iloc[0]
    assert _rows(
        store_url, "SELECT request_id, label, raw_label, replaced_by FROM feedback_history"
    ) == [(first, int(original == "Yes"), original, None)]
    # A correction with no received_at of its own is made now, after the label it replaced.
    ((replaced_at, corrected_at),) = _rows(
        store_url,
        "SELECT h.received_at, f.received_at FROM feedback_history h"
        " JOIN feedback f USING (request_id, predicted_at) WHERE h.request_id = %s",
        first,
    )
    assert corrected_at > replaced_at


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("tenure", "", "tenure: is missing and the spec does not allow nulls here"),
        ("tenure", "500", "tenure: 500.0 is above the maximum 100.0"),
        ("MonthlyCharges", "cheap", "MonthlyCharges: 'cheap' is not a number"),
        ("signup_date", "yesterday", "signup_date: 'yesterday' is not a timestamp"),
        ("Churn", "Maybe", "Churn: label 'Maybe' is neither 'Yes' (positive) nor 'No'"),
    ],
)
def test_a_bad_row_refuses_the_whole_table(
    store_url: str,
    spec: ModelSpec,
    champion: registry.ModelVersion,
    history: pd.DataFrame,
    tmp_path: Path,
    column: str,
    value: str,
    problem: str,
) -> None:
    table = history.astype({column: object})
    table.loc[ROWS - 1, column] = value  # the last row: earlier chunks must not be stored either
    path = _csv(table, tmp_path / "history.csv")

    with pytest.raises(BackfillError) as refused:
        _load(store_url, spec, data=path, chunk_rows=50)

    message = str(refused.value)
    assert message.startswith(f"{path}: 1 problem(s), nothing stored: row {ROWS} {problem}")
    assert "\n" not in message
    assert _counts(store_url) == (0, 0)


def test_many_bad_rows_list_the_first_few_and_count_the_rest(
    store_url: str, spec: ModelSpec, history: pd.DataFrame
) -> None:
    table = history.astype({"tenure": object})
    table.loc[10:, "tenure"] = -1

    with pytest.raises(BackfillError) as refused:
        _load(store_url, spec, data=table)

    message = str(refused.value)
    assert message.startswith(f"data: {ROWS - 10} problem(s), nothing stored: row 11 tenure:")
    assert "row 15 tenure" in message
    assert "row 16" not in message
    assert message.endswith(f"and {ROWS - 15} more")


def test_unscored_rows_without_a_champion_say_to_train_first(
    store_url: str, spec: ModelSpec, history: pd.DataFrame
) -> None:
    with pytest.raises(BackfillError, match=r"run `driftloop train` first, or give the table"):
        _load(store_url, spec, data=history)
    assert _counts(store_url) == (0, 0)


def test_scored_rows_need_no_champion(
    store_url: str, spec: ModelSpec, history: pd.DataFrame
) -> None:
    result = _load(store_url, spec, data=history.assign(score=0.5))
    assert (result.predictions_stored, result.scored) == (ROWS, 0)
    assert _rows(store_url, "SELECT DISTINCT model_version, label FROM predictions") == [
        ("backfill", 1)  # the spec's threshold 0.5
    ]


@pytest.fixture
def cli_env(env: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``env`` fixture's store and data dir, with the telco spec as the one model."""
    monkeypatch.setenv("DRIFTLOOP_MODEL_SPEC", str(spec_path))


def test_cli_prints_a_summary_and_says_when_nothing_is_new(
    cli_env: None,
    store_url: str,
    champion: registry.ModelVersion,
    history: pd.DataFrame,
    tmp_path: Path,
) -> None:
    path = _csv(history, tmp_path / "history.csv")

    first = driftloop("backfill", "--data", str(path))
    assert first.returncode == 0, first.stderr
    assert "backfill of telco" in first.stdout
    assert f"{ROWS} read, 2026-01-01" in first.stdout
    assert f"{ROWS} stored, 0 already there" in first.stdout
    assert f"scored       {ROWS} by champion {champion.tag}" in first.stdout
    assert f"labels       {ROWS} read: {ROWS} stored" in first.stdout
    assert "nothing new" not in first.stdout

    second = driftloop("backfill", "--data", str(path))
    assert second.returncode == 0, second.stderr
    assert f"0 stored, {ROWS} already there" in second.stdout
    assert "nothing new: everything read was already in the store" in second.stdout
    assert _counts(store_url) == (ROWS, ROWS)


def test_cli_refuses_a_bad_table_in_one_line(
    cli_env: None,
    store_url: str,
    champion: registry.ModelVersion,
    history: pd.DataFrame,
    tmp_path: Path,
) -> None:
    table = history.astype({"tenure": object})
    table.loc[2, "tenure"] = ""
    path = _csv(table, tmp_path / "history.csv")

    result = driftloop("backfill", "--data", str(path))

    assert result.returncode == 1
    assert result.stderr.startswith(
        f"driftloop: error: {path}: 1 problem(s), nothing stored: row 3 tenure: is missing"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert _counts(store_url) == (0, 0)


def test_cli_refuses_data_with_labels(cli_env: None, tmp_path: Path) -> None:
    result = driftloop(
        "backfill", "--data", str(tmp_path / "a.csv"), "--labels", str(tmp_path / "b.csv")
    )
    assert result.returncode == 1
    assert "--data carries its labels in the target column" in result.stderr


def test_ids_of_another_models_predictions_are_not_taken(
    store_url: str, spec: ModelSpec, history: pd.DataFrame
) -> None:
    predictions = history.rename(columns={"customerID": "request_id"}).assign(score=0.5)
    _load(store_url, spec, predictions=predictions)
    other = spec.model_copy(update={"name": "other"})

    with pytest.raises(BackfillError, match=f"{ROWS} request id\\(s\\) belong to predictions of"):
        _load(store_url, other, predictions=predictions)
    labels = _load(store_url, other, labels=predictions[["request_id", "Churn"]])

    assert (labels.labels_stored, labels.orphan_labels) == (0, ROWS)
    assert _counts(store_url) == (ROWS, 0)
