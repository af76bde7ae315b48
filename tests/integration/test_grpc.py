"""The gRPC API on a real ``bentoml serve`` of the champion's Bento, with ``DRIFTLOOP_AUTH=on``.

Every RPC is called through the typed client (``driftloop_grpc.ModelClient``) on the port the
server was given (``DRIFTLOOP_GRPC_PORT``), and checked against the rows it left in PostgreSQL:
the same validation, scoring, logging, keys and rate limits as HTTP, answered with gRPC codes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from driftloop_grpc import CallError, ModelClient
from tests.integration.test_service import (
    EXAMPLE,
    Champion,
    bento_server,
    champion_environment,
    count,
    query,
    settled,
    stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICE = "driftloop.v1.ModelService"
# Small, so that the batch limit is cheap to pass.
MAX_RECORDS = 5
CLIENT_PROJECT = Path(__file__).resolve().parents[2] / "clients" / "grpc"


@dataclass(frozen=True)
class GrpcServed:
    url: str
    target: str
    database_url: str
    version: str
    tokens: dict[str, str]
    log: Path

    def client(self, key: str | None = "both") -> ModelClient:
        return ModelClient(self.target, api_key=self.tokens[key] if key else None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def champion_with_keys(server_url: str, home: Path) -> Iterator[tuple[Champion, dict[str, str]]]:
    """A champion bootstrapped under ``home``, and API keys (tokens by name) in its store."""
    from training.keys import create_key
    from training.store import connect

    with champion_environment(server_url, home) as bootstrapped:
        tokens = {}
        with connect(bootstrapped.database_url) as conn:
            for name, scopes, rate in (
                ("both", ["predict", "feedback"], None),
                ("predictor", ["predict"], None),
                ("slow", ["predict"], 2.0),
                ("admin", ["admin"], None),
            ):
                tokens[name] = create_key(conn, name, scopes, rate)[1]
        yield bootstrapped, tokens


@pytest.fixture(scope="module")
def champion(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Champion, dict[str, str]]]:
    """A champion and its API keys (by name), for the module's servers."""
    with champion_with_keys(server_url, tmp_path_factory.mktemp("grpc-home")) as bootstrapped:
        yield bootstrapped


@contextmanager
def grpc_server(
    champion: tuple[Champion, dict[str, str]], name: str, port: int, **settings: str
) -> Iterator[GrpcServed]:
    """``bentoml serve`` of the champion with gRPC on ``port`` and ``settings`` in its environment
    (a spool of its own: servers of one champion run side by side here)."""
    bootstrapped, tokens = champion
    env = {
        **os.environ,
        "DRIFTLOOP_GRPC_PORT": str(port),
        "DRIFTLOOP_SPOOL_DIR": str(bootstrapped.home / f"spool-{name}"),
        **settings,
    }
    log = bootstrapped.home / f"{name}.log"
    with bento_server(bootstrapped.bento_tag, bootstrapped.home, env, log) as (url, _):
        yield GrpcServed(
            url,
            f"127.0.0.1:{port}",
            bootstrapped.database_url,
            bootstrapped.version,
            tokens,
            log,
        )


@pytest.fixture(scope="module")
def served(champion: tuple[Champion, dict[str, str]]) -> Iterator[GrpcServed]:
    """The champion served with ``DRIFTLOOP_AUTH=on`` (one worker)."""
    port = _free_port()
    settings = {"DRIFTLOOP_AUTH": "on", "DRIFTLOOP_BATCH_MAX_RECORDS": str(MAX_RECORDS)}
    with grpc_server(champion, "secured", port, **settings) as server:
        # /readyz answers once the worker's startup hooks ran, gRPC's included.
        grpc.channel_ready_future(grpc.insecure_channel(server.target)).result(timeout=30)
        yield server


def _code(error: pytest.ExceptionInfo[CallError]) -> str:
    return str(error.value.code.name)


