"""Read a user's table: a CSV or Parquet file, or a SQL query against PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import psycopg2

from training.errors import DriftloopError
from training.store import connect

__all__ = ["SourceError", "read_table"]


class SourceError(DriftloopError):
    """The data cannot be read; the message names the file or query and the problem."""


def _read_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if suffix.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            # Everything as text first: the spec, not pandas' guess, decides what is a number, and
            # codes such as "007" or blanks in a numeric column stay visible.
            return pd.read_csv(
                path,
                sep="\t" if ".tsv" in suffix else ",",
                dtype=str,
                keep_default_na=False,
                na_values=[""],
            )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise SourceError(f"{path}: cannot read it ({str(exc).splitlines()[0]})") from exc
    raise SourceError(f"{path}: unknown format {path.suffix!r}; use .csv, .tsv or .parquet")


def _read_sql(query: str, url: str) -> pd.DataFrame:
    buffer = io.StringIO()
    with connect(url) as conn, conn.cursor() as cur:
        try:
            # COPY streams the result in one round trip; text for the same reason as CSV files.
            cur.copy_expert(
                f"COPY ({query.strip().rstrip(';')}) TO STDOUT WITH (FORMAT csv, HEADER true)",
                buffer,
            )
        except psycopg2.Error as exc:
            message = (str(exc).strip().splitlines() or ["failed"])[0]
            raise SourceError(f"query failed: {message}") from exc
    buffer.seek(0)
    try:
        return pd.read_csv(buffer, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as exc:
        raise SourceError("query returned no columns") from exc


def read_table(
    path: Path | None = None, *, sql: str | None = None, url: str | None = None
) -> pd.DataFrame:
    """The user's table, from a file or a query.

    CSV and SQL columns come back as text (``None`` where empty): callers convert by the spec.
    Parquet keeps its own types.

    Args:
        path: a ``.csv``, ``.tsv`` (optionally ``.gz``) or ``.parquet`` file.
        sql: a SELECT to run instead (against ``url``).
        url: the PostgreSQL URL ``sql`` runs against.

    Raises:
        SourceError: no such file, unknown format, unreadable content, a failing query, or no rows.
    """
    if (path is None) == (sql is None):
        raise SourceError("give either a data file or a SQL query")
    if sql is not None:
        if not url:
            raise SourceError("a SQL query needs a PostgreSQL URL to run against")
        frame = _read_sql(sql, url)
        where = "the query"
    else:
        assert path is not None
        frame = _read_file(path)
        where = str(path)
    if frame.empty:
        raise SourceError(f"{where} holds no rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame
