"""API keys and rate limits on a real ``bentoml serve`` with ``DRIFTLOOP_AUTH=on`` (one worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bentos.contract import RATE_HEADERS
from tests.integration.test_service import EXAMPLE, KeySpec, keyed_server, query

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Short, so that the revocation test waits little; the default is 10 s.
CACHE_S = 2.0


@dataclass(frozen=True)
class Secured:
    url: str
    database_url: str
    tokens: dict[str, str]

    def post(
        self, route: str, body: object, key: str | None = None, **headers: str
    ) -> httpx.Response:
        if key is not None:
            headers["authorization"] = f"Bearer {self.tokens[key]}"
        return httpx.post(f"{self.url}{route}", json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def secured(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    keys: list[KeySpec] = [
        ("both", ["predict", "feedback"], None),
        ("predictor", ["predict"], None),
        ("revoked", ["predict"], None),
        ("slow", ["predict"], 2.0),
        ("admin", ["admin"], None),
        ("single", ["predict"], 1.0),
    ]
    home = tmp_path_factory.mktemp("access-home")
    with keyed_server(server_url, home, keys, DRIFTLOOP_AUTH_CACHE_S=str(CACHE_S)) as (
        champion,
        url,
        tokens,
    ):
        yield Secured(url, champion.database_url, tokens)


def test_no_key_401_wrong_scope_403_good_key_200(secured: Secured) -> None:
    missing = secured.post("/predict", EXAMPLE)
    assert missing.status_code == 401
    assert missing.json()["error"].startswith("an API key is required")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = secured.post("/predict", EXAMPLE, authorization="Bearer dl_0123456789ab_" + "x" * 43)
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"

    predicted = secured.post("/predict", EXAMPLE, key="predictor")
    assert predicted.status_code == 200, predicted.text
    assert int(predicted.headers["x-ratelimit-limit"]) == 100
    assert "x-ratelimit-remaining" in predicted.headers
    assert "x-ratelimit-reset" in predicted.headers
    request_id = predicted.json()["request_id"]

    forbidden = secured.post("/feedback", {"request_id": request_id, "label": 1}, key="predictor")
    assert forbidden.status_code == 403
    assert forbidden.json() == {
        "error": "this API key may not use this route: it needs the 'feedback' scope"
    }
    assert "x-ratelimit-remaining" in forbidden.headers

    by_header = httpx.post(
        f"{secured.url}/predict",
        json=EXAMPLE,
        headers={"x-api-key": secured.tokens["both"]},
        timeout=30,
    )
    assert by_header.status_code == 200
    labelled = secured.post("/feedback", {"request_id": request_id, "label": 1}, key="both")
    assert labelled.status_code == 200, labelled.text

    assert httpx.get(f"{secured.url}/readyz", timeout=10).status_code == 200
    assert httpx.get(f"{secured.url}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{secured.url}/docs.json", timeout=10).status_code == 200
    assert httpx.get(f"{secured.url}/metrics", timeout=10).status_code == 401
    admin = {"authorization": f"Bearer {secured.tokens['admin']}"}
    assert httpx.get(f"{secured.url}/metrics", headers=admin, timeout=10).status_code == 200


def test_the_document_declares_the_keys_and_their_answers(secured: Secured) -> None:
    document = httpx.get(f"{secured.url}/docs.json", timeout=10).json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for path in ("/predict", "/predict_batch", "/feedback", "/feedback_batch"):
        operation = document["paths"][path]["post"]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
        for status in ("401", "403", "429"):
            assert operation["responses"][status]["content"]["application/json"]
        assert "Retry-After" in operation["responses"]["429"]["headers"]
        assert "X-RateLimit-Remaining" in operation["responses"]["200"]["headers"]
        assert "400" in operation["responses"]  # the contract's answers are kept
    assert "security" not in document["paths"]["/readyz"]["get"]


def test_a_revoked_key_is_refused_within_the_cache_ttl(secured: Secured) -> None:
    from training.keys import revoke_key
    from training.store import connect

    assert secured.post("/predict", EXAMPLE, key="revoked").status_code == 200
    with connect(secured.database_url) as conn:
        revoke_key(conn, "revoked")
    revoked_at = time.monotonic()
    while secured.post("/predict", EXAMPLE, key="revoked").status_code == 200:
        assert time.monotonic() - revoked_at < CACHE_S + 1.0, "still accepted after the TTL"
        time.sleep(0.1)
    assert secured.post("/predict", EXAMPLE, key="revoked").status_code == 401


def test_a_burst_over_the_rate_gets_429_with_the_headers(secured: Secured) -> None:
    answers = [secured.post("/predict", EXAMPLE, key="slow") for _ in range(5)]
    statuses = [a.status_code for a in answers]
    assert statuses[:2] == [200, 200], statuses  # a burst of one second's worth: 2
    assert 429 in statuses, statuses
    limited = answers[statuses.index(429)]
    assert limited.json()["error"].startswith("rate limit of this API key exceeded")
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-limit"] == "2"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) >= 1
    time.sleep(1.1)
    assert secured.post("/predict", EXAMPLE, key="slow").status_code == 200


def test_uses_are_counted_per_key(secured: Secured) -> None:
    before = {
        name: uses for name, uses in query(secured.database_url, "SELECT name, uses FROM api_keys")
    }
    for _ in range(3):
        assert secured.post("/predict", EXAMPLE, key="both").status_code == 200
    deadline = time.monotonic() + 15  # flushed every 5 s
    while time.monotonic() < deadline:
        after = dict(query(secured.database_url, "SELECT name, uses FROM api_keys"))
        if after["both"] >= before["both"] + 3:
            break
        time.sleep(0.5)
    assert after["both"] >= before["both"] + 3


def test_feedback_records_the_key_and_a_correction_keeps_its_predecessor(
    secured: Secured,
) -> None:
    from training.keys import parse_token

    ids = {name: parse_token(token)[0] for name, token in secured.tokens.items()}  # type: ignore[index]
    request_id = secured.post("/predict", EXAMPLE, key="both").json()["request_id"]
    first = secured.post("/feedback", {"request_id": request_id, "label": 1}, key="both")
    assert first.json()["status"] == "created", first.text
    correction = secured.post(
        "/feedback_batch", {"labels": [{"request_id": request_id, "label": 0}]}, key="admin"
    )
    assert correction.json()[0]["status"] == "updated", correction.text
    assert query(
        secured.database_url,
        "SELECT label, key_id FROM feedback WHERE request_id = %s",
        (request_id,),
    ) == [(0, ids["admin"])]
    assert query(
        secured.database_url,
        "SELECT label, raw_label, key_id, replaced_by FROM feedback_history WHERE request_id = %s",
        (request_id,),
    ) == [(1, "1", ids["both"], ids["admin"])]


def test_guessing_keys_from_one_address_gets_429_and_others_go_on(secured: Secured) -> None:
    """Requests without a valid key spend their address's allowance (20 at once by default);
    past it the answer is 429, while a valid key from another address is served. The guesser
    sends from 127.0.0.2 (Linux routes all of 127/8 to loopback)."""
    guesser = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    with guesser:
        answers = [
            guesser.post(
                f"{secured.url}/predict",
                json=EXAMPLE,
                headers={"authorization": f"Bearer dl_{n:012x}_{'x' * 43}"},
            )
            for n in range(25)
        ]
    statuses = [a.status_code for a in answers]
    assert statuses[:20] == [401] * 20, statuses
    assert statuses[20:] == [429] * 5, statuses
    limited = answers[-1]
    assert "without a valid API key from this address" in limited.json()["error"]
    assert int(limited.headers["retry-after"]) >= 1
    assert secured.post("/predict", EXAMPLE, key="both").status_code == 200


def test_a_401_carries_the_allowance_of_its_address(secured: Secured) -> None:
    """A request without a valid key spends a token of its address's bucket, and its 401 says how
    many are left (``X-RateLimit-*``), as every answer of a limited route does. Sent from
    127.0.0.3, an address of its own: a full bucket of 20 at first."""
    with httpx.Client(
        transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=30
    ) as stranger:
        first = stranger.post(f"{secured.url}/predict", json=EXAMPLE)
        second = stranger.get(f"{secured.url}/metrics")

    assert (first.status_code, second.status_code) == (401, 401)
    assert first.headers["www-authenticate"] == "Bearer"
    assert first.headers["x-ratelimit-limit"] == "20"
    assert first.headers["x-ratelimit-remaining"] == "19"
    assert int(first.headers["x-ratelimit-reset"]) >= 1
    assert second.headers["x-ratelimit-remaining"] in ("18", "19")  # a token back after 1 s


# The headers whose presence the document declares (all of them required when declared).
DECLARED = (
    "retry-after",
    "www-authenticate",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)


def test_every_answer_carries_exactly_the_headers_the_document_declares(
    secured: Secured,
) -> None:
    """With auth on, each answer of a keyed route provoked here (each status but the 5xx ones)
    carries exactly the headers ``/docs.json`` declares for its route and status: the
    ``X-RateLimit-*`` ones on all of them, the key's or (401) its address's."""
    document = httpx.get(f"{secured.url}/docs.json", timeout=10).json()
    admin = {"authorization": f"Bearer {secured.tokens['admin']}"}
    predictor = {"authorization": f"Bearer {secured.tokens['predictor']}"}
    label = {"request_id": "contract-ghost", "label": 1}
    within_rate = secured.post("/predict", EXAMPLE, key="single")
    answers: dict[tuple[str, int], httpx.Response] = {
        ("/predict", 200): secured.post("/predict", EXAMPLE, key="predictor"),
        ("/predict", 400): secured.post("/predict", {}, key="predictor"),
        ("/predict", 401): secured.post("/predict", EXAMPLE),
        ("/predict", 413): secured.post("/predict", {"x": "x" * 20_000}, key="predictor"),
        ("/predict", 415): httpx.post(
            f"{secured.url}/predict",
            content=b"{}",
            headers={**predictor, "content-type": "text/plain"},
            timeout=30,
        ),
        ("/predict", 429): secured.post("/predict", EXAMPLE, key="single"),
        ("/feedback", 403): secured.post("/feedback", label, key="predictor"),
        ("/feedback", 404): secured.post("/feedback", label, key="both"),
        ("/feedback_batch", 400): secured.post("/feedback_batch", {"labels": []}, key="both"),
        ("/metrics", 200): httpx.get(f"{secured.url}/metrics", headers=admin, timeout=30),
        ("/metrics", 401): httpx.get(f"{secured.url}/metrics", timeout=30),
        ("/metrics", 403): httpx.get(f"{secured.url}/metrics", headers=predictor, timeout=30),
    }
    assert within_rate.status_code == 200, within_rate.text

    for (path, status), response in answers.items():
        assert response.status_code == status, (path, status, response.text)
        operation = next(iter(document["paths"][path].values()))
        declared = {name.lower() for name in operation["responses"][str(status)]["headers"]}
        sent = {name for name in DECLARED if name in response.headers}
        assert sent == declared, (path, status)
    # A method with no operation in the document (nowhere to declare it) is limited all the same.
    wrong_method = httpx.get(f"{secured.url}/predict", headers=predictor, timeout=30)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert "x-ratelimit-remaining" in wrong_method.headers


def test_the_document_declares_the_503_of_keys_that_cannot_be_checked(secured: Secured) -> None:
    """The store down, a key not checked recently is a 503 (``Retry-After``, and the address's
    ``X-RateLimit-*``) on every keyed route, /metrics included (its answers are tested with a
    stopped store in test_serving_path and test_keys)."""
    document = httpx.get(f"{secured.url}/docs.json", timeout=10).json()
    for path in ("/predict", "/predict_batch", "/feedback", "/feedback_batch", "/metrics"):
        operation = next(iter(document["paths"][path].values()))
        unavailable = operation["responses"]["503"]
        assert "API key cannot be checked" in unavailable["description"], path
        assert set(unavailable["headers"]) == {"Retry-After", *RATE_HEADERS}, path
        assert unavailable["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