def test_predict_scores_stores_and_takes_feedback(served: GrpcServed) -> None:
    """Predict answers the champion's score (the same as HTTP's for the same record); the
    prediction is stored with the features sent; Feedback records its label with the key's id."""
    from training.keys import parse_token

    with served.client() as client:
        prediction = client.predict(EXAMPLE)
        assert 0.0 <= prediction.score <= 1.0
        assert prediction.label == int(prediction.score >= 0.5)
        assert prediction.model_name == "churn"
        assert prediction.model_version == served.version
        assert client.last_metadata["x-ratelimit-limit"] == "100"
        assert "x-ratelimit-remaining" in client.last_metadata

        rows = stored(served.database_url, [prediction.request_id])
        assert rows[prediction.request_id] == (
            EXAMPLE,
            pytest.approx(prediction.score),
            prediction.label,
            served.version,
        )
        over_http = httpx.post(
            f"{served.url}/predict",
            json=EXAMPLE,
            headers={"authorization": f"Bearer {served.tokens['both']}"},
            timeout=30,
        ).json()
        assert over_http["score"] == pytest.approx(prediction.score)

        receipt = client.feedback(prediction.request_id, 1)
        assert (receipt.request_id, receipt.label, receipt.status) == (
            prediction.request_id,
            1,
            "created",
        )
        assert client.feedback(prediction.request_id, True).status == "unchanged"
        assert client.feedback(prediction.request_id, "0").status == "updated"
    key_id = parse_token(served.tokens["both"])[0]  # type: ignore[index]
    assert query(
        served.database_url,
        "SELECT label, raw_label, key_id FROM feedback WHERE request_id = %s",
        (prediction.request_id,),
    ) == [(0, "0", key_id)]


def test_predict_batch_and_feedback_batch(served: GrpcServed) -> None:
    """PredictBatch answers one prediction per record, in order, all stored; Feedback takes
    several labels at once and reports an unknown request id as not_found, storing the rest."""
    from training.spec import load_spec
    from training.synthetic import generate

    records = [
        {str(k): v for k, v in row.items()}
        for row in generate(MAX_RECORDS, seed=7)[load_spec().feature_names].to_dict(
            orient="records"
        )
    ]
    with served.client() as client:
        predictions = client.predict_batch(records)
        ids = [p.request_id for p in predictions]
        rows = stored(served.database_url, ids)
        assert [rows[i][0] for i in ids] == records
        assert len(set(ids)) == MAX_RECORDS
        receipts = client.feedback_batch([(ids[0], 1), ("no-such-request", 0), (ids[1], "0")])
    assert [r.status for r in receipts] == ["created", "not_found", "created"]
    assert [r.label for r in receipts] == [1, 0, 0]
    assert (
        query(served.database_url, "SELECT 1 FROM feedback WHERE request_id = 'no-such-request'")
        == []
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"age": None}, "features.age", id="null-for-required"),
        pytest.param({"bogus": 1.0}, "features.bogus", id="extra-field"),
        pytest.param({"tenure_months": "abc"}, "features.tenure_months", id="string-for-number"),
        pytest.param({"contract": 5.0}, "features.contract", id="number-for-category"),
        pytest.param({"age": True}, "features.age", id="boolean-for-number"),
        pytest.param({"monthly_charges": math.nan}, "features.monthly_charges", id="nan"),
        pytest.param({"usage_hours": math.inf}, "features.usage_hours", id="infinity"),
        pytest.param({"age": 15.0}, "features.age", id="below-spec-min"),
        pytest.param({"region": ""}, "features.region", id="empty-category"),
        pytest.param({"region": "no\x00rth"}, "features.region", id="nul-character"),
        pytest.param({"region": {"a": 1}}, "features.region", id="struct-for-category"),
    ],
)
def test_predict_refuses_bad_input_naming_the_field(
    served: GrpcServed, change: dict[str, Any], field: str
) -> None:
    """A record the schema refuses answers INVALID_ARGUMENT naming the field; nothing is stored."""
    before = settled(served.database_url)
    with served.client() as client, pytest.raises(CallError) as refused:
        client.predict({**EXAMPLE, **change})
    assert _code(refused) == "INVALID_ARGUMENT", refused.value
    assert refused.value.message.startswith(f"invalid request: {field}: "), refused.value
    assert settled(served.database_url) == before


