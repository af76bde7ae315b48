"""Run the ``driftloop`` command as a user does (a fresh interpreter, this process's environment) and
read the store the tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from training.settings import get_settings
from training.store import connect


def driftloop(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    """``driftloop ARGS`` with this process's environment plus ``env``; never raises on its exit."""
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def query(sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` in the configured store."""
    with connect(get_settings().database_url or "") as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()
