"""Benchmark: extracting a labelled window with COPY (what the DAG does) against row-by-row fetches.

Prints a table; the ratio is against the row-by-row baseline measured in the same run, on the same
database and data. Usage: ``uv run python bench/extract.py [--rows 50000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg2

from training.extract import _window_query, extract_window
from training.postgres import create_database, database_url, with_database
from training.settings import get_settings
from training.spec import load_spec
from training.store import (
    PredictionRecord,
    connect,
    migrate,
    record_feedback_many,
    record_predictions,
)
from training.synthetic import generate


def _fetch_rows(conn, spec, start, end) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The baseline: the same query, fetched through the cursor one row at a time."""
    with conn.cursor() as cur:
        cur.execute(_window_query(spec), {"model": spec.name, "start": start, "end": end})
        columns = [c.name for c in cur.description]
        rows = []
        while (row := cur.fetchone()) is not None:
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    spec = load_spec()
    server = database_url(get_settings(), "postgres")
    name = f"driftloop_bench_{uuid.uuid4().hex[:6]}"
    create_database(server, name)
    url = with_database(server, name)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=7)
    data = generate(args.rows, seed=1)
    step = (end - start) / args.rows
    with connect(url) as conn:
        migrate(conn)
        features = data[spec.feature_names].to_dict(orient="records")
        ids = [uuid.uuid4().hex for _ in range(args.rows)]
        record_predictions(
            conn,
            [
                PredictionRecord(
                    ids[i],
                    spec.name,
                    "v1",
                    {str(k): v for k, v in features[i].items()},
                    0.5,
                    1,
                    start + step * i,
                )
                for i in range(args.rows)
            ],
        )
        record_feedback_many(
            conn, [(ids[i], int(data[spec.target].iat[i]), None) for i in range(args.rows)]
        )

    timings: dict[str, list[float]] = {"row-by-row fetch (baseline)": [], "COPY to CSV (used)": []}
    with connect(url) as conn:
        for _ in range(args.repeat):
            for label, extract in (
                ("row-by-row fetch (baseline)", _fetch_rows),
                ("COPY to CSV (used)", extract_window),
            ):
                began = time.perf_counter()
                frame = extract(conn, spec, start, end)
                timings[label].append(time.perf_counter() - began)
                assert len(frame) == args.rows
    baseline = statistics.median(timings["row-by-row fetch (baseline)"])
    print(f"window extraction, {args.rows} labelled rows, median of {args.repeat}")
    print(f"{'method':<30} {'seconds':>9} {'rows/s':>10} {'speed-up':>9}")
    for label, values in timings.items():
        median = statistics.median(values)
        print(f"{label:<30} {median:>9.3f} {args.rows / median:>10.0f} {baseline / median:>8.2f}x")
    admin = psycopg2.connect(server)
    admin.autocommit = True  # DROP DATABASE cannot run in a transaction
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE "{name}"')
    admin.close()


if __name__ == "__main__":
    main()
