"""The model as a Bento service: typed prediction APIs, loss-free prediction logging, and feedback.

``bentoml serve bentos.service:ChurnService --arg model_tag=<name>:<version>`` serves a model from
the local store; a built Bento carries the model it was built for (the ``model_tag`` build argument)
and serves it with ``bentoml serve <name>_service:<version>``. The request schema, the service's name
and its labels come from the spec saved with that model, never from a spec file: the deployment's
models (``training.models``) only name the default model, ``<its name>:latest``, of an unbuilt
``bentoml serve bentos.service:ChurnService`` when there is exactly one. (The class keeps the name
``ChurnService`` whatever the model; BentoML names the service, and the Bento, from ``name=`` below.)

``/predict`` and ``/predict_batch`` are declared here (the OpenAPI document, ``bentoml.SyncHTTPClient``
and in-process calls use these declarations) and answered over HTTP by :mod:`bentos.hotpath`, which
runs in front of BentoML's app in the same worker. ``/feedback`` and ``/feedback_batch`` are answered
by BentoML's app, once the hot path has checked them as it checks the predictions (JSON only, a body
limit, validation with the input models declared here), so every API route keeps one contract
(:mod:`bentos.contract`).
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from typing import TYPE_CHECKING, Any, cast

import bentoml
from starlette.responses import JSONResponse

from bentos import schemas as _schemas

# `bentoml.load(..., reload=True)` re-imports this module only; its schemas are made from the
# Bento's arguments (which model it serves), so they are made again when those have changed.
if bentoml.use_arguments(_schemas.BuildArgs) != _schemas.ARGS:
    importlib.reload(_schemas)
    if "bentos.grpc_server" in sys.modules:  # its envelopes are made from the schemas too
        importlib.reload(sys.modules["bentos.grpc_server"])

from bentos.feedback import FeedbackDesk, StoreDown, store_down
from bentos.schemas import (
    ARGS,
    NULLABLE,
    SPEC,
    FeedbackBatchRequest,
    FeedbackItemReceipt,
    FeedbackReceipt,
    FeedbackRequest,
    PredictBatchRequest,
    Prediction,
    Request,
)
from training.spec import Label

if TYPE_CHECKING:
    from bentos.grpc_server import GrpcServer

log = logging.getLogger("driftloop.serve")

# Adaptive batching of single-record requests (BentoML's CorkDispatcher): a batch is at most this
# many requests, and a request whose estimated wait passes the latency budget is shed with 503.
# The budget is an overload guard, not a target: below saturation batches form without waiting.
MAX_BATCH_SIZE = 64
MAX_LATENCY_MS = 2000
# SIGTERM: how long the worker may spend writing its spool to PostgreSQL before it exits; what is
# left stays in the spool for the next start.
SHUTDOWN_FLUSH_S = 20.0
# SIGTERM: how long gRPC calls under way may take to finish before the spool is written.
GRPC_GRACE_S = 5.0


@bentoml.service(
    name=f"{SPEC.name}_service",
    traffic={"timeout": 30},
    # Feedback runs in threads (it waits on PostgreSQL); predictions never leave the event loop.
    threads=4,
    labels={"project": "driftloop", "model": SPEC.name},
)
class ChurnService:
    """Scores requests with the champion it was built for and records every prediction."""

    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import joblib

        from bentos import hotpath
        from bentos.loop_metrics import LoopMetrics
        from bentos.predictor import Batching, Predictor
        from training.postgres import ensure_database
        from training.registry import MODEL_FILE
        from training.scoring import FastScorer
        from training.settings import get_settings

        settings = get_settings()
        # BentoML's server logging passes only WARNING from non-BentoML loggers; the prediction
        # routes' refusals and the log writer's recoveries are INFO worth keeping.
        logging.getLogger("driftloop").setLevel(logging.INFO)
        logging.getLogger("bentos").setLevel(logging.INFO)
        hotpath.quiet_malformed_http(logging.getLogger("uvicorn.error"))
        pipeline = joblib.load(self.model_ref.path_of(MODEL_FILE))
        # Score with the spec the model was trained with (its threshold, its feature types): the
        # one the request schema was built from at import, model_ref's own.
        self.spec = SPEC
        # Start-up fails loudly if the store is unreachable: its migrations must have run before
        # anything is written to it. Once running, an outage only fills the spool.
        self.database_url = ensure_database(settings)
        self.settings = settings
        prediction_log = None
        if settings.log_predictions:
            from bentos.prediction_log import PredictionLog

            prediction_log = PredictionLog(
                self.database_url,
                settings.spool_root,
                max_bytes=settings.spool_max_mb * 1024 * 1024,
                flush_interval_s=settings.log_flush_ms / 1000,
                connect_timeout_s=settings.db_connect_timeout_s,
                statement_timeout_ms=settings.db_statement_timeout_ms,
            )
            prediction_log.start()
        else:
            log.warning(
                "DRIFTLOOP_LOG_PREDICTIONS=false: predictions are NOT recorded and can never "
                "get feedback (meant for measuring what logging costs)"
            )
        self.prediction_log = prediction_log
        self.feedback_desk = FeedbackDesk(self.database_url, settings, prediction_log)
        # The class statement's name is BentoML's Service object by now (the decorator's result).
        declared = cast(bentoml.Service[Any], ChurnService).apis["predict_batch"]
        self.predictor = Predictor(
            scorer=FastScorer.compile(pipeline, self.spec, num_threads=1),
            threshold=self.spec.model.threshold,
            model_name=self.model_ref.tag.name,
            model_version=str(self.model_ref.tag.version),
            prediction_log=prediction_log,
            batching=Batching(
                max_batch_size=settings.batch_max_size or declared.max_batch_size,
                max_latency_ms=settings.batch_max_latency_ms or declared.max_latency_ms,
            ),
        )
        hotpath.bind(self.predictor, settings.batch_max_records)
        self.grpc_server: GrpcServer | None = None
        self.loop_metrics = LoopMetrics(
            self.database_url, settings, self.spec.name, self.spec.drift.share_threshold
        )
        # Everything loaded so far (BentoML, pandas, the model) lives as long as the worker: moved
        # out of the collector's sight, full collections stop scanning it on the request path.
        gc.collect()
        gc.freeze()

    @bentoml.on_deployment
    def _private_process_manager() -> None:
        """Keep circusd's control endpoints off 127.0.0.1 TCP ports (where any local user could
        read the workers' environment and start commands) in every ``bentoml serve`` of this
        service, the image's included: Unix sockets in a folder only the server's user enters."""
        from training.process_manager import private_control_sockets

        private_control_sockets()

    @bentoml.on_deployment
    def _grpc_port() -> None:
        """Check once, before the workers start, that the gRPC port is not another server's."""
        from bentos.grpc_port import check_port
        from training.settings import get_settings

        check_port(get_settings())

    @bentoml.on_startup
    async def _start_grpc(self) -> None:
        """Serve gRPC from this worker, on its event loop (where the batching runs), in a
        ``bentoml serve`` worker only: an in-process app (tests, ``to_asgi``) serves HTTP alone."""
        from bentoml._internal.context import server_context

        from bentos.grpc_port import http_host, warn_if_open
        from bentos.grpc_server import GrpcServer

        if server_context.worker_index == 1:
            warn_if_open(self.settings, http_host())
        if server_context.worker_index is not None:
            self.grpc_server = await GrpcServer.start(
                self.predictor, self.feedback_desk, self.settings
            )

    @bentoml.on_shutdown
    async def _stop_grpc(self) -> None:
        """Stop gRPC before ``close`` (hooks run by name) writes the spool."""
        if self.grpc_server is not None:
            await self.grpc_server.stop(GRPC_GRACE_S)
            self.grpc_server = None

    @bentoml.on_shutdown
    def close(self) -> None:
        """Write the spool to PostgreSQL (SIGTERM loses nothing), then close the store."""
        from bentos import hotpath

        hotpath.bind(None, self.settings.batch_max_records)
        if not self.predictor.close(SHUTDOWN_FLUSH_S):
            log.warning(
                "the store did not take every spooled prediction within %.0f s; they stay in %s "
                "and are written by the next start",
                SHUTDOWN_FLUSH_S,
                self.settings.spool_root,
            )
        self.feedback_desk.close()

    def __is_ready__(self) -> bool:
        """Ready while predictions can be recorded (to PostgreSQL, or to a spool with room)."""
        return self.predictor.ready()

    def __metrics__(self, content: str) -> str:
        """``/metrics`` as BentoML made it, and the retrain loop's state from the store after it
        (BentoML runs this in a thread: the store is read there, at most every few seconds)."""
        return content + self.loop_metrics.text()

    @bentoml.api(route="/predict", input_spec=Request, output_spec=Prediction)
    async def predict(self, **features: Any) -> Prediction | JSONResponse:
        """Score one record; the response's ``request_id`` identifies it for feedback. A feature
        the model declares nullable may be null or left out (it is recorded as null).

        A 200 means the prediction is recorded (on its way to PostgreSQL through the worker's
        spool); when it cannot be recorded the answer is 503 with ``Retry-After``.
        """
        from bentos.hotpath import refusal
        from bentos.prediction_log import SpoolFull
        from bentos.predictor import Overloaded

        # BentoML passes every field of the validated request; a direct call may omit a nullable
        # one, which is logged as null like a request that sent null.
        for name in NULLABLE:
            features.setdefault(name, None)
        try:
            return Prediction(**await self.predictor.predict_one(features))
        except (Overloaded, SpoolFull, ValueError) as exc:
            return refusal(exc).response()

    @bentoml.api(
        route="/predict_batch",
        input_spec=PredictBatchRequest,
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    async def predict_batch(self, records: list[Request]) -> list[Prediction]:
        """Score up to ``DRIFTLOOP_BATCH_MAX_RECORDS`` (1,000) records; each gets its own
        ``request_id`` and is recorded. Answers one prediction per record, in order; a larger
        body answers 413 naming the limit. Nullable features may be null or left out, as in
        ``/predict``."""
        from bentos.hotpath import refusal
        from bentos.prediction_log import SpoolFull

        try:
            answers = self.predictor.predict_now(
                [record.model_dump() for record in records], "predict_batch"
            )
        except (SpoolFull, ValueError) as exc:
            # BentoML sends a Response as it is; the annotation stays the documented 200 body.
            return cast(list[Prediction], refusal(exc).response())
        return [Prediction(**answer) for answer in answers]

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest, output_spec=FeedbackReceipt)
    def feedback(self, request_id: str, label: Label) -> FeedbackReceipt | JSONResponse:
        """Record the ground truth for an earlier prediction (the latest different label wins).

        ``label`` is the outcome as the training data spells it (e.g. "Yes"/"No"), or 1/0, or
        true/false; it is stored as 0/1 with the value sent kept beside it, and the receipt gives
        the 0/1. An unknown label answers 400 naming what is accepted; an unknown ``request_id``
        404 with ``{"error": ...}``. The response is built here because BentoML 1.4 renders the
        body of a raised 4xx exception as a one-element list.
        """
        from bentos.access import current_key_id

        item = FeedbackRequest(request_id=request_id, label=label)
        try:
            (receipt,) = self.feedback_desk.record([item], current_key_id())
        except StoreDown:
            return store_down()
        if receipt.status == "not_found":
            return JSONResponse(
                {
                    "error": f"no prediction with request_id {request_id!r}",
                    "request_id": request_id,
                },
                status_code=404,
            )
        return FeedbackReceipt(request_id=request_id, label=receipt.label, status=receipt.status)

    @bentoml.api(route="/feedback_batch", input_spec=FeedbackBatchRequest)
    def feedback_batch(self, labels: list[FeedbackRequest]) -> list[FeedbackItemReceipt]:
        """Record up to 1,000 labels in one transaction; one receipt per label, in order.

        Each label is spelt as ``/feedback`` takes it; one unknown label refuses the whole batch
        (400, naming its index). A label naming no stored prediction is reported ``not_found`` and
        the others are stored.
        """
        from bentos.access import current_key_id

        try:
            return self.feedback_desk.record(labels, current_key_id())
        except StoreDown:
            # BentoML sends a Response as it is; the annotation stays the documented 200 body.
            return cast(list[FeedbackItemReceipt], store_down())