def test_missing_features_and_bad_batches_name_the_field(served: GrpcServed) -> None:
    missing = {k: v for k, v in EXAMPLE.items() if k != "age"}
    bad = {**EXAMPLE, "age": "old"}
    with served.client() as client:
        with pytest.raises(CallError) as refused:
            client.predict(missing)
        assert refused.value.message.startswith("invalid request: features.age: Field required")
        with pytest.raises(CallError) as refused:
            client.predict_batch([EXAMPLE, bad])
        assert _code(refused) == "INVALID_ARGUMENT"
        assert refused.value.message.startswith("invalid request: records.1.age: ")
        with pytest.raises(CallError) as refused:
            client.predict_batch([])
        assert refused.value.message.startswith("invalid request: records: ")
        with pytest.raises(CallError) as refused:
            client.predict_batch([EXAMPLE] * (MAX_RECORDS + 1))
        assert _code(refused) == "INVALID_ARGUMENT"
        assert refused.value.message == (
            f"records: at most {MAX_RECORDS} records per request, got {MAX_RECORDS + 1}; "
            "split the batch"
        )


def test_a_message_over_16_kib_per_record_or_label_is_resource_exhausted(
    served: GrpcServed,
) -> None:
    """HTTP's body limit holds per call: 16 KiB for each record or label a message carries
    (the server's own limit must fit a batch of 1,000); over it, RESOURCE_EXHAUSTED naming the
    size, before the message is validated, and nothing is stored."""
    padding = "x" * 17_000
    before = settled(served.database_url)
    with served.client() as client:
        with pytest.raises(CallError) as refused:
            client.predict({**EXAMPLE, "notes": padding})
        assert _code(refused) == "RESOURCE_EXHAUSTED", refused.value
        assert "over the 16,384 bytes 1 record may take" in refused.value.message
        with pytest.raises(CallError) as refused:
            client.predict_batch([EXAMPLE, {**EXAMPLE, "notes": padding * 2}])
        assert _code(refused) == "RESOURCE_EXHAUSTED", refused.value
        assert "over the 32,768 bytes 2 records may take" in refused.value.message
        with pytest.raises(CallError) as refused:
            client.feedback_batch([("r" * 17_000, 1)])
        assert _code(refused) == "RESOURCE_EXHAUSTED", refused.value
        # Under the limit, the same extra field is named as unknown.
        with pytest.raises(CallError) as refused:
            client.predict({**EXAMPLE, "notes": "short"})
        assert _code(refused) == "INVALID_ARGUMENT", refused.value
    assert settled(served.database_url) == before


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        pytest.param([("x", 2)], "labels.0.label", id="label-2"),
        pytest.param([("x", "yes")], "labels.0.label", id="unknown-text"),
        pytest.param([("x", 1), ("", 1)], "labels.1.request_id", id="empty-request-id"),
        pytest.param([("r" * 129, 1)], "labels.0.request_id", id="long-request-id"),
        pytest.param([], "labels", id="no-labels"),
    ],
)
def test_feedback_refuses_bad_labels_naming_the_field(
    served: GrpcServed, labels: list[tuple[str, Any]], field: str
) -> None:
    before = count(served.database_url, "feedback")
    with served.client() as client, pytest.raises(CallError) as refused:
        client.feedback_batch(labels)
    assert _code(refused) == "INVALID_ARGUMENT"
    assert refused.value.message.startswith(f"invalid request: {field}: "), refused.value
    assert count(served.database_url, "feedback") == before


