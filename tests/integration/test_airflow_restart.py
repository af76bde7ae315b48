"""`driftloop airflow` for real: its scheduler killed, it comes back on its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> dict[int, str]:
    """The direct children of ``pid``, with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def test_a_killed_scheduler_is_restarted_with_a_line_saying_so(
    env: Path, airflow_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_AIRFLOW_DATABASE_URL", airflow_database_url)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "airflow", "--port", str(_free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert launcher.stdout is not None
        lines.extend(launcher.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if line.startswith(prefix):
                    return line
            assert launcher.poll() is None, lines
            time.sleep(0.5)
        raise AssertionError(f"no line starting {prefix!r} in {lines}")

    try:
        wait_for("Airflow UI: ", 400)
        [scheduler] = [pid for pid, cmd in _children(launcher.pid).items() if " scheduler" in cmd]
        os.killpg(scheduler, signal.SIGKILL)

        died = wait_for("scheduler exited with code -9; restarting it in 2s (restart 1", 30)
        restarted = wait_for("scheduler restarted (pid ", 30)
        again = int(restarted.split("pid ")[1].rstrip(")\n"))
        assert again != scheduler
        assert " scheduler" in _children(launcher.pid)[again]
        assert launcher.poll() is None, died
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
    assert launcher.returncode == 0, lines
