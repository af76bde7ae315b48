"""Parse a DAG file as Airflow's DagBag does, in a fresh interpreter that has no database to reach."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).parents[2] / "dags"


def parse_dag_file(
    script: str, dag_file: Path, tmp_path: Path, **extra_env: str
) -> dict[str, object]:
    """Run ``script`` (which prints one JSON line) with ``sys.argv[1]`` = ``dag_file``.

    A fresh interpreter, so the modules a parse imports can be checked; every database setting points
    at nowhere, so a parse that touches one fails."""
    env = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/never-created.db",
        "DRIFTLOOP_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "DRIFTLOOP_MODELS": str(tmp_path / "no-models-here"),
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, "-c", script, str(dag_file)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed
