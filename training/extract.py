"""Extract a time window of predictions (with their labels, where known) from the feedback store."""

from __future__ import annotations

import io
from collections.abc import Hashable
from datetime import datetime

import pandas as pd
from psycopg2 import sql

from training.spec import ModelSpec
from training.store import Connection

__all__ = ["extract_window", "window_query"]


def _window_query(spec: ModelSpec) -> sql.Composed:
    columns: list[sql.Composable] = [
        sql.SQL("p.request_id"),
        sql.SQL("p.created_at"),
        sql.SQL("p.model_version"),
        sql.SQL("p.score"),
    ]
    for feature in spec.features:
        cast = sql.SQL("double precision" if feature.type == "numeric" else "text")
        columns.append(
            sql.SQL("(p.features ->> {key})::{cast} AS {name}").format(
                key=sql.Literal(feature.name),
                cast=cast,
                name=sql.Identifier(feature.name),
            )
        )
    columns.append(sql.SQL("f.label AS {}").format(sql.Identifier(spec.target)))
    # The window bounds both tables (a label lies in its prediction's day partition), so the
    # planner reads only the window's day partitions of each (tests/integration/test_partitions.py).
    return sql.SQL(
        "SELECT {columns} FROM predictions p LEFT JOIN feedback f"
        " ON f.request_id = p.request_id AND f.predicted_at = p.created_at"
        " AND f.predicted_at >= %(start)s AND f.predicted_at < %(end)s"
        " WHERE p.model_name = %(model)s AND p.created_at >= %(start)s AND p.created_at < %(end)s"
        " ORDER BY p.created_at, p.request_id"
    ).format(columns=sql.SQL(", ").join(columns))


def window_query(conn: Connection, spec: ModelSpec, start: datetime, end: datetime) -> str:
    """The SELECT :func:`extract_window` runs for ``[start, end)``, with its values in place (for
    ``EXPLAIN``, or a benchmark)."""
    with conn.cursor() as cur:
        query: bytes = cur.mogrify(
            _window_query(spec), {"model": spec.name, "start": start, "end": end}
        )
    return query.decode()


def extract_window(
    conn: Connection, spec: ModelSpec, start: datetime, end: datetime
) -> pd.DataFrame:
    """All predictions of ``spec``'s model in ``[start, end)``, the target empty where unlabelled.

    A feature logged as null, or not logged at all (a field the request omitted), is NaN.

    Streams the rows with ``COPY ... TO STDOUT`` (one round trip, no per-row fetches).
    """
    if end <= start:
        raise ValueError(f"window end {end.isoformat()} is not after its start {start.isoformat()}")
    buffer = io.BytesIO()
    query = window_query(conn, spec, start, end)
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)", buffer)
    buffer.seek(0)
    dtypes: dict[Hashable, str] = {"request_id": "object", "model_version": "object"}
    dtypes.update({f.name: "float64" for f in spec.features if f.type == "numeric"})
    dtypes.update({f.name: "object" for f in spec.features if f.type == "categorical"})
    # COPY writes NULL (a null or absent feature, an unlabelled row) as an empty field. Only that
    # is missing: pandas' default would also read a category spelt "NA", "None" or "null" as one.
    frame = pd.read_csv(buffer, dtype=dtypes, keep_default_na=False, na_values=[""])
    # Parsed here, not by read_csv: it guesses one format from the first row, and a window mixing
    # whole-second times (backfilled history) with fractional ones (live traffic) stayed text.
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    frame[spec.target] = frame[spec.target].astype("Int64")
    return frame
