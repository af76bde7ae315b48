"""The retrain loop with its artifacts on S3: moto's S3 server on loopback (the one thing here that
stands in for a cloud service; boto3 talks real HTTP to it), real PostgreSQL, real Airflow
``dag.test()``, real ``bentoml build`` and ``bentoml export``/``import``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import MotoServer
from tests.integration.test_retrain_dag import (  # noqa: F401 - `airflow` is a fixture
    _query,
    _run,
    _seed,
    airflow,
)
from training.artifacts import ArtifactStoreError
from training.lineage import locked_versions, pinned_requirements, training_set_sha256
from training.settings import get_settings
from training.synthetic import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "loop"
ROOT = f"s3://{BUCKET}/prod"


def _on_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> Any:
    import boto3

    monkeypatch.setenv("DRIFTLOOP_ARTIFACTS_URI", ROOT)
    monkeypatch.setenv("DRIFTLOOP_S3_ENDPOINT_URL", endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


def _keys(client: Any) -> set[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="prod/")
    return {item["Key"] for item in listed.get("Contents", [])}


def test_the_retrain_dag_puts_datasets_report_and_bento_export_on_s3(
    airflow: Path,  # noqa: F811 - the fixture imported above
    moto_server: MotoServer,
    aws: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import bentoml

    from training.runs import read_frame, safe_key

    client = _on_s3(monkeypatch, moto_server.endpoint)
    first = _seed(Scenario(kind="mixed"))
    result = _run({"window_days": 7, "force": False})

    assert result.tasks["promote"] == "success"
    run = f"prod/runs/churn/{safe_key(result.run_id)}"
    [(v1_bento, v1_uri), (v2_bento, v2_uri)] = _query(
        "SELECT bento_tag, bento_uri FROM model_versions ORDER BY version"
    )
    assert v1_bento == first["bento_tag"]
    v2_key = f"prod/bentos/{v2_bento.replace(':', '/')}.bento"
    assert v2_uri == f"s3://{BUCKET}/{v2_key}"
    assert v1_uri == f"s3://{BUCKET}/prod/bentos/{v1_bento.replace(':', '/')}.bento"
    assert {
        f"{run}/window.parquet",
        f"{run}/drift_report.html",
        f"{run}/train.parquet",
        f"{run}/holdout.parquet",
        v2_key,
    } <= _keys(client)
    [(dataset_uri, report_uri)] = _query("SELECT dataset_uri, report_uri FROM drift_runs")
    assert (dataset_uri, report_uri) == (
        f"s3://{BUCKET}/{run}/window.parquet",
        f"s3://{BUCKET}/{run}/drift_report.html",
    )

    # Lineage: the recorded hash is the hash of the training set as stored on S3.
    [(train_uri, start, end, sha, rows, revision, packages)] = _query(
        "SELECT train_data_uri, data_start, data_end, data_sha256, data_rows, code_revision,"
        " packages FROM model_versions WHERE version = 2"
    )
    train = read_frame(get_settings(), train_uri)
    assert sha == training_set_sha256(train)
    assert rows == len(train)
    assert (start, end) == (train["created_at"].min(), train["created_at"].max())
    assert end <= datetime.now(UTC)
    assert revision.startswith("git:")
    assert packages["lightgbm"] == locked_versions()["lightgbm"]

    # A machine without the Bento (deleted here): `driftloop image` brings it back from its export
    # before building (which then stops: no docker binary on this PATH, so no image is built).
    bentoml.bentos.delete(v2_bento)
    image = subprocess.run(
        [sys.executable, "-m", "training.cli", "image", "--bento", v2_bento, "--backend", "docker"],
        env={**os.environ, "PATH": str(tmp_path / "no-tools")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert f"imported {v2_bento} from {v2_uri}" in image.stdout, image.stdout + image.stderr
    assert image.returncode == 1
    assert "docker" in image.stderr
    bento = bentoml.bentos.get(v2_bento)
    assert bento.info.labels["model_tag"] == v2_bento.replace("churn_service:", "churn.")
    pins = pinned_requirements(Path(bento.path_of("env/python/requirements.txt")).read_text())
    locked = locked_versions()
    assert pins.pop("bentoml") == locked["bentoml"]
    assert pins == {name: locked[name] for name in pins}
    assert {"lightgbm", "scikit-learn", "numpy", "pandas", "scipy"} <= set(pins)


def test_an_s3_outage_fails_the_step_naming_the_uri_and_changes_no_champion(
    env: Path, moto_server: MotoServer, aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 goes away between steps (the steps called directly, as the DAG's tasks call them)."""
    from training.retrain import (
        StepContext,
        build_challenger_bento,
        check_drift,
        extract,
        promote,
        train_challenger,
        validate,
    )

    _on_s3(monkeypatch, moto_server.endpoint)
    first = _seed(Scenario(kind="mixed"))
    ctx = StepContext.build(get_settings(), None, "outage")
    now = datetime.now(UTC)
    extracted = extract(ctx, now, 7)
    decision = check_drift(ctx, extracted, force=True)
    trained = train_challenger(ctx, decision, extracted.dataset_uri)
    validation = validate(ctx, trained)
    assert validation.passed, validation.reason
    built = build_challenger_bento(ctx, trained.challenger_tag)

    moto_server.stop()
    with pytest.raises(ArtifactStoreError) as failed:
        promote(ctx, built)
    message = str(failed.value)
    version = built.bento_tag.partition(":")[2]
    assert "\n" not in message
    assert f"cannot write {ROOT}/bentos/churn_service/{version}.bento" in message
    assert moto_server.endpoint in message
    assert _query("SELECT tag FROM model_versions WHERE status = 'champion'") == [
        (first["champion_tag"],)
    ]
    assert _query(
        "SELECT status, bento_uri FROM model_versions WHERE tag = %s", built.challenger_tag
    ) == [("candidate", None)]
    assert _query("SELECT status FROM training_runs WHERE run_key = 'outage'") == [("trained",)]
    assert _query("SELECT count(*) FROM promotions WHERE tag = %s", built.challenger_tag) == [(0,)]

    # The first step of the next run fails the same way, before recording anything.
    later = StepContext.build(get_settings(), None, "outage-2")
    with pytest.raises(
        ArtifactStoreError, match=r"cannot write s3://loop/prod/runs/churn/outage-2/"
    ):
        extract(later, now, 7)
    assert _query("SELECT count(*) FROM drift_runs WHERE run_key = 'outage-2'") == [(0,)]
