"""The restore drill, for real: make the loop's state, back it up with ``driftloop backup``, lose the
store and the BentoML home, ``driftloop restore``, then check that ``driftloop serve`` (a real
``bentoml serve``) answers with the same champion, every table matches row for row, and the next
retrain runs.

Twice: on the embedded defaults (the demo, ``driftloop demo``; its PostgreSQL under its own data
dir, which is deleted whole, artifacts and Airflow's files with it; the backup kept in a folder
outside it) and with everything on S3 (moto's server on loopback; the store a database of the
session's PostgreSQL that is dropped; the artifact store's runs and Bento exports deleted as well,
the backups kept). Every driftloop command runs as a process of its own with the drill's
``BENTOML_HOME``, as an operator would run it. Each drill's backup and restore wall times go to
``test-artifacts/restore-drill-<where>.json`` (the README quotes them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import MotoServer
from tests.integration.test_service import _free_port, _stop, _wait_ready
from training.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "test-artifacts"
# Every table of the store, in a stable order (rows compared whole).
TABLES = {
    "model_versions": "id",
    "training_runs": "id",
    "drift_runs": "id",
    "deployments": "id",
    "promotions": "id",
    "predictions": "request_id",
    "feedback": "request_id",
    "feedback_history": "id",
    "api_keys": "id",
    "schema_migrations": "version",
}


def _cli(env: dict[str, str], *args: str, timeout: float = 1800) -> tuple[str, float]:
    """Run ``driftloop ARGS``; its standard output and wall seconds. Fails with all of its output
    on an error."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"driftloop {' '.join(args)} failed:\n{output[-4000:]}"
    return result.stdout, seconds


