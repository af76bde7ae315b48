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
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = ["private_control_sockets"]

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


def main() -> None:
    """``bentoml`` with the arguments given, its arbiters on private sockets."""
    private_control_sockets()
    # BentoML puts a Bento's folder first on sys.path and imports its service from there, which
    # imports `training` from the Bento's own copy; this project's package, imported on the way
    # here, would stand in for it.
    for name in [name for name in sys.modules if name.partition(".")[0] == "training"]:
        del sys.modules[name]
    from bentoml_cli.cli import cli

    cli(args=sys.argv[1:], prog_name="bentoml")


if __name__ == "__main__":
    main()
