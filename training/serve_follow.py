"""``driftloop serve``: serve the champion's Bento and follow the registry to the next champion
without a failed request.

The follower binds the HTTP socket itself and hands the same listening socket to every
``bentoml serve`` it starts (a *generation*: BentoML's arbiter and its workers; see
:mod:`training.process_manager`). Every worker of every generation accepts on that one socket, so
the kernel keeps one accept queue for all of them: no connection is refused or lost while one
generation starts or stops, and no process stands between the client and the worker (the request
path is exactly ``bentoml serve``'s).

When the registry names another champion (read every ``DRIFTLOOP_SERVE_FOLLOW_POLL_S``), the
follower starts its Bento beside the running one, asks the new generation alone for ``/readyz``
(each worker also serves a probe socket of its generation only, :mod:`training.serve_worker`), and
once it answers 200 stops the old generation with SIGTERM: its workers stop accepting, finish what
they are answering, answer one more request on each idle keep-alive connection with ``Connection:
close`` and write their spools to the store. A new Bento that does not become ready within
``DRIFTLOOP_SERVE_READY_TIMEOUT_S`` (or whose server exits) is stopped, the old one keeps serving,
and the follower says so; it tries again when the champion changes again.

gRPC follows too: every worker binds ``DRIFTLOOP_GRPC_PORT`` with ``SO_REUSEPORT``, the new
generation's beside the old's (the follower checks once, at start, that the port is not another
server's, and tells each generation so), and the old one's workers send GOAWAY when they stop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import DriftloopError
from training.settings import Settings

__all__ = ["Follower", "listen"]

STOP_TIMEOUT_S = 90.0
# How often a starting generation is asked for /readyz.
PROBE_EVERY_S = 0.25


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The HTTP socket every generation shares, bound and listening (``SO_REUSEADDR``, as BentoML
    binds its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise DriftloopError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@dataclass
class Generation:
    """One ``bentoml serve`` of one champion's Bento, on the shared socket."""

    number: int
    model_tag: str
    bento_tag: str
    version: int
    process: subprocess.Popen[bytes]
    folder: Path
    probe: socket.socket
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"v{self.version} ({self.model_tag})"

    def ready(self) -> bool:
        """Whether this generation's workers answer ``/readyz`` with 200 on its probe socket."""
        import httpx

        transport = httpx.HTTPTransport(uds=str(self.folder / "probe.sock"))
        try:
            with httpx.Client(transport=transport, timeout=5) as client:
                return client.get("http://generation/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> set[int]:
        """The worker processes BentoML's arbiter (this generation's process) runs now."""
        import psutil  # type: ignore[import-untyped]  # no stubs

        try:
            return {child.pid for child in psutil.Process(self.process.pid).children()}
        except psutil.Error:
            return set()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then (past ``timeout_s``) SIGKILL to what is left of its processes."""
        import psutil

        try:
            tree = [
                psutil.Process(self.process.pid),
                *psutil.Process(self.process.pid).children(recursive=True),
            ]
        except psutil.NoSuchProcess:
            tree = []
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)
        for straggler in tree:
            with contextlib.suppress(psutil.Error):
                if straggler.is_running():
                    straggler.kill()
        psutil.wait_procs(tree, timeout=10)
        self.probe.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.process.poll()


class Follower:
    """Serve one model's champion on ``host:port`` and follow it (see the module's doc).

    Args:
        env: the environment of every ``bentoml serve`` (the store's URL, the data dir, ...).
        echo: where the one-line reports go (stdout by default).
    """

    def __init__(
        self,
        settings: Settings,
        url: str,
        model_name: str,
        *,
        host: str,
        port: int,
        workers: int | None,
        env: Mapping[str, str],
        log: Path | None = None,
        echo: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.settings = settings
        self.url = url
        self.model_name = model_name
        self.host = host
        self.port = port
        self.workers = workers
        self.env = dict(env)
        self.log = log
        self.echo = echo
        self.current: Generation | None = None
        self.refused: str | None = None  # the Bento tag that last failed to become ready
        self._count = 0
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._root = Path(tempfile.mkdtemp(prefix="driftloop-serve-"))

    # -- the champion ------------------------------------------------------------------------

    def champion(self) -> tuple[str, str, int] | None:
        """The registry's champion: (model tag, Bento tag, version); None when it has no Bento."""
        from training import registry
        from training.store import connect

        with connect(self.url) as conn:
            current = registry.champion(conn, self.model_name)
        if current is None or current.bento_tag is None:
            return None
        return current.tag, current.bento_tag, current.version

    def _record(self, generation: Generation, status: str, **detail: object) -> None:
        self._record_tags(generation.model_tag, generation.bento_tag, status, **detail)

    def _record_tags(self, model_tag: str, bento_tag: str, status: str, **detail: object) -> None:
        from training import runs
        from training.store import connect

        try:
            with connect(self.url) as conn:
                runs.record_deployment(
                    conn,
                    model_tag,
                    bento_tag,
                    target="local",
                    status=status,
                    detail={
                        "host": self.host,
                        "port": self.port,
                        "workers": self.workers or 1,
                        **detail,
                    },
                )
        except Exception as exc:  # the store away for a moment must not stop serving
            self.echo(f"could not record the deployment of {bento_tag}: {exc}")

    # -- generations --------------------------------------------------------------------------

    def _start(self, model_tag: str, bento_tag: str, version: int) -> Generation:
        from training.bento import ensure_recorded_bento

        imported = ensure_recorded_bento(self.settings, self.url, bento_tag)
        if imported:
            self.echo(f"imported {bento_tag} from {imported}")
        assert self._socket is not None
        self._count += 1
        folder = self._root / f"generation-{self._count}"
        folder.mkdir(mode=0o700)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.bind(str(folder / "probe.sock"))
        probe.listen(64)
        env = dict(self.env)
        if self.workers is not None:
            # BentoML reads per-service worker counts from its configuration; the option adds to
            # (and wins over) whatever BENTOML_CONFIG_OPTIONS already says.
            option = f"services.{bento_tag.partition(':')[0]}.workers={self.workers}"
            env["BENTOML_CONFIG_OPTIONS"] = " ".join(
                part for part in (env.get("BENTOML_CONFIG_OPTIONS", ""), option) if part
            )
        env.update(
            {
                "DRIFTLOOP_SERVE_FD": str(self._socket.fileno()),
                "DRIFTLOOP_PROBE_FD": str(probe.fileno()),
                "DRIFTLOOP_PROMETHEUS_DIR": str(folder / "prometheus"),
                # Checked once by the follower: the port is ours, shared by the generations.
                "DRIFTLOOP_GRPC_PORT_SHARED": "1",
            }
        )
        command = [
            sys.executable,
            "-m",
            "training.process_manager",
            "serve",
            bento_tag,
            "--port",
            str(self.port),
            "--host",
            self.host,
        ]
        out = open(self.log, "ab") if self.log else None  # noqa: SIM115 - the child's until it exits
        try:
            process = subprocess.Popen(
                command,
                env=env,
                pass_fds=(self._socket.fileno(), probe.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
            )
        finally:
            if out:
                out.close()
        return Generation(self._count, model_tag, bento_tag, version, process, folder, probe)

    def _wait_ready(self, generation: Generation, timeout_s: float) -> str | None:
        """None once the generation is ready; else why it is not (it exited, its workers died,
        or the time ran out)."""
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while not self._stop.is_set():
            code = generation.process.poll()
            if code is not None:
                return f"its server exited with {code} before it was ready"
            if generation.ready():
                return None
            # A worker that fails while starting (a model that cannot be loaded) exits, and
            # BentoML's arbiter starts another that fails the same way, a minute later if
            # loading takes a minute: the first worker to exit before the rest are ready is
            # enough. (No worker of a healthy start exits.)
            workers = generation.workers()
            if seen - workers:
                return "a worker exited while starting (the server's log above says why)"
            seen |= workers
            if time.monotonic() >= deadline:
                return f"it did not answer /readyz within {timeout_s:.0f}s"
            self._stop.wait(PROBE_EVERY_S)
        return "the follower is stopping"

    def _refuse(self, name: str, model_tag: str, bento_tag: str, why: str) -> None:
        """Keep the running generation; try this Bento again only if the champion changes again."""
        assert self.current is not None
        self.refused = bento_tag
        self.echo(
            f"NOT switching to {name}: {why}; still serving {self.current.name} "
            "(tries again when the champion changes)"
        )
        self._record_tags(
            model_tag, bento_tag, "failed", reason=why, kept_bento_tag=self.current.bento_tag
        )

    def _switch(self, model_tag: str, bento_tag: str, version: int) -> None:
        old = self.current
        assert old is not None
        new_name = f"v{version} ({model_tag})"
        self.echo(
            f"new champion {new_name}: starting {bento_tag} beside {old.name} on the same socket"
        )
        try:
            generation = self._start(model_tag, bento_tag, version)
        except Exception as exc:
            self._refuse(new_name, model_tag, bento_tag, f"it could not be started: {exc}")
            return
        why = self._wait_ready(generation, self.settings.serve_ready_timeout_s)
        if why is not None:
            generation.stop()
            self._refuse(new_name, model_tag, bento_tag, why)
            return
        seconds = time.monotonic() - generation.started
        self.current = generation
        self.refused = None
        self.echo(f"switched to {new_name}: ready after {seconds:.1f}s; stopping {old.name}")
        self._record(
            generation, "serving", previous_bento_tag=old.bento_tag, switch_s=round(seconds, 1)
        )
        code = old.stop()
        self.echo(f"stopped {old.name} (exit {code})")

    def _check_grpc_port(self) -> None:
        """Once for every generation: whether the gRPC port is free (not another server's)."""
        from bentos.grpc_port import check_port

        port = self.env.get("DRIFTLOOP_GRPC_PORT", str(self.settings.grpc_port))
        if port == "0":
            return
        saved = os.environ.get("DRIFTLOOP_GRPC_PORT")
        try:
            if not check_port(self.settings):
                self.env["DRIFTLOOP_GRPC_PORT"] = "0"
                self.echo(f"gRPC port {port} is taken by another server: serving HTTP only")
        finally:
            if saved is None:
                os.environ.pop("DRIFTLOOP_GRPC_PORT", None)
            else:
                os.environ["DRIFTLOOP_GRPC_PORT"] = saved

    # -- the loop -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """Serve until stopped (SIGTERM, SIGINT or :meth:`stop`) or until the server exits."""
        found = self.champion()
        if found is None:
            raise DriftloopError(f"no champion of {self.model_name} with a Bento yet")
        self._socket = listen(self.host, self.port)
        try:
            self._check_grpc_port()
            model_tag, bento_tag, version = found
            first = self._start(model_tag, bento_tag, version)
            self.current = first
            workers = f", {self.workers} workers" if self.workers else ""
            self.echo(
                f"serving champion v{version} ({model_tag}{workers}) as {bento_tag} on "
                f"http://{self.host}:{self.port}; following the registry every "
                f"{self.settings.serve_follow_poll_s:g}s"
            )
            self._record(first, "serving")
            why = self._wait_ready(first, self.settings.serve_ready_timeout_s)
            if why is not None and not self._stop.is_set():
                self.echo(f"{first.name} is not ready: {why}")
                return 1
            if not self._stop.is_set():
                self.echo(f"{first.name} ready after {time.monotonic() - first.started:.1f}s")
            return self._follow()
        finally:
            if self.current is not None:
                self.current.stop()
            self._socket.close()
            shutil.rmtree(self._root, ignore_errors=True)

    def _follow(self) -> int:
        unreachable = False
        while not self._stop.wait(self.settings.serve_follow_poll_s):
            assert self.current is not None
            code = self.current.process.poll()
            if code is not None:
                self.echo(f"the server of {self.current.name} exited with {code}")
                return code or 1
            try:
                found = self.champion()
            except Exception as exc:
                if not unreachable:
                    self.echo(
                        f"cannot read the registry ({exc}); still serving {self.current.name}"
                    )
                unreachable = True
                continue
            if unreachable:
                self.echo("the registry answers again")
                unreachable = False
            if found is None:
                continue
            model_tag, bento_tag, version = found
            if bento_tag in (self.current.bento_tag, self.refused):
                continue
            self._switch(model_tag, bento_tag, version)
        return 0


def serve_following(follower: Follower) -> int:
    """Run ``follower`` in this process's main thread with SIGTERM and SIGINT stopping it."""

    def stop(signum: int, _: object) -> None:
        follower.echo(f"{signal.Signals(signum).name}: stopping")
        follower.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return follower.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
