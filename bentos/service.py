"""The model as a Bento service: typed prediction API with request logging, and ground-truth feedback.

``bentoml serve bentos.service:ChurnService --arg model_tag=churn:<version>`` serves a model from the
local store; a built Bento carries the champion it was built for (the ``model_tag`` build argument)
and serves it with ``bentoml serve churn_service:<version>``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Literal

import bentoml
import pandas as pd
import psycopg2
import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from starlette.responses import JSONResponse

from training.spec import BUILTIN_SPEC, ModelSpec, load_spec

# The request schema must exist when the class is defined; reading one YAML file is all it costs.
SPEC = load_spec(
    Path(os.environ["DRIFTLOOP_MODEL_SPEC"])
    if os.environ.get("DRIFTLOOP_MODEL_SPEC")
    else BUILTIN_SPEC
)


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


class BuildArgs(BaseModel):
    model_tag: str = f"{SPEC.name}:latest"


ARGS = bentoml.use_arguments(BuildArgs)


class Prediction(BaseModel):
    request_id: str = Field(description="quote it when posting feedback for this prediction")
    score: float = Field(description="probability of the positive class")
    label: int = Field(description="score at or above the model's threshold")
    model_name: str
    model_version: str


class FeedbackRequest(BaseModel):
    """The ground truth for one prediction; unknown fields are refused like the prediction's."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        min_length=1, max_length=128, description="the request_id of the prediction"
    )
    label: int = Field(ge=0, le=1, strict=True, description="the observed outcome: 0 or 1")

    refuse_nul = field_validator("request_id")(_refuse_nul)


class FeedbackReceipt(BaseModel):
    request_id: str
    label: int
    status: Literal["created", "updated", "unchanged"] = Field(
        description="created: first label; updated: a different label replaced it; unchanged: same label again"
    )


@bentoml.service(
    name=f"{SPEC.name}_service",
    traffic={"timeout": 30},
    labels={"project": "driftloop", "model": SPEC.name},
)
class ChurnService:
    """Scores requests with the champion it was built for and records every prediction."""

    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import joblib
        from psycopg2.pool import ThreadedConnectionPool

        from training.postgres import ensure_database
        from training.registry import MODEL_FILE, SPEC_FILE
        from training.settings import get_settings

        self.pipeline = joblib.load(self.model_ref.path_of(MODEL_FILE))
        self.model_name = self.model_ref.tag.name
        self.model_version = str(self.model_ref.tag.version)
        # Score with the spec the model was trained with (its threshold, its feature types); the
        # request schema above must describe the same features, or serving would skew.
        with open(self.model_ref.path_of(SPEC_FILE)) as source:
            self.spec = ModelSpec.model_validate(yaml.safe_load(source))
        if self.spec.feature_names != SPEC.feature_names:
            raise RuntimeError(
                f"model {self.model_ref.tag} was trained on features {self.spec.feature_names}, "
                f"but the service's request schema has {SPEC.feature_names}"
            )
        # Start-up fails loudly if the store is unreachable: serving without logging would lose data.
        url = ensure_database(get_settings())
        # Connections open lazily; the cap only has to exceed the worker's concurrent requests.
        self.pool = ThreadedConnectionPool(1, 16, url, application_name="driftloop-service")

    @bentoml.on_shutdown
    def close_store(self) -> None:
        """Close the store's connections when the server stops."""
        self.pool.closeall()

    def _write(self, action: Any) -> Any:
        conn = self.pool.getconn()
        try:
            with conn:
                return action(conn)
        finally:
            # A connection broken by an outage is dropped, so the next request opens a fresh one.
            self.pool.putconn(conn, close=bool(conn.closed))

    @staticmethod
    def _store_down(exc: psycopg2.Error) -> JSONResponse:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return JSONResponse(
            {
                "error": f"the feedback store is unavailable ({first_line}); nothing was recorded, retry later"
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @bentoml.api(route="/predict", input_spec=Request, output_spec=Prediction)
    def predict(self, **features: Any) -> Prediction | JSONResponse:
        """Score one subscriber; the response's ``request_id`` identifies it for feedback.

        When the prediction cannot be recorded the answer is 503: a prediction that is not logged
        could never be matched with its ground truth.
        """
        from training.evaluate import score
        from training.store import PredictionRecord, record_predictions

        frame = pd.DataFrame([features])
        probability = float(score(self.pipeline, self.spec, frame)[0])
        prediction = Prediction(
            request_id=uuid.uuid4().hex,
            score=probability,
            label=int(probability >= self.spec.model.threshold),
            model_name=self.model_name,
            model_version=self.model_version,
        )
        record = PredictionRecord(
            request_id=prediction.request_id,
            model_name=self.model_name,
            model_version=self.model_version,
            features=features,
            score=prediction.score,
            label=prediction.label,
        )
        try:
            self._write(lambda conn: record_predictions(conn, [record]))
        except psycopg2.Error as exc:
            return self._store_down(exc)
        return prediction

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest, output_spec=FeedbackReceipt)
    def feedback(self, request_id: str, label: int) -> FeedbackReceipt | JSONResponse:
        """Record the ground truth for an earlier prediction (the latest different label wins).

        An unknown ``request_id`` answers 404 with ``{"error": ...}``. The response is built here
        because BentoML 1.4 renders the body of a raised 4xx exception as a one-element list.
        """
        from training.errors import NotFoundError
        from training.store import record_feedback

        try:
            outcome = self._write(lambda conn: record_feedback(conn, request_id, label))
        except NotFoundError as exc:
            return JSONResponse({"error": str(exc), "request_id": request_id}, status_code=404)
        except psycopg2.Error as exc:
            return self._store_down(exc)
        return FeedbackReceipt(request_id=request_id, label=label, status=outcome.status)
