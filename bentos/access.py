"""API keys and rate limits in front of every route (``DRIFTLOOP_AUTH=on``), as an ASGI layer.

It runs before :mod:`bentos.hotpath`, so a request without a valid key is refused before its body is
read. The decision itself is :func:`training.keys.authorize` (no HTTP in it); this layer reads the
key from ``Authorization: Bearer <key>`` or ``X-API-Key``, answers 401, 429 or 403 in the service's
one error shape (:class:`bentos.hotpath.Refusal`), and adds ``X-RateLimit-*`` headers to every
answer of a limited route.

Which routes need what: ``/predict*`` the ``predict`` scope, ``/feedback*`` ``feedback``, and
``/metrics`` ``admin`` (it tells traffic volumes, error rates and model names to whoever reads it).
``/readyz`` and ``/livez`` stay open (orchestrators probe them without credentials), and so do
``/docs.json`` and the Swagger UI: the document holds no data, and a client needs it to learn how to
authenticate. An ``admin`` key may use every route. With auth on, the document served there says
so (:func:`secure_document`: the security schemes, the 401, 403, 429 and 503 answers, and the
rate-limit headers on every answer).

A request that passes carries its key's id in :func:`current_key_id` (a context variable), which the
feedback routes record with each label.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from pydantic_core import from_json, to_json

from bentos.contract import AUTH_ERRORS, HEADERS, RATE_HEADERS
from bentos.hotpath import ASGIApp, Message, Receive, Refusal, Scope, Send, _log_refusal

if TYPE_CHECKING:
    from training.keys import Allowance, ApiKey, Decision, KeyRing, RateLimiter
    from training.keys import Scope as KeyScope
    from training.settings import Settings

__all__ = [
    "Access",
    "Admission",
    "Gate",
    "client_address",
    "current_key_id",
    "route_scope",
    "secure_document",
]

log = logging.getLogger("driftloop.serve")

DOCS_PATH = "/docs.json"
# The document's names of the two ways to send a key.
SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}

_key_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("driftloop_key", default=None)


def current_key_id() -> str | None:
    """The id of the API key this request was let in with; None when auth is off."""
    return _key_id.get()


def route_scope(path: str) -> KeyScope | None:
    """The scope a path needs; None: open to anyone."""
    if path.startswith("/predict"):
        return "predict"
    if path.startswith("/feedback"):
        return "feedback"
    if path.startswith("/metrics"):
        return "admin"
    return None


def secure_document(document: dict[str, Any]) -> dict[str, Any]:
    """The service's OpenAPI document (``/docs.json``) as served with auth on: the two security
    schemes, required by every route that needs a key, whose answers gain :data:`AUTH_ERRORS` and
    all carry the rate-limit headers (:class:`Access` adds the key's to whatever the route answers;
    a 401 or 503 of the gate carries its address's)."""
    document.setdefault("components", {})["securitySchemes"] = SECURITY
    rate_headers = {name: HEADERS[name] for name in RATE_HEADERS}
    for path, operations in document.get("paths", {}).items():
        if route_scope(path) is None:
            continue
        for operation in operations.values():
            operation["security"] = [{name: []} for name in SECURITY]
            responses = operation.setdefault("responses", {})
            for error in AUTH_ERRORS:
                answer = error.response(too_large="")
                route_s = responses.get(str(error.status))
                if route_s is not None:
                    # The API routes' own 503: one status, either reason.
                    answer["description"] = f"{route_s['description']} Or: {answer['description']}"
                    answer["headers"] = {**route_s.get("headers", {}), **answer["headers"]}
                responses[str(error.status)] = answer
            for answer in responses.values():
                answer["headers"] = {**answer.get("headers", {}), **rate_headers}
            operation["responses"] = dict(sorted(responses.items()))
    return document


def client_address(scope: Scope) -> str:
    """The client's address as uvicorn saw it (behind a proxy, what its forwarded-headers
    settings make of ``X-Forwarded-For``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def credential(scope: Scope) -> str | None:
    """The key sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return str(token.strip())
        elif name == b"x-api-key" and value.strip():
            return str(value.decode("latin-1").strip())
    return None


@dataclass(frozen=True)
class Admission:
    """A request let in: the key's id and the ``X-RateLimit-*`` headers to answer with."""

    key_id: str
    headers: dict[str, str]


class Gate:
    """Who may use what, whatever the transport: API keys, their scopes and rate limits.

    HTTP (:class:`Access`) and any other way into the service ask :meth:`admit` with the credential
    sent, the scope the call needs and the client's address, and answer its :class:`Refusal` in
    their own terms. The key ring, the buckets and the counted uses are the worker's, made on the
    first call.

    Requests without a valid key are limited per client address (``auth_fail_rate``,
    ``auth_fail_burst``): each one spends a token, and with none left the next is refused with 429
    before its key is looked up, so guessing keys costs neither the store nor the cache. A valid
    key never spends its address's tokens.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        from training.settings import get_settings

        self.settings = settings or get_settings()
        self.on = self.settings.auth == "on"
        self._ring: KeyRing | None = None
        self._limiter: RateLimiter | None = None
        self._strikes: RateLimiter | None = None
        self._lock = threading.Lock()

    async def admit(self, sent: str | None, needed: KeyScope, client: str) -> Admission:
        """Let a call needing ``needed`` in with key ``sent`` (None: none sent) from ``client``.

        Raises:
            Refusal: 401 (no valid key), 403 (wrong scope, once counted against the key's rate),
                429 (the key's rate, or its address's failed attempts), 503 (store unavailable).
        """
        decision = await self._authenticate(sent, needed, client)
        assert decision.key is not None
        return Admission(decision.key.id, self._limit(decision))

    def close(self) -> None:
        """Write the uses still counted (the worker is stopping)."""
        if self._ring is not None:
            self._ring.close()

    async def _authenticate(self, sent: str | None, needed: KeyScope, client: str) -> Decision:
        """A Decision with its key (200 or 403; a 403 is answered once the key's rate is counted),
        else Refusal 401, 429 or 503."""
        from training.keys import KeysUnavailable, authorize, parse_token

        ring = await self._keys()
        strikes = self._strikes
        assert strikes is not None
        parsed = parse_token(sent) if sent else None
        hit, key = ring.cached(parsed[0]) if parsed is not None else (False, None)
        if key is None:
            # Not (yet) a known key: allowed only while the address has failures to spare.
            self._refuse_if_over(strikes.take(client, spend=False), "from this address")
        if parsed is not None and not hit:
            try:
                # A miss queries the store: in a thread, never on the event loop.
                key = await anyio.to_thread.run_sync(ring.find, parsed[0])
            except KeysUnavailable as exc:
                log.warning("API keys unavailable: %s", exc)
                raise Refusal(
                    503,
                    {"error": "API keys cannot be checked now (the store is unavailable)"},
                    {"Retry-After": "5", **_rate_headers(strikes.take(client, spend=False))},
                ) from None
        decision = authorize(sent, needed, lambda key_id: key)
        if decision.status == 401:
            # What the failure cost: the client's only view of the allowance that ends in 429.
            spent = _rate_headers(strikes.take(client))
            raise Refusal(401, {"error": decision.error}, {"WWW-Authenticate": "Bearer", **spent})
        assert decision.key is not None
        ring.used(decision.key.id)
        return decision

    @staticmethod
    def _refuse_if_over(allowance: Allowance, whose: str) -> dict[str, str]:
        headers = _rate_headers(allowance)
        if not allowance.allowed:
            what = (
                "rate limit of this API key exceeded"
                if whose == "key"
                else "too many requests without a valid API key from this address"
            )
            raise Refusal(
                429,
                {"error": f"{what}; retry after {allowance.retry_after_s} s"},
                {**headers, "Retry-After": str(allowance.retry_after_s)},
            )
        return headers

    def _limit(self, decision: Decision) -> dict[str, str]:
        """Spend one request of the key's bucket; the headers to send (Refusal 429, then 403: a
        key is limited on every route it tries)."""
        assert self._limiter is not None
        assert decision.key is not None
        key: ApiKey = decision.key
        headers = self._refuse_if_over(self._limiter.take(key.id, key.rate_per_s), "key")
        if not decision.allowed:
            raise Refusal(403, {"error": decision.error}, headers)
        return headers

    async def _keys(self) -> KeyRing:
        if self._ring is None:
            return await anyio.to_thread.run_sync(self._start)
        return self._ring

    def _start(self) -> KeyRing:
        """The worker's key ring and rate limiters, made on the first request."""
        from training.keys import KeyRing, RateLimiter, StoreKeys
        from training.postgres import database_url

        with self._lock:
            if self._ring is not None:
                return self._ring
            settings = self.settings
            store = StoreKeys(
                database_url(settings),
                connect_timeout_s=settings.db_connect_timeout_s,
                statement_timeout_ms=settings.db_statement_timeout_ms,
            )
            ring = KeyRing(
                store.load,
                store.write_uses,
                ttl_s=settings.auth_cache_s,
                stale_s=settings.auth_stale_s,
            )
            ring.start()
            self._limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
            self._strikes = RateLimiter(settings.auth_fail_rate, settings.auth_fail_burst)
            self._ring = ring
            return ring


def _rate_headers(allowance: Allowance) -> dict[str, str]:
    """The ``X-RateLimit-*`` headers of a key's bucket, or of an address's failed attempts."""
    return {
        "X-RateLimit-Limit": str(allowance.limit),
        "X-RateLimit-Remaining": str(allowance.remaining),
        "X-RateLimit-Reset": str(allowance.reset_s),
    }


class Access:
    """The ASGI layer: passes everything through when auth is off."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self.gate = Gate(settings)
        self.on = self.gate.on
        self._secured: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.on:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self.app(scope, self._on_shutdown(receive), send)
            return
        if scope["type"] == "http" and scope["path"] == DOCS_PATH and scope["method"] == "GET":
            await self._document(scope, receive, send)
            return
        needed = route_scope(scope.get("path", "")) if scope["type"] == "http" else None
        if needed is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            admission = await self.gate.admit(credential(scope), needed, client_address(scope))
        except Refusal as refusal:
            # Starlette types send's message as a MutableMapping; the hot path's as a dict.
            await refusal.response()(scope, receive, send)  # type: ignore[arg-type]
            _log_refusal(scope, refusal.status, started, refusal.body)
            return
        token = _key_id.set(admission.key_id)
        try:
            await self.app(scope, receive, _with_headers(send, admission.headers))
        finally:
            _key_id.reset(token)

    async def _document(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The hot path's document with :func:`secure_document` applied (made once per worker)."""
        if self._secured is None:
            start: Message = {}
            chunks: list[bytes] = []

            async def keep(message: Message) -> None:
                nonlocal start
                if message["type"] == "http.response.start":
                    start = message
                else:
                    chunks.append(message.get("body", b""))

            await self.app(scope, receive, keep)
            if start.get("status") != 200:
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks)})
                return
            self._secured = to_json(secure_document(from_json(b"".join(chunks))))
        body = self._secured
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _on_shutdown(self, receive: Receive) -> Receive:
        """Write the uses still counted when the worker stops."""

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await anyio.to_thread.run_sync(self.gate.close)
            return message

        return wrapped


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    extra = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped
