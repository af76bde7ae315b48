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
from typing import Any

__all__ = ["private_control_sockets"]

# Set on the replacement, so a second call (the module's entry point, then the service's hook)
# leaves it in place.
_PRIVATE = "__driftloop_private_control__"


def private_control_sockets() -> None:
    """Make every circus arbiter BentoML creates in this process listen on Unix sockets in a
    folder only this process's user can enter, not on 127.0.0.1 TCP ports."""
    from bentoml._internal.utils import circus as bentoml_circus

    if getattr(bentoml_circus.create_standalone_arbiter, _PRIVATE, False):
        return

    def create_standalone_arbiter(
        watchers: list[Any], *, threaded: bool = False, **kwargs: Any
    ) -> Any:
        # BentoML's own function with ipc:// endpoints; everything else as it passes it (its
        # check_delay default included). BentoML's serving code imports this name when it
        # serves, so replacing the module's attribute is enough.
        folder = tempfile.mkdtemp(prefix="bentoml-circus-")
        arbiter_class = bentoml_circus.ThreadedArbiter if threaded else bentoml_circus.Arbiter
        try:
            arbiter = arbiter_class(
                watchers,
                endpoint=f"ipc://{folder}/control",
                pubsub_endpoint=f"ipc://{folder}/pubsub",
                check_delay=kwargs.pop("check_delay", 10),
                **kwargs,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        arbiter.exit_stack.callback(shutil.rmtree, folder, ignore_errors=True)
        return arbiter

    setattr(create_standalone_arbiter, _PRIVATE, True)
    bentoml_circus.create_standalone_arbiter = create_standalone_arbiter


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
