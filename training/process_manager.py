"""``bentoml serve`` with its process manager's control endpoints on private Unix sockets.

BentoML 1.4 runs its workers under circus's arbiter (circusd), whose control and pubsub endpoints
it puts on free 127.0.0.1 TCP ports (``bentoml._internal.utils.circus.create_standalone_arbiter``;
no option changes them). circus asks a caller for no credentials: any local user who connects can
read the workers' environment (the database URL among it) and add a watcher, a command that then
runs as the server's user. :func:`private_control_sockets` gives the arbiter ``ipc://`` endpoints
in a folder made by :func:`tempfile.mkdtemp` instead (mode 0700, the server's user's), which is
removed when the arbiter stops.

Two ways in: ``python -m training.process_manager serve ...`` is ``bentoml serve ...`` with the
change made first (``driftloop serve`` runs it); a service can also call
:func:`private_control_sockets` from an ``@bentoml.on_deployment`` hook, which BentoML runs in the
serving process before it makes the arbiter (so a plain ``bentoml serve`` of the Bento, as in its
image, gets it too).

Run by ``driftloop serve``'s follower (:mod:`training.serve_follow`), a second change applies
(:func:`adopt_listener`): the HTTP socket is not bound here but inherited, already listening, from
the follower (``DRIFTLOOP_SERVE_FD``), which hands the same socket to every generation of servers
it starts; the workers run through :mod:`training.serve_worker`, which also serves ``/readyz`` on a
probe socket of this generation only (``DRIFTLOOP_PROBE_FD``); and the generation gets Prometheus
files of its own (``DRIFTLOOP_PROMETHEUS_DIR``), since BentoML empties its shared folder at start.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = ["adopt_listener", "private_control_sockets"]

# Set by the follower (training.serve_follow) in the environment of each server it starts.
SERVE_FD = "DRIFTLOOP_SERVE_FD"
PROBE_FD = "DRIFTLOOP_PROBE_FD"
PROMETHEUS_DIR = "DRIFTLOOP_PROMETHEUS_DIR"
# BentoML's names: the HTTP socket circus hands the workers, and the workers' entry module.
API_SOCKET = "_bento_api_server"
WORKER_MODULE = "_bentoml_impl.worker.service"

# Set on the replacement classes, so a second call (the module's entry point, then the service's
# hook) leaves them in place.
_PRIVATE = "__driftloop_private_control__"


def private_control_sockets() -> None:
    """Make every circus arbiter BentoML creates in this process listen on Unix sockets in a
    folder only this process's user can enter, not on 127.0.0.1 TCP ports.

    BentoML's ``create_standalone_arbiter`` makes its arbiter from the classes ``Arbiter`` and
    ``ThreadedArbiter`` of its module ``bentoml._internal.utils.circus``, looked up when it is
    called; those are replaced by subclasses that take private endpoints whatever they are given.
    (Replacing the function would not do: BentoML's ``serve_http`` imports it before it runs a
    service's ``on_deployment`` hooks.)
    """
    from bentoml._internal.utils import circus as bentoml_circus

    for name in ("Arbiter", "ThreadedArbiter"):
        base = getattr(bentoml_circus, name)
        if not getattr(base, _PRIVATE, False):
            private = type(name, (base,), {"__init__": _private_init(base), _PRIVATE: True})
            setattr(bentoml_circus, name, private)


def _private_init(base: Any) -> Callable[..., None]:
    def __init__(
        self: Any, watchers: Any, endpoint: str, pubsub_endpoint: str, *args: Any, **kwargs: Any
    ) -> None:
        if os.environ.get(SERVE_FD):
            _adopt(watchers, kwargs.get("sockets"))
        # `endpoint` and `pubsub_endpoint` are BentoML's TCP ports, replaced here.
        folder = tempfile.mkdtemp(prefix="bentoml-circus-")
        try:
            base.__init__(
                self,
                watchers,
                f"ipc://{folder}/control",
                f"ipc://{folder}/pubsub",
                *args,
                **kwargs,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # Run when the arbiter stops, as BentoML's own clean-up of its socket folder is.
        self.exit_stack.callback(shutil.rmtree, folder, ignore_errors=True)

    return __init__


def _adopted_socket(name: str, fd: int) -> Any:
    """A circus socket named ``name`` on the already bound and listening ``fd``: circus hands it
    to the workers as ``$(circus.sockets.<name>)`` and closes only this process's copy."""
    from circus.sockets import CircusSocket  # type: ignore[import-untyped]

    class Adopted(CircusSocket):  # type: ignore[misc]
        def __init__(self) -> None:
            socket.socket.__init__(self, fileno=fd)
            self.set_inheritable(True)
            self.name = name
            self.socktype = self.type
            self.path = None
            self.umask = None
            self.replace = False
            self.is_unix = False
            self.host, self.port = self.getsockname()[:2]
            self.interface = None
            self.backlog = 2048
            self.so_reuseport = False
            self.blocking = False

        def bind_and_listen(self) -> None:
            """Bound and listening already, in the follower."""

    return Adopted()


def _adopt(watchers: Any, sockets: Any) -> None:
    """BentoML's arbiter, made to serve on the follower's socket: its API socket (not yet bound;
    BentoML binds it when the arbiter starts) is swapped for the inherited one, and its workers
    start through :mod:`training.serve_worker`."""
    fd = int(os.environ[SERVE_FD])
    for index, sock in enumerate(sockets or []):
        if sock.name == API_SOCKET:
            sock.close()
            sockets[index] = _adopted_socket(API_SOCKET, fd)
    for watcher in watchers:
        args = watcher.args if isinstance(watcher.args, list) else None
        if args and WORKER_MODULE in args:
            args[args.index(WORKER_MODULE)] = "training.serve_worker"


def adopt_listener() -> None:
    """With ``DRIFTLOOP_SERVE_FD`` set: the arbiters this process makes serve HTTP on that
    inherited socket (see the module's doc), and this generation keeps its own Prometheus files."""
    if not os.environ.get(SERVE_FD):
        return
    private_control_sockets()
    folder = os.environ.get(PROMETHEUS_DIR)
    if folder:
        from bentoml._internal.configuration.containers import BentoMLContainer

        BentoMLContainer.prometheus_multiproc_dir.set(folder)


def main() -> None:
    """``bentoml`` with the arguments given, its arbiters on private sockets."""
    private_control_sockets()
    adopt_listener()
    # BentoML puts a Bento's folder first on sys.path and imports its service from there, which
    # imports `training` from the Bento's own copy; this project's package, imported on the way
    # here, would stand in for it.
    for name in [name for name in sys.modules if name.partition(".")[0] == "training"]:
        del sys.modules[name]
    from bentoml_cli.cli import cli

    cli(args=sys.argv[1:], prog_name="bentoml")


if __name__ == "__main__":
    main()
