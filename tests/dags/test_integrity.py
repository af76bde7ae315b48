"""The retrain DAG file: imports cleanly, cheaply and without touching the database at parse time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DAG_FILE = Path(__file__).parents[2] / "dags" / "retrain.py"

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
    import json

    env = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Parsing must not need a database: point every setting at nowhere.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/never-created.db",
        "DRIFTLOOP_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "DRIFTLOOP_MODELS": str(tmp_path / "no-models-here"),
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, "-c", _PARSE, str(DAG_FILE)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


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
