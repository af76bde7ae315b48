"""Scoring and recording predictions: the fast scorer, BentoML's adaptive batching, the prediction log.

One :class:`Predictor` per server worker. Single-record requests go through BentoML's own adaptive
batching dispatcher (``CorkDispatcher``, configured by the ``predict_batch`` API's ``max_batch_size``
and ``max_latency_ms``): requests that arrive while a batch is being scored are scored together as
one matrix and answered one by one. A batch request is already a batch and is scored directly.

Every prediction is written ahead to the worker's spool (:class:`~bentos.prediction_log.PredictionLog`)
before its answer leaves: what a 200 carries is on local disk and reaches PostgreSQL in the
background. When the spool is full the predictions are refused (:class:`SpoolFull`), never served
unrecorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bentos.metrics import observe_many, series
from training.store import PredictionRecord, encode_prediction, new_request_ids

if TYPE_CHECKING:
    from bentos.prediction_log import PredictionLog
    from training.scoring import FastScorer

__all__ = ["Batching", "Overloaded", "Predictor"]

log = logging.getLogger("driftloop.serve")
Record = dict[str, Any]
# One request's answers, or the error that request alone gets.
_Answers = list[dict[str, Any]] | Exception


class Overloaded(Exception):
    """BentoML's dispatcher shed the request: its wait would pass ``max_latency_ms``."""


@dataclass(frozen=True)
class Batching:
    """Adaptive batching of single-record requests (BentoML's ``max_batch_size``/``max_latency_ms``)."""

    max_batch_size: int
    max_latency_ms: int


class Predictor:
    """Scores records with the model's fast scorer and records each prediction before answering."""

    def __init__(
        self,
        *,
        scorer: FastScorer,
        threshold: float,
        model_name: str,
        model_version: str,
        prediction_log: PredictionLog | None,
        batching: Batching,
    ) -> None:
        from bentoml._internal.marshal.dispatcher import CorkDispatcher

        self.scorer = scorer
        self.threshold = threshold
        self.model_name = model_name
        self.model_version = model_version
        self.log = prediction_log
        self.batching = batching
        self._metrics = series()
        # Children bound once: a labels() lookup per batch is a dict and a lock more.
        self._served = {
            (endpoint, label): self._metrics.predictions.labels(model_version, endpoint, label)
            for endpoint in ("predict", "predict_batch")
            for label in ("0", "1")
        }
        self._scores = self._metrics.scores.labels(model_version)
        self._batch_size = {
            endpoint: self._metrics.batch_size.labels(endpoint)
            for endpoint in ("predict", "predict_batch")
        }
        self._metrics.served_model.labels(model_name, model_version).set(1)
        dispatcher: CorkDispatcher[list[Record], _Answers] = CorkDispatcher(
            max_latency_in_ms=batching.max_latency_ms,
            max_batch_size=batching.max_batch_size,
            fallback=self._shed,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        self._submit = dispatcher(self._score_batches)
        self._dispatcher = dispatcher
        self._stop = threading.Event()
        self._gauges = threading.Thread(target=self._publish_log_stats, daemon=True)
        self._gauges.start()

    @staticmethod
    def _shed() -> _Answers:
        raise Overloaded("the service is overloaded")

    def predict_now(self, records: Sequence[Record], endpoint: str) -> list[dict[str, Any]]:
        """Score ``records`` as one matrix, write them ahead to the spool, return the answers.

        Raises:
            SpoolFull: the spool has no room; nothing was recorded or served.
            ValueError: a record the model cannot score (the message names the feature).
        """
        scores = self.scorer.score(records)
        served_at = datetime.now(UTC)
        answers: list[dict[str, Any]] = []
        lines: list[bytes] = []
        # The served millisecond and 80 random bits per id (one system call for the whole batch):
        # a label finds its prediction in that day's partition of the store.
        ids = new_request_ids(len(records), served_at)
        for (record, value), request_id in zip(
            zip(records, scores.tolist(), strict=True), ids, strict=True
        ):
            label = int(value >= self.threshold)
            answers.append(
                {
                    "request_id": request_id,
                    "score": value,
                    "label": label,
                    "model_name": self.model_name,
                    "model_version": self.model_version,
                }
            )
            lines.append(
                encode_prediction(
                    PredictionRecord(
                        request_id=request_id,
                        model_name=self.model_name,
                        model_version=self.model_version,
                        features=record,
                        score=value,
                        label=label,
                        created_at=served_at,
                    )
                )
            )
        if self.log is not None:
            self.log.append(b"".join(lines), len(lines))
        positives = int((scores >= self.threshold).sum())
        if positives:
            self._served[endpoint, "1"].inc(positives)
        if positives < len(answers):
            self._served[endpoint, "0"].inc(len(answers) - positives)
        observe_many(self._scores, scores)
        self._batch_size[endpoint].observe(len(answers))
        return answers

    async def _score_batches(self, batches: Sequence[list[Record]]) -> list[_Answers]:
        # BentoML's dispatcher hands over the waiting requests (one record each) and gives each
        # caller its own item of the result; an exception item is raised to that caller alone.
        flat = [record for batch in batches for record in batch]
        try:
            answers = self.predict_now(flat, "predict")
        except ValueError:
            # A record the model cannot score must fail its own request, not its batch-mates'.
            return [self._score_alone(batch) for batch in batches]
        self._metrics.batches.inc()
        self._metrics.batched_records.inc(len(flat))
        out: list[_Answers] = []
        start = 0
        for batch in batches:
            out.append(answers[start : start + len(batch)])
            start += len(batch)
        return out

    def _score_alone(self, batch: list[Record]) -> _Answers:
        try:
            return self.predict_now(batch, "predict")
        except ValueError as exc:
            return exc

    async def predict_one(self, record: Record) -> dict[str, Any]:
        """Score one record through BentoML's adaptive batching.

        Raises:
            Overloaded: the dispatcher shed it (its wait would pass ``max_latency_ms``).
            SpoolFull: the spool has no room.
        """
        answers = await self._submit([record])
        # The dispatcher raises an exception item itself, and its fallback raises: neither is here.
        assert isinstance(answers, list)
        return answers[0]

    def ready(self) -> bool:
        """Ready while predictions can be recorded: to PostgreSQL, or to the spool while it has room."""
        return self.log is None or self.log.has_room()

    def _publish_log_stats(self) -> None:
        while not self._stop.wait(1.0):
            if self.log is None:
                continue
            stats = self.log.stats()
            self._metrics.spool_records.set(stats.spooled_records)
            self._metrics.spool_bytes.set(stats.spooled_bytes)
            self._metrics.lag.set(stats.lag_s)
            self._metrics.store_ok.set(1 if stats.store_ok else 0)

    def close(self, timeout_s: float) -> bool:
        """Stop batching and flush the spool to PostgreSQL; True when nothing is left in it."""
        self._stop.set()
        self._dispatcher.shutdown()
        if self.log is None:
            return True
        return self.log.close(timeout_s)
