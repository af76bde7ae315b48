"""Benchmark: serving the champion over HTTP, our Bento against a hand-written FastAPI peer.

Both servers answer ``POST /predict`` for the same champion (loaded from the same BentoML model
store entry), validate with the same request model, and log every prediction to the same
PostgreSQL server: ours is started exactly as ``make serve`` starts it (``driftloop serve --port P
--workers N``), the peer is ``bench/serving_peer.py`` under ``uvicorn --workers N``. Each point
gets a fresh server on a free port, ~5 s of warm-up load, then ``wrk`` (2 threads, ``--latency``,
``bench/serving.lua`` cycling through a few hundred different valid records); after the server is
stopped (SIGTERM flushes) the ``predictions`` rows it left are counted against the 2xx answers.

Points: single-record ``/predict`` at 32 and 128 connections with 1 and 2 workers, for both servers;
our ``/predict_batch`` with 1,000-record bodies at 2 and 4 connections; our single-record point at
32 connections with logging off (``DRIFTLOOP_LOG_PREDICTIONS=false``); our gRPC ``Predict`` with 32
calls in flight, 1 and 2 workers (``bench/grpc_load.py``: wrk speaks HTTP/1.1 only); and the
in-process limits:
the model alone (1,000-row batches) and COPY of prediction rows into PostgreSQL alone. Ratios are
against the peer's (or the limit's) figure measured in the same run, on the same machine.

The servers log into a scratch database on the store's server (the champion registered there), so
benchmark traffic never reaches the real store's drift window; it is dropped at the end, and nothing
is left running, also on Ctrl-C or an error.

Usage: ``uv run --frozen python bench/serving.py [--duration 30] [--quick]`` (``make bench-serving
BENCH_ARGS=...``); ``--quick`` makes 5 s points for development. Progress goes to stderr, the table
(markdown) to stdout. Needs ``wrk`` and a champion (``make demo``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Literal

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "bench" / "serving.lua"
READY_TIMEOUT_S = 180.0  # a busy 2-core machine: generous
STOP_TIMEOUT_S = 60.0  # SIGTERM flushes the prediction log before the workers exit
WRK_TIMEOUT = "10s"  # a request unanswered for this long counts as an error
SINGLE_RECORDS = 400  # different records the single-record points cycle through
BATCH_BODIES = 4  # different 1,000-record bodies the batch points cycle through
BATCH_SIZE = 1000
LIMIT_BATCH_TARGET = 0.70  # of the in-process batched limit
LOGGING_COST_TARGET = 0.05  # of throughput
SCRATCH_PREFIX = "driftloop_bench_serving_"

# Every process this run started (servers, wrk); stopped in the end whatever happens.
_RUNNING: list[subprocess.Popen[bytes]] = []
_WRK: list[subprocess.Popen[bytes]] = []
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- what is measured ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One wrk measurement against one freshly started server."""

    server: Literal["ours", "peer"]
    workers: int
    connections: int
    route: str = "/predict"
    records: int = 1  # records per request
    log_predictions: bool = True
    transport: Literal["http", "grpc"] = "http"

    @property
    def kind(self) -> str:
        if self.transport == "grpc":
            return "single over gRPC"
        if self.route == "/predict_batch":
            return f"batch of {self.records:,}"
        return "single" if self.log_predictions else "single, logging off"

    @property
    def label(self) -> str:
        s = "s" if self.workers > 1 else ""
        return (
            f"{self.server}, {self.kind}, {self.workers} worker{s}, {self.connections} connections"
        )


@dataclass(frozen=True)
class WrkResult:
    requests: int  # complete responses, any status
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    sent: int  # requests written; sent - requests were in flight when wrk stopped

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def ok_rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def in_flight(self) -> int:
        return max(0, self.sent - self.requests)


@dataclass
class Outcome:
    point: Point
    wrk: WrkResult | None = None
    mean_batch: str = "-"
    logged: str = "-"
    logged_ok: bool = True
    logged_note: str = ""
    failure: str | None = None
    ratio: str = "-"
    verdict: str = "-"


@dataclass
class Limits:
    scorer: str
    model_rows_s: float
    copy_rows_s: float

    @property
    def batched_rows_s(self) -> float:
        # A pipelined server is bounded by its slower stage: scoring or writing the rows.
        return min(self.model_rows_s, self.copy_rows_s)


