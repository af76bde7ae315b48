"""The peer for ``bench/serving.py``: the churn service as a user writes it in an afternoon.

FastAPI under uvicorn (uvloop and httptools, its defaults when installed), an ``async def``
``POST /predict`` that validates the body with the champion's own request model (refusing the NUL
character, like ``bentos/service.py``), scores it with the same model loaded from the same BentoML
model store entry, answers the same JSON, and logs every prediction to the same PostgreSQL table
through a background writer: an in-memory queue that a thread drains every ``PEER_FLUSH_MS``
(50 ms) with one ``COPY ... FROM STDIN``. Bad input is FastAPI's 422.

Run by the harness; by hand::

    PEER_MODEL_TAG=churn:<version> PEER_DATABASE_URL=$(uv run driftloop db url) \\
        uv run uvicorn bench.serving_peer:app --port 3001 --workers 2

``app`` is built on first access (``uvicorn`` asks for it), so importing this module loads nothing:
the harness imports it for :func:`make_scorer` and :func:`copy_text` and measures the same code.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time, and
# the request model is a local of create_app().

import io
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg2
from fastapi import FastAPI
from pydantic import BaseModel, create_model, field_validator
from sklearn.pipeline import Pipeline

from training.spec import ModelSpec

__all__ = ["COPY_COLUMNS", "copy_text", "create_app", "make_scorer"]

log = logging.getLogger("serving_peer")

Scorer = Callable[[Sequence[Mapping[str, Any]]], np.ndarray]
COPY_COLUMNS = (
    "request_id",
    "model_name",
    "model_version",
    "features",
    "score",
    "label",
    "created_at",
)
LogRow = tuple[str, str, str, Mapping[str, Any], float, int, datetime]


# --- scoring ------------------------------------------------------------------------------------


def make_scorer(pipeline: Pipeline, spec: ModelSpec) -> tuple[Scorer, str]:
    """The scorer the peer uses, and its name: ``training.scoring.FastScorer`` on one LightGBM
    thread per worker, as our service compiles it (so both servers pay the same scoring cost), else
    the LightGBM booster called directly."""
    try:
        from training.scoring import FastScorer  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return _booster_scorer(pipeline, spec)
    scorer = FastScorer.compile(pipeline, spec, num_threads=1)
    return scorer.score, "FastScorer, 1 thread"


def _booster_scorer(pipeline: Pipeline, spec: ModelSpec) -> tuple[Scorer, str]:
    """The pipeline's own arithmetic without pandas: ordinal codes for the categorical columns
    (unknown or missing: -1, as the fitted OrdinalEncoder does), the numbers as they are, in the
    column order of the fitted ColumnTransformer, straight into the booster."""
    preprocess, model = pipeline.named_steps["preprocess"], pipeline.named_steps["model"]
    booster = getattr(model, "booster_", None)
    if booster is None:  # not LightGBM (the spec allows logistic regression): the plain pipeline
        import pandas as pd

        from training.evaluate import score

        def score_frame(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
            return score(pipeline, spec, pd.DataFrame.from_records(records))

        return score_frame, "pipeline.predict_proba"

    encoder = preprocess.named_transformers_["categorical"]
    codes: dict[str, dict[str, float]] = {
        name: {str(value): float(i) for i, value in enumerate(known)}
        for name, known in zip(spec.categorical_features, encoder.categories_, strict=True)
    }
    columns = [str(c) for c in preprocess.get_feature_names_out()]

    def score_records(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        matrix = np.empty((len(records), len(columns)), dtype="float64")
        for i, record in enumerate(records):
            row = matrix[i]
            for j, name in enumerate(columns):
                value = record.get(name)
                if name in codes:
                    row[j] = codes[name].get(value, -1.0) if value is not None else -1.0
                else:
                    row[j] = np.nan if value is None else value
        return np.asarray(booster.predict(matrix, num_threads=1), dtype="float64")

    return score_records, "LightGBM booster, 1 thread"


# --- logging: COPY text written by hand ---------------------------------------------------------


def _copy_field(text: str) -> str:
    # COPY's text format: backslash, tab, newline and carriage return are escaped.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_text(rows: Iterable[LogRow]) -> str:
    """``predictions`` rows as the text of one ``COPY ... FROM STDIN`` (columns: COPY_COLUMNS)."""
    lines = []
    for request_id, model_name, model_version, features, score, label, created_at in rows:
        lines.append(
            "\t".join(
                (
                    _copy_field(request_id),
                    _copy_field(model_name),
                    _copy_field(model_version),
                    _copy_field(json.dumps(features, separators=(",", ":"))),
                    repr(float(score)),
                    str(int(label)),
                    created_at.isoformat(),
                )
            )
        )
    lines.append("")
    return "\n".join(lines)


COPY_SQL = f"COPY predictions ({', '.join(COPY_COLUMNS)}) FROM STDIN"


class CopyWriter:
    """Predictions queued in memory, written by one thread every ``flush_s`` with one COPY.

    Rows that fail to be written (the database is down) stay queued and are retried; whatever is
    queued at shutdown is written before :meth:`close` returns.
    """

    def __init__(self, url: str, flush_s: float) -> None:
        self.url = url
        self.flush_s = flush_s
        self.queue: deque[LogRow] = deque()
        self.stop = threading.Event()
        self.conn: Any = None
        self.thread = threading.Thread(target=self._run, name="copy-writer", daemon=True)

    def start(self) -> None:
        self.conn = psycopg2.connect(self.url, application_name="driftloop-bench-peer")
        self.thread.start()

    def put(self, row: LogRow) -> None:
        self.queue.append(row)

    def _run(self) -> None:
        while not self.stop.wait(self.flush_s):
            self._flush()
        while self.queue and self._flush():
            pass

    def _flush(self) -> bool:
        batch: list[LogRow] = []
        while self.queue:
            batch.append(self.queue.popleft())
        if not batch:
            return True
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg2.connect(self.url, application_name="driftloop-bench-peer")
            with self.conn, self.conn.cursor() as cur:
                cur.copy_expert(COPY_SQL, io.StringIO(copy_text(batch)))
        except psycopg2.Error as exc:
            log.error("COPY of %d predictions failed, will retry: %s", len(batch), exc)
            self.queue.extendleft(reversed(batch))
            time.sleep(self.flush_s)
            return False
        return True

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        if self.conn is not None:
            self.conn.close()
        if self.queue:
            log.error("%d predictions were never written", len(self.queue))


# --- the app ------------------------------------------------------------------------------------


class Prediction(BaseModel):
    request_id: str
    score: float
    label: int
    model_name: str
    model_version: str


def _refuse_nul(cls: type[BaseModel], value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


def create_app(model_tag: str, database_url: str, flush_ms: int = 50) -> FastAPI:
    """The peer service for one BentoML model, logging to ``database_url``'s ``predictions``."""
    from training.registry import load_model

    pipeline, spec = load_model(model_tag)
    scorer, _ = make_scorer(pipeline, spec)
    model_name, _, model_version = model_tag.partition(":")
    threshold = spec.model.threshold
    request_model: Any = create_model(
        spec.request_model.__name__,
        __base__=spec.request_model,
        __validators__={"refuse_nul": field_validator("*")(_refuse_nul)},
    )
    writer = CopyWriter(database_url, flush_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            writer.close()

    app = FastAPI(title="churn peer", lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict", response_model=Prediction)
    async def predict(record: request_model) -> Prediction:
        features = record.model_dump()
        score = float(scorer([features])[0])
        prediction = Prediction(
            request_id=uuid.uuid4().hex,
            score=score,
            label=int(score >= threshold),
            model_name=model_name,
            model_version=model_version,
        )
        writer.put(
            (
                prediction.request_id,
                model_name,
                model_version,
                features,
                score,
                prediction.label,
                datetime.now(UTC),
            )
        )
        return prediction

    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    """``bench.serving_peer:app``: built from PEER_MODEL_TAG and PEER_DATABASE_URL when asked for."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = create_app(
            os.environ["PEER_MODEL_TAG"],
            os.environ["PEER_DATABASE_URL"],
            int(os.environ.get("PEER_FLUSH_MS", "50")),
        )
    return _app
