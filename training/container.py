"""OCI images of Bentos with ``bentoml containerize``, with or without a Docker daemon.

``docker`` and ``buildx`` need a daemon (users' CI); ``buildah`` (and ``podman``) build without one,
which is how driftloop's own CI proves that every Bento becomes an image that starts and serves.

Three things make a daemonless build work on a bare Debian machine, and all three are opt-in so a
user's default stays BentoML's own (``python:3.11-slim`` base, ``docker`` backend):

- ``engine_env``: a ``containers.conf`` for buildah/podman (runc, cgroupfs, explicit ulimits), passed
  through ``CONTAINERS_CONF`` instead of editing ``/etc``;
- ``ensure_local_base``: with no registry to pull from, a base image made here with ``debootstrap``
  (Debian bookworm, Python 3.11, the host's ``uv``), kept in the engine's storage as a cache;
- ``extra_ca``: CA certificates mounted into the build's steps only (a TLS-intercepting proxy), never
  copied into the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from training.errors import DriftloopError, NotFoundError
from training.settings import Settings

__all__ = [
    "BACKENDS",
    "LOCAL_BASE",
    "BuiltImage",
    "SmokeResult",
    "check_backend",
    "containerize",
    "engine_env",
    "ensure_local_base",
    "push",
    "record_image",
    "resolve_backend",
    "smoke_test",
]

BACKENDS = ("docker", "buildx", "buildah", "podman")
# "auto" picks docker where a daemon answers, else buildah.
CHOICES = (*BACKENDS, "auto")
# The value of DRIFTLOOP_IMAGE_BASE (or --base-image) that asks for the locally made base.
LOCAL_BASE = "local"
LOCAL_BASE_REPO = "localhost/driftloop-base"
DEBIAN_SUITE = "bookworm"
# What the base needs beyond minbase: Python for the Bento's venv, CA roots for pip/uv over HTTPS.
BASE_PACKAGES = ("python3.11", "ca-certificates")
_RECIPE_LABEL = "io.driftloop.base.recipe"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class BuiltImage:
    """An image built from a Bento and tagged with the Bento's version."""

    bento_tag: str
    image: str
    backend: str
    base_image: str
    seconds: float
    size_bytes: int | None


@dataclass(frozen=True)
class SmokeResult:
    """What the started image answered."""

    image: str
    ready_seconds: float
    model_version: str
    uid: int


# --- engines -------------------------------------------------------------------------------------

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


def _engine(backend: str) -> str:
    """The binary that builds, tags, inspects and runs images for ``backend``."""
    return "docker" if backend in ("docker", "buildx") else backend


def _runner(backend: str) -> str:
    """The binary that runs images built by ``backend`` (buildah cannot run images; podman can)."""
    return "podman" if backend in ("buildah", "podman") else "docker"


_INSTALL_HINT = {
    "docker": "install Docker (https://docs.docker.com/engine/install/), or use --backend buildah "
    "where no Docker daemon runs",
    "buildah": "install it with `apt-get install buildah podman runc` (Debian/Ubuntu) or "
    "`dnf install buildah podman`",
    "podman": "install it with `apt-get install podman runc` (Debian/Ubuntu) or `dnf install podman`",
    "debootstrap": "install it with `apt-get install debootstrap`, or point DRIFTLOOP_IMAGE_BASE at "
    "an image that has Python 3.11 and uv",
}


def _run(
    command: list[str], env: dict[str, str], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )


def _tail(result: subprocess.CompletedProcess[str], lines: int = 3) -> str:
    return " | ".join((result.stderr or result.stdout).strip().splitlines()[-lines:])


