"""The artifact store: a local folder, and S3 through a real S3 HTTP endpoint (moto's server on loopback)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.artifacts import LocalStore, S3Store, open_store
from training.settings import Settings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone server: the S3 REST API over HTTP, so boto3 runs its real client code."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


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
