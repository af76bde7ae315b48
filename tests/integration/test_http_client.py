"""The generated HTTP client (``clients/python``) against a real ``bentoml serve`` with API keys on.

The client is installed from ``clients/python`` as a user installs it (``uv pip install``, offline,
into a folder of the test's own) and imported from there. Every API route is called through it,
with the answers it must handle: 200s, a 400 whose field errors parse into ``FieldError``s, 404,
413, 401, 403 and 429. A 415 cannot be sent through it: it always sends ``application/json``.

The same server checks that BentoML's other copies of the service's schemas say what
``/docs.json`` says: ``/schema.json``, and the Bento's ``apis/openapi.yaml`` and
``apis/schema.json`` written by ``bentoml build``; and that ``clients/python/openapi.json``, the
document the client was generated from, is the one the server serves.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pytest
import yaml

from tests.integration.test_service import (
    EXAMPLE,
    KeySpec,
    keyed_server,
    query,
    stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENT_PROJECT = Path(__file__).resolve().parents[2] / "clients" / "python"
ROUTES = ("/predict", "/predict_batch", "/feedback", "/feedback_batch")


@dataclass(frozen=True)
class Secured:
    """A served champion with ``DRIFTLOOP_AUTH=on`` and a token per key name."""

    url: str
    database_url: str
    bento_tag: str
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def secured(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    keys: list[KeySpec] = [
        ("both", ["predict", "feedback"], None),
        ("predictor", ["predict"], None),
        ("slow", ["predict"], 2.0),
    ]
    home = tmp_path_factory.mktemp("client-home")
    with keyed_server(server_url, home, keys) as (champion, url, tokens):
        yield Secured(url, champion.database_url, champion.bento_tag, tokens)


@pytest.fixture(scope="module")
def dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The ``driftloop_client`` package, installed from (a copy of) ``clients/python`` into a
    folder of its own (offline, with this interpreter's setuptools) and imported from there."""
    # uv from PATH, else the one `make setup` installs into the system's Python (as the Makefile).
    found = shutil.which("uv")
    uv = [found] if found else ["python3", "-m", "uv"]
    target = tmp_path_factory.mktemp("client-install")
    # A copy: setuptools builds in the project's folder (build/, *.egg-info).
    project = shutil.copytree(CLIENT_PROJECT, tmp_path_factory.mktemp("client-project") / "python")
    install = subprocess.run(
        [
            *uv,
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
            str(project),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    assert (target / "driftloop_client" / "py.typed").exists()
    sys.path.insert(0, str(target))
    try:
        package = importlib.import_module("driftloop_client")
        assert Path(package.__file__).is_relative_to(target), package.__file__
        yield package
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.split(".")[0] == "driftloop_client"]:
            del sys.modules[name]


def _api(dc: Any, tag: str) -> Any:
    """The client's module of a tag's routes, with one submodule per route loaded."""
    package = importlib.import_module(f"driftloop_client.api.{tag}")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return package


def _models(dc: Any) -> Any:
    return importlib.import_module("driftloop_client.models")


def _client(dc: Any, secured: Secured, key: str) -> Any:
    return dc.AuthenticatedClient(base_url=secured.url, token=secured.tokens[key], timeout=60.0)


def test_predict_and_predict_batch_through_the_client(dc: Any, secured: Secured) -> None:
    """Typed requests in, typed predictions out, each stored; the rate-limit headers reach the
    caller on a 200."""
    predictions = _api(dc, "predictions")
    models = _models(dc)
    with _client(dc, secured, "both") as client:
        one = predictions.predict.sync_detailed(
            client=client, body=models.ChurnRequest.from_dict(EXAMPLE)
        )
        batch = predictions.predict_batch.sync(
            client=client,
            body=models.PredictBatchRequest(
                records=[models.ChurnRequest.from_dict(EXAMPLE) for _ in range(3)]
            ),
        )

    assert one.status_code == 200, one.content
    assert isinstance(one.parsed, models.Prediction)
    assert 0.0 <= one.parsed.score <= 1.0
    assert one.parsed.label == int(one.parsed.score >= 0.5)
    assert one.parsed.model_name == "churn"
    assert int(one.headers["x-ratelimit-limit"]) >= 1
    assert isinstance(batch, list)
    assert [type(p) for p in batch] == [models.Prediction] * 3
    assert {p.score for p in batch} == {one.parsed.score}
    ids = [one.parsed.request_id, *(p.request_id for p in batch)]
    assert len(set(ids)) == 4
    assert set(stored(secured.database_url, ids)) == set(ids)


def test_feedback_and_feedback_batch_through_the_client(dc: Any, secured: Secured) -> None:
    """A label of each JSON type the document offers (1, "0", False) is recorded, with the
    receipts' statuses typed; a request_id naming no prediction is ``not_found`` in a batch."""
    predictions = _api(dc, "predictions")
    feedback = _api(dc, "feedback")
    models = _models(dc)
    with _client(dc, secured, "both") as client:
        request_id = predictions.predict.sync(
            client=client, body=models.ChurnRequest.from_dict(EXAMPLE)
        ).request_id
        stored(secured.database_url, [request_id])
        first = feedback.feedback.sync(
            client=client, body=models.FeedbackRequest(request_id=request_id, label=1)
        )
        again = feedback.feedback.sync(
            client=client, body=models.FeedbackRequest(request_id=request_id, label=True)
        )
        receipts = feedback.feedback_batch.sync(
            client=client,
            body=models.FeedbackBatchRequest(
                labels=[
                    models.FeedbackRequest(request_id=request_id, label="0"),
                    models.FeedbackRequest(request_id="client-ghost", label=False),
                ]
            ),
        )

    assert isinstance(first, models.FeedbackReceipt)
    assert (first.request_id, first.label, first.status) == (request_id, 1, "created")
    assert (again.label, again.status) == (1, "unchanged")
    assert [type(r) for r in receipts] == [models.FeedbackItemReceipt] * 2
    assert [(r.request_id, r.label, r.status) for r in receipts] == [
        (request_id, 0, "updated"),
        ("client-ghost", 0, "not_found"),
    ]
    rows = query(
        secured.database_url, "SELECT label FROM feedback WHERE request_id = %s", (request_id,)
    )
    assert rows == [(0,)]


def test_readyz_and_livez_through_the_client_need_no_key(dc: Any, secured: Secured) -> None:
    infrastructure = _api(dc, "infrastructure")
    with dc.Client(base_url=secured.url, timeout=30.0) as client:
        ready = infrastructure.get_readyz.sync_detailed(client=client)
        live = infrastructure.get_livez.sync_detailed(client=client)
    assert (ready.status_code, live.status_code) == (200, 200)


def test_a_400_parses_into_field_errors_naming_each_field(dc: Any, secured: Secured) -> None:
    """What the client does not check (ranges, unknown labels, an empty batch) the service
    refuses with a 400 whose ``detail`` parses into typed ``FieldError``s naming the field."""
    predictions = _api(dc, "predictions")
    feedback = _api(dc, "feedback")
    models = _models(dc)
    with _client(dc, secured, "both") as client:
        bad_age = predictions.predict.sync_detailed(
            client=client, body=models.ChurnRequest.from_dict({**EXAMPLE, "age": -5})
        )
        empty = predictions.predict_batch.sync_detailed(
            client=client, body=models.PredictBatchRequest(records=[])
        )
        bad_label = feedback.feedback_batch.sync_detailed(
            client=client,
            body=models.FeedbackBatchRequest(
                labels=[
                    models.FeedbackRequest(request_id="x", label=1),
                    models.FeedbackRequest(request_id="x", label="maybe"),
                ]
            ),
        )

    for response, loc in (
        (bad_age, ["age"]),
        (empty, ["records"]),
        (bad_label, ["labels", 1, "label"]),
    ):
        assert response.status_code == 400, response.content
        error = response.parsed
        assert isinstance(error, models.Error)
        assert error.error.startswith("invalid request: ")
        assert all(isinstance(item, models.FieldError) for item in error.detail)
        assert error.detail[0].loc == loc, error.detail
        assert error.detail[0].msg
        assert error.detail[0].type_  # the generator's name for `type`
    assert "maybe" in bad_label.parsed.detail[0].msg


def test_404_and_413_parse_into_the_error_model(dc: Any, secured: Secured) -> None:
    predictions = _api(dc, "predictions")
    feedback = _api(dc, "feedback")
    models = _models(dc)
    with _client(dc, secured, "both") as client:
        ghost = feedback.feedback.sync_detailed(
            client=client, body=models.FeedbackRequest(request_id="client-ghost-404", label=1)
        )
        too_many = predictions.predict_batch.sync_detailed(
            client=client,
            body=models.PredictBatchRequest(
                records=[models.ChurnRequest.from_dict(EXAMPLE)] * 1001
            ),
        )

    assert ghost.status_code == 404
    assert isinstance(ghost.parsed, models.Error)
    assert ghost.parsed.request_id == "client-ghost-404"
    assert "client-ghost-404" in ghost.parsed.error
    assert too_many.status_code == 413
    assert isinstance(too_many.parsed, models.Error)
    assert "at most 1000 records" in too_many.parsed.error


def test_401_403_and_429_parse_into_the_error_model(dc: Any, secured: Secured) -> None:
    """No key or a wrong one: 401 (``WWW-Authenticate: Bearer``); a key without the route's
    scope: 403; a burst over a key's rate: 429 with ``Retry-After``. Each parses as ``Error``."""
    predictions = _api(dc, "predictions")
    feedback = _api(dc, "feedback")
    models = _models(dc)
    body = models.ChurnRequest.from_dict(EXAMPLE)
    wrong_token = "dl_0123456789ab_" + "x" * 43
    with dc.AuthenticatedClient(base_url=secured.url, token=wrong_token) as client:
        wrong = predictions.predict.sync_detailed(client=client, body=body)
    with dc.Client(base_url=secured.url) as client:
        # The document says these routes need a key: the types ask for an AuthenticatedClient.
        missing = predictions.predict.sync_detailed(client=client, body=body)
    with _client(dc, secured, "predictor") as client:
        forbidden = feedback.feedback.sync_detailed(
            client=client, body=models.FeedbackRequest(request_id="x", label=1)
        )
    with _client(dc, secured, "slow") as client:
        burst = [predictions.predict.sync_detailed(client=client, body=body) for _ in range(5)]

    for response, status in ((wrong, 401), (missing, 401), (forbidden, 403)):
        assert response.status_code == status, response.content
        assert isinstance(response.parsed, models.Error)
        assert response.parsed.error
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert "feedback" in forbidden.parsed.error
    statuses = [r.status_code for r in burst]
    assert 429 in statuses, statuses
    limited = burst[statuses.index(429)]
    assert isinstance(limited.parsed, models.Error)
    assert limited.parsed.error.startswith("rate limit of this API key exceeded")
    assert int(limited.headers["retry-after"]) >= 1
    time.sleep(1.1)  # let the bucket refill for other tests using this key


def _resolve(node: Any, schemas: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(schemas[node["$ref"].rpartition("/")[2]], schemas)
        return {k: _resolve(v, schemas) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, schemas) for v in node]
    return node


def test_schema_json_says_what_the_document_says(secured: Secured) -> None:
    """BentoML's ``/schema.json`` (its clients and index page read it) carries each route's
    request and response schema as ``/docs.json`` has it (a label of three JSON types, not
    BentoML's flattened boolean), and BentoML's own client still works with it."""
    document = httpx.get(f"{secured.url}/docs.json", timeout=30).json()
    schema = httpx.get(f"{secured.url}/schema.json", timeout=30).json()
    schemas = document["components"]["schemas"]

    routes = {route["route"]: route for route in schema["routes"]}
    assert set(routes) == set(ROUTES)
    for path, route in routes.items():
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert route["input"] == _resolve(body, schemas), path
        assert route["output"] == _resolve(answer, schemas), path
    label = routes["/feedback"]["input"]["properties"]["label"]
    assert [t["type"] for t in label["anyOf"]] == ["boolean", "integer", "string"]

    with bentoml.SyncHTTPClient(secured.url, token=secured.tokens["both"], timeout=60) as client:
        assert 0.0 <= client.predict(**EXAMPLE)["score"] <= 1.0


def test_the_bentos_documents_are_the_served_ones(secured: Secured) -> None:
    """``bentoml build`` writes the service's documents into the Bento: ``apis/openapi.yaml`` is
    ``/docs.json`` as served without auth (the build's settings), so with the key schemes added
    it is the document served here, but for ``info``; ``apis/schema.json`` is ``/schema.json``."""
    from bentos.access import secure_document

    bento = Path(bentoml.bentos.get(secured.bento_tag).path)
    written = yaml.safe_load((bento / "apis" / "openapi.yaml").read_text())
    written_schema = json.loads((bento / "apis" / "schema.json").read_text())
    document = httpx.get(f"{secured.url}/docs.json", timeout=30).json()
    schema = httpx.get(f"{secured.url}/schema.json", timeout=30).json()

    assert "security" not in written["paths"]["/predict"]["post"]
    # info describes the Bento once built (its README, its version), the service before.
    assert written.pop("info")["title"] == document.pop("info")["title"]
    assert secure_document(written) == document
    assert written_schema == schema


def test_the_client_was_generated_from_the_served_document(secured: Secured) -> None:
    """``clients/python/openapi.json`` (``make client``, no server) is the document the
    service serves with auth on, but for BentoML's description of the running Bento."""
    generated = json.loads((CLIENT_PROJECT / "openapi.json").read_text())
    served = httpx.get(f"{secured.url}/docs.json", timeout=30).json()

    assert {k: v for k, v in generated.items() if k != "info"} == {
        k: v for k, v in served.items() if k != "info"
    }
    assert generated["info"]["title"] == served["info"]["title"] == "churn_service"


def test_the_readmes_client_example_runs_as_written(
    dc: Any, secured: Secured, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's Python example, run against the server (its URL swapped in) with a key."""
    readme = (CLIENT_PROJECT.parents[1] / "README.md").read_text()
    section = readme.split("## Calling it from Python: the HTTP client", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("DRIFTLOOP_KEY", secured.tokens["both"])

    exec(compile(example.replace("http://127.0.0.1:3000", secured.url), "README.md", "exec"), {})

    printed = capsys.readouterr().out.splitlines()
    score, label, status = printed[0].split()
    assert 0.0 <= float(score) <= 1.0
    assert label in {"0", "1"}
    assert status == "created"
    assert printed[1] == "400 [(['age'], 'Input should be greater than or equal to 16')]"


def test_regenerating_for_a_model_of_ones_own(tmp_path: Path) -> None:
    """``clients/generate.py --spec`` makes the client of another spec, without a server or a
    trained model: its request class has that spec's features (nullable ones optional), and its
    labels are the ones that spec's feedback takes."""
    from tests.integration.test_own_model_bento import LOANS

    spec = tmp_path / "loans.yaml"
    spec.write_text(yaml.safe_dump(LOANS))
    output = tmp_path / "client"
    script = CLIENT_PROJECT.parent / "generate.py"
    run = subprocess.run(
        [sys.executable, str(script), "--spec", str(spec), "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    models = output / "driftloop_client" / "models"
    assert not (models / "churn_request.py").exists()
    request = (models / "loans_request.py").read_text()
    assert "    income: float\n" in request
    assert "    credit_score: float | None | Unset = UNSET\n" in request
    labels = (models / "feedback_request_label_type_2.py").read_text()
    assert 'Literal["0", "1", "No", "Yes"]' in labels
    document = json.loads((output / "openapi.json").read_text())
    assert document["info"]["title"] == "loans_service"
    assert not (output / ".ruff_cache").exists()
