"""The prediction log against a real PostgreSQL: COPY round trip, replay without duplicates, the
spool's bound, outages, adoption of a dead worker's spool, bad data set aside."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bentos import prediction_log
from bentos.prediction_log import PredictionLog, SpoolFull
from training.partitions import DAYS_AHEAD, PARTITIONED_TABLES, partition_days
from training.store import (
    Connection,
    PredictionRecord,
    connect,
    copy_predictions,
    encode_prediction,
    service_connection,
)

pytestmark = pytest.mark.integration

FEATURES = {"age": 42.0, "tenure_months": 12.0, "plan": "basic", "region": "north"}
LOGGER = "bentos.prediction_log"
DEAD_OWNER = "999999-deadbeef"

MakeLog = Callable[..., PredictionLog]

# A worker that spools 20 batches (its store is unreachable), says which ids it appended, then waits
# to be killed.
_WORKER = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from bentos.prediction_log import PredictionLog
from training.store import PredictionRecord, encode_prediction

log = PredictionLog(sys.argv[1], Path(sys.argv[2]), max_bytes=1 << 20, flush_interval_s=0.02,
                    connect_timeout_s=1, statement_timeout_ms=1000)
log.start()
for batch in range(20):
    ids = [f"k{batch:02d}-{i}" for i in range(10)]
    log.append(b"".join(encode_prediction(PredictionRecord(
        rid, "churn", "v1", {"a": 1}, 0.5, 1, datetime.now(UTC))) for rid in ids), 10)
    print(*ids, flush=True)
print("spooled", flush=True)
time.sleep(60)
"""


def _record(request_id: str, **overrides: Any) -> PredictionRecord:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "model_name": "churn",
        "model_version": "v1",
        "features": FEATURES,
        "score": 0.5,
        "label": 1,
        "created_at": datetime.now(UTC),
    }
    return PredictionRecord(**(fields | overrides))


def _lines(*request_ids: str) -> bytes:
    return b"".join(encode_prediction(_record(rid)) for rid in request_ids)


def _stored(url: str) -> list[str]:
    """Every stored request id, in order. The primary key, (request_id, created_at), makes a
    replayed line impossible to store twice: a replay that does not dedupe shows as a writer stuck
    on a unique violation instead (records missing, ``wait_stored`` timing out)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT request_id FROM predictions ORDER BY request_id")
        return [row[0] for row in cur.fetchall()]


def _eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _dead_worker_spool(root: Path, *segments: bytes) -> Path:
    """A spool directory as a killed worker leaves it: a lock nobody holds, segments in order."""
    directory = root / DEAD_OWNER
    directory.mkdir(parents=True, mode=0o700)
    (directory / "lock").touch()
    for seq, data in enumerate(segments, start=1):
        (directory / f"{time.time_ns():020d}-{seq:06d}.copy").write_bytes(data)
    return directory


def _owner_dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and p.name != "rejected"]


@pytest.fixture
def unreachable_url() -> str:
    """A URL whose port refuses connections at once (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://nobody:secret@127.0.0.1:{port}/none"


@pytest.fixture
def make_log(tmp_path: Path) -> Iterator[MakeLog]:
    """Started logs under ``tmp_path/spool``, closed at the end of the test."""
    made: list[PredictionLog] = []

    def make(url: str, **overrides: Any) -> PredictionLog:
        options: dict[str, Any] = {
            "max_bytes": 1 << 20,
            "flush_interval_s": 0.02,
            "connect_timeout_s": 2,
            "statement_timeout_ms": 5000,
        }
        log = PredictionLog(url, tmp_path / "spool", **(options | overrides))
        log.start()
        made.append(log)
        return log

    yield make
    for log in made:
        log.close(5.0)


def test_awkward_records_round_trip_through_copy(store_url: str) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    records = [
        _record(
            "tab\there\\and\nnewline\r",
            features={
                "path": "C:\\temp\\new",
                "quote": "say \"hi\" 'twice'",
                "controls": "a\tb\nc\r\nd",
                "unicode": "Zürich 東京 😀",
                "nothing": None,
                "lookalike": "\\u0000 \\n \\\\",
                "nested": {"list": [1, 2.5, None, "x\\y"]},
            },
            score=0.1 + 0.2,
            created_at=datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=india),
        ),
        _record("plain", model_version="v\\2", features={}, score=1e-300, label=0),
    ]
    with connect(store_url) as conn:
        assert copy_predictions(conn, b"".join(map(encode_prediction, records))) == 2
    with connect(store_url) as conn, conn.cursor() as cur:
        for record in records:
            cur.execute(
                "SELECT model_name, model_version, features, score, label, created_at,"
                " features = %s::jsonb FROM predictions WHERE request_id = %s",
                (json.dumps(record.features), record.request_id),
            )
            row = cur.fetchone()
            assert row == (
                record.model_name,
                record.model_version,
                record.features,
                record.score,
                record.label,
                record.created_at,
                True,
            )


