"""The model spec: one description of a model from which serving, training and drift all derive."""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

__all__ = [
    "BUILTIN_SPEC",
    "DriftPolicy",
    "Feature",
    "GatePolicy",
    "ModelConfig",
    "ModelSpec",
    "SpecError",
    "load_spec",
]

BUILTIN_SPEC = Path(__file__).parent / "specs" / "churn.yaml"


class SpecError(ValueError):
    """A model spec that cannot be used; the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Feature(_Frozen):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    type: Literal["numeric", "categorical"]
    description: str = ""
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    nullable: bool = False

    @model_validator(mode="after")
    def _check_kind(self) -> Feature:
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs its known categories")
        if self.type == "numeric" and self.categories:
            raise ValueError(f"numeric feature {self.name!r} cannot list categories")
        return self


class ModelConfig(_Frozen):
    family: Literal["lightgbm", "logistic_regression"]
    threshold: float = Field(0.5, gt=0, lt=1)
    params: dict[str, Any] = Field(default_factory=dict)


class DriftPolicy(_Frozen):
    share_threshold: float = Field(0.3, gt=0, le=1)
    # Evidently picks a test per column by type and size when these are unset.
    method: str | None = None
    column_threshold: float | None = Field(None, gt=0)
    max_performance_drop: float = Field(0.05, ge=0)
    max_rows: int = Field(20000, ge=100)


class GatePolicy(_Frozen):
    min_labelled_rows: int = Field(500, ge=10)
    holdout_fraction: float = Field(0.3, gt=0, lt=1)
    min_auc: float = Field(0.6, ge=0, le=1)
    min_auc_gain: float = 0.0
    max_log_loss_increase: float = Field(0.02, ge=0)


class ModelSpec(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    target: str
    positive_label: int = 1
    features: tuple[Feature, ...] = Field(min_length=1)
    model: ModelConfig
    drift: DriftPolicy = DriftPolicy()
    gates: GatePolicy = GatePolicy()

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))

    @model_validator(mode="after")
    def _unique_names(self) -> ModelSpec:
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"feature names repeat: {', '.join(duplicated)}")
        if self.target in names:
            raise ValueError(f"target {self.target!r} is also listed as a feature")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [f.name for f in self.features if f.type == "numeric"]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if f.type == "categorical"]

    @cached_property
    def request_model(self) -> type[BaseModel]:
        """The serving request schema: one field per feature, unknown fields refused.

        Numeric fields refuse NaN and infinity and keep to the spec's bounds. Categorical fields
        accept values outside the known categories, because new categories are exactly the drift
        the loop must see; the model maps them to "unknown".
        """
        fields: dict[str, Any] = {}
        for feature in self.features:
            annotation: Any
            if feature.type == "numeric":
                annotation = float
                # Strict: a JSON number only, not `true` or "60" quietly turned into one.
                constraints: dict[str, Any] = {"allow_inf_nan": False, "strict": True}
                if feature.min is not None and math.isfinite(feature.min):
                    constraints["ge"] = feature.min
                if feature.max is not None and math.isfinite(feature.max):
                    constraints["le"] = feature.max
            else:
                annotation = str
                constraints = {"min_length": 1, "max_length": 64}
            if feature.nullable:
                annotation = annotation | None
                constraints["default"] = None
            fields[feature.name] = (
                annotation,
                Field(
                    description=feature.description,
                    examples=[self.example_request()[feature.name]],
                    **constraints,
                ),
            )
        return create_model(
            f"{self.name.title().replace('-', '').replace('_', '')}Request",
            __config__=ConfigDict(extra="forbid", strict=False),
            **fields,
        )

    def example_request(self) -> dict[str, Any]:
        """A valid request body, for docs, clients and smoke tests."""
        example: dict[str, Any] = {}
        for feature in self.features:
            if feature.type == "numeric":
                low = feature.min if feature.min is not None else 0.0
                high = feature.max if feature.max is not None else low + 1.0
                example[feature.name] = round(low + (high - low) / 4, 2)
            else:
                example[feature.name] = feature.categories[0]
        return example


def load_spec(path: Path | None = None) -> ModelSpec:
    """Read a model spec YAML (the built-in churn spec when ``path`` is None).

    Raises:
        SpecError: the file is missing, is not YAML, or a field is wrong (the message names it).
    """
    source = path or BUILTIN_SPEC
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise SpecError(f"model spec {source}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"model spec {source}: not valid YAML ({exc})") from exc
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SpecError(f"model spec {source}: {problems}") from exc
