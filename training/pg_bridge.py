"""A password-checked TCP door to the embedded PostgreSQL, for a container that cannot reach its socket.

The embedded server listens only on a Unix socket in a folder its own user may enter, with trust
authentication: whoever reaches the socket is whoever they claim, superuser included. A container's
non-root user cannot enter that folder, so ``driftloop image --check`` gives its container a TCP
port on 127.0.0.1 instead, and any local user can reach that port too. This bridge therefore answers
PostgreSQL's startup itself: it asks for a password (a random one, made for this bridge and handed
only to the container, by environment), compares it in constant time, and only then connects to the
socket and passes the client's startup on. A wrong or missing password gets PostgreSQL's own
``28P01`` error and never reaches the server.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Bridge", "password_bridge"]

# Codes of the frontend's first packet (PostgreSQL's protocol, "Message Formats").
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_PROTOCOL_3 = 3 << 16
_AUTH_CLEARTEXT = 3
# A startup packet is a few hundred bytes; anything far larger is not a PostgreSQL client.
_MAX_PACKET = 10_000
# How long a client may take to send its startup and password.
_HANDSHAKE_S = 10.0


@dataclass(frozen=True)
class Bridge:
    port: int
    password: str


def _read_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed during the handshake")
        data += chunk
    return data


def _error(message: str, code: str = "28P01") -> bytes:
    fields = b"".join(
        kind + value.encode() + b"\0"
        for kind, value in ((b"S", "FATAL"), (b"C", code), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def _startup(client: socket.socket) -> bytes:
    """The client's startup packet (after refusing SSL and GSS encryption), as sent."""
    while True:
        length, code = struct.unpack("!II", _read_exact(client, 8))
        if length < 8 or length > _MAX_PACKET:
            raise ConnectionError("not a PostgreSQL startup packet")
        rest = _read_exact(client, length - 8)
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            client.sendall(b"N")  # loopback only: no encryption; the client then starts in clear
            continue
        if code != _PROTOCOL_3:
            raise ConnectionError("only protocol 3.0 startups are bridged")
        return struct.pack("!II", length, code) + rest


def _password_matches(client: socket.socket, password: str) -> bool:
    client.sendall(b"R" + struct.pack("!II", 8, _AUTH_CLEARTEXT))
    kind = _read_exact(client, 1)
    (length,) = struct.unpack("!I", _read_exact(client, 4))
    if kind != b"p" or length < 5 or length > _MAX_PACKET:
        return False
    sent = _read_exact(client, length - 4).rstrip(b"\0")
    return hmac.compare_digest(sent, password.encode())


@contextlib.contextmanager
def password_bridge(socket_path: str) -> Iterator[Bridge]:
    """A port on 127.0.0.1 that forwards to the server at ``socket_path`` whoever sends the bridge's
    password (connect with it in the URL: ``postgresql://<user>:<password>@127.0.0.1:<port>/<db>``)."""
    password = secrets.token_urlsafe(24)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port: int = listener.getsockname()[1]
    stop = threading.Event()

    def pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def serve(client: socket.socket) -> None:
        try:
            client.settimeout(_HANDSHAKE_S)
            startup = _startup(client)
            if not _password_matches(client, password):
                client.sendall(_error("password authentication failed (driftloop bridge)"))
                client.close()
                return
            client.settimeout(None)
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(socket_path)
        except (OSError, ConnectionError, struct.error):
            client.close()
            return
        # The server (trust on its socket) answers the startup with AuthenticationOk, which is
        # what the client waits for after its password.
        upstream.sendall(startup)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield Bridge(port, password)
    finally:
        stop.set()
        listener.close()