@dataclass
class Context:
    """What every point needs: the champion, the scratch store, the bodies, the temp dir."""

    model_tag: str
    bento_tag: str
    scratch_url: str
    workdir: Path
    single_bodies: Path
    batch_bodies: Path
    warmup_s: float
    duration_s: float
    step: Progress
    outcomes: list[Outcome] = field(default_factory=list)


# --- processes ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _start(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server in a session (process group) of its own, output to ``log``."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=ROOT,
            start_new_session=True,
        )
    _RUNNING.append(process)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (the server flushes its log), then SIGKILL to what is left."""
    if process.poll() is None or _group_alive(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
        # Workers of the group may outlive their parent for a moment; give them the same time.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    if process in _RUNNING:
        _RUNNING.remove(process)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_all() -> None:
    for process in list(_WRK):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        _WRK.remove(process)
    for process in list(_RUNNING):
        _stop(process)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> float:
    began = time.monotonic()
    while time.monotonic() - began < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(
                f"exited with {process.returncode} before it was ready:\n{_tail(log)}"
            )
        with contextlib.suppress(OSError):
            if _http_get(f"{url}/readyz", timeout=5)[0] == 200:
                return time.monotonic() - began
        time.sleep(0.5)
    raise RuntimeError(f"not ready within {READY_TIMEOUT_S:.0f} s:\n{_tail(log)}")


# --- wrk ----------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> WrkResult:
    """The figures of one ``wrk --latency`` run with ``serving.lua`` (which adds p95 and sent)."""
    total = re.search(rf"(\d+) requests in {_DURATION}", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if total is None or rps is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    distribution = {
        int(p): _ms(v, u) for p, v, u in re.findall(rf"^\s+(\d+)%\s+{_DURATION}\s*$", output, re.M)
    }
    lua = {
        int(p): int(us) / 1000 for p, us in re.findall(r"^percentile_us (\d+) (\d+)", output, re.M)
    }
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sent = re.search(r"^sent (\d+)", output, re.M)
    requests = int(total.group(1))
    return WrkResult(
        requests=requests,
        seconds=_ms(total.group(2), total.group(3)) / 1000,
        rps=float(rps.group(1)),
        p50_ms=distribution.get(50, lua.get(50, math.nan)),
        p95_ms=lua.get(95, math.nan),
        p99_ms=distribution.get(99, lua.get(99, math.nan)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        sent=int(sent.group(1)) if sent else requests,
    )


def _wrk(url: str, connections: int, seconds: float, bodies: Path, log: Path) -> WrkResult:
    argv = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        str(bodies),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    _WRK.append(process)
    try:
        output, _ = process.communicate(timeout=seconds + 120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _WRK.remove(process)
    text = output.decode(errors="replace")
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n{text}\n")
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{text}")
    return parse_wrk(text)


def _load(point: Point, target: str, seconds: float, bodies: Path, log: Path) -> WrkResult:
    """wrk against an HTTP route, or bench/grpc_load.py against the gRPC port, as wrk's figures."""
    if point.transport == "http":
        return _wrk(target, point.connections, seconds, bodies, log)
    from bench import grpc_load

    load = grpc_load.run(target, point.connections, seconds, bodies)
    with log.open("a") as out:
        out.write(f"grpc_load {target} x{point.connections} {seconds:.0f}s: {load}\n")
    return WrkResult(
        requests=load.requests,
        seconds=load.seconds,
        rps=load.requests / load.seconds if load.seconds else 0.0,
        p50_ms=load.p50_ms,
        p95_ms=load.p95_ms,
        p99_ms=load.p99_ms,
        non_2xx=load.errors,
        socket_errors=0,
        sent=load.requests,
    )


# --- metrics and the store ----------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)", re.M)


def metric_sums(text: str) -> dict[str, float]:
    """Each metric's samples summed over their labels (Prometheus text format)."""
    sums: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        with contextlib.suppress(ValueError):
            sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def _batch_counters(url: str) -> tuple[float, float] | None:
    """(batches, records) of adaptive batching so far, or None when the server has no such counters."""
    try:
        status, text = _http_get(f"{url}/metrics", timeout=10)
    except OSError:
        return None
    sums = metric_sums(text) if status == 200 else {}
    batches, records = (
        sums.get("driftloop_batches_total"),
        sums.get("driftloop_batched_records_total"),
    )
    return None if batches is None or records is None else (batches, records)


