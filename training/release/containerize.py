"""``bentoml containerize`` of a Bento into an OCI image, on BentoML's base or another one, with
extra CA certificates for the build's steps only; and the record of the built image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.errors import DriftloopError, NotFoundError
from training.release.base_image import LOCAL_BASE, check_base, ensure_local_base
from training.release.engines import (
    Progress,
    backend_env,
    check_backend,
    engine_binary,
    image_exists,
    image_size,
    quiet,
    remove_image,
    resolve_backend,
    tag_image,
)
from training.settings import Settings

__all__ = [
    "BuiltImage",
    "ca_bundle",
    "containerize",
    "record_image",
    "staged_home",
    "without_toolchain",
]


@dataclass(frozen=True)
class BuiltImage:
    """An image built from a Bento and tagged with the Bento's version."""

    bento_tag: str
    image: str
    backend: str
    base_image: str
    seconds: float
    size_bytes: int | None


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


def without_toolchain(commands: list[str]) -> list[str]:
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


def staged_home(
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
            info["image"]["commands"] = without_toolchain(info["image"].get("commands") or [])
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


def ca_bundle(extra_ca: list[Path], into: Path) -> Path:
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
    progress: Progress = quiet,
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
    env = backend_env(settings, backend)
    check_backend(backend, env)
    if extra_ca and engine_binary(backend) == "docker":
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
            bundle = ca_bundle(extra_ca, certs)
        section = _image_section(bento_dir)
        used_base = str(section.get("base_image") or "BentoML's default")
        if base_image:
            if base_image == LOCAL_BASE:
                if engine_binary(backend) == "docker":
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
            home = staged_home(
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
        if engine_binary(backend) != "docker":
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
    if process.returncode != 0 or not image_exists(backend, temporary, env):
        remove_image(backend, temporary, env)
        tail = " | ".join(line.strip() for line in output[-4:] if line.strip())
        hint = ""
        if "initializing source" in tail or "pinging container registry" in tail:
            hint = f" (the base image could not be pulled; without a registry use --base-image {LOCAL_BASE})"
        raise DriftloopError(f"building the image of {full_tag} failed (log: {log}): {tail}{hint}")
    tag_image(backend, temporary, final, env)
    remove_image(backend, temporary, env)
    seconds = time.monotonic() - started
    return BuiltImage(
        bento_tag=full_tag,
        image=final,
        backend=backend,
        base_image=used_base,
        seconds=seconds,
        size_bytes=image_size(backend, final, env),
    )


def record_image(database_url: str, model_tag: str, built: BuiltImage) -> None:
    """Keep the image beside the loop's other records (``deployments``, target ``image``)."""
    from training import runs
    from training.store import connect

    detail = {
        "image": built.image,
        "backend": built.backend,
        "base_image": built.base_image,
        "seconds": round(built.seconds, 1),
        "size_bytes": built.size_bytes,
    }
    with connect(database_url) as conn:
        runs.record_deployment(
            conn, model_tag, built.bento_tag, target="image", status="built", detail=detail
        )
