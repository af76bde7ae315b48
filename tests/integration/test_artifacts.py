"""The artifact store: a local folder, and S3 through a real S3 HTTP endpoint (moto's server on
loopback, from conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import MotoServer
from training.artifacts import ArtifactStoreError, LocalStore, S3Store, open_store
from training.settings import Settings

pytestmark = pytest.mark.integration


def test_local_store_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("hello")
    store = open_store(Settings(home=tmp_path / "home"))
    assert isinstance(store, LocalStore)
    uri = store.put(source, "runs/x/a.txt")
    assert uri == str(tmp_path / "home" / "artifacts" / "runs" / "x" / "a.txt")
    assert store.fetch(uri, tmp_path / "back.txt").read_text() == "hello"


def test_s3_store_round_trip(tmp_path: Path, s3_endpoint: str, aws: None) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="loop")
    store = open_store(
        Settings(home=tmp_path, artifacts_uri="s3://loop/prod", s3_endpoint_url=s3_endpoint)
    )
    assert isinstance(store, S3Store)
    source = tmp_path / "window.parquet"
    source.write_bytes(b"PAR1 data")
    uri = store.put(source, "runs/churn/r1/window.parquet")
    assert uri == "s3://loop/prod/runs/churn/r1/window.parquet"
    assert store.fetch(uri, tmp_path / "copy.parquet").read_bytes() == b"PAR1 data"


def test_s3_root_without_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="names no bucket"):
        S3Store("s3:///prefix")


def test_an_unreachable_s3_fails_in_one_line_naming_the_uri(
    tmp_path: Path, moto_server: MotoServer, aws: None
) -> None:
    moto_server.stop()  # a port nothing listens on any more
    store = S3Store("s3://loop/prod", endpoint_url=moto_server.endpoint)
    source = tmp_path / "window.parquet"
    source.write_bytes(b"PAR1")
    with pytest.raises(ArtifactStoreError) as failed:
        store.put(source, "runs/churn/r1/window.parquet")
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(
        f"artifact store at {moto_server.endpoint}: cannot write "
        "s3://loop/prod/runs/churn/r1/window.parquet: "
    )
    with pytest.raises(ArtifactStoreError, match=r"cannot read s3://loop/prod/a\.bento: "):
        store.fetch("s3://loop/prod/a.bento", tmp_path / "a.bento")
