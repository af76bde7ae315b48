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
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import bentoml
import psycopg2
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
)
from starlette.responses import JSONResponse

from bentos.contract import MAX_FEEDBACK_LABELS
from training.spec import Label, ModelSpec


def _dev_model_tag() -> str:
    """The default model of an unbuilt service: the latest of the deployment's one model."""
    from bentoml.exceptions import InvalidArgument

    from training.errors import DriftloopError
    from training.models import select_spec
    from training.settings import get_settings

    try:
        return f"{select_spec(get_settings(), None).name}:latest"
    except (DriftloopError, ValueError) as exc:
        raise InvalidArgument(f"{exc} (here: `--arg model_tag=<name>:<version>`)") from None


class BuildArgs(BaseModel):
    # A factory, so that a built Bento (which always carries its model_tag) never reads a spec file.
    model_tag: str = Field(default_factory=_dev_model_tag)


ARGS = bentoml.use_arguments(BuildArgs)


def _model_spec(model_tag: str) -> ModelSpec:
    """The spec saved with the model to serve, or one error BentoML prints without a traceback."""
    from bentoml.exceptions import InvalidArgument, NotFound

    from training.errors import NotFoundError
    from training.registry import model_spec

    try:
        return model_spec(model_tag)
    except NotFoundError as exc:
        raise NotFound(
            f"{exc}: train one first (`driftloop demo` or the retrain DAG), or pass another with "
            "`--arg model_tag=<name>:<version>` (`bentoml models list` shows them)"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


# The request schema must exist when the class is defined: it is the served model's own.
SPEC = _model_spec(ARGS.model_tag)

log = logging.getLogger("driftloop.serve")
T = TypeVar("T")

# Adaptive batching of single-record requests (BentoML's CorkDispatcher): a batch is at most this
# many requests, and a request whose estimated wait passes the latency budget is shed with 503.
# The budget is an overload guard, not a target: below saturation batches form without waiting.
MAX_BATCH_SIZE = 64
MAX_LATENCY_MS = 2000
# How long feedback for an unknown request id waits for the workers' spools to reach PostgreSQL
# (the prediction may have been answered a moment ago and still be on its way).
FEEDBACK_WAIT_S = 5.0
# SIGTERM: how long the worker may spend writing its spool to PostgreSQL before it exits; what is
# left stays in the spool for the next start.
SHUTDOWN_FLUSH_S = 20.0


def _refuse_nul(cls: type[BaseModel], value: Any) -> Any:
    # PostgreSQL cannot store U+0000 in text or jsonb: refuse it here, as a 400 naming the field,
    # rather than fail the insert with a 500.
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


# The spec's request schema (same name, fields and JSON schema), refusing what the store cannot hold.
Request = create_model(
    SPEC.request_model.__name__,
    __base__=SPEC.request_model,
    __validators__={"refuse_nul": field_validator("*")(_refuse_nul)},
)


# Features a request may send as null or leave out.
NULLABLE = tuple(f.name for f in SPEC.features if f.nullable)


class PredictBatchRequest(BaseModel):
    """The body of ``/predict_batch``; unknown fields are refused like a record's."""

    model_config = ConfigDict(extra="forbid")

    # At most DRIFTLOOP_BATCH_MAX_RECORDS, a setting read at start: counted (413) by the hot path.
    records: list[Request] = Field(
        min_length=1, description="up to DRIFTLOOP_BATCH_MAX_RECORDS (1,000) records"
    )


class Prediction(BaseModel):
    request_id: str = Field(description="quote it when posting feedback for this prediction")
    score: float = Field(description="probability of the positive class")
    label: int = Field(description="score at or above the model's threshold")
    model_name: str
    model_version: str


def _accepted_labels() -> str:
    return (
        f"the outcome as the training data spells it, {SPEC.positive_label!r} (positive) or "
        f"{SPEC.negative_label!r} (negative), or 1/0, or true/false"
    )


def _label_spelling(value: Label) -> str:
    """A label as it was sent, as text for ``feedback.raw_label`` (JSON's spelling of booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _label_schema(schema: dict[str, Any]) -> None:
    """Name the label's accepted values in its JSON schema, per JSON type (text is also taken in
    any case and with surrounding spaces), so that a client generated from the document offers
    them rather than any string or number."""
    labels = (SPEC.positive_label, SPEC.negative_label)
    numbers = {0, 1} | {v for v in labels if isinstance(v, int) and not isinstance(v, bool)}
    texts = dict.fromkeys([*(_label_spelling(v) for v in labels), "1", "0"])
    schema["anyOf"] = [
        {"type": "boolean"},
        {"type": "integer", "enum": sorted(numbers)},
        {"type": "string", "enum": list(texts)},
    ]


class FeedbackRequest(BaseModel):
    """The ground truth for one prediction; unknown fields are refused like the prediction's."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        min_length=1, max_length=128, description="the request_id of the prediction"
    )
    # Text, number or boolean, as the user's data has it; stored normalised to 0/1 with the value
    # as sent beside it. An unknown one is a 400 naming the field and what it accepts.
    label: Label = Field(
        description=_accepted_labels(),
        examples=[SPEC.positive_label, 1],
        json_schema_extra=_label_schema,
    )

    refuse_nul = field_validator("request_id")(_refuse_nul)

    @field_validator("label", mode="wrap")
    @classmethod
    def _known_label(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Label:
        # One error naming the field and what it accepts, not one per member of the union.
        try:
            label: Label = handler(value)
        except ValidationError:
            raise ValueError(f"label must be {_accepted_labels()}; got {value!r}") from None
        SPEC.label_of(label)  # raises ValueError naming the accepted values
        return label

    @property
    def outcome(self) -> int:
        """The label as 0/1."""
        return SPEC.label_of(self.label)


class FeedbackReceipt(BaseModel):
    request_id: str
    label: int = Field(description="the label as stored: 1 positive, 0 negative")
    status: Literal["created", "updated", "unchanged"] = Field(
        description="created: first label; updated: a different label replaced it; unchanged: same label again"
    )


class FeedbackBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[FeedbackRequest] = Field(
        min_length=1,
        max_length=MAX_FEEDBACK_LABELS,
        description=f"up to {MAX_FEEDBACK_LABELS:,} labels, each like /feedback's body",
    )


class FeedbackItemReceipt(BaseModel):
    request_id: str
    label: int = Field(description="the label as stored: 1 positive, 0 negative")
    status: Literal["created", "updated", "unchanged", "not_found"] = Field(
        description="as /feedback; not_found: no prediction carries this request_id (nothing stored)"
    )


class _StoreDown(Exception):
    """The feedback store did not answer; the details are in the server log, not the response."""


def _store_down() -> JSONResponse:
    return JSONResponse(
        {"error": "the feedback store is unavailable; nothing was recorded, retry later"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


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
        pipeline = joblib.load(self.model_ref.path_of(MODEL_FILE))
        # Score with the spec the model was trained with (its threshold, its feature types): the
        # one the request schema was built from at import, model_ref's own.
        self.spec = SPEC
        # Start-up fails loudly if the store is unreachable: its migrations must have run before
        # anything is written to it. Once running, an outage only fills the spool.
        self.database_url = ensure_database(settings)
        self.settings = settings
        self._conn: psycopg2.extensions.connection | None = None
        self._conn_lock = threading.Lock()
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
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __is_ready__(self) -> bool:
        """Ready while predictions can be recorded (to PostgreSQL, or to a spool with room)."""
        return self.predictor.ready()

    def _store(self, action: Callable[[psycopg2.extensions.connection], T]) -> T:
        """Run ``action`` in one transaction on the service's connection.

        A connection the server dropped (a restart) is replaced and the action retried once, so
        the first request after an outage does not fail on a stale connection.

        Raises:
            _StoreDown: the store did not answer (or timed out); the cause is logged.
        """
        from training.store import service_connection

        with self._conn_lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                try:
                    if self._conn is None:
                        self._conn = service_connection(
                            self.database_url,
                            connect_timeout_s=self.settings.db_connect_timeout_s,
                            statement_timeout_ms=self.settings.db_statement_timeout_ms,
                            application_name="driftloop-service",
                        )
                    with self._conn:
                        return action(self._conn)
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    broken = self._conn is None or self._conn.closed != 0
                    if self._conn is not None and broken:
                        self._conn = None
                    if attempt == 1 and broken and not fresh:
                        continue
                    log.warning("feedback store unavailable: %s", str(exc).strip().splitlines()[0])
                    raise _StoreDown from exc
        raise AssertionError("unreachable")  # pragma: no cover

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

    def _record_feedback(
        self, items: list[FeedbackRequest], key_id: str | None = None
    ) -> list[FeedbackItemReceipt]:
        """Store each label in one transaction, as posted by API key ``key_id`` (None: auth is off);
        a label naming no stored prediction is reported ``not_found``, after waiting for the
        workers' spools to reach PostgreSQL once.

        Raises:
            _StoreDown: the store did not answer.
        """
        from training.errors import NotFoundError
        from training.store import record_feedback

        def write(
            chosen: list[FeedbackRequest],
        ) -> Callable[[psycopg2.extensions.connection], list[FeedbackItemReceipt]]:
            def action(conn: psycopg2.extensions.connection) -> list[FeedbackItemReceipt]:
                receipts = []
                for item in chosen:
                    try:
                        status: Any = record_feedback(
                            conn,
                            item.request_id,
                            item.outcome,
                            raw_label=_label_spelling(item.label),
                            key_id=key_id,
                        ).status
                    except NotFoundError:
                        status = "not_found"
                    receipts.append(
                        FeedbackItemReceipt(
                            request_id=item.request_id, label=item.outcome, status=status
                        )
                    )
                return receipts

            return action

        asked_at = time.time()
        receipts = self._store(write(items))
        missing = [i for i, r in enumerate(receipts) if r.status == "not_found"]
        # The prediction may have been answered moments ago and still be in a spool.
        if (
            missing
            and self.prediction_log is not None
            and self.prediction_log.wait_stored(asked_at, FEEDBACK_WAIT_S)
        ):
            again = self._store(write([items[i] for i in missing]))
            for index, receipt in zip(missing, again, strict=True):
                receipts[index] = receipt
        return receipts

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
            (receipt,) = self._record_feedback([item], current_key_id())
        except _StoreDown:
            return _store_down()
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
            return self._record_feedback(labels, current_key_id())
        except _StoreDown:
            # BentoML sends a Response as it is; the annotation stays the documented 200 body.
            return cast(list[FeedbackItemReceipt], _store_down())


class _ServedWithHotPath(bentoml.Service):  # type: ignore[misc]
    """The service, with the prediction routes answered in front of BentoML's app.

    ``bentoml serve`` builds each worker's ASGI app with ``Service.to_asgi``; BentoML offers no hook
    in front of its own middlewares (``add_asgi_middleware`` adds one behind them), and its Service
    is a slotted attrs class whose methods cannot be replaced on the instance, so the service object
    becomes an instance of this subclass: same slots, same state, one method wrapped.
    """

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        from bentos.access import Access
        from bentos.hotpath import HotPath

        return Access(HotPath(super().to_asgi(is_main), self))


ChurnService.__class__ = _ServedWithHotPath  # type: ignore[method-assign]
