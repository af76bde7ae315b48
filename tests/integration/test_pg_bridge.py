"""The password-checked TCP door to the embedded PostgreSQL (``driftloop image --check``'s), on the
real server: only its password gets through, and nothing else reaches the server's trust auth."""

from __future__ import annotations

import socket
import struct
from urllib.parse import urlsplit

import psycopg2
import pytest

from training.pg_bridge import password_bridge
from training.postgres import socket_dir

pytestmark = pytest.mark.integration


def _socket_path(url: str) -> str:
    folder = socket_dir(url)
    if folder is None:
        pytest.skip("the test server is not the embedded one (DRIFTLOOP_TEST_DATABASE_URL)")
    return f"{folder}/.s.PGSQL.{urlsplit(url).port or 5432}"


def _connect(port: int, password: str | None, database: str) -> psycopg2.extensions.connection:
    auth = f":{password}" if password is not None else ""
    return psycopg2.connect(
        f"postgresql://postgres{auth}@127.0.0.1:{port}/{database}", connect_timeout=5
    )


def _answer(raw: socket.socket) -> bytes:
    """What the bridge sent before closing (a close with unread input arrives as a reset)."""
    try:
        return raw.recv(100)
    except ConnectionResetError:
        return b""


def test_the_bridges_password_gets_through(server_url: str) -> None:
    with password_bridge(_socket_path(server_url)) as bridge:
        for sslmode in ("prefer", "disable"):  # with and without libpq's SSLRequest first
            conn = psycopg2.connect(
                f"postgresql://postgres:{bridge.password}@127.0.0.1:{bridge.port}/postgres",
                sslmode=sslmode,
                connect_timeout=5,
            )
            with conn, conn.cursor() as cur:
                cur.execute("SELECT current_user, 41 + 1")
                assert cur.fetchone() == ("postgres", 42)
            conn.close()


@pytest.mark.parametrize("password", [None, "", "wrong"])
def test_no_or_a_wrong_password_is_refused_like_postgresql_does(
    server_url: str, password: str | None
) -> None:
    """Before the bridge asked for a password, any local user connected as superuser."""
    with (
        password_bridge(_socket_path(server_url)) as bridge,
        pytest.raises(psycopg2.OperationalError, match="password"),
    ):
        _connect(bridge.port, password, "postgres")


def test_a_client_skipping_the_password_gets_postgresqls_auth_error(server_url: str) -> None:
    """libpq refuses to go on without a password by itself; a hand-made client sends a query."""
    params = b"user\0postgres\0database\0postgres\0\0"
    startup = struct.pack("!II", 8 + len(params), 196608) + params
    query = b"Q" + struct.pack("!I", 4 + 9) + b"SELECT 1\0"
    with (
        password_bridge(_socket_path(server_url)) as bridge,
        socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as raw,
    ):
        raw.sendall(startup)
        assert raw.recv(9) == b"R" + struct.pack("!II", 8, 3)  # cleartext password, please
        raw.sendall(query)
        answer = raw.recv(1000)
        assert answer[:1] == b"E"
        assert b"28P01" in answer


def test_a_client_that_is_not_postgresql_is_dropped(server_url: str) -> None:
    with password_bridge(_socket_path(server_url)) as bridge:
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(raw) == b""  # closed without a byte from the server
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as raw:
            raw.sendall(struct.pack("!II", 1_000_000, 196608))  # an absurd length
            assert _answer(raw) == b""
        # The bridge still serves the next client.
        conn = _connect(bridge.port, bridge.password, "postgres")
        conn.close()
