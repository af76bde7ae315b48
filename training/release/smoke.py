"""The smoke check of a built image: started on the host network against the store, ready, one
prediction answered, served by a non-root user."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from training.errors import DriftloopError
from training.release.engines import (
    Progress,
    backend_env,
    check_backend,
    last_lines,
    quiet,
    resolve_backend,
    run_tool,
    runner_binary,
)
from training.settings import Settings

__all__ = ["SmokeResult", "smoke_test"]


@dataclass(frozen=True)
class SmokeResult:
    """What the started image answered."""

    image: str
    ready_seconds: float
    model_version: str
    uid: int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _reachable_url(database_url: str) -> Iterator[str]:
    """``database_url`` in a form a container on the host network can use: the embedded server's
    socket behind a password-checked TCP port (:mod:`training.pg_bridge`)."""
    from training.pg_bridge import password_bridge
    from training.postgres import socket_dir

    folder = socket_dir(database_url)
    if not folder or not folder.startswith("/"):
        yield database_url
        return
    parts = urlsplit(database_url)
    socket_path = f"{folder}/.s.PGSQL.{parts.port or 5432}"
    with password_bridge(socket_path) as bridge:
        user = parts.username or "postgres"
        yield f"postgresql://{user}:{bridge.password}@127.0.0.1:{bridge.port}{parts.path}"


_CAUSE = re.compile(r"^[\w.]*(Error|Exception)\b.*: ")


def smoke_test(
    settings: Settings,
    image: str,
    database_url: str,
    request: dict[str, Any],
    *,
    backend: str | None = None,
    timeout: float = 180,
    progress: Progress = quiet,
) -> SmokeResult:
    """Start ``image`` on the host network, wait for ``/readyz``, score ``request`` once, and check
    that the server runs as a non-root user; the container is removed afterwards.

    Raises:
        DriftloopError: it did not become ready, the prediction failed, or it runs as root (the
            message carries the container's last log lines).
    """
    import httpx

    backend = resolve_backend(backend or settings.image_backend, dict(os.environ))
    runner = runner_binary(backend)
    env = backend_env(settings, backend)
    check_backend(backend, env, run=True)
    port = _free_port()
    name = f"driftloop-smoke-{uuid.uuid4().hex[:8]}"
    with _reachable_url(database_url) as url:
        started = time.monotonic()
        run = run_tool(
            [
                runner,
                "run",
                "--detach",
                "--name",
                name,
                "--network",
                "host",
                "--env",
                f"PORT={port}",
                # The name only: the engine copies the value from its own environment, so the
                # URL (and its password) never shows in the process list.
                "--env",
                "DRIFTLOOP_DATABASE_URL",
                image,
            ],
            {**env, "DRIFTLOOP_DATABASE_URL": url},
            timeout=120,
        )
        if run.returncode != 0:
            raise DriftloopError(f"`{runner} run {image}` failed: {last_lines(run)}")

        def logs() -> str:
            result = run_tool([runner, "logs", name], env, timeout=30)
            lines = (result.stdout + result.stderr).strip().splitlines()
            # The first exception names the cause (a missing library, an unreachable store);
            # BentoML's supervisor then adds "No active process found for watcher", which does not.
            causes = [line.strip() for line in lines if _CAUSE.match(line.strip())]
            causes = [c for c in causes if "No active process found" not in c]
            return causes[0] if causes else " | ".join(lines[-5:])

        try:
            base = f"http://127.0.0.1:{port}"
            progress(f"started {image} as {name} on {base}; waiting for /readyz ...")
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                        break
                state = run_tool([runner, "inspect", "--format", "{{.State.Running}}", name], env)
                if state.stdout.strip() == "false":
                    raise DriftloopError(
                        f"container of {image} exited before it was ready: {logs()}"
                    )
                if time.monotonic() - started > timeout:
                    raise DriftloopError(f"{image} was not ready after {timeout:.0f}s: {logs()}")
                time.sleep(1)
            ready = time.monotonic() - started
            response = httpx.post(f"{base}/predict", json=request, timeout=30)
            if response.status_code != 200:
                raise DriftloopError(
                    f"POST /predict on {image} answered {response.status_code}: {response.text[:300]}"
                )
            version = str(response.json()["model_version"])
            uid_run = run_tool([runner, "exec", name, "id", "-u"], env, timeout=60)
            if uid_run.returncode != 0:
                raise DriftloopError(f"`{runner} exec {name} id -u` failed: {last_lines(uid_run)}")
            uid = int(uid_run.stdout.strip())
            if uid == 0:
                raise DriftloopError(f"{image} serves as root; BentoML's image should use its user")
            return SmokeResult(image=image, ready_seconds=ready, model_version=version, uid=uid)
        finally:
            # A graceful stop first: SIGTERM writes the container's prediction spool to the store.
            run_tool([runner, "stop", "--time", "30", name], env, timeout=120)
            run_tool([runner, "rm", "--force", name], env, timeout=120)
