"""The service's HTTP contract, served for real: one error shape on every API route, logs a client
cannot forge, and an OpenAPI document (``/docs.json``) that describes every answer the service
sends, checked by schemathesis against ``bentoml serve`` of the champion's Bento.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_service import (
    EXAMPLE,
    Served,
    bento_server,
    champion_environment,
    count,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUTES = ("/predict", "/predict_batch", "/feedback", "/feedback_batch")
# A body each route takes (feedback naming no prediction answers 404, which is enough here).
VALID: dict[str, Any] = {
    "/predict": EXAMPLE,
    "/predict_batch": {"records": [EXAMPLE]},
    "/feedback": {"request_id": "contract-ghost", "label": 1},
    "/feedback_batch": {"labels": [{"request_id": "contract-ghost", "label": 1}]},
}
# The documented body limits with the default settings (16 KiB per record or label).
LIMITS = {
    "/predict": 16 * 1024,
    "/predict_batch": 16 * 1024 * 1000,
    "/feedback": 16 * 1024,
    "/feedback_batch": 16 * 1024 * 1000,
}
REF = "#/components/schemas/"
# What a forged log line would start with: a timestamp and level in BentoML's own format.
FORGED = "1999-12-31T23:59:59+0000 [ERROR] [entry_service:forged:1] FORGED admin logged in"
# Schemathesis: at most this many generated examples per operation and phase (Hypothesis' default).
MAX_EXAMPLES = 100
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def served(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The champion's Bento served on a free port of 127.0.0.1 for the whole module."""
    home = tmp_path_factory.mktemp("contract-home")
    with champion_environment(server_url, home) as champion:
        log = home / "serve.log"
        with bento_server(champion.bento_tag, home, os.environ, log) as (url, process):
            yield Served(champion=champion, url=url, log=log, process=process)


def _assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    """The one error shape: a JSON object with a non-empty ``error``; a 400 also lists the fields
    at fault in ``detail``, each with ``loc``, ``msg`` and ``type``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert body["error"], body
    if status == 400:
        assert isinstance(body.get("detail"), list), body
        assert body["detail"], body
        for item in body["detail"]:
            assert isinstance(item["loc"], list), item
            assert isinstance(item["msg"], str), item
            assert isinstance(item["type"], str), item
    return body


def _log_since(served: Served, offset: int, needle: str, timeout_s: float = 30.0) -> str:
    """The server log written after ``offset``, once ``needle`` is in it."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = served.log_text()[offset:]
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("text/plain", None, id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", "request_id=x&label=1", id="form"),
        pytest.param("multipart/form-data", "--x\r\n\r\n", id="multipart-without-boundary"),
        pytest.param(
            "multipart/form-data; boundary=x",
            '--x\r\nContent-Disposition: form-data; name="request_id"\r\n\r\nx\r\n--x--\r\n',
            id="multipart",
        ),
    ],
)
def test_a_body_not_sent_as_json_is_a_415_on_every_route(
    served: Served, route: str, content_type: str, body: str | None
) -> None:
    """JSON only, on BentoML's routes as on the prediction routes: any other content type is a
    415 in the one error shape (a multipart body without a boundary used to be a 500), and nothing
    is stored."""
    url = served.champion.database_url
    before = count(url, "feedback")

    response = httpx.post(
        f"{served.url}{route}",
        content=(json.dumps(VALID[route]) if body is None else body).encode(),
        headers={"content-type": content_type},
        timeout=30,
    )

    error = _assert_error_shape(response, 415)
    assert "application/json" in error["error"]
    assert count(url, "feedback") == before


@pytest.mark.parametrize("route", ROUTES)
def test_a_body_over_the_documented_limit_is_a_413_on_every_route(
    served: Served, route: str
) -> None:
    """Each route refuses a body over its documented size with 413 (the feedback routes had no
    limit), whatever the body holds."""
    body = json.dumps(VALID[route])
    padded = body[:-1] + ', "pad": "' + "x" * (LIMITS[route] - len(body)) + '"}'

    response = served.post(route, padded)

    _assert_error_shape(response, 413)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("body", "kind"),
    [
        pytest.param('{"request_id": ', "json_invalid", id="malformed"),
        pytest.param("[1, 2]", "model_type", id="not-an-object"),
        pytest.param("", "missing", id="empty"),
    ],
)
def test_a_malformed_body_is_a_400_listing_the_fields_on_every_route(
    served: Served, route: str, body: str, kind: str
) -> None:
    """Malformed or invalid JSON is a 400 whose ``detail`` lists the errors, on every route."""
    response = served.post(route, body)

    error = _assert_error_shape(response, 400)
    assert kind in [item["type"] for item in error["detail"]], error