def _docker_info(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Ask the Docker daemon for its version: fails when none answers."""
    return _run(["docker", "info", "--format", "{{.ServerVersion}}"], env, timeout=30)


def _backend_env(settings: Settings, backend: str) -> dict[str, str]:
    """The environment the backend's tools run with (buildah/podman get driftloop's conf)."""
    return dict(os.environ) if _engine(backend) == "docker" else engine_env(settings)


def _image_cli(backend: str) -> str:
    """The tool that tags, removes and pushes images (podman shares buildah's storage)."""
    return "docker" if _engine(backend) == "docker" else "buildah"


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
    needed = [_engine(backend)] + ([_runner(backend)] if run else [])
    for binary in dict.fromkeys(needed):
        if shutil.which(binary, path=env.get("PATH")) is None:
            hint = _INSTALL_HINT["docker" if binary == "docker" else binary]
            raise DriftloopError(
                f"the {backend} backend needs `{binary}`, which is not on PATH: {hint}"
            )
    if _engine(backend) == "docker":
        info = _docker_info(env)
        if info.returncode != 0:
            raise DriftloopError(
                f"the {backend} backend needs a Docker daemon, and none answers ({_tail(info, 1)}): "
                "start one, or use --backend buildah"
            )
    if backend == "buildx":
        buildx = _run(["docker", "buildx", "version"], env, timeout=30)
        if buildx.returncode != 0:
            raise DriftloopError(
                "the buildx backend needs the docker buildx plugin "
                "(https://docs.docker.com/build/install-buildx/)"
            )


def _image_exists(backend: str, ref: str, env: dict[str, str]) -> bool:
    if _engine(backend) == "docker":
        command = ["docker", "image", "inspect", ref]
    else:
        command = ["buildah", "inspect", "--type", "image", ref]
    return _run(command, env, timeout=60).returncode == 0


def _image_size(backend: str, ref: str, env: dict[str, str]) -> int | None:
    tool = "docker" if _engine(backend) == "docker" else "podman"
    if shutil.which(tool) is None:
        return None
    result = _run([tool, "image", "inspect", "--format", "{{.Size}}", ref], env, timeout=60)
    try:
        return int(result.stdout.strip())
    except ValueError:
        return None


def _remove_image(backend: str, ref: str, env: dict[str, str]) -> None:
    _run([_image_cli(backend), "rmi", ref], env, timeout=120)


def _tag_image(backend: str, source: str, target: str, env: dict[str, str]) -> None:
    result = _run([_image_cli(backend), "tag", source, target], env, timeout=120)
    if result.returncode != 0:
        raise DriftloopError(f"could not tag {source} as {target}: {_tail(result)}")


# --- the local base image ------------------------------------------------------------------------


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (so the base comes from where packages do)."""
    configured = os.environ.get("DRIFTLOOP_DEBIAN_MIRROR")
    if configured:
        return configured
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


def ensure_local_base(settings: Settings, *, progress: Progress = _quiet) -> str:
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
    mirror = _debian_mirror()
    recipe = json.dumps(
        {"suite": DEBIAN_SUITE, "packages": BASE_PACKAGES, "uv": _uv_version(uv), "v": 2},
        sort_keys=True,
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    ref = f"{LOCAL_BASE_REPO}:py3.11-{DEBIAN_SUITE}-{digest}"
    if _image_exists("buildah", ref, env):
        progress(f"local base image {ref} is cached")
        return ref
    if shutil.which("debootstrap") is None:
        raise DriftloopError(
            f"the local base image needs `debootstrap`: {_INSTALL_HINT['debootstrap']}"
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
        debootstrap = _run(
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
                f"debootstrap {DEBIAN_SUITE} from {mirror} failed: {_tail(debootstrap)}"
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
        container = _run(["buildah", "from", "scratch"], env).stdout.strip()
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
                result = _run(step, env)
                if result.returncode != 0:
                    raise DriftloopError(f"`{' '.join(step[:2])}` failed: {_tail(result)}")
        except BaseException:
            _run(["buildah", "rm", container], env)
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
    if _engine(backend) == "docker":
        result = _run(["docker", "run", "--rm", "--entrypoint", "/bin/sh", ref, "-c", probe], env)
        result_ok = result.returncode == 0
    else:
        if not _image_exists(backend, ref, env):
            raise DriftloopError(
                f"base image {ref} is not in the local image storage; build it, pull it, or set "
                f"DRIFTLOOP_IMAGE_BASE={LOCAL_BASE} to have driftloop make one"
            )
        container = _run(["buildah", "from", "--pull-never", ref], env)
        if container.returncode != 0:
            raise DriftloopError(f"cannot open base image {ref}: {_tail(container)}")
        name = container.stdout.strip()
        try:
            result = _run(["buildah", "run", name, "--", "/bin/sh", "-c", probe], env)
        finally:
            _run(["buildah", "rm", name], env)
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
        raise DriftloopError(f"cannot run a shell in base image {ref}: {_tail(result)}")


# --- containerize --------------------------------------------------------------------------------


def _bento_dir(bento_tag: str) -> tuple[str, Path]:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bento = bentoml.bentos.get(bento_tag)
    except NotFound:
        home = os.environ.get("BENTOML_HOME", str(Path.home() / "bentoml"))
        raise NotFoundError(
            f"no Bento {bento_tag} in the local store ({home}): `bentoml list` shows "
            "what is there; `driftloop demo` or the retrain DAG builds the champion's"
        ) from None
    return str(bento.tag), Path(bento.path)


def _without_toolchain(commands: list[str]) -> list[str]:
    """BentoML's commands minus its default distro install (compilers, git: nothing a wheel-only
    Bento needs). The bentofile's ``system_packages`` installs keep their ``apt-get update`` and
    run in one step that also drops apt's lists and caches: ~200 MB, which a later step could not
    take back out of the image's layers."""
    default = [c for c in commands if c.startswith("apt-get update &&") and "build-essential" in c]
    rest = [c for c in commands if c not in default]
    installs = [c for c in rest if c.startswith("apt-get install")]
    if not default or not installs:
        return rest
    merged = " && ".join(
        ["apt-get update", *installs, "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin"]
    )
    first = rest.index(installs[0])
    others = [c for c in rest if c not in installs]
    return [*others[:first], merged, *others[first:]]


