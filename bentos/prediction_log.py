"""Prediction logging off the request path: a write-ahead spool on local disk, written to PostgreSQL
by a background thread with COPY.

Each service worker process owns one :class:`PredictionLog`. The request path encodes its
predictions (:func:`training.store.encode_prediction`) and appends them to the worker's spool with
one ``write`` before answering; a writer thread seals the spool's active segment every flush
interval and COPYs the sealed segments into ``predictions``, oldest first, deleting each once
committed. While PostgreSQL is down the records wait on disk (up to ``max_bytes``, then the
request path gets :class:`SpoolFull`), and are replayed in order, without duplicates, once it is
back. A worker that dies leaves its directory behind; another worker (or the next start) adopts
and drains it.

This module holds the writer: :class:`PredictionLog` (appends, the writer thread, COPY, the
connection, backoff, the store's state, stats) and its errors. The files it writes and reads (owner
directories and their locks, segments, ``rejected/``, adoption) are :mod:`bentos.spool`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg2

from bentos import spool
from training import partitions
from training.errors import DriftloopError
from training.store import Connection, copy_predictions, service_connection

__all__ = ["LogStats", "PredictionLog", "SpoolClosed", "SpoolFull"]

log = logging.getLogger(__name__)

_APPLICATION_NAME = "driftloop-prediction-log"

_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0
_ORPHAN_SCAN_S = 5.0
# The writer turns back to its own spool this often while draining a dead worker's backlog, so
# its own records do not wait behind a large adoption.
_ORPHAN_BUDGET_S = 1.0
# Segments are COPYed in statements of at most this many bytes: a segment that grew during a long
# outage must not run into the statement timeout, and a bad line is searched for in one chunk only.
_CHUNK_BYTES = 4 << 20
# Readiness goes false before appends start failing, so a load balancer can steer away first.
_READY_FILL = 0.9
_WAIT_POLL_S = 0.01
# How often the writer makes the store's day partitions ahead (training.partitions: a week ahead,
# so a worker that runs for weeks never writes past them), and how soon it tries again after a
# failure.
_PARTITIONS_EVERY_S = 3600.0
_PARTITIONS_RETRY_S = 60.0
# A segment name's time and a caller's wall-clock time can round differently; waiting for one more
# segment is harmless, missing one is not.
_SINCE_SLACK_NS = 1_000

# PostgreSQL refused the data itself (bad encoding, bad JSON, a value out of range, a NULL):
# retrying cannot help. Everything else (connection lost, timeout, missing table, permissions) is
# retried.
_BAD_DATA = (psycopg2.DataError, psycopg2.IntegrityError)


class SpoolFull(DriftloopError):
    """The worker's spool holds ``max_bytes`` not yet in PostgreSQL: nothing was written."""


class SpoolClosed(SpoolFull):
    """The log is not running (not started, or closing): nothing was written.

    A subclass of :class:`SpoolFull` so that a caller answering "cannot record now" for a full spool
    does the same during shutdown.
    """


@dataclass(frozen=True)
class LogStats:
    """A snapshot of one worker's prediction log.

    Attributes:
        spooled_records: records appended to this worker's spool and not yet stored.
        spooled_bytes: their size in the spool.
        lag_s: age of the oldest of them (0 when there is none).
        store_ok: whether the last attempt to reach PostgreSQL succeeded (False until the first).
        stored_total: rows this log newly stored in PostgreSQL (adopted spools included).
        rejected_total: records PostgreSQL refused, set aside under ``rejected/``.
    """

    spooled_records: int
    spooled_bytes: int
    lag_s: float
    store_ok: bool
    stored_total: int
    rejected_total: int


@dataclass
class _Segment:
    path: Path
    bytes: int = 0
    records: int = 0
    # Monotonic time of the segment's first record (0 while empty): the lag of what is in it.
    first_append: float = 0.0