def test_copy_predictions_replays_without_duplicates(store_url: str) -> None:
    served = datetime.now(UTC)
    with connect(store_url) as conn:
        assert (
            copy_predictions(conn, _lines("a") + encode_prediction(_record("b", created_at=served)))
            == 2
        )
    # A replay carries the same id and time ("b"; the primary key stops it, and the slow path
    # keeps the first version); "a" again at another time is skipped by the slow path too.
    replay = (
        encode_prediction(_record("b", score=0.9, created_at=served))
        + encode_prediction(_record("a", created_at=served + timedelta(days=2)))
        + _lines("c")
    )

    class Stream(io.RawIOBase):
        """A pipe-like source that cannot seek (the slow path must still see every line)."""

        def __init__(self) -> None:
            self.rest = replay

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = min(len(buffer), len(self.rest))
            buffer[:n], self.rest = self.rest[:n], self.rest[n:]
            return n

    with connect(store_url) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # work done earlier in the caller's transaction survives
        assert copy_predictions(conn, io.BufferedReader(Stream())) == 1
        assert copy_predictions(conn, io.BytesIO(replay)) == 0  # twice in one transaction
    assert _stored(store_url) == ["a", "b", "c"]
    with connect(store_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT score FROM predictions WHERE request_id = 'b'")
        assert cur.fetchone() == (0.5,)  # the first write stays


def test_service_connection_sets_the_statement_timeout(store_url: str) -> None:
    conn: Connection = service_connection(
        store_url, connect_timeout_s=2, statement_timeout_ms=1234, application_name="pl-test"
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT current_setting('statement_timeout'), current_setting('application_name')"
            )
            assert cur.fetchone() == ("1234ms", "pl-test")
    finally:
        conn.close()


def test_twenty_thousand_records_are_stored_exactly_once(
    store_url: str, make_log: MakeLog, tmp_path: Path
) -> None:
    log = make_log(store_url, max_bytes=64 << 20)
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    for start in range(0, len(ids), 10):
        log.append(_lines(*ids[start : start + 10]), 10)
    assert log.wait_stored(time.time(), 30.0)
    assert log.close(5.0)
    stored = _stored(store_url)
    assert len(stored) == 20_000
    assert stored == sorted(ids)
    assert log.stats().stored_total == 20_000
    assert log.stats().spooled_records == 0
    assert _owner_dirs(tmp_path / "spool") == []


def test_outage_keeps_records_spooled_until_another_log_adopts_them(
    store_url: str,
    unreachable_url: str,
    make_log: MakeLog,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    attempts: list[str] = []

    def counting(url: str, **kwargs: Any) -> Connection:
        attempts.append(url)
        return service_connection(url, **kwargs)

    monkeypatch.setattr(prediction_log, "service_connection", counting)
    down = make_log(unreachable_url)
    ids = [f"r{i:02d}" for i in range(30)]
    for start in range(0, 30, 10):
        down.append(_lines(*ids[start : start + 10]), 10)
    # Backoff 0.2 s, 0.4 s, ...: four attempts by about 1.4 s.
    assert _eventually(lambda: attempts.count(unreachable_url) >= 4)

    stats = down.stats()
    assert (stats.spooled_records, stats.store_ok, stats.stored_total) == (30, False, 0)
    assert stats.spooled_bytes == len(_lines(*ids))
    assert stats.lag_s >= 0.5
    assert down.has_room()  # an outage alone does not make the worker unready
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable" in warnings[0].getMessage()
    for record in warnings:
        assert "127.0.0.1" not in record.getMessage()
        assert "secret" not in record.getMessage()

    # A live worker's spool is not taken: the records cannot be stored yet.
    up = make_log(store_url)
    assert up.wait_stored(time.time(), 0.5) is False
    assert _stored(store_url) == []

    assert down.close(1.0) is False  # nothing could be written; the records stay on disk
    assert down.directory is not None
    assert any(down.directory.glob("*.copy"))

    assert up.wait_stored(time.time(), 10.0)
    assert _stored(store_url) == ids
    assert up.stats().stored_total == 30
    assert not down.directory.exists()
    assert _owner_dirs(tmp_path / "spool") == [up.directory]


def test_a_killed_workers_spool_is_adopted_and_stored(
    store_url: str, unreachable_url: str, make_log: MakeLog, tmp_path: Path
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, unreachable_url, str(tmp_path / "spool")],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    appended: list[str] = []
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            if line.strip() == "spooled":
                break
            appended += line.split()
    finally:
        os.kill(worker.pid, signal.SIGKILL)  # no close(), no flush: what a crash leaves
        worker.wait(10)
    assert len(appended) == 200

    log = make_log(store_url)
    assert log.wait_stored(time.time(), 10.0)
    assert _stored(store_url) == sorted(appended)
    assert _owner_dirs(tmp_path / "spool") == [log.directory]


def test_wait_stored_times_out_while_the_store_is_unreachable(
    unreachable_url: str, make_log: MakeLog
) -> None:
    log = make_log(unreachable_url)
    log.append(_lines("x"), 1)
    started = time.monotonic()
    assert log.wait_stored(time.time(), 0.3) is False
    assert 0.3 <= time.monotonic() - started < 2.0


def test_a_segment_already_stored_is_replayed_without_duplicates(
    store_url: str, make_log: MakeLog, tmp_path: Path
) -> None:
    ids = [f"r{i}" for i in range(10)]
    segment = _lines(*ids)
    first_half = b"".join(segment.splitlines(keepends=True)[:5])
    # The dead worker committed the first half, then died before deleting its segment: the same
    # lines (ids and times) come again.
    with connect(store_url) as conn:
        copy_predictions(conn, first_half)
    dead = _dead_worker_spool(tmp_path / "spool", first_half, segment)

    log = make_log(store_url)
    assert log.wait_stored(time.time(), 10.0)
    assert _stored(store_url) == ids
    stats = log.stats()
    assert (stats.stored_total, stats.rejected_total, stats.store_ok) == (5, 0, True)
    assert not dead.exists()
    assert not (tmp_path / "spool" / "rejected").exists()


def test_append_past_max_bytes_is_refused_until_the_writer_drains(
    store_url: str, make_log: MakeLog
) -> None:
    batches = [_lines(*(f"{prefix}{i}" for i in range(10))) for prefix in "abcd"]
    fits = sum(len(batch) for batch in batches[:3])
    log = make_log(store_url, max_bytes=fits + 10, flush_interval_s=60.0)
    assert _eventually(lambda: log.stats().store_ok)  # the writer's first round is over
    for batch in batches[:3]:
        log.append(batch, 10)
    assert log.has_room() is False

    with pytest.raises(SpoolFull):
        log.append(batches[3], 10)
    assert log.directory is not None
    on_disk = sum(p.stat().st_size for p in log.directory.glob("*.copy"))
    assert on_disk == log.stats().spooled_bytes == fits
    assert log.stats().spooled_records == 30

    assert log.wait_stored(time.time(), 5.0)  # wakes the writer
    assert log.has_room()
    log.append(batches[3], 10)
    assert log.stats().spooled_records == 10
    assert log.close(5.0)
    assert len(_stored(store_url)) == 40


def test_an_incomplete_last_line_is_set_aside(
    store_url: str, make_log: MakeLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    tail = _lines("torn")[:-20]
    _dead_worker_spool(tmp_path / "spool", _lines("whole1", "whole2") + tail)

    log = make_log(store_url)
    assert log.wait_stored(time.time(), 10.0)
    assert _stored(store_url) == ["whole1", "whole2"]
    (kept,) = (tmp_path / "spool" / "rejected").glob("*.partial")
    assert kept.read_bytes() == tail
    assert any("incomplete line" in r.getMessage() for r in caplog.records)


def test_bad_data_is_set_aside_and_the_rest_stored(
    store_url: str, make_log: MakeLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    bad_label = _lines("bad1").replace(b"\t1\t", b"\tone\t")
    bad_json = b"bad2\tchurn\tv1\t{not json\t0.5\t1\t2026-03-01T00:00:00+00:00\n"
    dead = _dead_worker_spool(
        tmp_path / "spool", _lines("g1") + bad_label + _lines("g2", "g3"), bad_json
    )

    log = make_log(store_url)
    assert log.wait_stored(time.time(), 10.0)
    assert _stored(store_url) == ["g1", "g2", "g3"]
    rejected = sorted((tmp_path / "spool" / "rejected").iterdir())
    assert [p.read_bytes() for p in rejected] == [bad_label, bad_json]
    assert all(p.name.startswith(DEAD_OWNER) for p in rejected)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all("refused" in r.getMessage() and "not json" not in r.getMessage() for r in errors)
    stats = log.stats()
    assert (stats.rejected_total, stats.stored_total, stats.store_ok) == (2, 3, True)
    assert not dead.exists()

    # A bad line from this worker's own spool does not hold back what follows it.
    log.append(bad_json.replace(b"bad2", b"bad3"), 1)
    log.append(_lines("g4"), 1)
    assert log.wait_stored(time.time(), 5.0)
    assert _stored(store_url) == ["g1", "g2", "g3", "g4"]
    assert log.stats().rejected_total == 3


def test_close_writes_what_is_spooled(store_url: str, make_log: MakeLog) -> None:
    log = make_log(store_url, flush_interval_s=60.0)
    assert _eventually(lambda: log.stats().store_ok)  # the writer's first round is over
    log.append(_lines(*(f"r{i:02d}" for i in range(20))), 20)
    time.sleep(0.1)
    assert _stored(store_url) == []  # still waiting for the flush interval
    assert log.close(5.0)
    assert len(_stored(store_url)) == 20
    assert log.directory is not None
    assert not log.directory.exists()
    with pytest.raises(SpoolFull):  # closed (SpoolClosed is a SpoolFull)
        log.append(_lines("late"), 1)


def test_wait_stored_returns_once_the_records_are_stored(store_url: str, make_log: MakeLog) -> None:
    log = make_log(store_url, flush_interval_s=60.0)
    assert _eventually(lambda: log.stats().store_ok)
    log.append(_lines("x", "y"), 2)
    assert log.wait_stored(time.time(), 5.0)
    assert _stored(store_url) == ["x", "y"]  # already there, without waiting any longer


def test_the_spool_directory_is_private_and_locked(unreachable_url: str, make_log: MakeLog) -> None:
    log = make_log(unreachable_url)
    directory = log.directory
    assert directory is not None
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    fd = os.open(directory / "lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert log.close(2.0)  # nothing spooled: nothing lost, the directory goes
    assert not directory.exists()


def test_the_writer_makes_the_stores_days_ahead(store_url: str, make_log: MakeLog) -> None:
    """A worker that runs for weeks never writes past the store's day partitions: its writer
    makes the days ahead (as every store start does), here after the last one was dropped."""
    last = datetime.now(UTC).date() + timedelta(days=DAYS_AHEAD)
    with connect(store_url) as conn, conn.cursor() as cur:
        for table in PARTITIONED_TABLES:
            cur.execute(f"DROP TABLE {table}_p{last:%Y%m%d}")
    with connect(store_url) as conn:
        assert last not in partition_days(conn)
    make_log(store_url)
    assert _eventually(lambda: last in _days(store_url), timeout_s=15.0)


def _days(url: str) -> list[date]:
    with connect(url) as conn:
        return partition_days(conn)
