"""driftloop's own Prometheus series, served on ``/metrics`` beside BentoML's.

Every series is made on first use, inside the worker: BentoML points ``prometheus_client`` at its
multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``) after the service module is imported, and
``prometheus_client`` picks its storage when it is first imported. A series made, or
``prometheus_client`` imported, before that is never exported. So nothing here imports it at
module level.

Any way into the service counts through these functions: :class:`RequestMetrics` does it for HTTP
in front of every other ASGI layer, another transport (gRPC) calls :func:`observe_request` and
:func:`refused` itself. Predictions are counted by :class:`bentos.predictor.Predictor` and labels by
:class:`bentos.feedback.FeedbackDesk`, which every transport shares.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    from bentos.hotpath import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "RefusalReason",
    "RequestMetrics",
    "Series",
    "observe_many",
    "observe_request",
    "refused",
    "series",
]

RefusalReason = Literal["unauthenticated", "forbidden", "rate_limited"]
# The HTTP statuses only the auth layer (bentos.access) answers, and what each means.
HTTP_REFUSALS: dict[int, RefusalReason] = {
    401: "unauthenticated",
    403: "forbidden",
    429: "rate_limited",
}
CLIENT_GONE = 499
# Scores are probabilities: twenty equal buckets show a shift of the distribution at a glance.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
# Up to the batch endpoint's default 1,000 records.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# From a fast in-process answer to BentoML's 30 s request timeout.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True)
class Series:
    """The worker's series (one set per process; the multiprocess folder sums the workers')."""

    predictions: Counter
    scores: Histogram
    batch_size: Histogram
    batches: Counter
    batched_records: Counter
    served_model: Gauge
    feedback: Counter
    requests: Counter
    latency: Histogram
    refusals: Counter
    spool_records: Gauge
    spool_bytes: Gauge
    lag: Gauge
    store_ok: Gauge


@functools.cache
def series() -> Series:
    """The series, made on first use (in the worker, once BentoML has set up multiprocess mode)."""
    from prometheus_client import Counter, Gauge, Histogram

    return Series(
        predictions=Counter(
            "driftloop_predictions",
            "Predictions served (and recorded), by model version, endpoint and predicted label",
            ["model_version", "endpoint", "label"],
        ),
        scores=Histogram(
            "driftloop_prediction_score",
            "Scores of the predictions served, by model version",
            ["model_version"],
            buckets=SCORE_BUCKETS,
        ),
        batch_size=Histogram(
            "driftloop_batch_size",
            "Records scored as one matrix: an adaptive batch of single-record requests (predict) "
            "or one batch request (predict_batch)",
            ["endpoint"],
            buckets=BATCH_BUCKETS,
        ),
        batches=Counter(
            "driftloop_batches", "Batches of single-record predictions scored together"
        ),
        batched_records=Counter(
            "driftloop_batched_records", "Single-record predictions scored in those batches"
        ),
        served_model=Gauge(
            "driftloop_served_model_info",
            "1 for the model version this service answers with",
            ["model", "model_version"],
            multiprocess_mode="livemax",
        ),
        feedback=Counter(
            "driftloop_feedback",
            "Labels received, by what they did: created, updated, unchanged or not_found",
            ["status"],
        ),
        requests=Counter(
            "driftloop_requests",
            "Requests to the API routes, by transport, route and status (HTTP code or gRPC code)",
            ["transport", "route", "status"],
        ),
        latency=Histogram(
            "driftloop_request_duration_seconds",
            "Time to answer a request to an API route, refusals included",
            ["transport", "route"],
            buckets=LATENCY_BUCKETS,
        ),
        refusals=Counter(
            "driftloop_refused",
            "Requests refused by the auth layer (unauthenticated, forbidden) or the rate limiter "
            "(rate_limited)",
            ["transport", "reason"],
        ),
        spool_records=Gauge(
            "driftloop_spool_records",
            "Predictions in the workers' spools, not yet in PostgreSQL",
            multiprocess_mode="livesum",
        ),
        spool_bytes=Gauge(
            "driftloop_spool_bytes", "Bytes in the workers' spools", multiprocess_mode="livesum"
        ),
        lag=Gauge(
            "driftloop_log_lag_seconds",
            "Age of the oldest prediction not yet in PostgreSQL",
            multiprocess_mode="livemax",
        ),
        store_ok=Gauge(
            "driftloop_log_store_ok",
            "1 when every worker's last write to PostgreSQL succeeded",
            multiprocess_mode="livemin",
        ),
    )


def observe_many(histogram: Histogram, values: np.ndarray[Any, Any]) -> None:
    """``histogram.observe(v)`` for every value, at the cost of one increment per bucket.

    A batch of 1,000 scores observed one by one costs ~3 ms in multiprocess mode (a locked write
    to the mmapped file per observation), a quarter of the time scoring them takes. This adds
    each bucket's count at once, as ``Histogram.observe`` would have, through its ``_buckets`` and
    ``_sum`` (prometheus_client keeps per-bucket counts and sums them when it exports).
    """
    if values.size == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    # observe() puts a value in the first bucket whose bound is >= it.
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(values.sum()))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)


@functools.cache
def _request_series(transport: str, route: str, status: str) -> tuple[Counter, Histogram]:
    # A labels() lookup takes a lock and costs about as much as the increment itself: the few
    # (route, status) pairs there are keep their children here.
    current = series()
    return (
        current.requests.labels(transport, route, status),
        current.latency.labels(transport, route),
    )


def observe_request(transport: str, route: str, status: str | int, seconds: float) -> None:
    """Count one request to an API route and its time (for HTTP, :class:`RequestMetrics` calls
    it; another transport calls it with its own route names and status codes, gRPC's as names
    like ``OK`` or ``INVALID_ARGUMENT``)."""
    requests, latency = _request_series(transport, route, str(status))
    requests.inc()
    latency.observe(seconds)


def refused(reason: RefusalReason, transport: str = "http") -> None:
    """Count one request refused by the auth layer or the rate limiter.

    Args:
        reason: ``unauthenticated`` (no valid key: HTTP 401, gRPC ``UNAUTHENTICATED``),
            ``forbidden`` (the key lacks the scope: 403, ``PERMISSION_DENIED``) or
            ``rate_limited`` (the key's rate is spent: 429, ``RESOURCE_EXHAUSTED``).
        transport: ``http`` or ``grpc``.
    """
    series().refusals.labels(transport, reason).inc()


class RequestMetrics:
    """The outermost ASGI layer: counts every API route's requests by status and their time, and,
    with auth on, the auth layer's refusals (of any keyed route, ``/metrics`` included), without
    changing any answer.

    Refusals are read off the status because only the auth layer answers 401, 403 and 429 (with
    auth off nothing is counted: BentoML's own concurrency limit, when configured, also answers
    429).
    """

    def __init__(self, app: ASGIApp, routes: Iterable[str], *, auth_on: bool) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.refusals: dict[int, RefusalReason] = HTTP_REFUSALS if auth_on else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        started = time.perf_counter()
        # What a request that got no answer counts as: 499 (nginx's "client closed request", not
        # a server error) when the client left before its body arrived, 500 when the app raised
        # (the server then answers 500).
        status = CLIENT_GONE

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException:
            if status == CLIENT_GONE:
                status = 500
            raise
        finally:
            if path in self.routes:
                observe_request("http", path, status, time.perf_counter() - started)
            reason = self.refusals.get(status)
            if reason is not None:
                refused(reason, "http")
