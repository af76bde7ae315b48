"""``driftloop backup`` and ``restore`` on a real PostgreSQL, their refusals included: a store that
is not empty, a BentoML home that is not empty, a damaged, incomplete or missing backup; ``--force``;
``--keep``; and the Airflow DAG ``driftloop_backup`` run with ``dag.test()``.

The store here holds predictions, labels and API keys but no model (the drill in
test_restore_drill.py backs up and restores models and Bentos); restores run ``driftloop`` as a
process of its own with a BentoML home of the test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.test_retrain_dag import airflow  # noqa: F401 - a fixture
from training.backup import backup
from training.backup_manifest import list_backups
from training.postgres import create_database, with_database
from training.settings import get_settings
from training.store import PredictionRecord, connect, record_feedback_many, record_predictions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _fill(url: str, n: int = 300) -> None:
    from training.keys import create_key

    at = datetime.now(UTC) - timedelta(days=1)
    records = [
        PredictionRecord(f"r{i}", "churn", "v1", {"age": i}, 0.5, i % 2, at) for i in range(n)
    ]
    with connect(url) as conn:
        record_predictions(conn, records)
        record_feedback_many(conn, [(f"r{i}", i % 2, None) for i in range(0, n, 3)])
        create_key(conn, "crm", ["predict"])


def _rows(url: str) -> dict[str, list[tuple[object, ...]]]:
    with connect(url) as conn, conn.cursor() as cur:
        found = {}
        for table, key in (
            ("predictions", "request_id"),
            ("feedback", "request_id"),
            ("api_keys", "id"),
            ("schema_migrations", "version"),
        ):
            cur.execute(f"SELECT * FROM {table} ORDER BY {key}")
            found[table] = cur.fetchall()
    return found


def _tables(url: str) -> list[str]:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        return [row[0] for row in cur.fetchall()]


def _new_database(server_url: str) -> str:
    name = f"driftloop_restore_{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    return with_database(server_url, name)


def _restore(
    tmp_path: Path, url: str, *args: str, bentoml_home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "restore-home"),
        "DRIFTLOOP_DATABASE_URL": url,
        "BENTOML_HOME": str(bentoml_home or tmp_path / "bentoml"),
    }
    return subprocess.run(
        [sys.executable, "-m", "training.cli", "restore", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


def test_a_backup_restores_into_an_empty_database_row_for_row(
    env: Path, store_url: str, server_url: str, tmp_path: Path
) -> None:
    _fill(store_url)
    before = _rows(store_url)
    uri, manifest = backup(get_settings(), to=str(tmp_path / "backups"))
    assert manifest.rows["predictions"] == 300
    assert manifest.rows["feedback"] == 100
    assert [p.kind for p in manifest.parts] == ["database"]
    assert manifest.champions == {}

    # Into a store the CLI has already migrated (empty tables), then into a brand new database.
    migrated = _new_database(server_url)
    with connect(migrated) as conn:
        from training.store import migrate

        migrate(conn)
    for target in (migrated, _new_database(server_url)):
        result = _restore(tmp_path, target, uri)
        assert result.returncode == 0, result.stdout + result.stderr
        assert _rows(target) == before
        assert f"restored backup {manifest.id}" in result.stdout


def test_restore_refuses_a_store_with_rows_and_force_restores_over_it(
    env: Path, store_url: str, tmp_path: Path
) -> None:
    _fill(store_url)
    before = _rows(store_url)
    uri, _ = backup(get_settings(), to=str(tmp_path / "backups"))
    with connect(store_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM feedback WHERE request_id = 'r0'")
        cur.execute("UPDATE predictions SET score = 0.9 WHERE request_id = 'r1'")

    line = _refused(_restore(tmp_path, store_url, uri))
    assert line.startswith("driftloop: error: the store postgresql://")
    assert "is not empty (api_keys 1, feedback 99, predictions 300 rows)" in line
    assert "--force" in line

    result = _restore(tmp_path, store_url, uri, "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _rows(store_url) == before


def test_restore_refuses_a_bentoml_home_with_models(
    env: Path, store_url: str, server_url: str, tmp_path: Path
) -> None:
    uri, _ = backup(get_settings(), to=str(tmp_path / "backups"))
    home = tmp_path / "busy-bentoml"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import bentoml\nwith bentoml.models.create('someone_elses'):\n    pass",
        ],
        env={**os.environ, "BENTOML_HOME": str(home)},
        check=True,
        timeout=120,
    )
    target = _new_database(server_url)
    line = _refused(_restore(tmp_path, target, uri, bentoml_home=home))
    assert f"the BentoML store {home} is not empty (0 Bentos, 1 models)" in line
    assert _tables(target) == []  # checked before anything was restored


def test_a_damaged_incomplete_or_missing_backup_is_refused_and_restores_nothing(
    env: Path, store_url: str, server_url: str, tmp_path: Path
) -> None:
    _fill(store_url)
    uri, _ = backup(get_settings(), to=str(tmp_path / "backups"))
    dump = Path(uri, "database.dump")
    target = _new_database(server_url)

    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    line = _refused(_restore(tmp_path, target, uri))
    assert line.startswith(f"driftloop: error: the backup is damaged: {dump} has {len(data)} bytes")
    assert line.endswith("nothing was restored")
    assert _tables(target) == []

    dump.unlink()
    line = _refused(_restore(tmp_path, target, uri))
    assert f"the backup is incomplete: {dump} (database " in line

    manifest = Path(uri, "manifest.json")
    manifest.write_text(manifest.read_text()[:40])
    assert "is not JSON" in _refused(_restore(tmp_path, target, uri))
    manifest.unlink()
    # Without its manifest the folder is no backup, and the folder of backups holds none.
    assert "no backup at" in _refused(_restore(tmp_path, target, str(tmp_path / "backups")))
    assert _tables(target) == []


def test_keep_leaves_the_newest_backups(env: Path, store_url: str, tmp_path: Path) -> None:
    import time

    folder = str(tmp_path / "backups")
    made = []
    for _ in range(3):
        made.append(backup(get_settings(), to=folder, keep=2)[0])
        time.sleep(1.1)  # ids are to the second
    assert [e.uri for e in list_backups(get_settings(), to=folder)] == made[1:]


_DAG_TEST = """
import json, runpy, sys
namespace = runpy.run_path(sys.argv[1], run_name="driftloop_dag_test")
run = namespace["backup_dag"].test(run_conf={"keep": 1, "to": sys.argv[2]})
tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print("DAG_TEST_RESULT=" + json.dumps({"state": str(run.state), "tasks": tasks}))
"""


def test_the_backup_dag_makes_a_backup(
    airflow: Path,  # noqa: F811 - the fixture imported above
    store_url: str,
    tmp_path: Path,
) -> None:
    from training.airflow_local import airflow_env

    _fill(store_url)
    folder = tmp_path / "nightly"
    result = subprocess.run(
        [sys.executable, "-c", _DAG_TEST, str(ROOT / "dags" / "backup.py"), str(folder)],
        env=airflow_env(get_settings()).env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    found = [
        json.loads(line.removeprefix("DAG_TEST_RESULT="))
        for line in result.stdout.splitlines()
        if line.startswith("DAG_TEST_RESULT=")
    ]
    assert found, result.stdout[-3000:] + result.stderr[-3000:]
    assert found[0] == {"state": "success", "tasks": {"backup": "success"}}
    [entry] = list_backups(get_settings(), to=str(folder))
    assert entry.complete
    manifest = json.loads(Path(entry.uri, "manifest.json").read_text())
    assert manifest["rows"]["predictions"] == 300
