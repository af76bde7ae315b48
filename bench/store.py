"""Benchmark: the store partitioned by day (migration 0006) against the unpartitioned one it
replaced (0001-0005), in the same run, on the same server.

Prints one table, not a test verdict:

1. insert throughput of the prediction log's write (COPY of encoded predictions, one commit per
   1,000 rows, as bentos/prediction_log.py writes a flush) from 1, 4 and 16 writers at once;
2. the retrain's extraction of a 7-day window (``COPY (window query) TO STDOUT``) while the table
   holds 7 days, then 30 days, generated with COPY (``--rows-per-day``, ``--days``);
3. a label's look-up of its prediction by request id, with 30 days held;
4. removing one day: ``driftloop prune``'s detach and drop of its partitions against ``DELETE``
   of the same rows from the unpartitioned tables.

Targets (issue 12): the extraction time independent of the history held (within 20% from 7 to 30
days held), a day pruned in under a second, and the insert path no slower than before. The issue's
scale is 30 days of 1,000,000 rows a day; ``--rows-per-day`` scales it down (and the output says
so) where time or disk is short.

Usage: ``uv run python bench/store.py [--days 30] [--rows-per-day 1000000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2

from training import registry  # noqa: F401 - imported before prune is timed (it reads rollback targets)
from training.extract import window_query
from training.partitions import ensure_range
from training.postgres import create_database, database_url, with_database
from training.retention import prune
from training.settings import get_settings
from training.spec import load_spec
from training.store import (
    PredictionRecord,
    connect,
    copy_predictions,
    encode_prediction,
    migrate,
)

TARGET_ROWS_PER_DAY = 1_000_000
WINDOW_DAYS = 7
FIRST_DAY = date(2026, 1, 1)
WRITERS = (1, 4, 16)
# A flush of the prediction log: the rows a worker gathers in one interval, COPYed and committed.
FLUSH_ROWS = 1_000
LABELLED_SHARE = 3  # one prediction in 3 gets a label
MIGRATIONS = Path(__file__).resolve().parents[1] / "training" / "migrations"
# The extraction as it ran before 0006 (training/extract.py then), for the unpartitioned store.
OLD_JOIN = "LEFT JOIN feedback f USING (request_id)"
NEW_JOIN_PREFIX = "LEFT JOIN feedback f ON "


def _migrate_0005(url: str) -> None:
    """The unpartitioned layout: migrations 0001-0005 only."""
    with connect(url) as conn, conn.cursor() as cur:
        for path in sorted(MIGRATIONS.glob("000[1-5]_*.sql")):
            cur.execute(path.read_text())


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


_FEATURES: dict[int, list[str]] = {}


def _features(rows: int) -> list[str]:
    """``rows`` feature objects as JSON text, made once and shared by every day."""
    if rows not in _FEATURES:
        rng = np.random.default_rng(0)
        columns = zip(
            rng.integers(0, 240, rows).tolist(),
            np.round(rng.uniform(10, 200, rows), 2).tolist(),
            rng.poisson(1.5, rows).tolist(),
            np.round(rng.uniform(0, 300, rows), 1).tolist(),
            rng.integers(18, 90, rows).tolist(),
            [("monthly", "annual", "two_year")[k] for k in rng.integers(0, 3, rows).tolist()],
            [
                ("card", "bank_transfer", "paypal", "invoice")[k]
                for k in rng.integers(0, 4, rows).tolist()
            ],
            [("north", "south", "east", "west")[k] for k in rng.integers(0, 4, rows).tolist()],
            strict=True,
        )
        _FEATURES[rows] = [
            f'{{"tenure_months":{a},"monthly_charges":{b},"support_calls":{c},'
            f'"usage_hours":{d},"age":{e},"contract":"{f}","payment_method":"{g}",'
            f'"region":"{h}"}}'
            for a, b, c, d, e, f, g, h in columns
        ]
    return _FEATURES[rows]


def _day_copy(day: date, rows: int, seed: int) -> tuple[bytes, bytes]:
    """One day of predictions and labels as COPY text (labels: request_id, label, received_at,
    predicted_at). Request ids start with the served millisecond, as the service makes them."""
    rng = np.random.default_rng(seed)
    start_us = int(_day_start(day).timestamp()) * 1_000_000
    times_us = np.sort(rng.integers(0, 86_400_000_000, rows)) + start_us
    stamps = [f"{text}+00:00" for text in np.datetime_as_string(times_us.astype("datetime64[us]"))]
    ids = [
        f"{at // 1000:012x}{r:020x}"
        for at, r in zip(times_us.tolist(), rng.integers(0, 2**62, rows).tolist(), strict=True)
    ]
    scores = np.round(rng.uniform(0, 1, rows), 6).tolist()
    truth = rng.integers(0, 2, rows).tolist()
    predictions = "".join(
        f"{i}\tchurn\tv1\t{f}\t{s}\t{int(s >= 0.5)}\t{t}\n"
        for i, f, s, t in zip(ids, _features(rows), scores, stamps, strict=True)
    )
    labels = "".join(
        f"{ids[k]}\t{truth[k]}\t{stamps[k]}\t{stamps[k]}\n" for k in range(0, rows, LABELLED_SHARE)
    )
    return predictions.encode(), labels.encode()


_COPY_PREDICTIONS = (
    "COPY predictions (request_id, model_name, model_version, features, score, label, created_at)"
    " FROM STDIN"
)
_COPY_LABELS_NEW = "COPY feedback (request_id, label, received_at, predicted_at) FROM STDIN"
_COPY_LABELS_OLD = "COPY feedback (request_id, label, received_at) FROM STDIN"


def _load_days(new_url: str, old_url: str, days: list[date], rows: int) -> float:
    """COPY ``days`` into both stores; returns the seconds it took."""
    began = time.perf_counter()
    with connect(new_url) as new, connect(old_url) as old:
        ensure_range(new, days[0], days[-1])
        new.commit()
        for day in days:
            predictions, labels = _day_copy(day, rows, seed=day.toordinal())
            old_labels = b"\n".join(
                line.rsplit(b"\t", 1)[0] for line in labels.split(b"\n") if line
            )
            for conn, copy_labels, label_text in (
                (new, _COPY_LABELS_NEW, labels),
                (old, _COPY_LABELS_OLD, old_labels + b"\n"),
            ):
                with conn.cursor() as cur:
                    cur.copy_expert(_COPY_PREDICTIONS, io.BytesIO(predictions))
                    cur.copy_expert(copy_labels, io.BytesIO(label_text))
                conn.commit()
    for url in (new_url, old_url):
        plain = psycopg2.connect(url)  # VACUUM runs outside a transaction (not in `with conn`)
        try:
            plain.autocommit = True
            with plain.cursor() as cur:
                cur.execute("VACUUM ANALYZE predictions")
                cur.execute("VACUUM ANALYZE feedback")
        finally:
            plain.close()
    return time.perf_counter() - began


class _Sink(io.RawIOBase):
    """Counts what COPY TO writes and keeps none of it."""

    def __init__(self) -> None:
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.bytes += len(data)
        return len(data)


def _extraction_s(url: str, query: str, repeat: int) -> float:
    """The median time of ``COPY (query) TO STDOUT`` as CSV, after one warm-up run."""
    times = []
    with connect(url) as conn, conn.cursor() as cur:
        for attempt in range(repeat + 1):
            sink = _Sink()
            began = time.perf_counter()
            cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)", sink)
            if attempt:
                times.append(time.perf_counter() - began)
    return statistics.median(times)


def _window_queries(new_url: str) -> tuple[str, str]:
    """The 7-day window's query for the partitioned store, and as it was before 0006."""
    spec = load_spec()
    start = _day_start(FIRST_DAY)
    with connect(new_url) as conn:
        new = window_query(conn, spec, start, start + timedelta(days=WINDOW_DAYS))
    head, _, tail = new.partition(NEW_JOIN_PREFIX)
    old = head + OLD_JOIN + " WHERE " + tail.split(" WHERE ", 1)[1]
    return new, old


