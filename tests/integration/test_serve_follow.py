"""``driftloop serve`` follows the registry, for real: two Bentos built from two trained models, the
follower serving the first, continuous prediction traffic (keep-alive connections, as real clients
use) across ``driftloop promote`` of the second, in a real PostgreSQL.

Checked: not one request fails across the switch, answers move from the first model's version to
the second's and never back, gRPC calls keep being answered too, each switch is a line of the log
and a ``deployments`` row, and a champion whose Bento cannot start leaves the running one serving.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from training import registry
from training.cli import main
from training.store import connect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READY_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Versions:
    first: str  # model tags
    second: str
    first_bento: str
    second_bento: str


@pytest.fixture
def versions(env: Path, store_url: str) -> Versions:
    """churn's champion (trained and promoted as the demo does), and a second version with its own
    Bento, registered but not promoted."""
    from training.bento import build_bento
    from training.champion import bootstrap_champion
    from training.settings import get_settings
    from training.synthetic import generate

    champion = bootstrap_champion(get_settings(), generate(2000, seed=1))
    pipeline, spec = registry.load_model(champion["champion_tag"])
    second = registry.save_model(spec, pipeline, metrics=champion["metrics"], train_data_uri="x")
    second_bento = build_bento(second)
    with connect(store_url) as conn:
        registry.register(
            conn, model_name="churn", tag=second, metrics=champion["metrics"], train_data_uri="x"
        )
        registry.set_bento(conn, second, second_bento)
    return Versions(champion["champion_tag"], second, champion["bento_tag"], second_bento)


@dataclass
class Served:
    port: int
    grpc_port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, words: str, timeout_s: float = READY_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if words in self.text():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line with {words!r} in the log:\n{self.text()[-4000:]}")


@contextmanager
def follower(env: Path) -> Iterator[Served]:
    port, grpc_port = _free_port(), _free_port()
    log = env / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "DRIFTLOOP_SERVE_FOLLOW_POLL_S": "0.5",
                "DRIFTLOOP_SERVE_READY_TIMEOUT_S": str(READY_S),
                "DRIFTLOOP_GRPC_PORT": str(grpc_port),
            },
            start_new_session=True,
        )
    served = Served(port, grpc_port, log, process)
    try:
        served.wait_for_line("ready after")
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@dataclass
class Traffic:
    """What the clients saw: the model version of every answer in order, and every failure."""

    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    grpc_versions: list[str] = field(default_factory=list)

    def count(self) -> Counter[str]:
        return Counter(self.versions)


def _http_client(url: str, body: dict[str, object], seen: Traffic, stop: threading.Event) -> None:
    # One keep-alive connection pool per thread, as a real client keeps.
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            try:
                response = client.post("/predict", json=body)
                if response.status_code == 200:
                    seen.versions.append(str(response.json()["model_version"]))
                else:
                    seen.failures.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                seen.failures.append(f"{type(exc).__name__}: {exc}")
            # Continuous, not flat out: the new Bento starts on the same two cores meanwhile.
            time.sleep(0.005)


def _grpc_client(port: int, body: dict[str, object], seen: Traffic, stop: threading.Event) -> None:
    from driftloop_grpc import ModelClient

    with ModelClient(f"127.0.0.1:{port}") as client:
        while not stop.is_set():
            try:
                seen.grpc_versions.append(str(client.predict(body).model_version))
            except Exception as exc:
                seen.failures.append(f"grpc {type(exc).__name__}: {exc}")
            time.sleep(0.01)


def _example() -> dict[str, object]:
    from training.spec import load_spec

    return load_spec().example_request()


@contextmanager
def traffic(served: Served, clients: int = 2, grpc: bool = False) -> Iterator[Traffic]:
    body = _example()
    seen, stop = Traffic(), threading.Event()
    threads = [
        threading.Thread(target=_http_client, args=(served.url, body, seen, stop), daemon=True)
        for _ in range(clients)
    ]
    if grpc:
        threads.append(
            threading.Thread(
                target=_grpc_client, args=(served.grpc_port, body, seen, stop), daemon=True
            )
        )
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def _until(check: object, what: str, served: Served, timeout_s: float = READY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{served.text()[-4000:]}")


def _local_deployments(store_url: str) -> list[tuple[str, str, str]]:
    with connect(store_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT model_tag, bento_tag, status FROM deployments WHERE target = 'local' ORDER BY id"
        )
        return [tuple(row) for row in cur.fetchall()]


def test_a_promotion_switches_the_server_to_the_new_champion_without_a_failed_request(
    env: Path, store_url: str, versions: Versions
) -> None:
    first_version = versions.first.partition(":")[2]
    second_version = versions.second.partition(":")[2]
    with follower(env) as served, traffic(served, grpc=True) as seen:
        _until(lambda: len(seen.versions) > 200, "traffic to the first champion", served)

        assert main(["promote", versions.second, "--reason", "follow test"]) == 0

        _until(lambda: second_version in seen.count(), "an answer of the second model", served)
        served.wait_for_line("stopped v1")
        settled = len(seen.versions)
        _until(lambda: len(seen.versions) > settled + 200, "traffic after the switch", served)

    log = served.text()
    assert seen.failures == [], seen.failures[:10]
    # Every answer came from the first model until the switch, and from the second after it.
    switch = seen.versions.index(second_version)
    assert set(seen.versions[:switch]) == {first_version}
    tail = seen.versions[switch:]
    late = [v for v in tail[len(tail) // 2 :] if v != second_version]
    assert late == [], f"answers of the old model long after the switch: {len(late)}"
    assert set(seen.grpc_versions) == {first_version, second_version}
    assert seen.grpc_versions[-1] == second_version
    assert f"new champion v2 ({versions.second}): starting {versions.second_bento}" in log
    assert f"switched to v2 ({versions.second})" in log
    assert _local_deployments(store_url) == [
        (versions.first, versions.first_bento, "serving"),
        (versions.second, versions.second_bento, "serving"),
    ]


def test_a_champion_whose_bento_cannot_serve_leaves_the_running_one_serving(
    env: Path, store_url: str, versions: Versions
) -> None:
    """Two new champions in turn that cannot take over: one whose Bento is nowhere to be found
    (promoted on another machine, say: not in this BentoML store, no export recorded), then one
    whose Bento starts but whose workers fail loading a damaged model file."""
    import bentoml

    from training.registry import MODEL_FILE

    first_version = versions.first.partition(":")[2]
    second = f"v2 ({versions.second})"
    Path(bentoml.models.get(versions.second).path_of(MODEL_FILE)).write_bytes(b"not a model")
    with connect(store_url) as conn:
        registry.set_bento(conn, versions.second, "churn_service:missing")
    with follower(env) as served, traffic(served, clients=1) as seen:
        _until(lambda: len(seen.versions) > 50, "traffic to the first champion", served)

        assert main(["promote", versions.second, "--reason", "a Bento made elsewhere"]) == 0
        served.wait_for_line(f"NOT switching to {second}: it could not be started")
        with connect(store_url) as conn:  # its Bento, found again
            registry.set_bento(conn, versions.second, versions.second_bento)
        served.wait_for_line(f"NOT switching to {second}: a worker exited while starting")
        count = len(seen.versions)
        _until(lambda: len(seen.versions) > count + 50, "traffic after the refusals", served)

    log = served.text()
    assert seen.failures == []
    assert set(seen.versions) == {first_version}
    assert "churn_service:missing is not in the local BentoML store" in log
    assert log.count(f"still serving v1 ({versions.first})") == 2
    statuses = [status for _, _, status in _local_deployments(store_url)]
    assert statuses == ["serving", "failed", "failed"]