def _python(env: dict[str, str], script: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    from training.store import connect

    found = {}
    with connect(url) as conn, conn.cursor() as cur:
        for table, key in TABLES.items():
            cur.execute(f"SELECT * FROM {table} ORDER BY {key}")
            found[table] = cur.fetchall()
    return found


def _champion(url: str) -> tuple[str, str]:
    from training.store import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tag, bento_tag FROM model_versions WHERE status = 'champion'")
        row = cur.fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


@contextmanager
def _serving(env: dict[str, str], home: Path) -> Iterator[str]:
    """``driftloop serve`` (what ``make serve`` runs) on a free port, until it answers."""
    port = _free_port()
    log = home.parent / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--port", str(port)],
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        _stop(process)


def _restore_and_check(
    env: dict[str, str],
    url: str,
    backup_uri: str,
    before: dict[str, list[tuple[Any, ...]]],
    champion: tuple[str, str],
    bentoml_home: Path,
) -> dict[str, float]:
    """Restore, then: the same rows, the champion's Bento and model back in the BentoML home, and
    a served prediction by the same champion. Returns the measured seconds."""
    started = time.monotonic()
    output, restore_s = _cli(env, "restore", backup_uri)
    assert "checked" in output
    assert "sha256" in output
    assert "champion v" in output
    assert _rows(url) == before
    model_tag, bento_tag = champion
    assert _champion(url) == champion
    name, _, version = bento_tag.partition(":")
    assert (bentoml_home / "bentos" / name / version / "bento.yaml").is_file()
    model_name, _, model_version = model_tag.partition(":")
    assert (bentoml_home / "models" / model_name / model_version / "model.yaml").is_file()

    with _serving(env, Path(env["DRIFTLOOP_HOME"])) as served:
        answer = httpx.post(
            f"{served}/predict", json=load_spec().example_request(), timeout=60
        ).json()
        serving_s = time.monotonic() - started
    assert answer["model_version"] == model_version, answer
    return {"restore_s": round(restore_s, 1), "restore_to_first_answer_s": round(serving_s, 1)}


def _record(where: str, numbers: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"restore-drill-{where}.json"
    out.write_text(json.dumps({"at": datetime.now(UTC).isoformat(), **numbers}, indent=2) + "\n")
    print(f"\nrestore drill ({where}): {numbers}")


def _clean_env(**settings: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DRIFTLOOP_") and key != "BENTOML_HOME"
    }
    return {**env, "BENTOML_DO_NOT_TRACK": "true", **settings}


@contextmanager
def _embedded_store_stopped(env: dict[str, str]) -> Iterator[None]:
    """Stop the embedded PostgreSQL of ``env``'s data dir when the block ends, however it ends: the
    restore starts one, which would otherwise outlive the test."""
    try:
        yield
    finally:
        if Path(env["DRIFTLOOP_HOME"], "pgdata", "postmaster.pid").exists():
            subprocess.run(
                [sys.executable, "-m", "training.cli", "db", "stop"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                timeout=120,
                check=False,
            )


def test_the_demo_restored_from_a_backup_serves_the_same_champion_and_retrains(
    tmp_path: Path, airflow_database_url: str
) -> None:
    home, bentoml_home, offsite = tmp_path / "home", tmp_path / "bentoml", tmp_path / "offsite"
    env = _clean_env(
        DRIFTLOOP_HOME=str(home),
        BENTOML_HOME=str(bentoml_home),
        DRIFTLOOP_AIRFLOW_DATABASE_URL=airflow_database_url,
    )
    with _embedded_store_stopped(env):
        _cli(env, "demo", "--reset")
        url = _cli(env, "db", "url")[0].strip().splitlines()[-1]
        before = _rows(url)
        champion = _champion(url)
        assert (
            len(before["model_versions"]) >= 2
        )  # the demo's champion and its retrain's challenger

        output, backup_s = _cli(env, "backup", "--to", str(offsite), "--keep", "2")
        backup_uri = (
            output.strip().splitlines()[-1].removeprefix("restore it with: driftloop restore ")
        )
        assert Path(backup_uri, "manifest.json").is_file()
        manifest = json.loads(Path(backup_uri, "manifest.json").read_text())
        assert manifest["champions"]["churn"]["tag"] == champion[0]
        assert manifest["rows"]["predictions"] == len(before["predictions"])

        # The machine is lost: the store's server and data dir (artifacts, Airflow's home with them)
        # and the BentoML home.
        _cli(env, "db", "stop")
        shutil.rmtree(home)
        shutil.rmtree(bentoml_home)

        # The folder of backups, not the backup: restore takes the newest there.
        numbers = _restore_and_check(env, url, str(offsite), before, champion, bentoml_home)
        # The champion's training set is back where the registry records it: the drift check of the
        # next retrain reads it. So is its Bento's export.
        champion_row = next(r for r in before["model_versions"] if r[3] == champion[0])
        assert Path(champion_row[7]).is_file()  # train_data_uri

        _cli(env, "retrain", "--force")
        runs = _rows(url)["training_runs"]
        assert len(runs) == len(before["training_runs"]) + 1
        assert runs[-1][4] in ("promoted", "rejected"), runs[-1]
        _record(
            "local",
            {
                "backup_s": round(backup_s, 1),
                **numbers,
                "backup_parts": len(manifest["parts"]),
                "backup_bytes": sum(p["bytes"] for p in manifest["parts"]),
                "predictions": len(before["predictions"]),
                "model_versions": len(before["model_versions"]),
            },
        )


_LOOP = """
from datetime import UTC, datetime, timedelta
from training import retrain
from training.champion import bootstrap_champion
from training.retrain import StepContext
from training.settings import get_settings
from training.simulate import simulate_traffic
from training.store import connect
from training.synthetic import Scenario, generate

settings = get_settings()
champion = bootstrap_champion(settings, generate(3000, seed=1))
end = datetime.now(UTC)
with connect(settings.database_url) as conn:
    simulate_traffic(conn, model_tag=champion["champion_tag"], n=4000, start=end - timedelta(days=8),
                     end=end, drift=Scenario(kind="mixed"), drift_at=0.125, seed=5)
ctx = StepContext.build(settings, None, "drill-1")
extracted = retrain.extract(ctx, end, 7)
decision = retrain.check_drift(ctx, extracted)
trained = retrain.train_challenger(ctx, decision, extracted.dataset_uri)
assert retrain.validate(ctx, trained).passed
print(retrain.promote(ctx, retrain.build_challenger_bento(ctx, trained.challenger_tag)))
"""

_NEXT_RETRAIN = """
from datetime import UTC, datetime
from training import retrain
from training.retrain import StepContext
from training.settings import get_settings

ctx = StepContext.build(get_settings(), None, "drill-after-restore")
extracted = retrain.extract(ctx, datetime.now(UTC), 7)
decision = retrain.check_drift(ctx, extracted, force=True)
trained = retrain.train_challenger(ctx, decision, extracted.dataset_uri)
print("VERDICT", retrain.validate(ctx, trained).passed)
"""


def test_the_loop_on_s3_restored_from_its_backup_on_s3(
    tmp_path: Path, server_url: str, moto_server: MotoServer, aws: None
) -> None:
    import boto3
    import psycopg2

    from training.postgres import create_database, with_database

    bucket = "drill"
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint)
    s3.create_bucket(Bucket=bucket)
    database = f"driftloop_drill_{uuid.uuid4().hex[:8]}"
    create_database(server_url, database)
    url = with_database(server_url, database)
    home, bentoml_home = tmp_path / "home", tmp_path / "bentoml"
    env = _clean_env(
        DRIFTLOOP_HOME=str(home),
        BENTOML_HOME=str(bentoml_home),
        DRIFTLOOP_DATABASE_URL=url,
        DRIFTLOOP_ARTIFACTS_URI=f"s3://{bucket}/prod",
        DRIFTLOOP_S3_ENDPOINT_URL=moto_server.endpoint,
    )
    _python(env, _LOOP)
    before = _rows(url)
    champion = _champion(url)
    assert [r[4] for r in before["model_versions"]] == ["retired", "champion"]

    output, backup_s = _cli(env, "backup", "--keep", "3")
    backup_uri = output.strip().splitlines()[-1].removeprefix("restore it with: driftloop restore ")
    assert backup_uri.startswith(f"s3://{bucket}/prod/backups/")

    # Lost: the database, the BentoML home and the data dir, and everything in the bucket but the
    # backups (the runs' datasets and the Bento exports).
    admin = psycopg2.connect(server_url)
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            cur.execute(f'DROP DATABASE "{database}"')
    finally:
        admin.close()
    create_database(server_url, database)
    shutil.rmtree(bentoml_home)
    shutil.rmtree(home, ignore_errors=True)  # nothing may have needed it: the store is elsewhere
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="prod/")["Contents"]
    lost = [o["Key"] for o in listed if not o["Key"].startswith("prod/backups/")]
    for key in lost:
        s3.delete_object(Bucket=bucket, Key=key)
    assert any(key.endswith("/train.parquet") for key in lost)

    numbers = _restore_and_check(
        env, url, f"s3://{bucket}/prod/backups", before, champion, bentoml_home
    )
    champion_row = next(r for r in before["model_versions"] if r[3] == champion[0])
    train_uri, bento_uri = champion_row[7], champion_row[-1]  # train_data_uri, bento_uri
    assert train_uri.startswith(f"s3://{bucket}/prod/runs/")
    assert bento_uri.startswith(f"s3://{bucket}/prod/bentos/")
    for uri in (train_uri, bento_uri):
        s3.head_object(Bucket=bucket, Key=uri.removeprefix(f"s3://{bucket}/"))

    assert "VERDICT" in _python(env, _NEXT_RETRAIN)
    runs = _rows(url)["training_runs"]
    assert runs[-1][2] == "drill-after-restore"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=backup_uri.removeprefix(f"s3://{bucket}/"))
    parts = [o for o in listed["Contents"] if not o["Key"].endswith("/manifest.json")]
    _record(
        "s3",
        {
            "backup_s": round(backup_s, 1),
            **numbers,
            "backup_parts": len(parts),
            "backup_bytes": sum(o["Size"] for o in parts),
            "predictions": len(before["predictions"]),
            "model_versions": len(before["model_versions"]),
        },
    )
