"""The prediction routes, served in front of BentoML's ASGI stack.

A profile of ``bentoml serve`` on a 2-core machine showed where a prediction's time went: an endpoint
that returns a constant answers ~1,000 req/s through BentoML's app (OpenTelemetry spans, metrics and
access-log middlewares, a timeout and a concurrency middleware, the request context, a JSON schema
rebuilt for every response, a thread hop for sync APIs), ~1,900 as an ASGI middleware inside it,
and ~10,000 in front of it. ``POST /predict`` and ``POST /predict_batch`` are therefore answered
here, in the same BentoML worker, with the same input models as the service's ``@bentoml.api``
declarations (``svc.apis[...].input_spec``), the same error shape, and the same answers; everything
else (the OpenAPI page, ``/feedback``, ``/readyz``, ``/metrics``) goes to BentoML's app unchanged.

The price: BentoML's access log, request metrics and traces do not see these two routes. Refusals
are logged here instead (one line each, no traceback), and driftloop's own metrics count them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import from_json, to_json
from starlette.responses import JSONResponse

from bentos.prediction_log import SpoolFull
from bentos.predictor import Overloaded

if TYPE_CHECKING:
    import bentoml

    from bentos.predictor import Predictor

__all__ = ["HotPath", "Refusal", "bind", "refusal"]

log = logging.getLogger("driftloop.serve")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A record is a few hundred bytes; these leave room for long category names and whitespace.
MAX_RECORD_BYTES = 16 * 1024
# Which BentoML API declares the adaptive batching of single-record requests.
BATCHING_API = "predict_batch"

_predictor: Predictor | None = None
_max_records = 1000


def bind(predictor: Predictor | None, max_records: int) -> None:
    """Point the hot path at this worker's predictor (the service calls it at start and stop)."""
    global _predictor, _max_records
    _predictor = predictor
    _max_records = max_records


class Refusal(Exception):
    """An answer other than 200: its status, JSON body and headers."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The same answer as a Starlette response, for BentoML's API methods to return."""
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def _media_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return str(value.decode("latin-1").split(";")[0].strip().lower())
    # BentoML reads a body without a content type as JSON; so do we.
    return "application/json"


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refusal(413, {"error": f"request body over {limit} bytes"})
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _validation_error(exc: ValidationError) -> Refusal:
    # BentoML's own shape for a 400 (``api_endpoint_wrapper``), so both paths answer alike.
    return Refusal(
        400,
        {
            "error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False),
        },
    )


class HotPath:
    """ASGI app answering the prediction routes and passing every other request to BentoML's app."""

    def __init__(self, app: ASGIApp, service: bentoml.Service[Any]) -> None:
        self.app = app
        self.single = service.apis["predict"].input_spec
        self.batch = service.apis[BATCHING_API].input_spec
        self.routes: dict[str, Callable[[Predictor, bytes], Awaitable[Any]]] = {
            "/predict": self._predict,
            "/predict_batch": self._predict_batch,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        predictor = _predictor
        if handler is None or predictor is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 200
        try:
            if _media_type(scope) != "application/json":
                raise Refusal(
                    415,
                    {"error": f"send the body as application/json, not {_media_type(scope)}"},
                )
            limit = MAX_RECORD_BYTES * (_max_records if handler == self._predict_batch else 1)
            body = await _read_body(receive, limit)
            payload = await handler(predictor, body)
            headers: dict[str, str] = {}
        except Refusal as refusal:
            status, payload, headers = refusal.status, refusal.body, refusal.headers
        except ConnectionResetError:
            return
        except Exception:
            log.exception("POST %s failed", scope["path"])
            status = 500
            payload = {"error": "An unexpected error has occurred, please check the server log."}
            headers = {}
        # pydantic-core's serializer: the same JSON as json.dumps, several times faster on big batches.
        body_out = to_json(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body_out)).encode()),
                    *((k.encode(), v.encode()) for k, v in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body_out})
        if status != 200:
            # One line per refusal, never the request's content (a forged newline stays escaped).
            log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "POST %s (status=%d) %.1fms %s",
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                json.dumps(payload.get("error", ""))[:200],
            )

    async def _predict(self, predictor: Predictor, body: bytes) -> dict[str, Any]:
        try:
            parsed = self.single.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise _validation_error(exc) from None
        # A validated model keeps exactly its fields' values in __dict__: no copy needed.
        features: dict[str, Any] = parsed.__dict__
        try:
            return await predictor.predict_one(features)
        except (Overloaded, SpoolFull, ValueError) as exc:
            raise refusal(exc) from None

    async def _predict_batch(self, predictor: Predictor, body: bytes) -> list[dict[str, Any]]:
        # Count before validating: a body over the limit is refused as such, whatever it holds.
        try:
            raw = from_json(body or b"{}")
        except ValueError:
            raw = None  # malformed JSON: validation below names the problem
        if isinstance(raw, dict) and isinstance(raw.get("records"), list):
            if len(raw["records"]) > _max_records:
                raise Refusal(
                    413,
                    {
                        "error": f"at most {_max_records} records per request, got "
                        f"{len(raw['records'])}; split the batch"
                    },
                )
            if not raw["records"]:
                raise Refusal(400, {"error": "records is empty; send at least one record"})
        try:
            parsed = self.batch.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise _validation_error(exc) from None
        records = [record.__dict__ for record in parsed.records]
        try:
            return predictor.predict_now(records, "predict_batch")
        except (SpoolFull, ValueError) as exc:
            raise refusal(exc) from None


def refusal(exc: Overloaded | SpoolFull | ValueError) -> Refusal:
    """The answer to a prediction that could not be served; nothing of it was recorded. Both the
    hot path and the service's own API methods answer with it, so the contract is one."""
    if isinstance(exc, Overloaded):
        return Refusal(
            503, {"error": "the service is overloaded; retry later"}, {"Retry-After": "1"}
        )
    if isinstance(exc, SpoolFull):
        return Refusal(
            503,
            {
                "error": "predictions cannot be recorded now (the store is unreachable and this "
                "worker's spool is full); nothing was recorded, retry later"
            },
            {"Retry-After": "30"},
        )
    # Not scorable by this model, though the schema lets no such record through (nullable fields
    # are imputed; this is a direct call lacking a required feature, say): the message names it.
    return Refusal(400, {"error": f"the model cannot score this request: {exc}"})
