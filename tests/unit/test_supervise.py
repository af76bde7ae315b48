"""The supervisor ``driftloop airflow`` runs its components under, on real processes (Python
sleeping in place of Airflow's api-server, scheduler and dag-processor)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from training.supervise import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _until(condition: object, supervisor: Supervisor, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.check()
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_component_that_dies_is_restarted_after_a_growing_back_off(tmp_path: Path) -> None:
    lines: list[str] = []
    supervisor = Supervisor(env=dict(os.environ), echo=lines.append, backoff_s=1.0)
    supervisor.start("scheduler", SLEEPER, tmp_path / "scheduler.log")
    supervisor.start("api-server", SLEEPER, tmp_path / "api-server.log")
    try:
        first = supervisor.pid("scheduler")
        other = supervisor.pid("api-server")
        assert first is not None
        os.killpg(first, signal.SIGKILL)

        died = time.monotonic()
        _until(
            lambda: supervisor.pid("scheduler") != first and supervisor.alive("scheduler"),
            supervisor,
        )
        assert time.monotonic() - died >= 1.0
        assert lines[0] == (
            f"scheduler exited with code -9; restarting it in 1s (restart 1; log "
            f"{tmp_path / 'scheduler.log'})"
        )
        second = supervisor.pid("scheduler")
        assert lines[1] == f"scheduler restarted (pid {second})"
        assert supervisor.pid("api-server") == other
        assert supervisor.alive("api-server")

        # Dying again at once: twice the wait.
        assert second is not None
        os.killpg(second, signal.SIGTERM)
        _until(lambda: supervisor.pid("scheduler") != second, supervisor)
        assert lines[2].startswith("scheduler exited with code -15; restarting it in 2s (restart 2")
        assert (tmp_path / "scheduler.log").stat().st_mode & 0o777 == 0o600
    finally:
        supervisor.stop(grace=5)
    assert not supervisor.alive("scheduler")
    assert not supervisor.alive("api-server")