def _insert_rows_per_s(url: str, writers: int, chunks_each: int) -> float:
    """Rows per second stored by ``writers`` threads, each COPYing ``chunks_each`` flushes."""
    spec = load_spec()
    features = spec.example_request()
    now = datetime.now(UTC)
    payloads = [
        [
            b"".join(
                encode_prediction(
                    PredictionRecord(uuid.uuid4().hex, "insert-bench", "v1", features, 0.5, 1, now)
                )
                for _ in range(FLUSH_ROWS)
            )
            for _ in range(chunks_each)
        ]
        for _ in range(writers)
    ]
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def write(chunks: list[bytes]) -> None:
        try:
            with connect(url) as conn:
                barrier.wait()
                for chunk in chunks:
                    copy_predictions(conn, chunk)
                    conn.commit()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return writers * chunks_each * FLUSH_ROWS / elapsed


def _lookup_ms(url: str, query: str, ids: list[str], windows: bool) -> float:
    """The mean time of one label's look-up of its prediction."""
    with connect(url) as conn, conn.cursor() as cur:
        for request_id in ids[:20]:  # warm-up
            cur.execute(query, _lookup_params(request_id, windows))
            cur.fetchall()
        began = time.perf_counter()
        for request_id in ids:
            cur.execute(query, _lookup_params(request_id, windows))
            assert cur.fetchall(), request_id
        return (time.perf_counter() - began) / len(ids) * 1000


