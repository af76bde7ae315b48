"""The served model's request and response schemas, made from the spec saved with that model.

The service (:mod:`bentos.service`) declares its APIs with these models and the hot path
(:mod:`bentos.hotpath`) validates HTTP bodies with the same ones, so every way into the service
refuses the same input with the same errors.
"""

from __future__ import annotations

from typing import Any, Literal

import bentoml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
)

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


def _refuse_nul(cls: type[BaseModel], value: Any) -> Any:
    # PostgreSQL cannot store U+0000 in text or jsonb: refuse it here, as a 400 naming the field,
    # rather than fail the insert with a 500.
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


# What _refuse_nul lets through, as the document says it (a client or a fuzzer reading the schema
# then never sends what the service refuses).
NO_NUL = "^[^\\u0000]*$"


def _no_nul_schema(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        for option in [prop, *prop.get("anyOf", [])]:
            if option.get("type") == "string" and "enum" not in option:
                option["pattern"] = NO_NUL


# The spec's request schema (same name, fields and JSON schema), refusing what the store cannot hold.
Request = create_model(
    SPEC.request_model.__name__,
    __base__=SPEC.request_model,
    __validators__={"refuse_nul": field_validator("*")(_refuse_nul)},
)
Request.model_config["json_schema_extra"] = _no_nul_schema


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


def label_spelling(value: Label) -> str:
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
    texts = dict.fromkeys([*(label_spelling(v) for v in labels), "1", "0"])
    schema["anyOf"] = [
        {"type": "boolean"},
        {"type": "integer", "enum": sorted(numbers)},
        {"type": "string", "enum": list(texts)},
    ]


class FeedbackRequest(BaseModel):
    """The ground truth for one prediction; unknown fields are refused like the prediction's."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        min_length=1,
        max_length=128,
        description="the request_id of the prediction",
        json_schema_extra={"pattern": NO_NUL},
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
