"""Every API route's HTTP gate, and the prediction routes' answers, in front of BentoML's ASGI stack.

A profile of ``bentoml serve`` on a 2-core machine showed where a prediction's time went: an endpoint
that returns a constant answers ~1,000 req/s through BentoML's app (OpenTelemetry spans, metrics and
access-log middlewares, a timeout and a concurrency middleware, the request context, a JSON schema
rebuilt for every response, a thread hop for sync APIs), ~1,900 as an ASGI middleware inside it,
and ~10,000 in front of it. ``POST /predict`` and ``POST /predict_batch`` are therefore answered
here, in the same BentoML worker, with the same input models as the service's ``@bentoml.api``
declarations (``svc.apis[...].input_spec``), and the same answers.

The other API routes (``/feedback``, ``/feedback_batch``) are checked here the same way (JSON only,
a body limit, validation with their input models) and only valid requests go on to BentoML's app,
so every API route answers bad input alike (:mod:`bentos.contract`), BentoML never logs a traceback
for a client's mistake, and nothing a client sends reaches a log line unescaped (every route
refuses a ``Content-Type`` that is not printable ASCII, which BentoML's access log would choke on
or write as it is). ``GET /docs.json`` is answered with BentoML's document patched to say so;
everything else (the Swagger UI page, ``/readyz``, ``/metrics``) goes to BentoML's app unchanged.

The price: BentoML's access log, request metrics and traces do not see the prediction routes, nor
any refusal made here. Refusals are logged here instead (one line each, no traceback, the client's
text escaped), and driftloop's own metrics count predictions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import from_json, to_json
from starlette.responses import JSONResponse

from bentos.contract import body_limit, items_per_request, openapi_document
from bentos.prediction_log import SpoolFull
from bentos.predictor import Overloaded

if TYPE_CHECKING:
    import bentoml

    from bentos.predictor import Predictor

__all__ = ["HotPath", "Refusal", "bind", "quiet_malformed_http", "refusal"]

log = logging.getLogger("driftloop.serve")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Which BentoML API declares the adaptive batching of single-record requests.
BATCHING_API = "predict_batch"
DOCS_PATH = "/docs.json"

_predictor: Predictor | None = None
_max_records = 1000


def bind(predictor: Predictor | None, max_records: int) -> None:
    """Point the hot path at this worker's predictor (the service calls it at start and stop)."""
    global _predictor, _max_records
    _predictor = predictor
    _max_records = max_records


class _ClientErrorAtInfo(logging.Filter):
    """uvicorn logs a request it cannot parse at WARNING (and answers it 400): the client's
    mistake, logged at INFO like every other refusal, so that WARNING stays the server's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith(
            "Invalid HTTP request received"
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_malformed_http(logger: logging.Logger) -> None:
    """Log uvicorn's "Invalid HTTP request received." on ``logger`` at INFO (once per logger)."""
    if not any(isinstance(f, _ClientErrorAtInfo) for f in logger.filters):
        logger.addFilter(_ClientErrorAtInfo())


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


def _unreadable_content_type(scope: Scope) -> Refusal | None:
    """The 415 for a ``Content-Type`` that is not printable ASCII (tabs allowed), else None.

    Media types are ASCII. BentoML's access log decodes the header as UTF-8 and writes it as it
    is: another byte failed there after the answer's headers were sent (an ERROR traceback, and a
    client left without a body), and a decodable one would reach the log unescaped.
    """
    for name, value in scope["headers"]:
        if name == b"content-type" and not (
            value.isascii() and value.decode("ascii").replace("\t", " ").isprintable()
        ):
            return Refusal(
                415,
                {
                    "error": "the Content-Type header holds a character that is not printable "
                    "ASCII; send application/json"
                },
            )
    return None


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
            raise Refusal(413, {"error": f"request body over {limit} bytes; split the request"})
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands BentoML's app the body already read, then the client's messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _validation_error(exc: ValidationError) -> Refusal:
    # BentoML's shape for a 400 (``api_endpoint_wrapper``), with a message that names the first
    # problem rather than the input model's class.
    detail = exc.errors(include_context=False, include_input=False)
    where = ".".join(str(part) for part in detail[0]["loc"])[:100] or "the body"
    more = f" (and {len(detail) - 1} more, see detail)" if len(detail) > 1 else ""
    return Refusal(
        400, {"error": f"invalid request: {where}: {detail[0]['msg']}{more}", "detail": detail}
    )


