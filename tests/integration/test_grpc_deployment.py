"""The gRPC API as deployed: two workers on one port, the port check as ``bentoml serve <bento>``
runs it (the checkout not importable, as in the image), a worker's imports, the image's ports.

Servers of the champion started here have a gRPC port of their own (``DRIFTLOOP_GRPC_PORT``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop_grpc import CallError
from tests.integration.test_grpc import _free_port, champion_with_keys, grpc_server
from tests.integration.test_service import EXAMPLE, Champion, query

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def champion(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Champion, dict[str, str]]]:
    home = tmp_path_factory.mktemp("grpc-deployment-home")
    with champion_with_keys(server_url, home) as bootstrapped:
        yield bootstrapped


def test_two_workers_share_the_port_and_auth_off_needs_no_key(
    champion: tuple[Champion, dict[str, str]],
) -> None:
    """With two workers both serve the one gRPC port (connections spread over them), and with
    auth off a call needs no key and its label is stored without one."""
    port = _free_port()
    workers = "services.churn_service.workers=2"
    with grpc_server(champion, "open", port, BENTOML_CONFIG_OPTIONS=workers) as server:
        # /readyz answers once one worker is up: wait for both to serve gRPC.
        deadline = time.monotonic() + 120
        while server.log.read_text(errors="replace").count(f"ModelService on {server.target}") < 2:
            assert time.monotonic() < deadline, server.log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        with server.client(key=None) as client:
            prediction = client.predict(EXAMPLE)
            assert client.feedback(prediction.request_id, 1).status == "created"
        assert query(
            server.database_url,
            "SELECT label, key_id FROM feedback WHERE request_id = %s",
            (prediction.request_id,),
        ) == [(1, None)]
        for _ in range(24):
            # A channel each: a connection of its own, which the kernel hands to either worker.
            with server.client(key=None) as one, pytest.raises(CallError):
                one.predict({**EXAMPLE, "age": "old"})
        deadline = time.monotonic() + 15
        answered: set[str] = set()
        while len(answered) < 2 and time.monotonic() < deadline:
            lines = server.log.read_text(errors="replace").splitlines()
            answered = {
                line.split("] gRPC Predict")[0].rpartition(":")[2]
                for line in lines
                if "] gRPC Predict (code=INVALID_ARGUMENT)" in line
            }
            time.sleep(0.2)
        assert answered == {"1", "2"}, answered


def test_the_image_exposes_the_grpc_port(champion: tuple[Champion, dict[str, str]]) -> None:
    """The Dockerfile ``bentoml containerize`` makes for the champion's Bento (rendered here as it
    renders it) exposes the default gRPC port beside HTTP's: BentoML's template exposes 3001 (the
    port it keeps for its own gRPC metrics, unused by ``bentoml serve``), the port driftloop's
    gRPC API takes by default."""
    import bentoml
    from _bentoml_impl.docker import generate_dockerfile

    from training.settings import Settings

    bento = bentoml.bentos.get(champion[0].bento_tag)
    dockerfile = generate_dockerfile(bento.info.image, Path(bento.path))
    exposed = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("EXPOSE ")}
    assert {"3000", str(Settings().grpc_port)} <= exposed, exposed


def test_the_port_check_runs_where_only_the_bento_has_the_code(
    champion: tuple[Champion, dict[str, str]], tmp_path: Path
) -> None:
    """``bentoml serve <bento>`` runs the service's on_deployment hooks (the gRPC port check
    among them) after taking the Bento's code folder off ``sys.path`` again. Run them so, in an
    interpreter where the checkout is not importable (as in the image), and they pass."""
    repo = str(Path(__file__).resolve().parents[2])
    script = (
        "import sys\n"
        f"sys.path = [p for p in sys.path if p not in ({repo!r}, '')]\n"
        "from bentoml._internal.service.loader import load\n"
        "from _bentoml_impl.server.serving import server_on_deployment\n"
        f"service = load({champion[0].bento_tag!r})\n"
        f"assert {repo!r} not in sys.path\n"
        "try:\n"
        "    import driftloop_grpc\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('driftloop_grpc is importable here, unlike in the image')\n"
        "server_on_deployment(service)\n"
        "print('hooks ran')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "DRIFTLOOP_GRPC_PORT": str(_free_port())},
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "hooks ran" in run.stdout
    # A worker loads the Bento for good (its code stays on sys.path) and builds its app, which
    # imports the gRPC server and its stubs.
    worker = (
        "import sys\n"
        f"sys.path = [p for p in sys.path if p not in ({repo!r}, '')]\n"
        "from _bentoml_impl.loader import load\n"
        f"service = load({champion[0].bento_tag!r}, standalone_load=True)\n"
        "service.to_asgi(is_main=True)\n"
        "import bentos.grpc_server, driftloop_grpc\n"
        f"assert not driftloop_grpc.__file__.startswith({repo!r}), driftloop_grpc.__file__\n"
        "print('worker ready')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", worker],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "worker ready" in run.stdout
