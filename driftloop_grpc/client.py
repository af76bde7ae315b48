"""A thin typed client of driftloop's gRPC API over the generated stubs (``driftloop_grpc.v1``).

    from driftloop_grpc import ModelClient

    with ModelClient("127.0.0.1:3001", api_key="dl_...") as client:
        prediction = client.predict({"tenure_months": 12.0, "contract": "month-to-month", ...})
        client.feedback(prediction.request_id, 1)

Answers are frozen dataclasses; a refused call raises :class:`CallError` with its gRPC code, the
server's message (which names the field at fault) and the rate-limit trailing metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import grpc  # type: ignore[import-untyped]
from google.protobuf import struct_pb2  # type: ignore[import-untyped]

from driftloop_grpc.v1 import model_service_pb2 as pb
from driftloop_grpc.v1 import model_service_pb2_grpc as pb_grpc

__all__ = ["CallError", "FeedbackReceipt", "ModelClient", "Prediction"]

Feature = float | int | str | None
LabelValue = bool | int | str
Status = Literal["created", "updated", "unchanged", "not_found"]
_STATUSES: dict[int, Status] = {
    pb.FEEDBACK_STATUS_CREATED: "created",
    pb.FEEDBACK_STATUS_UPDATED: "updated",
    pb.FEEDBACK_STATUS_UNCHANGED: "unchanged",
    pb.FEEDBACK_STATUS_NOT_FOUND: "not_found",
}


@dataclass(frozen=True)
class Prediction:
    request_id: str
    score: float
    label: int
    model_name: str
    model_version: str


@dataclass(frozen=True)
class FeedbackReceipt:
    request_id: str
    label: int
    status: Status


class CallError(Exception):
    """A call the service refused or could not answer.

    Attributes:
        code: the gRPC status code, e.g. ``grpc.StatusCode.INVALID_ARGUMENT``.
        message: the service's explanation (for INVALID_ARGUMENT it names the field).
        metadata: the trailing metadata (``retry-after``, ``x-ratelimit-*``), lower-case names.
    """

    def __init__(self, code: Any, message: str, metadata: Mapping[str, str]) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.metadata = dict(metadata)

    @property
    def retry_after_s(self) -> float | None:
        """How long the service asks to wait before retrying, when it says."""
        value = self.metadata.get("retry-after")
        return float(value) if value is not None else None


def _struct(features: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(features))
    return struct


def _label(request_id: str, label: LabelValue) -> pb.Label:
    # bool first: it is also an int.
    if isinstance(label, bool):
        return pb.Label(request_id=request_id, flag=label)
    if isinstance(label, int):
        return pb.Label(request_id=request_id, number=label)
    return pb.Label(request_id=request_id, text=label)


def _prediction(message: pb.Prediction) -> Prediction:
    return Prediction(
        request_id=message.request_id,
        score=message.score,
        label=message.label,
        model_name=message.model_name,
        model_version=message.model_version,
    )


class ModelClient:
    """Calls ``driftloop.v1.ModelService`` at ``target`` (``host:port``) over one channel.

    Args:
        target: the service's gRPC address, e.g. ``127.0.0.1:3001``.
        api_key: sent as ``authorization: Bearer <key>`` (needed with ``DRIFTLOOP_AUTH=on``).
        timeout_s: each call's deadline.
        credentials: TLS channel credentials; None for a plaintext channel.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        credentials: Any = None,
    ) -> None:
        self.channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self.stub = pb_grpc.ModelServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self.timeout_s = timeout_s
        self.last_metadata: dict[str, str] = {}

    def predict(self, features: Mapping[str, Feature]) -> Prediction:
        """Score one record (features by name, as the model's spec declares them)."""
        answer = self._call(self.stub.Predict, pb.PredictRequest(features=_struct(features)))
        return _prediction(answer)

    def predict_batch(self, records: Iterable[Mapping[str, Feature]]) -> list[Prediction]:
        """Score several records as one batch; one prediction per record, in order."""
        request = pb.PredictBatchRequest(records=[_struct(r) for r in records])
        answer = self._call(self.stub.PredictBatch, request)
        return [_prediction(p) for p in answer.predictions]

    def feedback(self, request_id: str, label: LabelValue) -> FeedbackReceipt:
        """Record the ground truth of one prediction (status ``not_found``: no such prediction)."""
        (receipt,) = self.feedback_batch([(request_id, label)])
        return receipt

    def feedback_batch(self, labels: Sequence[tuple[str, LabelValue]]) -> list[FeedbackReceipt]:
        """Record up to 1,000 labels, given as (request_id, label), in one transaction."""
        request = pb.FeedbackRequest(labels=[_label(rid, label) for rid, label in labels])
        answer = self._call(self.stub.Feedback, request)
        return [
            FeedbackReceipt(r.request_id, r.label, _STATUSES[r.status]) for r in answer.receipts
        ]

    def health(self, service: str = "") -> str:
        """The standard health service's answer for ``service`` ("": the server), e.g. SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

        stub = health_pb2_grpc.HealthStub(self.channel)
        answer = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    def _call(self, method: Any, request: Any) -> Any:
        try:
            answer, call = method.with_call(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            trailing = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
            self.last_metadata = trailing
            raise CallError(exc.code(), exc.details() or "", trailing) from None
        self.last_metadata = {
            k: v for k, v in (call.trailing_metadata() or ()) if isinstance(v, str)
        }
        return answer

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