def _validate(model: Any, body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise _validation_error(exc) from None


Answer = Callable[["Predictor", bytes], Awaitable[Any]]


@dataclass(frozen=True)
class _Route:
    """An API route: its API's name and input model, and its answer when it is answered here
    (None: validated here, answered by BentoML's app)."""

    api: str
    model: Any
    answer: Answer | None


class HotPath:
    """ASGI app gating every API route, answering the prediction routes and the OpenAPI document,
    and passing every other request to BentoML's app."""

    def __init__(self, app: ASGIApp, service: bentoml.Service[Any]) -> None:
        self.app = app
        self.service = service
        self.single = service.apis["predict"].input_spec
        self.batch = service.apis[BATCHING_API].input_spec
        answers: dict[str, Answer] = {"predict": self._predict, BATCHING_API: self._predict_batch}
        self.routes = {
            api.route: _Route(name, api.input_spec, answers.get(name))
            for name, api in service.apis.items()
        }
        self._document: tuple[int, bytes] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self._other(scope, receive, send)
            return
        started = time.perf_counter()
        status = 200
        headers: dict[str, str] = {}
        try:
            if scope["method"] != "POST":
                raise Refusal(405, {"error": f"{scope['path']} takes POST only"}, {"Allow": "POST"})
            unreadable = _unreadable_content_type(scope)
            if unreadable is not None:
                raise unreadable
            media_type = _media_type(scope)
            if media_type != "application/json":
                raise Refusal(
                    415, {"error": f"send the body as application/json, not {media_type[:100]}"}
                )
            body = await _read_body(receive, body_limit(route.api, _max_records))
            if route.answer is None:
                _validate(route.model, body)
                await self.app(scope, _replay(body, receive), send)
                return
            predictor = _predictor
            if predictor is None:
                raise Refusal(
                    503,
                    {"error": "the service is starting or stopping; retry later"},
                    {"Retry-After": "1"},
                )
            payload = await route.answer(predictor, body)
        except Refusal as refusal:
            status, payload, headers = refusal.status, refusal.body, refusal.headers
        except ConnectionResetError:
            return
        except Exception:
            log.exception("POST %s failed", scope["path"])
            status = 500
            payload = {"error": "An unexpected error has occurred, please check the server log."}
        await _send_json(send, status, payload, headers)
        if status != 200:
            _log_refusal(scope, status, started, payload)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Any request but an API route's: the document, or BentoML's app."""
        if scope["type"] == "http":
            path: str = scope["path"]
            unreadable = _unreadable_content_type(scope)
            if unreadable is not None:
                await _send_json(send, unreadable.status, unreadable.body)
                _log_refusal(scope, unreadable.status, time.perf_counter(), unreadable.body)
                return
            if path == DOCS_PATH and scope["method"] == "GET":
                await _send_json(send, 200, self._openapi())
                return
            # BentoML's access log writes the (percent-decoded) path as it is: a newline in it
            # would start a forged log line. No route has a control character.
            if not path.isprintable():
                payload = {"error": "no such route"}
                await _send_json(send, 404, payload)
                _log_refusal(scope, 404, time.perf_counter(), payload)
                return
        await self.app(scope, receive, send)

    def _openapi(self) -> bytes:
        # Built once per worker (on first request, once the settings are bound), then served as is.
        if self._document is None or self._document[0] != _max_records:
            document = to_json(openapi_document(self.service, _max_records))
            self._document = (_max_records, document)
        return self._document[1]

    async def _predict(self, predictor: Predictor, body: bytes) -> dict[str, Any]:
        parsed = _validate(self.single, body)
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
            most = items_per_request(BATCHING_API, _max_records)
            if len(raw["records"]) > most:
                raise Refusal(
                    413,
                    {
                        "error": f"at most {most} records per request, got "
                        f"{len(raw['records'])}; split the batch"
                    },
                )
        parsed = _validate(self.batch, body)
        records = [record.__dict__ for record in parsed.records]
        try:
            return predictor.predict_now(records, "predict_batch")
        except (SpoolFull, ValueError) as exc:
            raise refusal(exc) from None


async def _send_json(
    send: Send, status: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    # pydantic-core's serializer: the same JSON as json.dumps, several times faster on big batches.
    body = payload if isinstance(payload, bytes) else to_json(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _log_refusal(scope: Scope, status: int, started: float, payload: dict[str, Any]) -> None:
    """One line per refusal. What the client wrote (the path, field names) is JSON-escaped, so a
    newline or a fake log prefix in it stays inside this line."""
    detail = payload.get("detail")
    fields = f" fields={json.dumps([e['loc'] for e in detail])[:300]}" if detail else ""
    path: str = scope["path"]
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "%s %s (status=%d) %.1fms %s%s",
        scope["method"],  # an HTTP token: the server's parser lets no space or control through
        path if path.isprintable() else json.dumps(path)[:200],
        status,
        (time.perf_counter() - started) * 1000,
        json.dumps(payload.get("error", ""))[:200],
        fields,
    )


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
    message = f"the model cannot score this request: {exc}"
    return Refusal(
        400, {"error": message, "detail": [{"loc": [], "msg": message, "type": "value_error"}]}
    )
