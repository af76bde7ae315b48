"""The retrain DAG file: imports cleanly, cheaply and without touching the database at parse time."""

from __future__ import annotations

from pathlib import Path

from tests.dags.parsing import DAGS, parse_dag_file

DAG_FILE = DAGS / "retrain.py"

_PARSE = """
import json, os, sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.monotonic()
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("driftloop_retrain__churn")
print(json.dumps({
    "dag_ids": sorted(bag.dags),
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "tasks": sorted(dag.task_ids) if dag else [],
    "schedule": str(dag.schedule) if dag else None,
    "params": sorted(dag.params.keys()) if dag else [],
    "downstream_of_decide": sorted(dag.get_task("decide").downstream_task_ids) if dag else [],
    "heavy_modules": [m for m in ("pandas", "evidently", "lightgbm", "bentoml", "psycopg2") if m in sys.modules],
}))
"""


def _parse(tmp_path: Path, **extra_env: str) -> dict[str, object]:
    return parse_dag_file(_PARSE, DAG_FILE, tmp_path, **extra_env)


def test_dag_imports_without_errors_and_wires_the_loop(tmp_path: Path) -> None:
    parsed = _parse(tmp_path)
    assert parsed["errors"] == {}
    assert parsed["tasks"] == [
        "approve_promotion",
        "build_bento",
        "check_drift",
        "containerize",
        "decide",
        "extract",
        "needs_approval",
        "passed_gates",
        "promote",
        "record_skip",
        "rollout",
        "train_challenger",
        "validate",
    ]
    assert parsed["downstream_of_decide"] == ["record_skip", "train_challenger"]
    assert parsed["params"] == ["force", "require_approval", "window_days"]
    assert parsed["schedule"] == "@daily"


def test_parsing_imports_no_heavy_library(tmp_path: Path) -> None:
    """Tasks import the training code when they run; the scheduler's parse stays light."""
    assert _parse(tmp_path)["heavy_modules"] == []
    assert not (tmp_path / "never-created.db").exists()


def test_one_dag_per_model_in_the_models_folder(tmp_path: Path) -> None:
    builtin = Path(__file__).parents[2] / "training" / "specs" / "churn.yaml"
    models = tmp_path / "models"
    models.mkdir()
    for name in ("telco", "fraud"):
        (models / f"{name}.yaml").write_text(
            builtin.read_text().replace("name: churn", f"name: {name}")
        )
    parsed = _parse(tmp_path, DRIFTLOOP_MODELS=str(models))
    assert parsed["errors"] == {}
    assert parsed["dag_ids"] == ["driftloop_retrain__fraud", "driftloop_retrain__telco"]


def test_a_broken_spec_shows_as_an_import_error_naming_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "bad.yaml").write_text(
        "name: bad\ntarget: y\nfeatures: []\nmodel: {family: lightgbm}\n"
    )
    parsed = _parse(tmp_path, DRIFTLOOP_MODELS=str(models))
    [message] = parsed["errors"].values()  # type: ignore[attr-defined]
    assert "bad.yaml" in message
    assert "features" in message