class _ServedWithHotPath(bentoml.Service):  # type: ignore[misc]
    """The service, with the prediction routes answered in front of BentoML's app.

    ``bentoml serve`` builds each worker's ASGI app with ``Service.to_asgi``; BentoML offers no hook
    in front of its own middlewares (``add_asgi_middleware`` adds one behind them), and its Service
    is a slotted attrs class whose methods cannot be replaced on the instance, so the service object
    becomes an instance of this subclass: same slots, same state, its ASGI app wrapped. Its two
    documents are the contract's too (:mod:`bentos.contract`), wherever BentoML publishes them.
    """

    __slots__ = ()

    @property
    def openapi_spec(self) -> Any:
        """The document ``/docs.json`` serves (:func:`bentos.contract.served_document`): what
        ``bentoml build`` writes to the Bento's ``apis/openapi.yaml``, instead of BentoML's own."""
        from bentos.contract import served_document

        return served_document(self)

    def schema(self) -> dict[str, Any]:
        """``/schema.json`` and the Bento's ``apis/schema.json`` (read by BentoML's own clients),
        with the document's request and response schemas (:func:`bentos.contract.service_schema`)."""
        from bentos.contract import service_schema

        return service_schema(self, super().schema())

    def to_asgi(self, is_main: bool = True) -> Any:
        from bentos.access import Access
        from bentos.grpc_server import share_gate
        from bentos.hotpath import HotPath
        from bentos.metrics import RequestMetrics
        from training.settings import get_settings

        access = Access(HotPath(super().to_asgi(is_main), self))
        # The worker's gRPC server asks the same keys and buckets.
        share_gate(access.gate)
        # Outermost, so that the auth layer's refusals and the hot path's answers are counted too.
        return RequestMetrics(
            access,
            [api.route for api in self.apis.values()],
            auth_on=get_settings().auth == "on",
        )


ChurnService.__class__ = _ServedWithHotPath  # type: ignore[method-assign]
