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
import socket
import struct
import subprocess
import sys
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
        _recv_exactly(sock, 64)
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
def driftloop_serve(home: Path, log: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``driftloop serve`` (the champion of the environment's store) on a free port, in a session
    of its own; yields the port once ``/readyz`` answers, and stops its whole process tree after."""
    port = _free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
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


def test_no_other_user_reaches_the_served_bentos_process_manager(
    server_url: str, session_root: Path
) -> None:
    """``driftloop serve`` listens on its HTTP port and on nothing else another user can reach:
    circusd's control and pubsub endpoints are Unix sockets in a folder only the server's user can
    enter. The owner still reaches the control endpoint (so these are circus's sockets, and the
    probe works), and ``nobody`` still reaches the HTTP port (so the child probes as it should)."""
    home = session_root / f"posture-serve-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    with (
        champion_environment(server_url, home),
        driftloop_serve(home, home / "serve.log") as (port, process),
    ):
        found = listeners(server_processes(process))
        http = Listener(("127.0.0.1", port))
        assert http in found, found
        others = found - {http}

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