class PredictionLog:
    """One worker's write-ahead spool of predictions and the thread that writes it to PostgreSQL.

    Start it in the process that appends (after any fork): the spool directory's lock belongs to
    the process that took it.
    """

    def __init__(
        self,
        url: str,
        spool_root: Path,
        *,
        max_bytes: int,
        flush_interval_s: float,
        connect_timeout_s: int,
        statement_timeout_ms: int,
    ) -> None:
        """Configure the log; nothing touches the disk or the network until :meth:`start`.

        Args:
            url: the PostgreSQL URL of the feedback store (never logged above DEBUG).
            spool_root: the folder shared by every worker's spool directory.
            max_bytes: the most this worker's spool may hold that is not yet in PostgreSQL.
            flush_interval_s: how long records gather before the writer COPYs them.
            connect_timeout_s: connect timeout of the writer's connection.
            statement_timeout_ms: statement timeout of the writer's connection.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be positive")
        self._url = url
        self._root = Path(spool_root)
        self._max_bytes = max_bytes
        self._flush_interval_s = flush_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms

        # Shared between the request path and the writer, always under _lock.
        self._lock = threading.Lock()
        self._active: _Segment | None = None
        self._active_fd = -1
        self._sealed: deque[_Segment] = deque()
        self._pending_bytes = 0
        self._pending_records = 0
        self._accepting = False
        self._store_ok: bool | None = None
        self._stored_total = 0
        self._rejected_total = 0

        # Flags another thread sets for the writer (a plain store is atomic).
        self._wake = threading.Event()
        self._stopping = False
        self._scan_soon = False

        # The writer thread's own.
        self._dir: Path | None = None
        self._lock_fd = -1
        self._seq = 0
        self._conn: Connection | None = None
        self._down_since = time.monotonic()
        self._stored_when_down = 0
        self._next_partitions = 0.0
        self._orphans: dict[Path, spool.Orphan] = {}
        self._thread: threading.Thread | None = None

    @property
    def directory(self) -> Path | None:
        """This worker's spool directory (None before :meth:`start`)."""
        return self._dir

    def start(self) -> None:
        """Create and lock this worker's spool directory and start the writer thread.

        Raises:
            OSError: the spool directory cannot be made.
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError("the prediction log is already started")
        self._dir, self._lock_fd = spool.create_owner_directory(self._root)
        fd, segment = self._new_segment()
        with self._lock:
            self._active, self._active_fd = segment, fd
            self._accepting = True
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def append(self, lines: bytes, count: int) -> None:
        """Write a batch of encoded predictions to the spool, before their responses are sent.

        One ``write`` to the active segment under a lock; never waits for PostgreSQL. There is no
        fsync: a killed process loses nothing (the kernel has the data), but a power loss or kernel
        crash can lose what the OS had not yet written back.

        Args:
            lines: whole lines from :func:`training.store.encode_prediction`, concatenated.
            count: how many records ``lines`` holds.

        Raises:
            SpoolFull: the bytes not yet in PostgreSQL plus ``lines`` would pass ``max_bytes``;
                nothing was written.
            SpoolClosed: the log is not running; nothing was written.
            OSError: the disk refused the write; nothing was written.
        """
        size = len(lines)
        with self._lock:
            active = self._active
            if active is None or not self._accepting:
                raise SpoolClosed("the prediction log is not running")
            if self._pending_bytes + size > self._max_bytes:
                raise SpoolFull(
                    f"the prediction spool holds {self._pending_bytes} bytes not yet stored "
                    f"(limit {self._max_bytes})"
                )
            fd = self._active_fd
            try:
                written = os.write(fd, lines)
            except OSError:
                self._cut_back(fd, active.bytes)
                raise
            if written != size:
                # A full disk can take part of a write: take it back, or the segment would end
                # in half a line.
                self._cut_back(fd, active.bytes)
                raise OSError(errno.ENOSPC, "the prediction spool took only part of a write")
            if not active.bytes:
                active.first_append = time.monotonic()
            active.bytes += size
            active.records += count
            self._pending_bytes += size
            self._pending_records += count

    @staticmethod
    def _cut_back(fd: int, size: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)

    def stats(self) -> LogStats:
        """A snapshot of this worker's spool and writer (cheap; for metrics)."""
        with self._lock:
            if self._sealed:
                oldest = self._sealed[0].first_append
            elif self._active is not None and self._active.bytes:
                oldest = self._active.first_append
            else:
                oldest = 0.0
            return LogStats(
                spooled_records=self._pending_records,
                spooled_bytes=self._pending_bytes,
                lag_s=max(time.monotonic() - oldest, 0.0) if oldest else 0.0,
                store_ok=bool(self._store_ok),
                stored_total=self._stored_total,
                rejected_total=self._rejected_total,
            )

    def has_room(self) -> bool:
        """Whether the log runs and its spool is less than 90% full (for readiness probes)."""
        with self._lock:
            return self._accepting and self._pending_bytes < self._max_bytes * _READY_FILL

    def wait_stored(self, since: float, timeout_s: float) -> bool:
        """Wait until every record appended before ``since``, by any worker, is in PostgreSQL.

        Looks at every spool directory under the spool root: done when no non-empty segment
        created at or before ``since`` remains (one created earlier but written to after ``since``
        is waited for too, at most a flush interval longer). Wakes this worker's writer (and its
        search for dead workers' spools) at once; blocks the calling thread.

        Args:
            since: a wall-clock time (``time.time()``), e.g. when a feedback request arrived.
            timeout_s: the longest to wait.

        Returns:
            True when everything appended before ``since`` is stored, False on timeout.
        """
        limit_ns = int(since * 1e9) + _SINCE_SLACK_NS
        deadline = time.monotonic() + timeout_s
        self._scan_soon = True
        self._wake.set()
        while spool.unstored_before(self._root, limit_ns):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(_WAIT_POLL_S, remaining))
        return True

    def close(self, timeout_s: float) -> bool:
        """Refuse further appends, write what is spooled to PostgreSQL, stop the writer.

        What cannot be written within ``timeout_s`` (or at all: the store is down) stays in the
        spool directory, which the next start (or another worker) adopts.

        Args:
            timeout_s: the longest to wait for the writer.

        Returns:
            True when this worker's spool is empty (its directory is then removed).
        """
        with self._lock:
            self._accepting = False
        thread = self._thread
        if thread is None:
            return True
        self._stopping = True
        self._wake.set()
        thread.join(timeout_s)
        if thread.is_alive():
            return False
        with self._lock:
            return not self._pending_bytes and not self._pending_records

    # The writer thread.

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("prediction log: the writer stopped on an unexpected error")
        finally:
            self._finish()

    def _loop(self) -> None:
        backoff = 0.0
        next_scan = 0.0
        quick_retry_used = False
        disk_failing = False
        while True:
            final = self._stopping
            more = False
            try:
                self._seal()
                if not final and (self._scan_soon or time.monotonic() >= next_scan):
                    self._scan_soon = False
                    next_scan = time.monotonic() + _ORPHAN_SCAN_S
                    self._adopt_orphans()
                if not self._store_ok and not final:
                    # Reconnect even with nothing to write, so store_ok tells the truth when idle.
                    self._connection()
                self._drain_own()
                if not final:
                    self._maintain_partitions()
                    more = self._drain_orphans(time.monotonic() + _ORPHAN_BUDGET_S)
                if self._conn is not None:  # the store answered (not merely: nothing to write)
                    self._set_store_state(True)
                backoff = 0.0
                quick_retry_used = disk_failing = False
            except psycopg2.Error as exc:
                self._drop_connection()
                if self._store_ok and not quick_retry_used:
                    # An idle connection broken by a server restart: a fresh one usually works.
                    quick_retry_used = True
                    log.debug("prediction log: store error, retrying on a new connection: %s", exc)
                    continue
                self._set_store_state(False, exc)
                backoff = min(max(backoff * 2, _BACKOFF_FIRST_S), _BACKOFF_MAX_S)
            except OSError:
                # Once per streak, like the store's state: a full disk must not flood the log.
                log.log(
                    logging.DEBUG if disk_failing else logging.ERROR,
                    "prediction log: spool file error; retrying",
                    exc_info=True,
                )
                disk_failing = True
                backoff = min(max(backoff * 2, _BACKOFF_FIRST_S), _BACKOFF_MAX_S)
            if final:
                return
            if backoff:
                self._sleep(backoff, interruptible=False)
            elif not more:
                self._sleep(self._flush_interval_s, interruptible=True)

    def _sleep(self, seconds: float, *, interruptible: bool) -> None:
        # Backoff ignores wake-ups (a caller waiting for its records must not make the writer hammer
        # a server that is down); only stopping cuts it short.
        deadline = time.monotonic() + seconds
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()
                if interruptible:
                    return

    def _finish(self) -> None:
        self._drop_connection()
        for orphan in list(self._orphans.values()):
            self._release_orphan(orphan, remove=False)
        with self._lock:
            self._accepting = False
            active, fd = self._active, self._active_fd
            self._active, self._active_fd = None, -1
            if active is not None and active.bytes:
                self._sealed.append(active)
            left = self._pending_records
            empty = not self._sealed
        if fd >= 0:
            os.close(fd)
        directory = self._dir
        if directory is not None:
            if empty:
                try:
                    spool.remove_owner_directory(directory)
                except OSError as exc:
                    log.warning(
                        "prediction log: could not remove the empty spool %s: %s",
                        directory,
                        exc.strerror,
                    )
            else:
                log.warning(
                    "prediction log: %d records were not stored before stopping; they stay in "
                    "%s for the next start",
                    left,
                    directory,
                )
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _new_segment(self) -> tuple[int, _Segment]:
        assert self._dir is not None
        self._seq += 1
        fd, path = spool.open_segment(self._dir, self._seq)
        return fd, _Segment(path)

    def _seal(self) -> None:
        # Only the writer empties the active segment, so this unlocked look cannot miss records for
        # long: at worst they wait for the next round.
        active = self._active
        if active is None or not active.bytes:
            return
        fd, segment = self._new_segment()  # made outside the lock: append waits for the swap only
        with self._lock:
            old_fd = self._active_fd
            self._sealed.append(active)
            self._active, self._active_fd = segment, fd
        os.close(old_fd)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = service_connection(
                self._url,
                connect_timeout_s=self._connect_timeout_s,
                statement_timeout_ms=self._statement_timeout_ms,
                application_name=_APPLICATION_NAME,
            )
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

    def _set_store_state(self, ok: bool, exc: psycopg2.Error | None = None) -> None:
        with self._lock:
            previous, self._store_ok = self._store_ok, ok
            pending = self._pending_records
            stored = self._stored_total
        if exc is not None:
            log.debug("prediction log: store error", exc_info=exc)
        if ok and previous is False:
            log.info(
                "prediction log: the feedback store is reachable again after %.1f s; %d records "
                "written from the spool",
                time.monotonic() - self._down_since,
                stored - self._stored_when_down,
            )
        elif not ok and previous is not False:
            self._down_since, self._stored_when_down = time.monotonic(), stored
            log.warning(
                "prediction log: the feedback store is unavailable (%s); predictions wait in the "
                "spool (%d records so far) and are written when it is back",
                self._describe(exc),
                pending,
            )

    def _describe(self, exc: psycopg2.Error | None) -> str:
        """The error in one line, without the URL, host or socket it was about."""
        if exc is None:
            return "unknown error"
        text = (str(exc).strip().splitlines() or [""])[0]
        # libpq names the server ("connection to server on socket "/path" failed: ...") first.
        if "failed: " in text:
            text = text.rsplit("failed: ", 1)[1]
        text = text.replace(self._url, "<url>")
        text = re.sub(r'"/[^"]*"', '"<socket>"', text)
        kind = type(exc).__name__
        return f"{kind}: {text}" if text else kind

    def _maintain_partitions(self) -> None:
        """Make the store's day partitions ahead, hourly; a failure is logged and retried soon.

        Raises:
            psycopg2.Error: the store is gone (the rollback failed too): as any store error.
        """
        now = time.monotonic()
        if now < self._next_partitions or self._conn is None:
            return
        conn = self._conn
        try:
            partitions.try_ensure_ahead(conn)
            conn.commit()
        except psycopg2.Error as exc:
            conn.rollback()
            self._next_partitions = now + _PARTITIONS_RETRY_S
            log.warning(
                "prediction log: the store's day partitions ahead could not be made (%s); "
                "retrying in %.0f s",
                self._describe(exc),
                _PARTITIONS_RETRY_S,
            )
            return
        self._next_partitions = now + _PARTITIONS_EVERY_S

    def _drain_own(self) -> None:
        while True:
            with self._lock:
                if not self._sealed:
                    return
                segment = self._sealed[0]
            self._store_segment(segment.path)
            with self._lock:
                self._sealed.popleft()
                self._pending_bytes -= segment.bytes
                self._pending_records -= segment.records

    def _store_segment(self, path: Path) -> None:
        """COPY one sealed segment into PostgreSQL and delete it.

        Whole lines only; each chunk is its own transaction (a replay after a crash dedupes on
        ``request_id``). Lines PostgreSQL refuses as data are found by bisection, set aside under
        ``rejected/`` and logged; the rest is stored.

        Raises:
            psycopg2.Error: the store failed (not the data); the segment stays for a retry.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # already gone: nothing left to store
            return
        refused: list[bytes] = []
        first_refusal: psycopg2.Error | None = None
        lines_total = 0
        with os.fdopen(fd, "r+b") as source:
            size = self._keep_whole_lines(source, path)
            source.seek(0)
            for chunk in _chunks(source, size):
                lines_total += chunk.count(b"\n")
                conn = self._connection()
                try:
                    stored = copy_predictions(conn, chunk)
                    conn.commit()
                except _BAD_DATA:
                    conn.rollback()
                    stored, bad, error = self._salvage(conn, chunk)
                    refused.extend(bad)
                    first_refusal = first_refusal or error
                with self._lock:
                    self._stored_total += stored
        if refused:
            kept = spool.set_aside(self._root, spool.rejected_name(path), b"".join(refused))
            with self._lock:
                self._rejected_total += len(refused)
            log.error(
                "prediction log: PostgreSQL refused %d of the %d records in spool segment %s (%s); "
                "they are kept in %s and not retried",
                len(refused),
                lines_total,
                path.name,
                _refusal_reason(first_refusal),
                kept,
            )
        path.unlink()

    def _salvage(
        self, conn: Connection, chunk: bytes
    ) -> tuple[int, list[bytes], psycopg2.Error | None]:
        """Store every line of ``chunk`` PostgreSQL accepts, by bisection; return the rest."""
        lines = [line + b"\n" for line in chunk.split(b"\n")[:-1]]
        stored = 0
        bad: list[bytes] = []
        error: psycopg2.Error | None = None
        middle = len(lines) // 2
        todo = [(middle, len(lines)), (0, middle)] if len(lines) > 1 else [(0, len(lines))]
        while todo:
            low, high = todo.pop()
            if low == high:
                continue
            try:
                stored += copy_predictions(conn, b"".join(lines[low:high]))
                conn.commit()
            except _BAD_DATA as exc:
                conn.rollback()
                if high - low == 1:
                    bad.append(lines[low])
                    error = error or exc
                else:
                    middle = (low + high) // 2
                    todo += [(middle, high), (low, middle)]
        return stored, bad, error

    def _keep_whole_lines(self, source: IO[bytes], path: Path) -> int:
        """The size of the segment's whole lines; an incomplete last line is moved aside."""
        whole = spool.keep_whole_lines(self._root, source, path)
        if whole.cut:
            log.warning(
                "prediction log: spool segment %s ended in an incomplete line (%d bytes, an "
                "interrupted write); it is kept in %s, the whole lines are stored",
                path.name,
                whole.cut,
                whole.kept,
            )
        return whole.size

    def _adopt_orphans(self) -> None:
        """Lock the spool directories of dead workers (their lock is free) for draining."""
        for orphan in spool.adopt_orphans(self._root, self._dir, self._orphans):
            self._orphans[orphan.directory] = orphan
            log.info(
                "prediction log: adopting the spool of stopped worker %s (%d segments)",
                orphan.directory.name,
                len(orphan.segments),
            )

    def _drain_orphans(self, deadline: float) -> bool:
        """Store adopted segments until ``deadline``; return whether some are left."""
        for orphan in list(self._orphans.values()):
            while orphan.segments:
                if time.monotonic() >= deadline:
                    return True
                self._store_segment(orphan.segments[0])
                orphan.segments.popleft()
            self._release_orphan(orphan, remove=True)
        return False

    def _release_orphan(self, orphan: spool.Orphan, *, remove: bool) -> None:
        del self._orphans[orphan.directory]
        try:
            spool.release_orphan(orphan, remove=remove)
        except OSError as exc:
            log.warning(
                "prediction log: could not remove the drained spool %s: %s",
                orphan.directory,
                exc.strerror,
            )


def _chunks(source: IO[bytes], size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``source`` in pieces of whole lines of about ``_CHUNK_BYTES``."""
    carry = b""
    remaining = size
    while remaining > 0:
        block = source.read(min(_CHUNK_BYTES, remaining))
        if not block:
            break
        remaining -= len(block)
        block = carry + block
        cut = block.rfind(b"\n") + 1
        carry = block[cut:]
        if cut:
            yield block[:cut]
    if carry:
        yield carry


def _refusal_reason(exc: psycopg2.Error | None) -> str:
    # The message's detail quotes the offending value (request data): only its kind is logged here;
    # the lines themselves are in the rejected file.
    if exc is None:
        return "unknown error"
    log.debug("prediction log: refusal detail: %s", exc)
    return f"{type(exc).__name__}, SQLSTATE {exc.pgcode}"
