"""The Bento service in-process: the champion's Bento loaded with ``bentoml.load``, its ASGI app
(``to_asgi()``) driven by Starlette's TestClient, against the real PostgreSQL.

The middle tier between unit tests and ``bentoml serve``: the same routes, validation and store
writes as served, without a server process or a port.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.test_service import (
    EXAMPLE,
    Champion,
    champion_environment,
    count,
    query,
    stored,
)

if TYPE_CHECKING:
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class InProcess:
    champion: Champion
    client: TestClient

    def post_raw(self, route: str, body: str) -> Any:
        return self.client.post(route, content=body, headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def service(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """The champion's Bento loaded in this process, started through its ASGI lifespan (which runs
    ``ChurnService.__init__``: model load, store connection) and stopped after the module."""
    import bentoml

    # The project's own `bentos` package, so that the Bento's copy of it is not imported instead.
    import bentos  # noqa: F401

    with warnings.catch_warnings():
        # Starlette asks for httpx2 with its TestClient; httpx still works.
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    home: Path = tmp_path_factory.mktemp("asgi-home")
    with champion_environment(server_url, home) as champion:
        # The Bento's build arguments pick its model; reload re-reads them if the module was
        # already imported (for another model, or none) earlier in the session.
        svc = bentoml.load(champion.bento_tag, reload=True)
        assert isinstance(svc, bentoml.Service)
        assert str(svc.inner.model_ref.tag) == champion.model_tag
        with TestClient(svc.to_asgi()) as client:
            yield InProcess(champion=champion, client=client)


def test_predict_answers_and_stores_through_the_asgi_app(service: InProcess) -> None:
    """The ASGI app scores the example with the champion and stores the prediction with its
    features, as the served Bento does."""
    response = service.client.post("/predict", json=EXAMPLE)

    assert response.status_code == 200, response.text
    result = response.json()
    assert 0.0 <= result["score"] <= 1.0
    assert result["label"] == int(result["score"] >= 0.5)
    assert result["model_version"] == service.champion.version
    rows = stored(service.champion.database_url, [result["request_id"]])
    assert rows[result["request_id"]] == (
        EXAMPLE,
        pytest.approx(result["score"]),
        result["label"],
        service.champion.version,
    )


def test_feedback_round_trip_and_unknown_request_through_the_asgi_app(service: InProcess) -> None:
    """Feedback is created then updated through the app; an unknown request id answers a 404 JSON
    object (not a list) and stores nothing."""
    request_id = service.client.post("/predict", json=EXAMPLE).json()["request_id"]

    created = service.client.post("/feedback", json={"request_id": request_id, "label": 0})
    updated = service.client.post("/feedback", json={"request_id": request_id, "label": 1})

    assert created.json() == {"request_id": request_id, "label": 0, "status": "created"}
    assert updated.json() == {"request_id": request_id, "label": 1, "status": "updated"}
    url = service.champion.database_url
    assert query(url, "SELECT label FROM feedback WHERE request_id = %s", (request_id,)) == [(1,)]

    before = count(url, "feedback")
    missing = service.client.post("/feedback", json={"request_id": "ghost", "label": 1})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "no prediction with request_id 'ghost'",
        "request_id": "ghost",
    }
    assert count(url, "feedback") == before


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/predict", json.dumps(EXAMPLE | {"age": "@"}).replace('"@"', "NaN"), "age"),
        ("/predict", json.dumps(EXAMPLE | {"extra": 1}), "extra"),
        ("/predict", json.dumps(EXAMPLE | {"contract": "a\x00b"}), "contract"),
        ("/feedback", '{"request_id": "x", "label": "yes"}', "label"),
        ("/feedback", '{"request_id": "x", "label": 1, "extra": 1}', "extra"),
    ],
    ids=["nan", "extra-prediction-field", "nul", "label-unknown", "extra-feedback-field"],
)
def test_validation_errors_are_400_objects_naming_the_field(
    service: InProcess, route: str, body: str, field: str
) -> None:
    """The app's validation answers 400 with a JSON object whose detail names the field."""
    response = service.post_raw(route, body)

    assert response.status_code == 400, response.text
    locations = [err["loc"] for err in response.json()["detail"]]
    assert [field] in locations, response.text


def test_the_asgi_app_gates_the_feedback_routes_and_serves_the_patched_document(
    service: InProcess,
) -> None:
    """The app ``bentoml serve`` runs in each worker (``to_asgi()``) holds the feedback routes to
    the predictions' contract, JSON only (415) and a body limit (413), and serves the OpenAPI
    document that says so; nothing is stored."""
    url = service.champion.database_url
    before = count(url, "feedback")

    text = service.client.post(
        "/feedback",
        content='{"request_id": "x", "label": 1}',
        headers={"content-type": "text/plain"},
    )
    padded = service.post_raw(
        "/feedback", json.dumps({"request_id": "x", "label": 1, "p": "x" * 17000})
    )
    document = service.client.get("/docs.json").json()

    assert text.status_code == 415, text.text
    assert padded.status_code == 413, padded.text
    assert document["paths"]["/feedback"]["post"]["requestBody"]["required"] is True
    assert "Error" in document["components"]["schemas"]
    assert count(url, "feedback") == before


def test_killed_store_connections_fail_no_request(service: InProcess) -> None:
    """The store drops every connection of the service (as a restart does): the next prediction
    still answers 200 and is stored once the log writer reconnects, and the next feedback succeeds
    on a fresh connection rather than failing on the stale one."""
    url = service.champion.database_url
    first = service.client.post("/predict", json=EXAMPLE).json()["request_id"]
    assert (
        service.client.post("/feedback", json={"request_id": first, "label": 1}).status_code == 200
    )
    killed = query(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name LIKE 'driftloop%%' AND pid <> pg_backend_pid()",
    )
    assert killed, "the service should hold connections"

    after = service.client.post("/predict", json=EXAMPLE)
    feedback = service.client.post("/feedback", json={"request_id": first, "label": 0})

    assert after.status_code == 200, after.text
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["status"] == "updated"
    assert stored(url, [after.json()["request_id"]])
