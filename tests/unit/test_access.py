"""The auth layer's pure parts: which scope a path needs, where the key is read, the document."""

from __future__ import annotations

from typing import Any

import pytest

from bentos.access import credential, route_scope, secure_document


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/predict", "predict"),
        ("/predict_batch", "predict"),
        ("/feedback", "feedback"),
        ("/feedback_batch", "feedback"),
        ("/metrics", "admin"),
        ("/readyz", None),
        ("/livez", None),
        ("/docs.json", None),
        ("/", None),
    ],
)
def test_route_scope(path: str, scope: str | None) -> None:
    assert route_scope(path) == scope


def _headers(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"headers": [(k.encode(), v.encode()) for k, v in pairs]}


def test_credential_from_bearer_or_x_api_key() -> None:
    assert credential(_headers(("authorization", "Bearer dl_x"))) == "dl_x"
    assert credential(_headers(("authorization", "bearer  dl_x "))) == "dl_x"
    assert credential(_headers(("x-api-key", "dl_y"))) == "dl_y"
    assert credential(_headers(("authorization", "Basic dXNlcg=="))) is None
    assert credential(_headers(("authorization", "Bearer "))) is None
    assert credential(_headers()) is None


RATE = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}


def test_secure_document_adds_schemes_and_answers_to_keyed_routes_only() -> None:
    """Every answer of a keyed route declares the rate-limit headers (the gate adds them to all);
    the gate's 503 (keys not checkable) joins a route's own 503 or stands alone (/metrics)."""
    busy = {"description": "Overloaded.", "headers": {"Retry-After": {"required": True}}}
    document: dict[str, Any] = {
        "paths": {
            "/predict": {
                "post": {"responses": {"200": {"description": "ok"}, "400": {}, "503": busy}}
            },
            "/metrics": {"get": {"responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"responses": {"200": {"description": "ok"}}}},
        }
    }
    secure_document(document)
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    predict = document["paths"]["/predict"]["post"]
    assert predict["security"] == [{"bearer": []}, {"apiKey": []}]
    assert list(predict["responses"]) == ["200", "400", "401", "403", "429", "503"]
    assert set(predict["responses"]["429"]["headers"]) == {"Retry-After", *RATE}
    assert set(predict["responses"]["401"]["headers"]) == {"WWW-Authenticate", *RATE}
    for status in ("200", "400", "403"):
        assert set(predict["responses"][status]["headers"]) == RATE, status
    unavailable = predict["responses"]["503"]
    assert unavailable["description"].startswith("Overloaded. Or: The API key cannot be checked")
    assert set(unavailable["headers"]) == {"Retry-After", *RATE}
    metrics = document["paths"]["/metrics"]["get"]["responses"]
    assert list(metrics) == ["200", "401", "403", "429", "503"]
    assert metrics["503"]["description"].startswith("The API key cannot be checked")
    assert set(metrics["503"]["headers"]) == {"Retry-After", *RATE}
    assert "security" not in document["paths"]["/readyz"]["get"]
    assert "headers" not in document["paths"]["/readyz"]["get"]["responses"]["200"]
