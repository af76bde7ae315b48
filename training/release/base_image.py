"""The local base image: Debian bookworm minbase, Python 3.11 and this machine's uv, made with
``debootstrap`` where no registry can be pulled from; and the check that any base can host a Bento."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from training.errors import DriftloopError
from training.release.engines import (
    INSTALL_HINT,
    Progress,
    check_backend,
    engine_binary,
    engine_env,
    image_exists,
    last_lines,
    quiet,
    run_tool,
)
from training.settings import Settings

__all__ = ["LOCAL_BASE", "check_base", "debian_mirror", "ensure_local_base"]

# The value of DRIFTLOOP_IMAGE_BASE (or --base-image) that asks for the locally made base.
LOCAL_BASE = "local"
LOCAL_BASE_REPO = "localhost/driftloop-base"
DEBIAN_SUITE = "bookworm"
# What the base needs beyond minbase: Python for the Bento's venv, CA roots for pip/uv over HTTPS.
BASE_PACKAGES = ("python3.11", "ca-certificates")
_RECIPE_LABEL = "io.driftloop.base.recipe"


def debian_mirror(settings: Settings) -> str:
    """``settings.debian_mirror``, else the Debian mirror this machine's apt uses (so the base comes
    from where packages do), else deb.debian.org."""
    if settings.debian_mirror:
        return settings.debian_mirror
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        with contextlib.suppress(OSError):
            text = source.read_text()
            deb822 = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.MULTILINE)
            if deb822:
                return deb822.group(1)
            classic = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+\S+", text, re.MULTILINE)
            if classic:
                return classic.group(1)
    return "http://deb.debian.org/debian"


def _uv_binary() -> Path:
    """This machine's uv executable (not a shim script: it is copied into a Linux image)."""
    # `uv run` names its own binary in $UV; pyenv and others put shell shims on PATH.
    candidates = [os.environ.get("UV"), shutil.which("uv")]
    python = shutil.which("python3")
    if python:
        found = subprocess.run(
            [python, "-c", "import uv; print(uv.find_uv_bin())"],
            capture_output=True,
            text=True,
            check=False,
        )
        candidates.append(found.stdout.strip() if found.returncode == 0 else None)
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            with open(candidate, "rb") as binary:
                if binary.read(4) == b"\x7fELF":
                    return Path(candidate)
    raise DriftloopError(
        "the local base image carries this machine's uv executable, and none was found: "
        "`pip install uv` (make setup does)"
    )


