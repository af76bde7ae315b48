"""Container engines: which one builds and runs images here, its environment, and the image
operations (exists, size, tag, remove, push) every release step shares."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from training.errors import DriftloopError
from training.settings import Settings

__all__ = [
    "BACKENDS",
    "CHOICES",
    "INSTALL_HINT",
    "Progress",
    "backend_env",
    "check_backend",
    "engine_binary",
    "engine_env",
    "image_cli",
    "image_exists",
    "image_size",
    "last_lines",
    "push",
    "quiet",
    "remove_image",
    "resolve_backend",
    "run_tool",
    "runner_binary",
    "tag_image",
]

BACKENDS = ("docker", "buildx", "buildah", "podman")
# "auto" picks docker where a daemon answers, else buildah.
CHOICES = (*BACKENDS, "auto")


Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


_CONTAINERS_CONF = """\
# Written by driftloop for buildah/podman (CONTAINERS_CONF); set CONTAINERS_CONF yourself to use yours.
[containers]
# Explicit limits below the host's hard limits: runc cannot raise them in an unprivileged sandbox.
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
# crun fails with "cgroups in hybrid mode not supported" on some hosts; runc does not.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def engine_env(settings: Settings) -> dict[str, str]:
    """The environment buildah and podman run with: driftloop's ``containers.conf`` unless the
    caller already chose one through ``CONTAINERS_CONF``."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        conf = settings.home / "containers" / "containers.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        if not conf.exists() or conf.read_text() != _CONTAINERS_CONF:
            conf.write_text(_CONTAINERS_CONF)
        env["CONTAINERS_CONF"] = str(conf)
    # BentoML's buildah backend also reads these; OCI is the format registries expect.
    env.setdefault("BUILDAH_FORMAT", "oci")
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def engine_binary(backend: str) -> str:
    """The binary that builds, tags, inspects and runs images for ``backend``."""
    return "docker" if backend in ("docker", "buildx") else backend


def runner_binary(backend: str) -> str:
    """The binary that runs images built by ``backend`` (buildah cannot run images; podman can)."""
    return "podman" if backend in ("buildah", "podman") else "docker"


INSTALL_HINT = {
    "docker": "install Docker (https://docs.docker.com/engine/install/), or use --backend buildah "
    "where no Docker daemon runs",
    "buildah": "install it with `apt-get install buildah podman runc` (Debian/Ubuntu) or "
    "`dnf install buildah podman`",
    "podman": "install it with `apt-get install podman runc` (Debian/Ubuntu) or `dnf install podman`",
    "debootstrap": "install it with `apt-get install debootstrap`, or point DRIFTLOOP_IMAGE_BASE at "
    "an image that has Python 3.11 and uv",
}


def run_tool(
    command: list[str], env: dict[str, str], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )


def last_lines(result: subprocess.CompletedProcess[str], lines: int = 3) -> str:
    return " | ".join((result.stderr or result.stdout).strip().splitlines()[-lines:])


def _docker_info(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Ask the Docker daemon for its version: fails when none answers."""
    return run_tool(["docker", "info", "--format", "{{.ServerVersion}}"], env, timeout=30)


def backend_env(settings: Settings, backend: str) -> dict[str, str]:
    """The environment the backend's tools run with (buildah/podman get driftloop's conf)."""
    return dict(os.environ) if engine_binary(backend) == "docker" else engine_env(settings)


def image_cli(backend: str) -> str:
    """The tool that tags, removes and pushes images (podman shares buildah's storage)."""
    return "docker" if engine_binary(backend) == "docker" else "buildah"


def resolve_backend(backend: str, env: dict[str, str]) -> str:
    """``backend``, with ``auto`` resolved: docker where a Docker daemon answers, else buildah."""
    if backend != "auto":
        return backend
    if shutil.which("docker", path=env.get("PATH")) and _docker_info(env).returncode == 0:
        return "docker"
    return "buildah"


def check_backend(backend: str, env: dict[str, str], *, run: bool = False) -> None:
    """Fail with what to install when ``backend`` (and, with ``run``, the tool that runs its images)
    cannot work here.

    Raises:
        DriftloopError: unknown backend, missing binary, or no Docker daemon answering.
    """
    if backend not in BACKENDS:
        raise DriftloopError(
            f"unknown image backend {backend!r}: choose one of {', '.join(CHOICES)} "
            "(DRIFTLOOP_IMAGE_BACKEND or --backend)"
        )
    needed = [engine_binary(backend)] + ([runner_binary(backend)] if run else [])
    for binary in dict.fromkeys(needed):
        if shutil.which(binary, path=env.get("PATH")) is None:
            hint = INSTALL_HINT["docker" if binary == "docker" else binary]
            raise DriftloopError(
                f"the {backend} backend needs `{binary}`, which is not on PATH: {hint}"
            )
    if engine_binary(backend) == "docker":
        info = _docker_info(env)
        if info.returncode != 0:
            raise DriftloopError(
                f"the {backend} backend needs a Docker daemon, and none answers ({last_lines(info, 1)}): "
                "start one, or use --backend buildah"
            )
    if backend == "buildx":
        buildx = run_tool(["docker", "buildx", "version"], env, timeout=30)
        if buildx.returncode != 0:
            raise DriftloopError(
                "the buildx backend needs the docker buildx plugin "
                "(https://docs.docker.com/build/install-buildx/)"
            )


def image_exists(backend: str, ref: str, env: dict[str, str]) -> bool:
    if engine_binary(backend) == "docker":
        command = ["docker", "image", "inspect", ref]
    else:
        command = ["buildah", "inspect", "--type", "image", ref]
    return run_tool(command, env, timeout=60).returncode == 0


def image_size(backend: str, ref: str, env: dict[str, str]) -> int | None:
    tool = "docker" if engine_binary(backend) == "docker" else "podman"
    if shutil.which(tool) is None:
        return None
    result = run_tool([tool, "image", "inspect", "--format", "{{.Size}}", ref], env, timeout=60)
    try:
        return int(result.stdout.strip())
    except ValueError:
        return None


def remove_image(backend: str, ref: str, env: dict[str, str]) -> None:
    run_tool([image_cli(backend), "rmi", ref], env, timeout=120)


def tag_image(backend: str, source: str, target: str, env: dict[str, str]) -> None:
    result = run_tool([image_cli(backend), "tag", source, target], env, timeout=120)
    if result.returncode != 0:
        raise DriftloopError(f"could not tag {source} as {target}: {last_lines(result)}")


def push(settings: Settings, image: str, backend: str) -> None:
    """Push ``image`` to its registry with the backend's own client (credentials from its login)."""
    result = run_tool(
        [image_cli(backend), "push", image], backend_env(settings, backend), timeout=1800
    )
    if result.returncode != 0:
        raise DriftloopError(f"pushing {image} failed: {last_lines(result)}")