def _count_predictions(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM predictions")
            row = cur.fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def scratch_store(server_url: str, champion: Any, step: Progress) -> Iterator[str]:
    """A fresh, migrated database on the store's server with the champion registered and promoted
    (so ``driftloop serve`` finds it there); dropped afterwards, connections and all."""
    from training import registry
    from training.postgres import create_database, with_database
    from training.store import connect, migrate

    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    url = with_database(server_url, name)
    try:
        with connect(url) as conn:
            migrate(conn)
            registry.register(
                conn,
                model_name=champion.model_name,
                tag=champion.tag,
                metrics=champion.metrics,
                train_data_uri=champion.train_data_uri,
            )
            registry.promote(conn, champion.tag)
            registry.set_bento(conn, champion.tag, champion.bento_tag)
        step(f"scratch database {name} ready (champion {champion.tag} registered there)")
        yield url
    finally:
        # The servers first (they hold connections and flush on SIGTERM), uninterrupted.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_all()
        admin = psycopg2.connect(server_url)
        try:
            admin.autocommit = True  # DROP DATABASE cannot run in a transaction
            with admin.cursor() as cur:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        finally:
            admin.close()
        step(f"scratch database {name} dropped")


# --- in-process limits --------------------------------------------------------------------------


def _rate(action: Any, rows: int, seconds: float) -> float:
    """Rows per second of ``action`` (``rows`` each call), repeated for about ``seconds``."""
    action()  # once untimed: caches, connections
    done, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds or done == 0:
        action()
        done += rows
    return done / elapsed


def measure_limits(
    peer: ModuleType,
    model_tag: str,
    records: Sequence[Mapping[str, Any]],
    url: str,
    seconds: float,
) -> Limits:
    """The model alone on 1,000-row batches, and COPY of prediction rows alone (the peer's own
    COPY text, built in the loop) into the scratch database."""
    from training.registry import load_model

    pipeline, spec = load_model(model_tag)
    scorer, scorer_name = peer.make_scorer(pipeline, spec)
    batch = list(records[:BATCH_SIZE])
    model_rows_s = _rate(lambda: scorer(batch), len(batch), seconds)
    scores = [float(s) for s in scorer(batch)]
    model_name, _, model_version = model_tag.partition(":")
    threshold = spec.model.threshold
    conn = psycopg2.connect(url)
    try:

        def copy_batch() -> None:
            now = datetime.now(UTC)
            rows = [
                (
                    uuid.uuid4().hex,
                    model_name,
                    model_version,
                    record,
                    score,
                    int(score >= threshold),
                    now,
                )
                for record, score in zip(batch, scores, strict=True)
            ]
            with conn, conn.cursor() as cur:
                cur.copy_expert(peer.COPY_SQL, io.StringIO(peer.copy_text(rows)))

        copy_rows_s = _rate(copy_batch, len(batch), seconds)
    finally:
        conn.close()
    return Limits(scorer=scorer_name, model_rows_s=model_rows_s, copy_rows_s=copy_rows_s)


# --- one point ----------------------------------------------------------------------------------


def _server_command(
    ctx: Context, point: Point, port: int, grpc_port: int
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENTOML_DO_NOT_TRACK="true")
    workers = str(point.workers)
    if point.server == "ours":
        env |= {
            "DRIFTLOOP_DATABASE_URL": ctx.scratch_url,
            "DRIFTLOOP_GRPC_PORT": str(grpc_port),
            "DRIFTLOOP_LOG_PREDICTIONS": "true" if point.log_predictions else "false",
            # A spool of its own: what a point leaves unflushed must not reach another point.
            "DRIFTLOOP_SPOOL_DIR": str(ctx.workdir / f"spool-{port}"),
        }
        argv = [sys.executable, "-m", "training.cli", "serve", "--port", str(port)]
        return [*argv, "--workers", workers], env
    env |= {"PEER_MODEL_TAG": ctx.model_tag, "PEER_DATABASE_URL": ctx.scratch_url}
    argv = [sys.executable, "-m", "uvicorn", "bench.serving_peer:app", "--host", "127.0.0.1"]
    return [*argv, "--port", str(port), "--workers", workers], env


def run_point(ctx: Context, point: Point, number: int, total: int) -> Outcome:
    outcome = Outcome(point)
    step = ctx.step
    step(f"point {number}/{total}: {point.label}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = ctx.workdir / f"point-{number}-{point.server}.log"
    bodies = ctx.batch_bodies if point.records > 1 else ctx.single_bodies
    grpc_port = _free_port()
    argv, env = _server_command(ctx, point, port, grpc_port)
    rows_before = _count_predictions(ctx.scratch_url)
    process = _start(argv, env, log)
    try:
        ready = _wait_ready(url, process, log)
        step(f"  ready after {ready:.1f}s; warming up {ctx.warmup_s:.0f}s")
        target = f"{url}{point.route}"
        if point.transport == "grpc":
            target = f"127.0.0.1:{grpc_port}"
        warm = _load(point, target, ctx.warmup_s, bodies, log)
        before = _batch_counters(url)
        step(f"  measuring {ctx.duration_s:.0f}s")
        outcome.wrk = _load(point, target, ctx.duration_s, bodies, log)
        time.sleep(0.5)  # what was in flight when wrk stopped is answered
        after = _batch_counters(url)
        if point.server == "ours":
            if before is None or after is None:
                outcome.mean_batch = "n/a"
            else:
                batches, records = after[0] - before[0], after[1] - before[1]
                outcome.mean_batch = f"{records / batches:.1f}" if batches else "n/a"
    except RuntimeError as exc:
        outcome.failure = str(exc)
        step(f"  FAILED: {str(exc).splitlines()[0]} (log: {log})")
        return outcome
    finally:
        began = time.monotonic()
        _stop(process)
        step(f"  stopped in {time.monotonic() - began:.1f}s")
    rows = _count_predictions(ctx.scratch_url) - rows_before
    result = outcome.wrk
    answered = (warm.ok + result.ok) * point.records
    in_flight = (warm.in_flight + result.in_flight) * point.records
    if not point.log_predictions:
        outcome.logged_ok = rows == 0
        outcome.logged = "off (0)" if rows == 0 else f"off, yet {rows:,} ✗"
    else:
        outcome.logged_ok = answered <= rows <= answered + in_flight
        mark = "✓" if outcome.logged_ok else "✗"
        outcome.logged = f"{rows:,} {mark}"
        if rows < answered:
            outcome.logged_note = f"{answered - rows:,} answered predictions missing"
        elif rows > answered + in_flight:
            outcome.logged_note = f"{rows - answered - in_flight:,} more rows than answers"
        outcome.logged_note = (
            f"{rows:,} rows for {answered:,} 2xx answers (warm-up + run)"
            + (f", {in_flight:,} sent but unanswered when wrk stopped" if in_flight else "")
            + (f": {outcome.logged_note}" if outcome.logged_note else "")
        )
    step(
        f"  {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms, {result.errors} errors, "
        f"{rows:,} rows logged"
    )
    return outcome


# --- the table ----------------------------------------------------------------------------------


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def judge(outcomes: list[Outcome], limits: Limits | None) -> None:
    """Fill each outcome's ratio and verdict against the targets."""
    peers = {
        (o.point.workers, o.point.connections): o for o in outcomes if o.point.server == "peer"
    }
    logged_on = next(
        (
            o
            for o in outcomes
            if o.point.server == "ours"
            and o.point.kind == "single"
            and (o.point.workers, o.point.connections) == (1, 32)
        ),
        None,
    )
    for o in outcomes:
        if o.failure or o.wrk is None:
            o.verdict = "not met (failed to run)" if o.point.server == "ours" else "failed"
            continue
        misses = []
        if o.point.server == "peer":
            o.verdict = "baseline" if o.logged_ok else "baseline (log ✗)"
            continue
        if o.wrk.errors:
            misses.append("errors")
        if not o.logged_ok and o.point.log_predictions:
            misses.append("logged")
        if o.point.transport == "grpc":
            # No throughput target: its load generator is Python, slower than wrk. Shown against
            # our HTTP point with as many connections.
            http = next(
                (
                    h
                    for h in outcomes
                    if h.point.server == "ours"
                    and h.point.kind == "single"
                    and (h.point.workers, h.point.connections)
                    == (o.point.workers, o.point.connections)
                ),
                None,
            )
            if http is not None and http.wrk is not None and http.wrk.rps:
                o.ratio = f"{o.wrk.rps / http.wrk.rps:.2f}× our HTTP"
        elif o.point.kind == "single":
            peer = peers.get((o.point.workers, o.point.connections))
            if peer is None or peer.wrk is None:
                misses.append("no peer figure")
            else:
                o.ratio = f"{o.wrk.rps / peer.wrk.rps:.2f}× peer"
                if o.wrk.rps < peer.wrk.rps:
                    misses.append("req/s")
                if o.wrk.p99_ms > peer.wrk.p99_ms:
                    misses.append("p99")
        elif o.point.route == "/predict_batch":
            if limits is None:
                misses.append("no limit figure")
            else:
                share = o.wrk.ok_rps * o.point.records / limits.batched_rows_s
                o.ratio = f"{share:.0%} of limit"
                if share < LIMIT_BATCH_TARGET:
                    misses.append("rows/s")
        else:  # logging off
            if not o.logged_ok:
                misses.append("logging not switched off")
            elif logged_on is None or logged_on.wrk is None:
                misses.append("no logging-on figure")
            else:
                cost = 1 - logged_on.wrk.rps / o.wrk.rps
                o.ratio = f"logging costs {cost:.1%}"
                if cost >= LOGGING_COST_TARGET:
                    misses.append("logging cost")
        o.verdict = "met" if not misses else f"not met: {', '.join(misses)}"


def render(ctx: Context, limits: Limits | None, header: list[str]) -> str:
    out = [*header, ""]
    out.append(
        "| point | server | workers | conc. | req/s | rows/s | p50 ms | p95 ms | p99 ms "
        "| errors | mean batch | logged | ratio | verdict |"
    )
    out.append("|" + "---|" * 14)
    for o in ctx.outcomes:
        p = o.point
        cells = [p.kind, p.server, str(p.workers), str(p.connections)]
        if o.wrk is None:
            cells += ["-"] * 6 + [o.mean_batch, o.logged, o.ratio, o.verdict]
        else:
            w = o.wrk
            cells += [
                _num(w.rps),
                _num(w.ok_rps * p.records),
                _num(w.p50_ms),
                _num(w.p95_ms),
                _num(w.p99_ms),
                f"{w.errors:,}" + (f" ({w.non_2xx:,} non-2xx)" if w.non_2xx else ""),
                o.mean_batch,
                o.logged,
                o.ratio,
                o.verdict,
            ]
        out.append("| " + " | ".join(cells) + " |")
    if limits is not None:
        for label, value in (
            (
                f"in-process: model ({limits.scorer}), {BATCH_SIZE:,}-row batches",
                limits.model_rows_s,
            ),
            (f"in-process: COPY into PostgreSQL, {BATCH_SIZE:,}-row batches", limits.copy_rows_s),
            ("in-process batched limit (slower of the two)", limits.batched_rows_s),
        ):
            out.append(f"| {label} | - | - | - | - | {_num(value)} |" + " - |" * 8)
    out += [
        "",
        "req/s: every answer wrk counted; rows/s: 2xx answers only (× 1,000 for batch bodies); "
        f"errors: non-2xx answers and socket errors (connect, read, write, {WRK_TIMEOUT} timeout).",
        "logged: `predictions` rows the store held once the server had stopped (SIGTERM); ✓ when "
        "no fewer than the 2xx answers wrk counted (warm-up + run) and no more than that plus the "
        "requests wrk had sent but not seen answered when it stopped (the server still answers "
        "and logs those). Per point:",
    ]
    notes = [o for o in ctx.outcomes if o.logged_note or o.failure]
    if notes:
        for o in notes:
            detail = o.logged_note or f"failed: {(o.failure or '').splitlines()[0]}"
            out.append(f"- {o.point.label}: {detail}")
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------


def _bodies(spec: Any, workdir: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Files of JSON bodies for wrk: single records, and 1,000-record batches; and the records."""
    from training.synthetic import generate

    total = max(SINGLE_RECORDS, BATCH_BODIES * BATCH_SIZE)
    frame = generate(total, seed=20261125)[spec.feature_names]
    records = [
        spec.request_model.model_validate(r).model_dump() for r in frame.to_dict(orient="records")
    ]
    single = workdir / "single.jsonl"
    single.write_text(
        "".join(json.dumps(r, allow_nan=False) + "\n" for r in records[:SINGLE_RECORDS])
    )
    batch = workdir / "batch.jsonl"
    batch.write_text(
        "".join(
            json.dumps({"records": records[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]}) + "\n"
            for i in range(BATCH_BODIES)
        )
    )
    return single, batch, records


def _points() -> list[Point]:
    """Each of our points right after the peer's same point, and logging off right after the same
    point with logging on, so that the machine's drift affects both sides of a ratio alike."""
    points: list[Point] = []
    for workers in (1, 2):
        for connections in (32, 128):
            points += [Point("peer", workers, connections), Point("ours", workers, connections)]
            if (workers, connections) == (1, 32):
                points.append(Point("ours", 1, 32, log_predictions=False))
            if connections == 32:
                points.append(Point("ours", workers, 32, transport="grpc"))
    points += [
        Point("ours", 1, connections, route="/predict_batch", records=BATCH_SIZE)
        for connections in (2, 4)
    ]
    return points


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per point (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up load (5)")
    parser.add_argument("--quick", action="store_true", help="5 s points, 2 s warm-up")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 5.0, 2.0

    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench-serving` installs it (apt)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))  # bench.serving_peer, as uvicorn imports it
    from training import registry
    from training.postgres import database_url
    from training.settings import get_settings
    from training.spec import load_spec
    from training.store import connect

    step = Progress()
    settings = get_settings()
    name = load_spec(settings.model_spec).name
    with connect(database_url(settings)) as conn:
        champion = registry.champion(conn, name)
    if champion is None or champion.bento_tag is None:
        print(f"no champion of {name} with a Bento: run `make demo` first", file=sys.stderr)
        return 2
    spec = registry.load_model(champion.tag)[1]  # the champion's own spec: its request model
    peer = importlib.import_module("bench.serving_peer")
    points = _points()
    each = args.duration + args.warmup + 25
    step(
        f"champion {champion.tag} (Bento {champion.bento_tag}); {len(points)} points of "
        f"{args.duration:.0f}s, about {len(points) * each / 60:.0f} min in all"
    )

    signal.signal(signal.SIGTERM, _interrupt)
    limits: Limits | None = None
    ctx: Context | None = None
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-serving-"))
    try:
        single, batch, records = _bodies(spec, workdir)
        with scratch_store(database_url(settings, "postgres"), champion, step) as scratch_url:
            ctx = Context(
                model_tag=champion.tag,
                bento_tag=champion.bento_tag,
                scratch_url=scratch_url,
                workdir=workdir,
                single_bodies=single,
                batch_bodies=batch,
                warmup_s=args.warmup,
                duration_s=args.duration,
                step=step,
            )
            seconds = min(5.0, args.duration)
            step(f"in-process limits ({seconds:.0f}s each): model, then COPY")
            limits = measure_limits(peer, champion.tag, records, scratch_url, seconds)
            step(
                f"  model ({limits.scorer}) {limits.model_rows_s:,.0f} rows/s, "
                f"COPY {limits.copy_rows_s:,.0f} rows/s"
            )
            for number, point in enumerate(points, 1):
                ctx.outcomes.append(run_point(ctx, point, number, len(points)))
    except KeyboardInterrupt:
        step("interrupted: stopping what runs")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_all()
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup is not interrupted half-way
        _stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    assert ctx is not None
    judge(ctx.outcomes, limits)
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk_name = (wrk_version.stdout or wrk_version.stderr).split(" [")[0].strip() or "wrk"
    header = [
        f"## serving benchmark: champion {champion.tag}, {args.duration:.0f}s per point after "
        f"{args.warmup:.0f}s of warm-up, {os.cpu_count()} CPUs, run took {step.elapsed / 60:.1f} min",
        "",
        f"ours: `driftloop serve --workers N` (Bento {champion.bento_tag}); peer: "
        "`uvicorn bench.serving_peer:app --workers N` (FastAPI, background COPY writer); "
        f"the peer scores with {limits.scorer if limits else '?'}; both log to the same "
        f"PostgreSQL (a scratch database). Load: {wrk_name}, 2 threads, `bench/serving.lua` "
        f"cycling through {SINGLE_RECORDS} records ({BATCH_BODIES} different batch bodies); "
        "a fresh server for every point.",
        "",
        "Targets (verdict column):",
        "- single record: req/s ≥ the peer's at 32 and 128 connections with 1 and 2 workers, "
        "p99 ≤ the peer's, zero errors, every 2xx answer logged;",
        f"- /predict_batch ({BATCH_SIZE:,}-record bodies): rows/s ≥ {LIMIT_BATCH_TARGET:.0%} of "
        "the in-process batched limit (the slower of model and COPY alone), zero errors;",
        f"- logging costs < {LOGGING_COST_TARGET:.0%} of single-record throughput (1 worker, "
        "32 connections, logging on against DRIFTLOOP_LOG_PREDICTIONS=false);",
        "- gRPC Predict (32 calls in flight from `bench/grpc_load.py`, 2 Python processes, "
        "grpc.aio over 4 connections): zero errors, every OK answer logged; its req/s is shown "
        "against our HTTP point, not judged (the Python load generator, on the same 2 cores, "
        "bounds it).",
    ]
    print(render(ctx, limits, header), flush=True)
    step("done")
    return 1 if any(o.failure for o in ctx.outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