@pytest.mark.parametrize("route", ROUTES)
def test_another_method_on_an_api_route_is_a_405_naming_post(served: Served, route: str) -> None:
    response = httpx.get(f"{served.url}{route}", timeout=30)

    _assert_error_shape(response, 405)
    assert response.headers["allow"] == "POST"


def test_an_empty_batch_is_a_400_naming_the_list(served: Served) -> None:
    response = served.post("/predict_batch", '{"records": []}')

    error = _assert_error_shape(response, 400)
    assert [item["loc"] for item in error["detail"]] == [["records"]]


@pytest.mark.parametrize("route", ROUTES)
def test_a_refusal_is_one_info_line_and_a_client_cannot_forge_a_log_line(
    served: Served, route: str
) -> None:
    """An unknown key holding a newline and a fake log prefix is refused with a 400 naming it; the
    server logs the refusal at INFO on one line, with the key escaped, and no traceback, and no
    line of the log starts with the forged text."""
    offset = len(served.log_text())
    sent = dict(VALID[route])
    sent[f"x\n{FORGED}"] = 1

    response = served.post(route, json.dumps(sent))

    error = _assert_error_shape(response, 400)
    assert [f"x\n{FORGED}"] in [item["loc"] for item in error["detail"]], error
    text = _log_since(served, offset, f"POST {route} (status=400)")
    lines = text.splitlines()
    refusals = [line for line in lines if f"POST {route} (status=400)" in line]
    assert len(refusals) == 1, text[-3000:]
    assert "[INFO]" in refusals[0], refusals[0]
    assert "\\n1999-12-31" in refusals[0], refusals[0]
    assert [line for line in lines if line.startswith(FORGED[:30])] == [], text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert re.search(r"^\S+ \[ERROR\]", text, flags=re.MULTILINE) is None, text[-3000:]


def test_a_path_with_a_newline_is_a_404_and_forges_no_log_line(served: Served) -> None:
    """The path is the client's too: a percent-encoded newline in it is answered 404, and no log
    line starts with what followed it."""
    offset = len(served.log_text())
    forged = FORGED.replace(" ", "%20")

    response = httpx.post(f"{served.url}/feedback%0A{forged}", json=VALID["/feedback"])

    _assert_error_shape(response, 404)
    # A request after it, so that its own log lines (if any) are written by then.
    sentinel = httpx.post(f"{served.url}/predict", content=b"[]", timeout=30)
    assert sentinel.status_code == 400
    text = _log_since(served, offset, "POST /predict (status=400)")
    assert [line for line in text.splitlines() if line.startswith(FORGED[:30])] == [], text


def test_a_request_that_is_not_http_is_a_400_logged_at_info(served: Served) -> None:
    """uvicorn answers bytes it cannot parse as HTTP with a 400; the log says so at INFO (a
    client's mistake, as every refusal), not WARNING."""
    offset = len(served.log_text())
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"NOT HTTP AT ALL\x00\r\n\r\n")
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    sentinel = httpx.post(f"{served.url}/predict", content=b"[]", timeout=30)
    assert sentinel.status_code == 400
    text = _log_since(served, offset, "POST /predict (status=400)")
    lines = [line for line in text.splitlines() if "Invalid HTTP request received" in line]
    assert lines, text[-3000:]
    assert all("[INFO]" in line for line in lines), lines
    assert "[WARNING]" not in text, text[-3000:]


@pytest.mark.parametrize(
    ("method", "route", "content_type"),
    [
        *(
            pytest.param("POST", route, b"application/json; charset=\xe9", id=f"{route}-latin-1")
            for route in ROUTES
        ),
        pytest.param("POST", "/feedback", "application/json; charset=é".encode(), id="utf-8"),
        pytest.param("GET", "/schema.json", b"\x85", id="/schema.json"),
        pytest.param("GET", "/readyz", b"application/json; charset=\xe9", id="/readyz"),
        pytest.param("GET", "/metrics", b"text/plain\xff", id="/metrics"),
    ],
)
def test_a_content_type_that_is_not_ascii_is_a_415_in_one_info_line_on_every_route(
    served: Served, method: str, route: str, content_type: bytes
) -> None:
    """A byte outside printable ASCII in ``Content-Type`` is a 415 in the one error shape, on
    every route, logged as one INFO line. BentoML's access log decodes the header as UTF-8: such a
    request used to log ~75 lines of ERROR tracebacks and leave the client headers without a body."""
    offset = len(served.log_text())

    response = httpx.request(
        method,
        f"{served.url}{route}",
        content=json.dumps(VALID.get(route, {})).encode() if method == "POST" else None,
        headers={"content-type": content_type},
        timeout=30,
    )

    error = _assert_error_shape(response, 415)
    assert "Content-Type" in error["error"], error
    needle = f"{method} {route} (status=415)"
    text = _log_since(served, offset, needle)
    refusals = [line for line in text.splitlines() if needle in line]
    assert len(refusals) == 1, text[-3000:]
    assert "[INFO]" in refusals[0], refusals[0]
    assert "Traceback" not in text, text[-3000:]
    assert re.search(r"^\S+ \[ERROR\]", text, flags=re.MULTILINE) is None, text[-3000:]
    # ... and the document says so, for the routes it describes.
    document = httpx.get(f"{served.url}/docs.json", timeout=30).json()
    operation = document["paths"].get(route, {}).get(method.lower())
    if operation is not None:
        assert "415" in operation["responses"], (route, sorted(operation["responses"]))


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        if "post" in item:
            yield path, item["post"]