def _staged_home(
    bento_tag: str, source: Path, into: Path, *, base_image: str | None, env: dict[str, str]
) -> Path:
    """A private BentoML home holding a copy of the Bento with another base image and/or extra
    image environment variables.

    The Bento in the user's store stays as built; ``bentoml containerize`` reads its Dockerfile's
    inputs from ``bento.yaml``, so the copy is what lets one Bento be built on another base. With a
    base image, BentoML's distro install command goes too: it would fetch compilers with apt that no
    wheel here needs, and a bentofile's ``docker.base_image`` is documented to ignore
    ``system_packages``.
    """
    name, _, version = bento_tag.partition(":")
    target = into / "bentos" / name / version
    shutil.copytree(source, target, symlinks=True)
    info_path = target / "bento.yaml"
    info: dict[str, Any] = yaml.safe_load(info_path.read_text())
    if base_image:
        if "image" in info:  # BentoML 1.4 (spec 2) Bentos
            info["image"]["base_image"] = base_image
            info["image"]["commands"] = _without_toolchain(info["image"].get("commands") or [])
        else:
            info.setdefault("docker", {})["base_image"] = base_image
    envs = [e for e in info.get("envs") or [] if e.get("name") not in env]
    info["envs"] = envs + [{"name": key, "value": value} for key, value in env.items()]
    info_path.write_text(yaml.safe_dump(info, sort_keys=False))
    (into / "bentos" / name / "latest").write_text(version)
    # containerize copies the Bento's models from the model store into the build context; the
    # store is the one holding the Bento (<home>/bentos/<name>/<version>).
    (into / "models").symlink_to(source.parents[2] / "models")
    return into


def _image_section(bento_dir: Path) -> dict[str, Any]:
    """What ``bento.yaml`` says about the image (``image`` in BentoML 1.4 Bentos, else ``docker``)."""
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    section: dict[str, Any] = info.get("image") or info.get("docker") or {}
    return section


def _ca_bundle(extra_ca: list[Path], into: Path) -> Path:
    """A CA bundle: the public roots (certifi) plus ``extra_ca`` (PEM files, or folders of them)."""
    import certifi

    pems: list[Path] = []
    for path in extra_ca:
        if path.is_dir():
            pems += sorted(
                p for p in path.iterdir() if p.suffix in (".crt", ".pem") and p.is_file()
            )
        elif path.is_file():
            pems.append(path)
        else:
            raise DriftloopError(
                f"extra CA certificate {path} does not exist (--extra-ca or DRIFTLOOP_IMAGE_EXTRA_CA)"
            )
    if not pems:
        raise DriftloopError(f"no .crt or .pem files in {', '.join(map(str, extra_ca))}")
    parts = [Path(certifi.where()).read_text()]
    for pem in pems:
        text = pem.read_text()
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise DriftloopError(f"extra CA certificate {pem} is not a PEM certificate")
        parts.append(text)
    bundle = into / "ca-certificates.crt"
    bundle.write_text("\n".join(part.strip() + "\n" for part in parts))
    return bundle