def test_a_label_left_unset_is_named(served: GrpcServed) -> None:
    from driftloop_grpc.v1 import model_service_pb2 as pb

    with served.client() as client, pytest.raises(grpc.RpcError) as refused:
        client.stub.Feedback(
            pb.FeedbackRequest(labels=[pb.Label(request_id="x")]),
            metadata=client.metadata,
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("invalid request: labels.0.label: Field required")


def test_no_key_wrong_key_and_wrong_scope(served: GrpcServed) -> None:
    """No key or an unknown one: UNAUTHENTICATED (with its address's rate-limit metadata); a key
    without the scope: PERMISSION_DENIED (with the key's), as HTTP's 401 and 403 have their
    headers; x-api-key metadata works too."""
    with served.client(key=None) as anonymous, pytest.raises(CallError) as refused:
        anonymous.predict(EXAMPLE)
    assert _code(refused) == "UNAUTHENTICATED"
    assert refused.value.message.startswith("an API key is required")
    assert refused.value.metadata["www-authenticate"] == "Bearer"
    assert refused.value.metadata["x-ratelimit-limit"] == "20"
    assert "x-ratelimit-remaining" in refused.value.metadata
    with (
        ModelClient(served.target, api_key="dl_0123456789ab_" + "x" * 43) as wrong,
        pytest.raises(CallError) as refused,
    ):
        wrong.predict(EXAMPLE)
    assert _code(refused) == "UNAUTHENTICATED"

    with served.client("predictor") as predictor:
        request_id = predictor.predict(EXAMPLE).request_id
        with pytest.raises(CallError) as refused:
            predictor.feedback(request_id, 1)
    assert _code(refused) == "PERMISSION_DENIED"
    assert refused.value.message == (
        "this API key may not use this route: it needs the 'feedback' scope"
    )
    assert "x-ratelimit-remaining" in refused.value.metadata

    with served.client(key=None) as by_header:
        by_header.metadata = (("x-api-key", served.tokens["both"]),)
        assert by_header.predict(EXAMPLE).model_version == served.version


def test_a_burst_over_the_rate_gets_resource_exhausted(served: GrpcServed) -> None:
    outcomes: list[str] = []
    limited: CallError | None = None
    with served.client("slow") as client:
        for _ in range(5):
            try:
                client.predict(EXAMPLE)
                outcomes.append("OK")
            except CallError as exc:
                outcomes.append(exc.code.name)
                limited = exc
    assert outcomes[:2] == ["OK", "OK"], outcomes  # a burst of one second's worth: 2
    assert "RESOURCE_EXHAUSTED" in outcomes, outcomes
    assert limited is not None
    assert limited.message.startswith("rate limit of this API key exceeded")
    assert limited.retry_after_s is not None
    assert limited.retry_after_s >= 1
    assert limited.metadata["x-ratelimit-limit"] == "2"
    assert limited.metadata["x-ratelimit-remaining"] == "0"


def test_health_and_reflection(served: GrpcServed) -> None:
    """The standard health service answers SERVING (no key needed), for the server and for the
    model service; reflection lists the services and describes the model service's file."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with served.client(key=None) as client:
        assert client.health() == "SERVING"
        assert client.health(SERVICE) == "SERVING"
        with pytest.raises(CallError) as unknown:
            client.health("no.such.Service")
        assert _code(unknown) == "NOT_FOUND"

        stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        answers = list(
            stub.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
                    ]
                ),
                timeout=30,
            )
        )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto


def test_grpc_calls_are_counted_in_metrics(served: GrpcServed) -> None:
    """driftloop's /metrics counts gRPC calls by method and code, and the gate's refusals."""
    with served.client(key=None) as anonymous, pytest.raises(CallError):
        anonymous.predict(EXAMPLE)
    with served.client() as client:
        client.predict(EXAMPLE)
    text = httpx.get(
        f"{served.url}/metrics",
        headers={"authorization": f"Bearer {served.tokens['admin']}"},
        timeout=30,
    ).text
    assert f'route="/{SERVICE}/Predict",status="OK",transport="grpc"' in text
    assert 'driftloop_refused_total{reason="unauthenticated",transport="grpc"}' in text


def test_server_log_names_grpc_refusals(served: GrpcServed) -> None:
    """Refusals are logged one line each (as HTTP's), with the code and the field."""
    text = served.log.read_text(errors="replace")
    assert "gRPC Predict (code=INVALID_ARGUMENT)" in text
    assert "gRPC Predict (code=UNAUTHENTICATED)" in text
    assert "Traceback" not in text


def test_a_port_another_server_holds_leaves_grpc_off(
    champion: tuple[Champion, dict[str, str]], served: GrpcServed
) -> None:
    """A second server given the gRPC port the first serves says so and answers HTTP only: the
    port stays the first server's (its keyless calls are refused: auth is on there, off here)."""
    port = int(served.target.rpartition(":")[2])
    with grpc_server(champion, "second", port) as second:
        assert f"gRPC port {port} is taken" in second.log.read_text(errors="replace")
        assert httpx.post(f"{second.url}/predict", json=EXAMPLE, timeout=30).status_code == 200
        for _ in range(6):
            with served.client(key=None) as anonymous, pytest.raises(CallError) as refused:
                anonymous.predict(EXAMPLE)
            assert _code(refused) in {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}


def test_the_client_installs_with_pip_and_calls_the_service(
    served: GrpcServed, tmp_path: Path
) -> None:
    """``clients/grpc`` installs as a user installs it (``uv pip install``, offline) and its
    ModelClient, imported from there in a fresh interpreter, scores a record."""
    uv = shutil.which("uv")
    assert uv, "uv is needed to install clients/grpc (make setup installs it)"
    target = tmp_path / "installed"
    install = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--offline",
            "--no-deps",
            "--no-build-isolation",
            "--python",
            sys.executable,
            "--target",
            str(target),
            str(CLIENT_PROJECT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    assert (target / "driftloop_grpc" / "py.typed").exists()
    assert (target / "driftloop_grpc" / "v1" / "model_service_pb2.pyi").exists()
    script = (
        "import json, sys, driftloop_grpc\n"
        "from driftloop_grpc import ModelClient\n"
        "with ModelClient(sys.argv[1], api_key=sys.argv[2]) as client:\n"
        "    answer = client.predict(json.loads(sys.argv[3]))\n"
        "print(json.dumps({'file': driftloop_grpc.__file__, 'version': answer.model_version}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, served.target, served.tokens["both"], json.dumps(EXAMPLE)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert Path(answer["file"]).is_relative_to(target), answer
    assert answer["version"] == served.version


def test_http_and_grpc_spend_one_bucket(served: GrpcServed) -> None:
    """A key's rate limit is one token bucket per worker whatever the transport: with a burst of
    2, one HTTP request and one gRPC call spend it, and the next call (either way) is refused."""
    time.sleep(1.1)  # the "slow" key's bucket (2 per second, 2 at once) is full again
    over_http = httpx.post(
        f"{served.url}/predict",
        json=EXAMPLE,
        headers={"authorization": f"Bearer {served.tokens['slow']}"},
        timeout=30,
    )
    assert over_http.status_code == 200, over_http.text
    with served.client("slow") as client:
        client.predict(EXAMPLE)
        with pytest.raises(CallError) as limited:
            client.predict(EXAMPLE)
    assert _code(limited) == "RESOURCE_EXHAUSTED"


def test_the_readmes_grpc_example_runs(served: GrpcServed) -> None:
    """The README's gRPC example, run as written against the server (its address swapped in)."""
    readme = (CLIENT_PROJECT.parents[1] / "README.md").read_text()
    section = readme[readme.index("## Calling it over gRPC") :]
    example = section[section.index("```python\n") + len("```python\n") :]
    example = example[: example.index("```")]
    assert "127.0.0.1:3001" in example
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLOOP_KEY", served.tokens["both"])
        exec(compile(example.replace("127.0.0.1:3001", served.target), "README.md", "exec"), {})