def test_the_document_describes_every_answer_of_the_api_routes(served: Served) -> None:
    """``/docs.json`` says what the service does: request bodies required, JSON only; the 200
    body; one shared error schema for 400 (with the list of field errors), 404 (feedback), 413,
    415, 500 and 503 (with ``Retry-After``); feedback labels of every accepted JSON type, with the
    values each takes."""
    document = httpx.get(f"{served.url}/docs.json", timeout=30).json()
    schemas = document["components"]["schemas"]

    assert {path for path, _ in _operations(document)} == set(ROUTES)
    error = schemas["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["detail"]["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert set(schemas["FieldError"]["required"]) == {"loc", "msg", "type"}
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(schemas)
    for path, operation in _operations(document):
        body = operation["requestBody"]
        assert body["required"] is True, path
        assert list(body["content"]) == ["application/json"], path
        responses = operation["responses"]
        expected = {"200", "400", "413", "415", "500", "503"}
        expected |= {"404"} if path == "/feedback" else set()
        expected |= {"504"} if path.startswith("/feedback") else set()
        assert set(responses) == expected, (path, sorted(responses))
        for status in expected - {"200"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
        assert responses["503"]["headers"]["Retry-After"]["required"] is True
        assert "16384" in responses["413"]["description"].replace(",", ""), path
    label = schemas["FeedbackRequest"]["properties"]["label"]
    feedback = document["paths"]["/feedback"]["post"]["requestBody"]["content"]
    assert feedback["application/json"]["schema"] == {"$ref": REF + "FeedbackRequest"}
    assert label["anyOf"] == [
        {"type": "boolean"},
        {"type": "integer", "enum": [0, 1]},
        {"type": "string", "enum": ["1", "0"]},
    ]
    # The service refuses U+0000 in any text (the store cannot hold it): the document says so.
    record_ref = schemas["PredictBatchRequest"]["properties"]["records"]["items"]["$ref"]
    request = schemas[record_ref.removeprefix(REF)]
    texts = [
        option
        for prop in [
            *request["properties"].values(),
            schemas["FeedbackRequest"]["properties"]["request_id"],
        ]
        for option in [prop, *prop.get("anyOf", [])]
        if option.get("type") == "string" and "enum" not in option
    ]
    assert texts
    for text in texts:
        assert not re.fullmatch(text["pattern"], "a\x00b"), text
        assert re.fullmatch(text["pattern"], "north"), text
    batch = document["paths"]["/predict_batch"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"] == {"$ref": REF + "PredictBatchRequest"}
    records = schemas["PredictBatchRequest"]["properties"]["records"]
    assert (records["minItems"], records["maxItems"]) == (1, 1000)


def test_the_swagger_ui_page_still_loads_the_document(served: Served) -> None:
    page = httpx.get(f"{served.url}/", timeout=30)
    initializer = httpx.get(f"{served.url}/static_content/swagger-initializer.js", timeout=30)

    assert page.status_code == 200
    assert "swagger-initializer.js" in page.text
    assert initializer.status_code == 200
    assert "./docs.json" in initializer.text
    assert httpx.get(f"{served.url}/docs.json", timeout=30).json()["openapi"].startswith("3.")


def test_schemathesis_finds_no_answer_outside_the_document(served: Served, tmp_path: Path) -> None:
    """Schemathesis (``st run``) against the served ``/docs.json``: examples, coverage and
    fuzzing phases, valid and invalid data, at most ``MAX_EXAMPLES`` examples per operation,
    generated deterministically (Hypothesis derandomized: the same cases on every run, so no seed).
    No 5xx, and every status code, content type and body is the documented one; the server logged
    no error and no traceback meanwhile."""
    report = tmp_path / "schemathesis.json"
    offset = len(served.log_text())
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{served.url}/docs.json",
        "--url",
        served.url,
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    started = time.monotonic()
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    elapsed = time.monotonic() - started

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-12000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated, output[-3000:]
    assert int(generated[1]) > 500, output[-3000:]
    print(f"schemathesis: {generated[0]} in {elapsed:.0f} s")
    text = served.log_text()[offset:]
    assert "Traceback" not in text, text[-3000:]
    assert re.search(r"^\S+ \[ERROR\]", text, flags=re.MULTILINE) is None, text[-3000:]
