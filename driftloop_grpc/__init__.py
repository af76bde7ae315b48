"""driftloop's gRPC API: the generated stubs (``driftloop_grpc.v1``, from
``proto/driftloop/v1/model_service.proto``) and a thin typed client (:class:`ModelClient`)."""

from driftloop_grpc.client import CallError, FeedbackReceipt, ModelClient, Prediction

__all__ = ["CallError", "FeedbackReceipt", "ModelClient", "Prediction"]
