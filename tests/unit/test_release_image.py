"""The image build's checks and rewrites that need no container engine: missing tools, the Bento
copy a base-image override builds from, the CA bundle. (The builds themselves are in
tests/integration/test_image.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from training.errors import DriftloopError
from training.release.base_image import debian_mirror
from training.release.containerize import ca_bundle, staged_home, without_toolchain
from training.release.engines import check_backend, engine_env, resolve_backend
from training.settings import Settings

DEFAULT_INSTALL = (
    "apt-get update && apt-get install -q -y --no-install-recommends --allow-remove-essential "
    "ca-certificates gnupg2 bash build-essential git"
)


def _bare_path(tmp_path: Path, *keep: str) -> dict[str, str]:
    """A PATH holding only ``keep`` (linked from the real PATH), so the others are missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in keep:
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    return {"PATH": str(bin_dir)}


@pytest.mark.parametrize(
    ("backend", "binary", "hint"),
    [
        ("buildah", "buildah", "apt-get install buildah"),
        ("podman", "podman", "apt-get install podman"),
        ("docker", "docker", "docs.docker.com"),
        ("buildx", "docker", "--backend buildah"),
    ],
)
def test_a_missing_backend_binary_is_named_with_how_to_install_it(
    tmp_path: Path, backend: str, binary: str, hint: str
) -> None:
    with pytest.raises(DriftloopError, match=f"needs `{binary}`, which is not on PATH") as error:
        check_backend(backend, _bare_path(tmp_path))
    assert hint in str(error.value)


def test_buildah_alone_cannot_run_the_image_it_built(tmp_path: Path) -> None:
    if shutil.which("buildah") is None:
        pytest.skip("buildah not installed")
    env = _bare_path(tmp_path, "buildah")
    check_backend("buildah", env)
    with pytest.raises(DriftloopError, match="needs `podman`"):
        check_backend("buildah", env, run=True)


def test_docker_without_a_daemon_says_so(tmp_path: Path) -> None:
    """This machine has the docker client and no daemon, as many CI runners without Docker do."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client here")
    env = {
        "PATH": str(Path(shutil.which("docker") or "").parent),
        "DOCKER_HOST": "unix:///nonexistent.sock",
    }
    with pytest.raises(
        DriftloopError, match=r"needs a Docker daemon, and none answers.*--backend buildah"
    ):
        check_backend("docker", env)


def test_an_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(DriftloopError, match="docker, buildx, buildah, podman, auto"):
        check_backend("kaniko", {"PATH": ""})


def test_auto_takes_buildah_where_no_docker_daemon_answers(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "DOCKER_HOST": "unix:///nonexistent.sock"}
    assert resolve_backend("auto", env) == "buildah"
    if shutil.which("docker"):
        env["PATH"] = str(Path(shutil.which("docker") or "").parent)
        assert resolve_backend("auto", env) == "buildah"
    assert resolve_backend("podman", env) == "podman"


def test_engine_env_writes_driftloops_conf_unless_the_user_chose_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTAINERS_CONF", raising=False)
    env = engine_env(Settings(home=tmp_path))
    conf = Path(env["CONTAINERS_CONF"]).read_text()
    assert 'runtime = "runc"' in conf
    assert 'cgroup_manager = "cgroupfs"' in conf
    assert "nofile=4096:4096" in conf
    monkeypatch.setenv("CONTAINERS_CONF", "/etc/mine.conf")
    assert engine_env(Settings(home=tmp_path))["CONTAINERS_CONF"] == "/etc/mine.conf"


def test_the_toolchain_install_goes_and_system_packages_install_in_one_clean_step() -> None:
    libgomp = "apt-get install -q -y -o Dpkg::Options::=--force-confdef libgomp1"
    assert without_toolchain([DEFAULT_INSTALL, "echo a", libgomp, "echo b"]) == [
        "echo a",
        f"apt-get update && {libgomp} && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin",
        "echo b",
    ]
    assert without_toolchain([DEFAULT_INSTALL]) == []
    assert without_toolchain(["echo hi"]) == ["echo hi"]


def _bento(tmp_path: Path) -> Path:
    bento = tmp_path / "store" / "churn_service" / "v1"
    bento.mkdir(parents=True)
    info = {
        "name": "churn_service",
        "version": "v1",
        "envs": [{"name": "KEEP", "value": "1"}],
        "image": {"base_image": "python:3.11-slim", "commands": [DEFAULT_INSTALL]},
    }
    (bento / "bento.yaml").write_text(yaml.safe_dump(info))
    (bento / "src").mkdir()
    return bento


def test_a_base_override_builds_from_a_copy_and_leaves_the_stored_bento_alone(
    tmp_path: Path,
) -> None:
    source = _bento(tmp_path)
    before = (source / "bento.yaml").read_text()
    home = staged_home(
        "churn_service:v1",
        source,
        tmp_path / "staged",
        base_image="localhost/base:1",
        env={"UV_SYSTEM_CERTS": "1"},
    )
    staged = yaml.safe_load((home / "bentos/churn_service/v1/bento.yaml").read_text())
    assert staged["image"]["base_image"] == "localhost/base:1"
    assert staged["image"]["commands"] == []
    assert staged["envs"] == [
        {"name": "KEEP", "value": "1"},
        {"name": "UV_SYSTEM_CERTS", "value": "1"},
    ]
    assert (home / "bentos/churn_service/latest").read_text() == "v1"
    assert (source / "bento.yaml").read_text() == before


def test_the_ca_bundle_is_the_public_roots_plus_the_extra_certificates(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    pem = "-----BEGIN CERTIFICATE-----\nMIIBexample\n-----END CERTIFICATE-----\n"
    (certs / "proxy.crt").write_text(pem)
    (certs / "notes.txt").write_text("not a certificate, not read")
    out = tmp_path / "out"
    out.mkdir()
    bundle = ca_bundle([certs], out).read_text()
    assert bundle.count("BEGIN CERTIFICATE") > 100  # certifi's roots
    assert bundle.rstrip().endswith(pem.rstrip())


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("hello", "is not a PEM certificate")],
)
def test_a_bad_extra_ca_is_named(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "proxy.crt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DriftloopError, match=message):
        ca_bundle([path], tmp_path)


def test_the_base_comes_from_the_configured_debian_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_DEBIAN_MIRROR", "http://mirror.example/debian")
    assert debian_mirror(Settings(home=tmp_path)) == "http://mirror.example/debian"
    monkeypatch.delenv("DRIFTLOOP_DEBIAN_MIRROR")
    assert debian_mirror(Settings(home=tmp_path)).endswith("/debian")
