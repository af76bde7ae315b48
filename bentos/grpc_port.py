"""Where the gRPC API listens: the port check ``bentoml serve`` makes before its workers start, and
the address a worker binds.

Standard library only, and apart from :mod:`bentos.grpc_server`: ``bentoml serve <bento>`` runs the
service's ``on_deployment`` hooks after it has taken the Bento's code folder off ``sys.path`` again,
so a hook can import modules of the ``bentos`` and ``training`` packages (already imported, they
know their folders) but not ``driftloop_grpc``, a package of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.settings import Settings

__all__ = ["check_port", "http_host", "warn_if_open"]

log = logging.getLogger("driftloop.serve")


def http_host() -> str | None:
    """The address this worker's HTTP socket is bound to (BentoML hands a worker its socket as
    ``--fd N``), so that gRPC listens where HTTP does unless ``DRIFTLOOP_GRPC_HOST`` says else."""
    argv = sys.argv
    if "--fd" not in argv[:-1]:
        return None
    try:
        fd = int(argv[argv.index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as http:
            return str(http.getsockname()[0])
    except (ValueError, OSError):
        return None


def check_port(settings: Settings) -> bool:
    """Whether the gRPC port is free, checked once by ``bentoml serve`` before its workers start.

    Every worker binds the port with ``SO_REUSEPORT``, which would also let a second server of the
    same user share a port already taken (another model's service, say) and take half its calls.
    So the server checks first, without that option; when the port is taken it serves HTTP only,
    says so in its log, and its workers leave gRPC off (``DRIFTLOOP_GRPC_PORT=0`` in their
    environment).
    """
    if settings.grpc_port == 0:
        return False
    if os.environ.get("DRIFTLOOP_GRPC_PORT_SHARED") == "1":
        # `driftloop serve` checked it once for every server it starts: the workers of the one
        # running hold it now, and the next one's share it with them until they stop.
        return True
    host = settings.grpc_host or "0.0.0.0"  # a probe: any listener on the port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, settings.grpc_port))
        except OSError as exc:
            log.warning(
                "gRPC port %d is taken (%s): this server answers HTTP only; set "
                "DRIFTLOOP_GRPC_PORT to a free port (0: no gRPC)",
                settings.grpc_port,
                exc.strerror or exc,
            )
            os.environ["DRIFTLOOP_GRPC_PORT"] = "0"
            return False
    return True


def warn_if_open(settings: Settings, host: str | None) -> bool:
    """Log a warning when the API is open to the network: auth off and ``host`` not a loopback
    address (``bentoml serve`` and the image listen on 0.0.0.0 unless told otherwise, while auth
    is off by default for the local demo). Returns whether it warned."""
    import ipaddress

    if settings.auth == "on" or host is None:
        return False
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return False
    except ValueError:
        if host == "localhost":
            return False
    log.warning(
        "DRIFTLOOP_AUTH is off and the API listens on %s: anyone who can reach this port may"
        " predict and post labels that steer the next retrain. Set DRIFTLOOP_AUTH=on (and create"
        " keys with driftloop keys create) before exposing it, or serve on 127.0.0.1.",
        host,
    )
    return True
