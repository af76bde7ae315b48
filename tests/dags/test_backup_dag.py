"""The backup DAG file: imports cleanly and cheaply, without touching the database at parse time,
and is paused until someone turns it on. ``dag.test()`` of it: tests/integration/test_backup_restore.py."""

from __future__ import annotations

from pathlib import Path

from tests.dags.parsing import DAGS, parse_dag_file

DAG_FILE = DAGS / "backup.py"

_PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("driftloop_backup")
print(json.dumps({
    "dag_ids": sorted(bag.dags),
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "tasks": sorted(dag.task_ids) if dag else [],
    "schedule": str(dag.schedule) if dag else None,
    "paused": dag.is_paused_upon_creation if dag else None,
    "catchup": dag.catchup if dag else None,
    "params": {k: dag.params[k] for k in dag.params} if dag else {},
    "heavy_modules": [m for m in ("pandas", "bentoml", "psycopg2", "boto3", "training.backup") if m in sys.modules],
}))
"""


def test_the_backup_dag_parses_light_and_paused(tmp_path: Path) -> None:
    parsed = parse_dag_file(_PARSE, DAG_FILE, tmp_path)
    assert parsed["errors"] == {}
    assert parsed["dag_ids"] == ["driftloop_backup"]
    assert parsed["tasks"] == ["backup"]
    assert parsed["schedule"] == "30 2 * * *"
    assert parsed["paused"] is True
    assert parsed["catchup"] is False
    assert parsed["params"] == {"keep": 14, "to": ""}
    assert parsed["heavy_modules"] == []
    assert not (tmp_path / "never-created.db").exists()
