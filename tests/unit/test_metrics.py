"""driftloop's series in one process: the bulk histogram update, the request-counting ASGI layer
and the rendering of the retrain loop's state (no server, no store; the state is built by hand)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from bentos.loop_metrics import render
from bentos.metrics import SCORE_BUCKETS, RequestMetrics, observe_many, series
from training.loop_status import LoopStatus


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(f"{k}={v}" for k, v in sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_observe_many_gives_the_buckets_and_sum_observe_gives() -> None:
    """Scores on bucket bounds, between them, at 0 and 1: the same buckets, count and sum as
    observing them one by one."""
    values = np.array([0.0, 0.05, 0.051, 0.5, 0.4999, 0.95, 1.0, 0.3, 0.3, 0.7])
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("s", "d", registry=one, buckets=SCORE_BUCKETS)
    by_many = Histogram("s", "d", registry=many, buckets=SCORE_BUCKETS)
    for value in values:
        by_one.observe(float(value))
    observe_many(by_many, values)
    observe_many(by_many, np.array([]))

    assert _samples(many, "s_bucket") == _samples(one, "s_bucket")
    assert _samples(many, "s_count") == {(): 10.0}
    assert _samples(many, "s_sum")[()] == pytest.approx(_samples(one, "s_sum")[()])


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _answering(status: int) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def _leaving(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The hot path when its client disconnects before sending its body: no answer."""


async def _failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise RuntimeError("a bug")


def _call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


def test_request_layer_counts_api_routes_by_status_and_refusals_only_with_auth_on() -> None:
    """An API route's answer is counted by route and status with its time, unchanged (no answer:
    499 when the client left, 500 when the app raised); another path is not; 401/403/429 count as refusals (unauthenticated, forbidden, rate_limited) only when
    auth is on, on any path (``/metrics`` is keyed too)."""
    series()
    route = "/unit-test-route"
    requests = "driftloop_requests_total"
    before = {
        status: _value(requests, transport="http", route=route, status=status)
        for status in ("200", "429", "499", "500", "503")
    }
    refused_before = {
        reason: _value("driftloop_refused_total", transport="http", reason=reason)
        for reason in ("unauthenticated", "forbidden", "rate_limited")
    }
    timed = _value("driftloop_request_duration_seconds_count", transport="http", route=route)

    on = {s: RequestMetrics(_answering(s), [route], auth_on=True) for s in (200, 401, 403, 429)}
    assert _call(on[200], route)[0]["status"] == 200
    assert _call(on[429], route)[0]["status"] == 429
    _call(on[401], "/metrics")
    _call(on[403], route)
    _call(on[200], "/not-an-api-route")
    _call(RequestMetrics(_answering(429), [route], auth_on=False), route)
    _call(RequestMetrics(_answering(503), [route], auth_on=False), route)
    _call(RequestMetrics(_leaving, [route], auth_on=False), route)
    with pytest.raises(RuntimeError):
        _call(RequestMetrics(_failing, [route], auth_on=False), route)

    assert _value(requests, transport="http", route=route, status="200") == before["200"] + 1
    assert _value(requests, transport="http", route=route, status="429") == before["429"] + 2
    assert _value(requests, transport="http", route=route, status="503") == before["503"] + 1
    assert _value(requests, transport="http", route=route, status="499") == before["499"] + 1
    assert _value(requests, transport="http", route=route, status="500") == before["500"] + 1
    assert _value(requests, transport="http", route="/not-an-api-route", status="200") == 0
    assert _value("driftloop_request_duration_seconds_count", transport="http", route=route) == (
        timed + 7
    )
    refused_now = {
        reason: _value("driftloop_refused_total", transport="http", reason=reason)
        for reason in refused_before
    }
    assert refused_now == {
        "unauthenticated": refused_before["unauthenticated"] + 1,
        "forbidden": refused_before["forbidden"] + 1,
        "rate_limited": refused_before["rate_limited"] + 1,
    }


def _families(text: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text.decode())
    }


def test_loop_state_renders_champion_last_success_and_drift() -> None:
    promoted = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    status = LoopStatus(
        model="churn",
        champion_version=3,
        champion_model_version="abc123",
        champion_promoted_at=promoted,
        last_success_at=datetime(2026, 11, 25, 2, 0, tzinfo=UTC),
        drift_checked_at=datetime(2026, 11, 25, 1, 0, tzinfo=UTC),
        drift_share=0.375,
        drifted=True,
        decision="retrain",
    )

    families = _families(render(status, 0.3, ok=True))

    model = {"model": "churn"}
    assert families["driftloop_loop_status_ok"] == [({}, 1.0)]
    assert families["driftloop_champion_version"] == [(model, 3.0)]
    assert families["driftloop_champion_info"] == [({**model, "model_version": "abc123"}, 1.0)]
    assert families["driftloop_champion_promoted_timestamp_seconds"] == [
        (model, promoted.timestamp())
    ]
    assert families["driftloop_retrain_last_success_timestamp_seconds"] == [
        (model, datetime(2026, 11, 25, 2, 0, tzinfo=UTC).timestamp())
    ]
    assert families["driftloop_drift_share"] == [(model, 0.375)]
    assert families["driftloop_drift_share_threshold"] == [(model, 0.3)]
    assert families["driftloop_drift_detected"] == [(model, 1.0)]
    assert sorted(families["driftloop_drift_decision"], key=lambda s: s[0]["decision"]) == [
        ({**model, "decision": "retrain"}, 1.0),
        ({**model, "decision": "skip"}, 0.0),
    ]


def test_loop_state_leaves_out_what_never_happened_and_says_when_the_store_failed() -> None:
    """A fresh champion with no retrain run or drift check yet: no series claims a value for them;
    no state at all (the store never answered): only the status series, at 0."""
    fresh = LoopStatus(
        model="churn",
        champion_version=1,
        champion_model_version="v1",
        champion_promoted_at=datetime(2026, 11, 20, tzinfo=UTC),
        last_success_at=None,
        drift_checked_at=None,
        drift_share=None,
        drifted=None,
        decision=None,
    )

    families = _families(render(fresh, 0.3, ok=True))
    assert set(families) == {
        "driftloop_loop_status_ok",
        "driftloop_champion_version",
        "driftloop_champion_info",
        "driftloop_champion_promoted_timestamp_seconds",
        "driftloop_drift_share_threshold",
    }
    assert _families(render(None, 0.3, ok=False)) == {"driftloop_loop_status_ok": [({}, 0.0)]}
