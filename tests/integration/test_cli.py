"""The ``driftloop`` command's failure modes: one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cli import driftloop

pytestmark = pytest.mark.integration


def test_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = driftloop(
        "status",
        DRIFTLOOP_HOME=str(tmp_path),
        DRIFTLOOP_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("driftloop: error: database unreachable:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere, so the check cannot fail")
def test_unwritable_data_dir_is_one_line_and_exit_1(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = driftloop(
        "db", "start", DRIFTLOOP_HOME=str(locked / "home"), DRIFTLOOP_DATABASE_URL=""
    )
    assert result.returncode == 1
    assert "data dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_dir_that_is_a_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "home"
    blocker.write_text("not a folder")
    result = driftloop(
        "db", "start", DRIFTLOOP_HOME=str(blocker / "sub"), DRIFTLOOP_DATABASE_URL=""
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"driftloop: error: data dir {blocker / 'sub'} cannot be created"
    )
    assert "Traceback" not in result.stderr


def test_bad_spec_is_named(tmp_path: Path, store_url: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: churn\nfeatures: []\n")
    result = driftloop(
        "status",
        DRIFTLOOP_HOME=str(tmp_path),
        DRIFTLOOP_DATABASE_URL=store_url,
        DRIFTLOOP_MODEL_SPEC=str(spec),
    )
    assert result.returncode == 1
    assert f"model spec {spec}:" in result.stderr
    assert "features" in result.stderr


def test_serve_without_a_champion_says_what_to_do(tmp_path: Path, store_url: str) -> None:
    result = driftloop("serve", DRIFTLOOP_HOME=str(tmp_path), DRIFTLOOP_DATABASE_URL=store_url)
    assert result.returncode == 1
    assert "no champion of churn with a Bento yet; run `driftloop demo` first" in result.stderr


def test_serve_runs_the_champions_bento_and_records_the_deployment(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`driftloop serve` (what `make serve` runs) finds the champion in the registry, serves its
    Bento with `bentoml serve`, and records the deployment."""
    import signal
    import socket
    import time

    import bentoml

    from training.champion import bootstrap_champion
    from training.settings import get_settings
    from training.spec import load_spec
    from training.store import connect
    from training.synthetic import generate

    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("DRIFTLOOP_DATABASE_URL", store_url)
    champion = bootstrap_champion(get_settings(), generate(2000, seed=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        result = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with bentoml.SyncHTTPClient(f"http://127.0.0.1:{port}", timeout=30) as client:
                    result = client.predict(**load_spec().example_request())
                break
            except Exception:  # not up yet
                time.sleep(1)
        assert result is not None, log.read_text()[-3000:]
        assert result["model_version"] == champion["champion_tag"].split(":")[1]
        assert f"serving champion v1 ({champion['champion_tag']})" in log.read_text()
        with connect(store_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT bento_tag, target, status FROM deployments")
            assert cur.fetchall() == [(champion["bento_tag"], "local", "serving")]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