def _lookup_params(request_id: str, windows: bool) -> tuple[Any, ...]:
    if not windows:
        return (request_id,)
    served = datetime.fromtimestamp(int(request_id[:12], 16) / 1000, UTC)
    return request_id, served - timedelta(seconds=1), served + timedelta(seconds=1)


_LOOKUP = "SELECT created_at FROM predictions WHERE request_id = %s ORDER BY created_at LIMIT 1"
_LOOKUP_NEAR = (
    "SELECT created_at FROM predictions WHERE request_id = %s AND created_at >= %s"
    " AND created_at < %s ORDER BY created_at LIMIT 1"
)


def _sample_ids(url: str, n: int) -> list[str]:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT request_id FROM predictions TABLESAMPLE SYSTEM (1) WHERE model_name = 'churn'"
            " LIMIT %s",
            (n,),
        )
        return [row[0] for row in cur.fetchall()]


def _delete_day_s(old_url: str, day: date) -> float:
    start, end = _day_start(day), _day_start(day + timedelta(days=1))
    with connect(old_url) as conn, conn.cursor() as cur:
        began = time.perf_counter()
        cur.execute(
            "DELETE FROM feedback f USING predictions p WHERE p.request_id = f.request_id"
            " AND p.created_at >= %s AND p.created_at < %s",
            (start, end),
        )
        cur.execute(
            "DELETE FROM predictions WHERE created_at >= %s AND created_at < %s", (start, end)
        )
        conn.commit()
        return time.perf_counter() - began


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _timed(label: str, action: Callable[[], Any]) -> Any:
    began = time.perf_counter()
    result = action()
    print(f"  [{time.perf_counter() - began:6.1f} s] {label}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30, help="days held at the end (default 30)")
    parser.add_argument("--rows-per-day", type=int, default=TARGET_ROWS_PER_DAY)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement")
    parser.add_argument(
        "--insert-flushes", type=int, default=48, help="flushes of 1,000 rows per insert point"
    )
    args = parser.parse_args()
    if args.days <= WINDOW_DAYS:
        parser.error(f"--days must be more than the {WINDOW_DAYS}-day window")

    server = database_url(get_settings(), "postgres")
    suffix = uuid.uuid4().hex[:6]
    new_name, old_name = f"driftloop_bench_part_{suffix}", f"driftloop_bench_flat_{suffix}"
    create_database(server, new_name)
    create_database(server, old_name)
    new_url, old_url = with_database(server, new_name), with_database(server, old_name)
    free_gb = shutil.disk_usage(get_settings().home).free / 2**30
    print(
        f"store benchmark: partitioned by day (0006) against unpartitioned (0001-0005); "
        f"{os.cpu_count()} cores, {free_gb:.0f} GB free"
    )
    if args.rows_per_day != TARGET_ROWS_PER_DAY:
        print(
            f"SCALED DOWN: {args.rows_per_day:,} rows a day, not the issue's "
            f"{TARGET_ROWS_PER_DAY:,} (time on this machine); ratios are what to read"
        )
    try:
        with connect(new_url) as conn:
            migrate(conn)
        _migrate_0005(old_url)
        _run(args, new_url, old_url)
    finally:
        admin = psycopg2.connect(server)
        admin.autocommit = True
        with admin.cursor() as cur:
            for name in (new_name, old_name):
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _run(args: argparse.Namespace, new_url: str, old_url: str) -> None:
    rows = args.rows_per_day
    results: list[tuple[str, str, str, str]] = []

    # 1. Inserts: both layouts alternately, the median of --repeat rounds.
    inserts: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.repeat):
        for writers in WRITERS:
            for layout, url in (("new", new_url), ("old", old_url)):
                rate = _insert_rows_per_s(url, writers, max(1, args.insert_flushes // writers))
                inserts.setdefault((layout, writers), []).append(rate)
        print(f"  inserts: round {round_ + 1} of {args.repeat} done", flush=True)
    slowest_ratio = 1.0
    for writers in WRITERS:
        new_rate = statistics.median(inserts["new", writers])
        old_rate = statistics.median(inserts["old", writers])
        slowest_ratio = min(slowest_ratio, new_rate / old_rate)
        results.append(
            (
                f"insert, {writers} writer{'s' if writers > 1 else ''} (rows/s)",
                f"{new_rate:,.0f}",
                f"{old_rate:,.0f}",
                f"{new_rate / old_rate:.2f}x",
            )
        )

    # 2. Extraction of the first 7 days, while 7 and then all days are held.
    days = [FIRST_DAY + timedelta(days=n) for n in range(args.days)]
    new_query, old_query = _window_queries(new_url)
    loaded = _timed(
        f"COPY of {WINDOW_DAYS} days x {rows:,} rows into both stores",
        lambda: _load_days(new_url, old_url, days[:WINDOW_DAYS], rows),
    )
    short_new = _timed(
        "extract, 7 held, partitioned", lambda: _extraction_s(new_url, new_query, args.repeat)
    )
    short_old = _timed(
        "extract, 7 held, unpartitioned", lambda: _extraction_s(old_url, old_query, args.repeat)
    )
    loaded += _timed(
        f"COPY of {args.days - WINDOW_DAYS} more days into both stores",
        lambda: _load_days(new_url, old_url, days[WINDOW_DAYS:], rows),
    )
    long_new = _timed(
        f"extract, {args.days} held, partitioned",
        lambda: _extraction_s(new_url, new_query, args.repeat),
    )
    long_old = _timed(
        f"extract, {args.days} held, unpartitioned",
        lambda: _extraction_s(old_url, old_query, args.repeat),
    )
    for held, new_s, old_s in (
        (WINDOW_DAYS, short_new, short_old),
        (args.days, long_new, long_old),
    ):
        results.append(
            (
                f"extract 7-day window, {held} days held (s)",
                f"{new_s:.2f}",
                f"{old_s:.2f}",
                f"{new_s / old_s:.2f}x",
            )
        )
    growth_new, growth_old = long_new / short_new - 1, long_old / short_old - 1
    results.append(
        (
            f"  extraction growth, 7 -> {args.days} days held",
            f"{growth_new:+.0%}",
            f"{growth_old:+.0%}",
            "",
        )
    )

    # 3. A label's look-up of its prediction, with everything held.
    ids = _sample_ids(new_url, 300)
    near = _lookup_ms(new_url, _LOOKUP_NEAR, ids, windows=True)
    everywhere = _lookup_ms(new_url, _LOOKUP, ids, windows=False)
    flat = _lookup_ms(old_url, _LOOKUP, ids, windows=False)
    results.append(
        (
            "label look-up, id made by the service (ms)",
            f"{near:.2f}",
            f"{flat:.2f}",
            f"{near / flat:.2f}x",
        )
    )
    results.append(
        (
            "label look-up, any other id (ms)",
            f"{everywhere:.2f}",
            f"{flat:.2f}",
            f"{everywhere / flat:.2f}x",
        )
    )

    # 4. Removing the oldest day: prune (detach + drop) against DELETE of the same rows.
    oldest = days[0]
    with connect(new_url) as conn:
        pruned = prune(conn, args.days - 1, today=oldest + timedelta(days=args.days))
    assert pruned.dropped == (oldest,), pruned.dropped
    deleted_s = _delete_day_s(old_url, oldest)
    results.append(
        (
            "remove one day (s): prune vs DELETE",
            f"{pruned.seconds:.3f}",
            f"{deleted_s:.3f}",
            f"{pruned.seconds / deleted_s:.3f}x",
        )
    )

    print()
    print(
        f"{args.days} days x {rows:,} rows a day ({args.days * rows:,} predictions, a label for one"
        f" in {LABELLED_SHARE}) per store, loaded with COPY in {loaded:.0f} s"
    )
    print("| measure | partitioned (0006) | unpartitioned (0005) | ratio |")
    print("|---|---:|---:|---:|")
    for row in results:
        print("| " + " | ".join(row) + " |")
    print()
    print("targets:")
    print(
        f"- extraction independent of history held (within 20%, 7 -> {args.days} days): "
        f"{growth_new:+.0%} -> {_verdict(abs(growth_new) <= 0.20)}"
    )
    print(
        f"- one day pruned in under a second: {pruned.seconds:.3f} s -> {_verdict(pruned.seconds < 1)}"
    )
    print(
        f"- insert path no slower (slowest ratio {slowest_ratio:.2f}; within the ~10-15% noise of "
        f"this machine counts as no slower): {_verdict(slowest_ratio >= 0.85)}"
    )


if __name__ == "__main__":
    main()
