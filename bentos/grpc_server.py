"""driftloop's gRPC API (``proto/driftloop/v1/model_service.proto``), served by every worker of
``bentoml serve`` on a port of its own beside HTTP.

BentoML 1.4 services have no gRPC, so each worker runs a ``grpc.aio`` server on the event loop its
HTTP app runs on (the loop BentoML's adaptive batching runs on), started by the service's startup
hook and stopped before the predictor flushes its spool. Every worker binds ``DRIFTLOOP_GRPC_PORT``
with ``SO_REUSEPORT``, so the kernel spreads calls over the workers as it does HTTP connections.

The RPCs share the HTTP path's parts rather than copy them: the same input models
(:mod:`bentos.schemas`) and error message (the first field at fault, named by its path in the
request, e.g. ``features.age`` or ``records.3.age``), the worker's
:class:`~bentos.predictor.Predictor` (scoring, adaptive batching, the prediction log) and
:class:`~bentos.feedback.FeedbackDesk`, the worker's :class:`~bentos.access.Gate` (API keys in the
``authorization`` metadata, scopes, rate limits: the very Gate HTTP's auth layer asks, so a key
has one bucket per worker whatever the transport), and :mod:`bentos.metrics`. HTTP statuses become
gRPC codes (:data:`CODES`); the rate-limit headers become trailing metadata.

The standard ``grpc.health.v1.Health`` service answers SERVING while the worker can record
predictions (as ``/readyz``), and server reflection lists the services; both are open, as
``/readyz`` and ``/docs.json`` are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc  # type: ignore[import-untyped]
from google.protobuf import json_format, struct_pb2  # type: ignore[import-untyped]
from pydantic import BaseModel, create_model

from bentos.contract import MAX_ITEM_BYTES, items_per_request
from bentos.feedback import STORE_DOWN, StoreDown
from bentos.grpc_port import http_host
from bentos.hotpath import Refusal, _validation_error, refusal
from bentos.metrics import RefusalReason, observe_request, refused
from bentos.prediction_log import SpoolFull
from bentos.predictor import Overloaded
from bentos.schemas import FeedbackBatchRequest, PredictBatchRequest, Request
from driftloop_grpc.v1 import model_service_pb2 as pb
from driftloop_grpc.v1 import model_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from bentos.access import Gate
    from bentos.feedback import FeedbackDesk
    from bentos.predictor import Predictor
    from training.keys import Scope as KeyScope
    from training.settings import Settings

__all__ = ["CODES", "SERVICE", "GrpcServer", "share_gate"]

log = logging.getLogger("driftloop.serve")
T = TypeVar("T")

SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"].full_name
# The HTTP path's answers (bentos.hotpath.Refusal's status) as gRPC codes.
CODES: dict[int, Any] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    # gRPC's own code for a message over its size limit.
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The auth layer's refusals, as bentos.metrics counts them.
REASONS: dict[int, RefusalReason] = {401: "unauthenticated", 403: "forbidden", 429: "rate_limited"}
STATUSES = {
    "created": pb.FEEDBACK_STATUS_CREATED,
    "updated": pb.FEEDBACK_STATUS_UPDATED,
    "unchanged": pb.FEEDBACK_STATUS_UNCHANGED,
    "not_found": pb.FEEDBACK_STATUS_NOT_FOUND,
}
INTERNAL = "An unexpected error has occurred, please check the server log."
# How often the health service re-reads whether the worker can record predictions.
HEALTH_POLL_S = 1.0

# A single prediction's input, as the message has it: the field at fault is "features.<name>".
PredictEnvelope = create_model("PredictRequest", features=(Request, ...))

_gate: Gate | None = None


def share_gate(gate: Gate) -> None:
    """Use HTTP's :class:`~bentos.access.Gate` (one per worker) for gRPC calls too."""
    global _gate
    _gate = gate


def peer_address(peer: str) -> str:
    """The client's address from gRPC's peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``,
    whose brackets some gRPC versions percent-encode)."""
    from urllib.parse import unquote

    kind, _, rest = unquote(peer).partition(":")
    if kind in {"ipv4", "ipv6"}:
        return rest.rpartition(":")[0].strip("[]")
    return peer


