"""Keep a few long-running processes up: one that dies is started again after a back-off.

``driftloop airflow`` runs Airflow's api-server, dag-processor and scheduler this way: a scheduler
that exits because PostgreSQL restarted for a second comes back on its own, with a line saying so,
instead of the launcher stopping everything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.private_files import open_private

__all__ = ["Supervisor"]


@dataclass
class _Component:
    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    # Restarts since it last stayed up for `steady_s`: the back-off grows with them.
    restarts: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Start named commands in sessions of their own, restart those that die, stop them all.

    Args:
        env: the environment of every command.
        echo: where the restart lines go.
        backoff_s: the wait before the first restart; it doubles with each restart in a row.
        max_backoff_s: the longest wait.
        steady_s: a component up this long counts as healthy again (its back-off starts over).
        umask: the umask of the commands' processes.
    """

    env: dict[str, str]
    echo: Callable[[str], None]
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    steady_s: float = 300.0
    umask: int = 0o077
    components: dict[str, _Component] = field(default_factory=dict)

    def start(self, name: str, command: Sequence[str], log: Path) -> None:
        component = _Component(name, list(command), log)
        self.components[name] = component
        self._spawn(component)

    def _spawn(self, component: _Component) -> int:
        with open_private(component.log, "ab") as out:
            component.process = subprocess.Popen(
                component.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session, so a terminal's Ctrl-C reaches only the launcher, and stopping
                # it signals its whole group (the LocalExecutor's and uvicorn's workers).
                start_new_session=True,
                umask=self.umask,
            )
        component.started_at = time.monotonic()
        component.restart_at = None
        return component.process.pid

    def alive(self, name: str) -> bool:
        process = self.components[name].process
        return process is not None and process.poll() is None

    def pid(self, name: str) -> int | None:
        process = self.components[name].process
        return None if process is None else process.pid

    def check(self) -> None:
        """Restart the components that died, each after its back-off (call this every second)."""
        now = time.monotonic()
        for component in self.components.values():
            process = component.process
            assert process is not None
            if process.poll() is None:
                if component.restarts and now - component.started_at > self.steady_s:
                    component.restarts = 0
                continue
            if component.restart_at is None:
                delay = min(self.max_backoff_s, self.backoff_s * 2**component.restarts)
                component.restart_at = now + delay
                self.echo(
                    f"{component.name} exited with code {process.returncode}; restarting it in "
                    f"{delay:.0f}s (restart {component.restarts + 1}; log {component.log})"
                )
            elif now >= component.restart_at:
                component.restarts += 1
                self.echo(f"{component.name} restarted (pid {self._spawn(component)})")

    def stop(self, grace: float = 30) -> None:
        """SIGTERM every component's process group, then SIGKILL what is left after ``grace``."""
        running = [c.process for c in self.components.values() if c.process is not None]
        for process in running:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
