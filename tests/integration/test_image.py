"""The OCI image of a Bento, built without a Docker daemon and run, for real.

Real buildah (``bentoml containerize --backend buildah``), podman, debootstrap and PostgreSQL; nothing
is mocked. The base image is the local one (Debian bookworm + Python 3.11 + uv, made with
debootstrap and cached in buildah's storage), since no registry is reachable here; CA certificates
from ``/usr/local/share/ca-certificates`` are mounted into the build for a TLS-intercepting proxy.

Needs root and the Debian packages buildah, podman, runc and debootstrap (``make image-tools``).
Where they are missing the module is skipped, except under ``CI=true``: there a skip would hide a
broken image build, so it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_service import Champion, champion_environment, query
from training.errors import DriftloopError, NotFoundError
from training.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.container]

TOOLS = ("buildah", "podman", "runc", "debootstrap")
CI_CERTS = Path("/usr/local/share/ca-certificates")


def _missing() -> str | None:
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed (make image-tools)"
    if os.geteuid() != 0:
        return "debootstrap needs root"
    return None


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    reason = _missing()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"the image tests must run in CI: {reason}")
    if reason:
        pytest.skip(reason)


@dataclass(frozen=True)
class Built:
    champion: Champion
    image: str
    size_bytes: int | None


def _extra_ca() -> list[Path]:
    has_certs = CI_CERTS.is_dir() and any(CI_CERTS.glob("*.crt"))
    return [CI_CERTS] if has_certs else []


def _engine(home: Path) -> dict[str, str]:
    from training.release import engine_env
    from training.settings import Settings

    return engine_env(Settings(home=home))


def _images(home: Path) -> list[str]:
    result = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"],
        env=_engine(home),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


@pytest.fixture(scope="module")
def built(
    server_url: str, tmp_path_factory: pytest.TempPathFactory, local_base: None
) -> Iterator[Built]:
    """A champion bootstrapped in its own database, its Bento built, then containerized."""
    from training.release import containerize, record_image
    from training.settings import get_settings

    home = tmp_path_factory.mktemp("image-home")
    with champion_environment(server_url, home) as champion:
        settings = get_settings()
        image = containerize(
            settings,
            champion.bento_tag,
            backend="buildah",
            base_image="local",
            extra_ca=_extra_ca(),
            repository="localhost/driftloop-test-churn",
        )
        record_image(champion.database_url, champion.model_tag, image)
        yield Built(champion=champion, image=image.image, size_bytes=image.size_bytes)
        subprocess.run(["buildah", "rmi", image.image], env=_engine(home), check=False)


def test_the_image_serves_the_bentos_model_as_a_non_root_user(built: Built) -> None:
    from training.release import smoke_test
    from training.settings import get_settings

    champion = built.champion
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLOOP_HOME", str(champion.home))
        result = smoke_test(
            get_settings(),
            built.image,
            champion.database_url,
            load_spec().example_request(),
            backend="buildah",
        )
    assert result.model_version == champion.version
    assert result.uid != 0
    # The container logged its prediction in the store it was pointed at.
    rows = query(champion.database_url, "SELECT model_version FROM predictions")
    assert rows == [(champion.version,)]


def test_without_a_store_the_image_refuses_to_serve_and_says_why(built: Built) -> None:
    """No DRIFTLOOP_DATABASE_URL: no embedded fallback inside the container (its data would die
    with it); the server exits naming the setting."""
    result = subprocess.run(
        ["podman", "run", "--rm", "--network", "host", "--env", "PORT=3999", built.image],
        env=_engine(built.champion.home),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode != 0
    assert "DRIFTLOOP_DATABASE_URL is not set" in result.stdout + result.stderr


def test_the_image_is_tagged_with_the_bento_version_and_recorded(built: Built) -> None:
    champion = built.champion
    assert built.image == f"localhost/driftloop-test-churn:{champion.version}"
    assert built.size_bytes
    assert built.size_bytes > 100_000_000
    images = _images(champion.home)
    assert built.image in images
    assert not [name for name in images if ":building-" in name], images
    ((target, status, detail),) = query(
        champion.database_url, "SELECT target, status, detail FROM deployments"
    )
    assert (target, status) == ("image", "built")
    assert detail["image"] == built.image
    assert detail["backend"] == "buildah"


def test_the_extra_ca_certificates_stay_out_of_the_image(built: Built) -> None:
    extra = _extra_ca()
    if not extra:
        pytest.skip(f"no extra CA certificates in {CI_CERTS} on this machine")
    first = sorted(extra[0].glob("*.crt"))[0].read_text().strip().splitlines()[1]
    result = subprocess.run(
        [
            "podman",
            "run",
            "--rm",
            "--entrypoint",
            "/bin/cat",
            built.image,
            "/etc/ssl/certs/ca-certificates.crt",
        ],
        env=_engine(built.champion.home),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "BEGIN CERTIFICATE" in result.stdout
    assert first not in result.stdout


@pytest.fixture(scope="module")
def broken_bases(built: Built) -> Iterator[dict[str, str]]:
    """The local base with Python, uv or apt-get removed (buildah run + commit)."""
    from training.release import ensure_local_base
    from training.settings import get_settings

    env = _engine(built.champion.home)
    base = ensure_local_base(get_settings())
    removals = {
        "no-python": "rm -f /usr/bin/python3.11 /usr/bin/python3",
        "no-uv": "rm -f /usr/local/bin/uv",
        "no-apt": "rm -f /usr/bin/apt-get",
    }
    refs: dict[str, str] = {}
    for name, command in removals.items():
        container = subprocess.run(
            ["buildah", "from", base], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(
            ["buildah", "run", container, "--", "sh", "-c", command], env=env, check=True
        )
        ref = f"localhost/driftloop-test-base:{name}"
        subprocess.run(["buildah", "commit", "--rm", container, ref], env=env, check=True)
        refs[name] = ref
    yield refs
    for ref in refs.values():
        subprocess.run(["buildah", "rmi", ref], env=env, check=False)


@pytest.mark.parametrize(
    ("base", "message"),
    [("no-python", "lacks python3.11"), ("no-uv", "no uv")],
)
def test_a_base_image_without_python_or_uv_is_refused_by_name(
    built: Built, broken_bases: dict[str, str], base: str, message: str
) -> None:
    from training.release import containerize
    from training.settings import get_settings

    with pytest.raises(DriftloopError, match=message):
        containerize(
            get_settings(),
            built.champion.bento_tag,
            backend="buildah",
            base_image=broken_bases[base],
            repository="localhost/driftloop-test-refused",
        )
    assert not [i for i in _images(built.champion.home) if "driftloop-test-refused" in i]


def test_a_build_that_fails_half_way_leaves_no_tagged_image(
    built: Built, broken_bases: dict[str, str]
) -> None:
    from training.release import containerize
    from training.settings import get_settings

    # Python and uv are there, so the build starts; its `apt-get` step (libgomp1) then fails.
    with pytest.raises(DriftloopError, match=r"building the image of .* failed .*log: ") as failure:
        containerize(
            get_settings(),
            built.champion.bento_tag,
            backend="buildah",
            base_image=broken_bases["no-apt"],
            repository="localhost/driftloop-test-halfway",
        )
    assert "apt-get" in Path(str(failure.value).split("log: ")[1].split(")")[0]).read_text()
    assert not [i for i in _images(built.champion.home) if "driftloop-test-halfway" in i]


def test_the_dags_containerize_step_builds_the_image_when_enabled(built: Built) -> None:
    """The retrain DAG's containerize task calls this function; here with the image settings on.
    A re-run of the step (a cleared task) finds the image recorded and builds nothing."""
    from training.retrain import StepContext, containerize_bento
    from training.settings import get_settings
    from training.steps import Built as Step
    from training.store import connect

    champion = built.champion
    # The fixture recorded its own image of this Bento: as far as the step knows, none yet.
    with connect(champion.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM deployments WHERE target = 'image' AND bento_tag = %s",
            (champion.bento_tag,),
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLOOP_CONTAINERIZE", "true")
        mp.setenv("DRIFTLOOP_IMAGE_BACKEND", "buildah")
        mp.setenv("DRIFTLOOP_IMAGE_BASE", "local")
        mp.setenv("DRIFTLOOP_IMAGE_REPOSITORY", "localhost/driftloop-test-dag")
        for path in _extra_ca():
            mp.setenv("DRIFTLOOP_IMAGE_EXTRA_CA", str(path))
        step = Step(challenger_tag=champion.model_tag, bento_tag=champion.bento_tag)
        model = champion.model_tag.partition(":")[0]
        result = containerize_bento(StepContext.build(get_settings(), model, "image-test"), step)
        again = containerize_bento(StepContext.build(get_settings(), model, "image-test"), step)
        mp.setenv("DRIFTLOOP_CONTAINERIZE", "false")
        skipped = containerize_bento(StepContext.build(get_settings(), model, "image-test"), step)

    image = f"localhost/driftloop-test-dag:{champion.version}"
    assert result.image == image
    assert not result.reused
    assert image in _images(champion.home)
    assert (again.image, again.reused) == (image, True)
    assert skipped.image is None
    assert skipped.image_skipped == "DRIFTLOOP_CONTAINERIZE is off"
    subprocess.run(["buildah", "rmi", image], env=_engine(champion.home), check=False)


def test_an_unknown_bento_is_named(built: Built) -> None:
    from training.release import containerize
    from training.settings import get_settings

    with pytest.raises(NotFoundError, match=r"no Bento churn_service:doesnotexist .*bentoml list"):
        containerize(get_settings(), "churn_service:doesnotexist", backend="buildah")


def test_the_cli_builds_checks_and_prints_the_image(built: Built) -> None:
    """`driftloop image --check` as make image runs it (the cached base makes this a warm build)."""
    import sys

    champion = built.champion
    env = dict(
        os.environ,
        DRIFTLOOP_HOME=str(champion.home),
        DRIFTLOOP_DATABASE_URL=champion.database_url,
        DRIFTLOOP_IMAGE_BACKEND="buildah",
        DRIFTLOOP_IMAGE_BASE="local",
        DRIFTLOOP_IMAGE_REPOSITORY="localhost/driftloop-test-cli",
    )
    command = [sys.executable, "-m", "training.cli", "image", "--check"]
    for path in _extra_ca():
        command += ["--extra-ca", str(path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    image = f"localhost/driftloop-test-cli:{champion.version}"
    assert result.stdout.strip().splitlines()[-1] == image
    assert f"a prediction from model version {champion.version}" in result.stdout
    assert "STEP " in result.stdout  # progress while it builds
    subprocess.run(["buildah", "rmi", image], env=_engine(champion.home), check=False)
    records = query(champion.database_url, "SELECT detail FROM deployments WHERE target = 'image'")
    assert image in [json.loads(json.dumps(detail))["image"] for (detail,) in records]