def _ca_mount(bundle: Path) -> str:
    """The build-time volume (buildah/podman ``--volume``; not part of any layer) that puts
    ``bundle`` where OpenSSL, pip (truststore) and uv (``UV_SYSTEM_CERTS``) look for the system's
    CA roots. One volume only: BentoML joins several ``volume`` options into one malformed flag."""
    return f"{bundle.parent}:/etc/ssl/certs:ro"


_STEP = re.compile(r"^(?:INFO: )?(STEP \d+/\d+|Step \d+/\d+|#\d+ \[[^]]+\])")


def containerize(
    settings: Settings,
    bento_tag: str,
    *,
    backend: str | None = None,
    base_image: str | None = None,
    extra_ca: list[Path] | None = None,
    repository: str | None = None,
    progress: Progress = _quiet,
) -> BuiltImage:
    """Build the OCI image of ``bento_tag`` with ``bentoml containerize``.

    The image is built under a temporary tag and only tagged ``<repository>:<bento version>`` once
    the build succeeded, so a failed build never leaves an image that looks done.

    Args:
        backend: docker, buildx, buildah or podman; ``settings.image_backend`` when None.
        base_image: ``local`` (made here with debootstrap), an image reference, or None for the
            Bento's own (BentoML's official Python image unless the bentofile names another).
        extra_ca: CA certificates the build's steps trust (buildah/podman only); never in the image.
        repository: the image name; the Bento's name when None.

    Raises:
        NotFoundError: no such Bento.
        DriftloopError: backend or base image unusable, or the build failed (with its log's path).
    """
    backend = resolve_backend(backend or settings.image_backend, dict(os.environ))
    base_image = base_image if base_image is not None else settings.image_base
    if extra_ca is None:
        extra_ca = [settings.image_extra_ca] if settings.image_extra_ca else []
    env = _backend_env(settings, backend)
    check_backend(backend, env)
    if extra_ca and _engine(backend) == "docker":
        raise DriftloopError(
            "extra CA certificates are mounted into the build with buildah/podman volumes, which "
            f"the {backend} backend lacks: use --backend buildah, or bake them into your base image"
        )
    full_tag, bento_dir = _bento_dir(bento_tag)
    name, _, version = full_tag.partition(":")
    final = f"{repository or name}:{version}"
    temporary = f"{repository or name}:building-{uuid.uuid4().hex[:8]}"
    log = settings.home / "images" / f"{name}-{version}.log"
    log.parent.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="driftloop-image-") as tmp:
        build_env = dict(env)
        bundle = None
        if extra_ca:
            # Made first: a bad path fails now, not after the base image is made.
            certs = Path(tmp) / "certs"
            certs.mkdir()
            bundle = _ca_bundle(extra_ca, certs)
        section = _image_section(bento_dir)
        used_base = str(section.get("base_image") or "BentoML's default")
        if base_image:
            if base_image == LOCAL_BASE:
                if _engine(backend) == "docker":
                    raise DriftloopError(
                        "the local base image lives in buildah's storage: use --backend buildah "
                        "with it, or name a base image your Docker daemon can pull"
                    )
                base_image = ensure_local_base(settings, progress=progress)
            python_version = section.get("python_version") or "{}.{}".format(*sys.version_info[:2])
            check_base(backend, base_image, str(python_version), env)
            used_base = base_image
        if base_image or extra_ca:
            # uv uses its own bundled roots unless told to use the system's, where the mount is.
            image_env = {"UV_SYSTEM_CERTS": "1"} if extra_ca else {}
            home = _staged_home(
                full_tag, bento_dir, Path(tmp) / "bentoml", base_image=base_image, env=image_env
            )
            build_env["BENTOML_HOME"] = str(home)
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "containerize",
            full_tag,
            "--backend",
            backend,
            "--image-tag",
            temporary,
        ]
        if _engine(backend) != "docker":
            # Build steps share the host's network: no CNI/netavark set-up is needed, and apt/uv
            # see the same proxy and DNS the host does.
            command += ["--opt", "network=host", "--opt", "layers", "--opt", "force-rm"]
        if backend == "buildx":
            command += ["--opt", "load"]
        if bundle is not None:
            command += ["--opt", f"volume={_ca_mount(bundle)}"]
        progress(f"bentoml containerize {full_tag} --backend {backend} (log: {log}) ...")
        output: list[str] = []
        with (
            log.open("w") as out,
            subprocess.Popen(
                command,
                env=build_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=tmp,
            ) as process,
        ):
            assert process.stdout is not None
            for line in process.stdout:
                out.write(line)
                output.append(line)
                if _STEP.match(line):
                    progress(f"  [{time.monotonic() - started:5.0f}s] {line.strip()[:110]}")
    # bentoml containerize exits 0 even when its backend failed: the image's presence decides.
    if process.returncode != 0 or not _image_exists(backend, temporary, env):
        _remove_image(backend, temporary, env)
        tail = " | ".join(line.strip() for line in output[-4:] if line.strip())
        hint = ""
        if "initializing source" in tail or "pinging container registry" in tail:
            hint = f" (the base image could not be pulled; without a registry use --base-image {LOCAL_BASE})"
        raise DriftloopError(f"building the image of {full_tag} failed (log: {log}): {tail}{hint}")
    _tag_image(backend, temporary, final, env)
    _remove_image(backend, temporary, env)
    seconds = time.monotonic() - started
    return BuiltImage(
        bento_tag=full_tag,
        image=final,
        backend=backend,
        base_image=used_base,
        seconds=seconds,
        size_bytes=_image_size(backend, final, env),
    )