def _uv_version(uv: Path) -> str:
    return subprocess.run(
        [str(uv), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def ensure_local_base(settings: Settings, *, progress: Progress = quiet) -> str:
    """The local base image (Debian bookworm minbase, Python 3.11, uv), built if this machine's
    buildah storage does not hold one made from the same recipe.

    Returns:
        The image reference, for bentofile's ``docker.base_image``.

    Raises:
        DriftloopError: buildah or debootstrap missing, not root, or a step failed.
    """
    env = engine_env(settings)
    check_backend("buildah", env)
    uv = _uv_binary()
    mirror = debian_mirror(settings)
    recipe = json.dumps(
        {"suite": DEBIAN_SUITE, "packages": BASE_PACKAGES, "uv": _uv_version(uv), "v": 2},
        sort_keys=True,
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    ref = f"{LOCAL_BASE_REPO}:py3.11-{DEBIAN_SUITE}-{digest}"
    if image_exists("buildah", ref, env):
        progress(f"local base image {ref} is cached")
        return ref
    if shutil.which("debootstrap") is None:
        raise DriftloopError(
            f"the local base image needs `debootstrap`: {INSTALL_HINT['debootstrap']}"
        )
    if os.geteuid() != 0:
        raise DriftloopError(
            "debootstrap needs root to make the local base image; run as root (as CI does), or set "
            "DRIFTLOOP_IMAGE_BASE to an image with Python 3.11 and uv"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="driftloop-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"making the local base image: debootstrap {DEBIAN_SUITE} from {mirror} ...")
        debootstrap = run_tool(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ],
            env,
            timeout=1200,
        )
        if debootstrap.returncode != 0:
            raise DriftloopError(
                f"debootstrap {DEBIAN_SUITE} from {mirror} failed: {last_lines(debootstrap)}"
            )
        # Package caches are half the size and would only go stale in the image.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        shutil.copy2(uv, rootfs / "usr/local/bin/uv")
        progress(
            f"  debootstrap done ({time.monotonic() - started:.0f}s); importing into buildah ..."
        )
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."], check=True
        )
        shutil.rmtree(rootfs)
        container = run_tool(["buildah", "from", "scratch"], env).stdout.strip()
        try:
            steps = [
                ["buildah", "add", container, str(archive), "/"],
                [
                    "buildah",
                    "config",
                    "--env",
                    "LANG=C.UTF-8",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd",
                    "/bin/bash",
                    "--label",
                    f"{_RECIPE_LABEL}={recipe}",
                    "--label",
                    f"io.driftloop.base.mirror={mirror}",
                    container,
                ],
                ["buildah", "commit", "--rm", container, ref],
            ]
            for step in steps:
                result = run_tool(step, env)
                if result.returncode != 0:
                    raise DriftloopError(f"`{' '.join(step[:2])}` failed: {last_lines(result)}")
        except BaseException:
            run_tool(["buildah", "rm", container], env)
            raise
    progress(f"local base image {ref} made in {time.monotonic() - started:.0f}s")
    return ref


def check_base(backend: str, ref: str, python_version: str, env: dict[str, str]) -> None:
    """Fail, naming what is missing, when ``ref`` cannot host a Bento: BentoML's Dockerfile makes its
    venv with ``uv venv --python <version>`` and installs uv with pip only when uv is missing.

    Raises:
        DriftloopError: the image does not exist or lacks Python or uv.
    """
    python = f"python{python_version}"
    probe = (
        f"command -v {python} >/dev/null || {{ echo 'missing: {python}'; exit 3; }}; "
        "uv --version >/dev/null 2>&1 && exit 0; "
        f"{python} -m pip --version >/dev/null 2>&1 "
        f"&& ! ls /usr/lib/{python}/EXTERNALLY-MANAGED >/dev/null 2>&1 && exit 0; "
        "echo 'missing: uv'; exit 3"
    )
    if engine_binary(backend) == "docker":
        result = run_tool(
            ["docker", "run", "--rm", "--entrypoint", "/bin/sh", ref, "-c", probe], env
        )
        result_ok = result.returncode == 0
    else:
        if not image_exists(backend, ref, env):
            raise DriftloopError(
                f"base image {ref} is not in the local image storage; build it, pull it, or set "
                f"DRIFTLOOP_IMAGE_BASE={LOCAL_BASE} to have driftloop make one"
            )
        container = run_tool(["buildah", "from", "--pull-never", ref], env)
        if container.returncode != 0:
            raise DriftloopError(f"cannot open base image {ref}: {last_lines(container)}")
        name = container.stdout.strip()
        try:
            result = run_tool(["buildah", "run", name, "--", "/bin/sh", "-c", probe], env)
        finally:
            run_tool(["buildah", "rm", name], env)
        result_ok = result.returncode == 0
    if not result_ok:
        missing = re.search(r"missing: (\S+)", result.stdout)
        if missing and missing.group(1) == "uv":
            raise DriftloopError(
                f"base image {ref} has {python} but no uv, and its pip cannot install one "
                "(PEP 668): add uv to the image (COPY it to /usr/local/bin/uv)"
            )
        if missing:
            raise DriftloopError(
                f"base image {ref} lacks {missing.group(1)}: the Bento needs Python {python_version} "
                "in its base image"
            )
        raise DriftloopError(f"cannot run a shell in base image {ref}: {last_lines(result)}")