def credential(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The key sent as ``authorization: Bearer <key>`` or ``x-api-key: <key>`` metadata."""
    for name, value in metadata:
        if not isinstance(value, str):
            continue
        if name == "authorization":
            kind, _, token = value.partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == "x-api-key" and value.strip():
            return value.strip()
    return None


def plain(value: struct_pb2.Value) -> Any:
    """A ``google.protobuf.Value`` as the JSON value it stands for (what HTTP's body would hold)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind in {"struct_value", "list_value"}:
        # Never a feature's type: validation refuses it, naming the field.
        return json_format.MessageToDict(value)
    return getattr(value, kind)


def record_of(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {name: plain(value) for name, value in struct.fields.items()}


def label_of(item: pb.Label) -> dict[str, Any]:
    """One label as ``/feedback``'s body has it (no label set: the field is missing)."""
    kind = item.WhichOneof("label")
    body: dict[str, Any] = {"request_id": item.request_id}
    if kind is not None:
        body["label"] = getattr(item, kind)
    return body


def validate(model: type[BaseModel], value: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _trailing(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((name.lower(), value) for name, value in headers.items())


def _check_size(message: Any, items: int, what: str) -> None:
    """HTTP's body limit, per call: ``MAX_ITEM_BYTES`` for each record or label it carries.

    The server's own message limit has to fit the largest batch, 1,000 times a single record's
    limit; without this a Predict of 16 MB (a record with 100,000 unknown fields, say) would hold
    the worker's event loop while it is validated. Checked once the key is, so an anonymous caller
    learns nothing about the limits.

    Raises:
        Refusal: 413 (RESOURCE_EXHAUSTED), naming the size and the limit.
    """
    limit = MAX_ITEM_BYTES * max(1, items)
    size = int(message.ByteSize())
    if size > limit:
        raise Refusal(
            413,
            {
                "error": f"message of {size:,} bytes is over the {limit:,} bytes {max(1, items)} "
                f"{what} may take ({MAX_ITEM_BYTES:,} per record or label); split the request"
            },
        )


class ModelService(pb_grpc.ModelServiceServicer):
    """The RPCs of ``driftloop.v1.ModelService``, answered with the worker's own parts."""

    def __init__(
        self, predictor: Predictor, desk: FeedbackDesk, gate: Gate, max_records: int
    ) -> None:
        self.predictor = predictor
        self.desk = desk
        self.gate = gate
        self.max_records = max_records

    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.Prediction:
        async def work(_: str | None) -> pb.Prediction:
            _check_size(request, 1, "record")
            parsed = validate(PredictEnvelope, {"features": record_of(request.features)})
            try:
                answer = await self.predictor.predict_one(parsed.features.__dict__)
            except (Overloaded, SpoolFull, ValueError) as exc:
                raise refusal(exc) from None
            return pb.Prediction(**answer)

        return await self._serve(context, "Predict", "predict", work)

    async def PredictBatch(
        self, request: pb.PredictBatchRequest, context: Any
    ) -> pb.PredictBatchResponse:
        async def work(_: str | None) -> pb.PredictBatchResponse:
            most = items_per_request("predict_batch", self.max_records)
            if len(request.records) > most:
                raise Refusal(
                    400,
                    {
                        "error": f"records: at most {most} records per request, got "
                        f"{len(request.records)}; split the batch"
                    },
                )
            _check_size(request, len(request.records), "records")
            parsed = validate(
                PredictBatchRequest, {"records": [record_of(r) for r in request.records]}
            )
            try:
                answers = self.predictor.predict_now(
                    [record.__dict__ for record in parsed.records], "predict_batch"
                )
            except (SpoolFull, ValueError) as exc:
                raise refusal(exc) from None
            return pb.PredictBatchResponse(predictions=[pb.Prediction(**a) for a in answers])

        return await self._serve(context, "PredictBatch", "predict", work)

    async def Feedback(self, request: pb.FeedbackRequest, context: Any) -> pb.FeedbackResponse:
        async def work(key_id: str | None) -> pb.FeedbackResponse:
            _check_size(request, len(request.labels), "labels")
            parsed = validate(
                FeedbackBatchRequest, {"labels": [label_of(item) for item in request.labels]}
            )
            try:
                # The desk waits on PostgreSQL: in a thread, never on the event loop.
                receipts = await asyncio.to_thread(self.desk.record, parsed.labels, key_id)
            except StoreDown:
                raise Refusal(503, {"error": STORE_DOWN}, {"Retry-After": "5"}) from None
            return pb.FeedbackResponse(
                receipts=[
                    pb.FeedbackReceipt(
                        request_id=r.request_id, label=r.label, status=STATUSES[r.status]
                    )
                    for r in receipts
                ]
            )

        return await self._serve(context, "Feedback", "feedback", work)

    async def _serve(
        self,
        context: Any,
        method: str,
        scope: KeyScope,
        work: Callable[[str | None], Awaitable[T]],
    ) -> T:
        """Admit the call (with auth on), do ``work`` with the key's id, and answer a refusal
        with its gRPC code, message and headers (as trailing metadata), counted and logged."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        admitted = not self.gate.on
        try:
            key_id = None
            if self.gate.on:
                admission = await self.gate.admit(
                    credential(context.invocation_metadata() or ()),
                    scope,
                    peer_address(context.peer()),
                )
                admitted = True
                key_id = admission.key_id
                context.set_trailing_metadata(_trailing(admission.headers))
            return await work(key_id)
        except Refusal as refused_call:
            code = CODES.get(refused_call.status, grpc.StatusCode.INTERNAL)
            message = str(refused_call.body.get("error", ""))
            # Only the gate refuses before a call is admitted: 401, 403 and 429 are its own.
            reason = None if admitted else REASONS.get(refused_call.status)
            if reason is not None:
                refused(reason, "grpc")
            _log_refusal(method, code, started, message, refused_call.body.get("detail"))
            await context.abort(code, message, _trailing(refused_call.headers))
            raise  # abort raises; this line is never reached
        except Exception:
            log.exception("gRPC %s failed", method)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, INTERNAL)
            raise
        finally:
            observe_request(
                "grpc", f"/{SERVICE}/{method}", code.name, time.perf_counter() - started
            )


def _log_refusal(
    method: str, code: Any, started: float, message: str, detail: Sequence[Any] | None
) -> None:
    """One line per refusal, as the HTTP path logs its own; what the client wrote is escaped."""
    fields = f" fields={json.dumps([e['loc'] for e in detail])[:300]}" if detail else ""
    log.log(
        logging.WARNING if code in {grpc.StatusCode.UNAVAILABLE} else logging.INFO,
        "gRPC %s (code=%s) %.1fms %s%s",
        method,
        code.name,
        (time.perf_counter() - started) * 1000,
        json.dumps(message)[:200],
        fields,
    )


class GrpcServer:
    """One worker's gRPC server: the model service, health and reflection."""

    def __init__(
        self, server: Any, health: Any, predictor: Predictor, gate: Gate, address: str
    ) -> None:
        self.server = server
        self.health = health
        self.predictor = predictor
        self.gate = gate
        self.address = address
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, predictor: Predictor, desk: FeedbackDesk, settings: Settings
    ) -> GrpcServer | None:
        """Serve gRPC on ``settings.grpc_port`` from this worker (None when the port is 0)."""
        from grpc_health.v1 import (  # type: ignore[import-untyped]
            health,
            health_pb2,
            health_pb2_grpc,
        )
        from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

        from bentos.access import Gate

        if settings.grpc_port == 0:
            return None
        gate = _gate if _gate is not None else Gate(settings)
        # The largest message a call may carry: as HTTP's body limit for the largest batch.
        most = MAX_ITEM_BYTES * max(
            items_per_request("predict_batch", settings.batch_max_records),
            items_per_request("feedback_batch", settings.batch_max_records),
        )
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", most),
                ("grpc.max_send_message_length", most),
            ]
        )
        pb_grpc.add_ModelServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ModelService(predictor, desk, gate, settings.batch_max_records), server
        )
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        reflection.enable_server_reflection(
            (
                SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        host = settings.grpc_host or http_host() or "127.0.0.1"
        address = (
            f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
        )
        server.add_insecure_port(address)
        await server.start()
        running = cls(server, checker, predictor, gate, address)
        await running._publish_health()
        running._watch = asyncio.create_task(running._keep_health())
        log.info("gRPC %s on %s", SERVICE, address)
        return running

    async def _publish_health(self) -> None:
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.predictor.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def _keep_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            await self._publish_health()

    async def stop(self, grace_s: float) -> None:
        """Say NOT_SERVING, refuse new calls and let those under way finish within ``grace_s``."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        # HTTP's auth layer closed the gate before this hook ran: write the uses of the calls that
        # finished since (closing again only writes what is left).
        await asyncio.to_thread(self.gate.close)