def record_image(database_url: str, model_tag: str, built: BuiltImage) -> None:
    """Keep the image beside the loop's other records (``deployments``, target ``image``)."""
    from training import registry
    from training.store import connect

    detail = {
        "image": built.image,
        "backend": built.backend,
        "base_image": built.base_image,
        "seconds": round(built.seconds, 1),
        "size_bytes": built.size_bytes,
    }
    with connect(database_url) as conn:
        registry.record_deployment(
            conn, model_tag, built.bento_tag, target="image", status="built", detail=detail
        )


def push(settings: Settings, image: str, backend: str) -> None:
    """Push ``image`` to its registry with the backend's own client (credentials from its login)."""
    result = _run(
        [_image_cli(backend), "push", image], _backend_env(settings, backend), timeout=1800
    )
    if result.returncode != 0:
        raise DriftloopError(f"pushing {image} failed: {_tail(result)}")


# --- running it ----------------------------------------------------------------------------------


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
    progress: Progress = _quiet,
) -> SmokeResult:
    """Start ``image`` on the host network, wait for ``/readyz``, score ``request`` once, and check
    that the server runs as a non-root user; the container is removed afterwards.

    Raises:
        DriftloopError: it did not become ready, the prediction failed, or it runs as root (the
            message carries the container's last log lines).
    """
    import httpx

    backend = resolve_backend(backend or settings.image_backend, dict(os.environ))
    runner = _runner(backend)
    env = _backend_env(settings, backend)
    check_backend(backend, env, run=True)
    port = _free_port()
    name = f"driftloop-smoke-{uuid.uuid4().hex[:8]}"
    with _reachable_url(database_url) as url:
        started = time.monotonic()
        run = _run(
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
            raise DriftloopError(f"`{runner} run {image}` failed: {_tail(run)}")

        def logs() -> str:
            result = _run([runner, "logs", name], env, timeout=30)
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
                state = _run([runner, "inspect", "--format", "{{.State.Running}}", name], env)
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
            uid_run = _run([runner, "exec", name, "id", "-u"], env, timeout=60)
            if uid_run.returncode != 0:
                raise DriftloopError(f"`{runner} exec {name} id -u` failed: {_tail(uid_run)}")
            uid = int(uid_run.stdout.strip())
            if uid == 0:
                raise DriftloopError(f"{image} serves as root; BentoML's image should use its user")
            return SmokeResult(image=image, ready_seconds=ready, model_version=version, uid=uid)
        finally:
            # A graceful stop first: SIGTERM writes the container's prediction spool to the store.
            _run([runner, "stop", "--time", "30", name], env, timeout=120)
            _run([runner, "rm", "--force", name], env, timeout=120)
