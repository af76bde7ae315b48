"""BentoML's HTTP worker (``_bentoml_impl.worker.service``) as ``driftloop serve`` runs it when it
follows the champion: two changes to uvicorn, made before the worker starts.

- **A probe socket.** Every generation of servers the follower starts accepts on the same HTTP
  socket, so a request to it may reach the old generation or the new one. The follower asks the
  new one alone whether it is ready: each worker also serves on ``DRIFTLOOP_PROBE_FD``, a Unix
  socket the follower made for this generation only (uvicorn serves a list of sockets).
- **Draining without a race.** On SIGTERM uvicorn closes every idle keep-alive connection at once;
  a client that sends its next request on one at that moment gets no answer (the request was never
  read, but the client cannot know that, and a POST is not retried). Here an idle connection stays
  open instead: its next request is answered with ``Connection: close`` (so the client opens a new
  connection, which the next generation accepts), and one that stays idle is closed by uvicorn's
  own keep-alive timeout, as it would have been without a shutdown.

Nothing here runs on the request path: the changes are to startup and shutdown only.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

__all__ = ["main", "patch_uvicorn"]

PROBE_FD = "DRIFTLOOP_PROBE_FD"
_PATCHED = "__driftloop_follow__"


def _drain_on_shutdown(protocol: type[Any]) -> None:
    """``protocol.shutdown`` leaves an idle connection open for one more request, answered with
    ``Connection: close``; a busy one finishes its request and closes, as before."""
    if getattr(protocol, _PATCHED, False):
        return
    new_cycle = protocol.on_headers_complete if hasattr(protocol, "on_headers_complete") else None

    def shutdown(self: Any) -> None:
        self._driftloop_draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        # Idle: left to the keep-alive timeout (already running), or to the next request.

    protocol.shutdown = shutdown
    if new_cycle is not None:  # httptools: the request's cycle is made when its headers are in

        def on_headers_complete(self: Any) -> None:
            new_cycle(self)
            if getattr(self, "_driftloop_draining", False) and self.cycle is not None:
                self.cycle.keep_alive = False

        protocol.on_headers_complete = on_headers_complete
    else:  # h11: in handle_events
        handle_events = protocol.handle_events

        def handle(self: Any) -> None:
            cycle = self.cycle
            handle_events(self)
            if (
                getattr(self, "_driftloop_draining", False)
                and self.cycle is not None
                and self.cycle is not cycle
            ):
                # uvicorn's h11 cycle answers "Connection: close" when the request asked for it.
                self.cycle.keep_alive = False
                self.cycle.scope["headers"].append((b"connection", b"close"))

        protocol.handle_events = handle
    setattr(protocol, _PATCHED, True)


def patch_uvicorn(probe_fd: int | None) -> None:
    """Serve ``probe_fd`` beside BentoML's socket, and drain idle connections gracefully."""
    import uvicorn
    from uvicorn.protocols.http import h11_impl

    protocols: list[type[Any]] = [h11_impl.H11Protocol]
    try:
        from uvicorn.protocols.http import httptools_impl

        protocols.append(httptools_impl.HttpToolsProtocol)
    except ImportError:  # httptools not installed: uvicorn uses h11
        pass
    for protocol in protocols:
        _drain_on_shutdown(protocol)

    if probe_fd is None or getattr(uvicorn.Server, _PATCHED, False):
        return
    serve = uvicorn.Server.serve

    async def serve_with_probe(self: Any, sockets: list[socket.socket] | None = None) -> None:
        probe = socket.socket(fileno=probe_fd)
        await serve(self, sockets=[*(sockets or []), probe])

    uvicorn.Server.serve = serve_with_probe  # type: ignore[method-assign]
    setattr(uvicorn.Server, _PATCHED, True)


def main() -> None:
    probe = os.environ.get(PROBE_FD)
    patch_uvicorn(int(probe) if probe else None)
    # The worker imports the Bento's own copy of `training` (from the Bento's folder, which BentoML
    # puts first on sys.path); this project's, imported to get here, would stand in for it.
    for name in [name for name in sys.modules if name.partition(".")[0] == "training"]:
        del sys.modules[name]
    from _bentoml_impl.worker.service import main as worker  # type: ignore[import-untyped]

    worker()


if __name__ == "__main__":
    main()
