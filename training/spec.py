"""The model spec: one description of a model from which serving, training and drift all derive."""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

__all__ = [
    "BUILTIN_SPEC",
    "DriftPolicy",
    "Feature",
    "GatePolicy",
    "Label",
    "ModelConfig",
    "ModelSpec",
    "PromotionPolicy",
    "SpecError",
    "TrainingPolicy",
    "label_key",
    "load_spec",
]

BUILTIN_SPEC = Path(__file__).parent / "specs" / "churn.yaml"


class SpecError(ValueError):
    """A model spec that cannot be used; the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# A target value as the user's data has it: YAML and JSON give strings, numbers or booleans.
Label = bool | int | str

_YAML_BOOLEAN_TRAP = (
    "YAML reads unquoted yes/no/on/off/true/false as booleans; quote them, e.g. ['No', 'Yes']"
)


def label_key(value: Any) -> str:
    """How two spellings of a label compare: 1, 1.0, "1" and True are one value; text ignores case
    and surrounding spaces. (NumPy's booleans and floats count as Python's.)"""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    return str(value).strip().casefold()


class Feature(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["numeric", "categorical"]
    description: str = ""
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    # Missing values allowed: the request field may be null or absent, and training rows may lack it.
    nullable: bool = False

    @field_validator("categories", mode="before")
    @classmethod
    def _categories_as_text(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        if any(isinstance(item, bool) for item in value):
            raise ValueError(f"categories {list(value)} hold booleans: {_YAML_BOOLEAN_TRAP}")
        # Codes such as 0/1 or 2019 are categories too; requests send them as text.
        return tuple(str(item) if isinstance(item, int | float) else item for item in value)

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
    """When a window counts as drifted (docs/drift.md; training/drift_stats.py computes it).

    A column (feature, the champion's score, the label) drifts when its test's p-value is below
    ``alpha`` after ``correction`` across all of a window's tests AND its distance reaches the
    floor for its type: the test keeps small windows quiet, the floor large ones.
    """

    # Feature drift: this many drifted columns, or this share of them.
    min_drifted_columns: int = Field(1, ge=1)
    share_threshold: float = Field(0.3, gt=0, le=1)
    # The chance of any false alarm among one window's tests, and how it is split among them.
    alpha: float = Field(0.01, gt=0, lt=1)
    correction: Literal["holm", "bonferroni", "none"] = "holm"
    # Wasserstein distance in the reference's standard deviations (numbers, the score).
    numeric_min_distance: float = Field(0.1, ge=0)
    prediction_min_distance: float = Field(0.1, ge=0)
    # Jensen-Shannon distance of the frequencies (categories, the label).
    categorical_min_distance: float = Field(0.1, ge=0)
    label_min_distance: float = Field(0.05, ge=0)
    # Rows of each side the tests use (a seeded sample of the whole window past this): past it the
    # distance floors decide, and a sample's distance differs from the full data's by ~0.005.
    max_test_rows: int = Field(100_000, ge=1000)
    # Whether moved scores alone retrain. Off by default: the reference scores are the champion's
    # on its own training rows, more spread than on new rows when it trained on few (a no-drift DAG
    # run on a 3,000-row champion measured 0.12 sigma); the verdict is recorded either way.
    prediction_retrains: bool = False
    # Rows of each side the champion scores for prediction drift (a seeded sample past this).
    prediction_max_rows: int = Field(20_000, ge=1000)
    max_performance_drop: float = Field(0.05, ge=0)
    # Rows of each side in the HTML report only; the statistics use every row.
    max_rows: int = Field(20000, ge=100)

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, data: Any) -> Any:
        """Specs written before the policy had its own statistics carry Evidently's overrides;
        unset, they mean nothing now and are dropped; set, they are refused with the new names."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("method", "column_threshold"):
            if key in data and data.pop(key) is not None:
                raise ValueError(
                    f"drift.{key} is no longer used: the tests and distances are fixed per column "
                    "type; set alpha, correction and the *_min_distance floors instead"
                )
        return data


class TrainingPolicy(_Frozen):
    """What a challenger trains on.

    ``window``: the labelled window's older part only. ``window_and_reference``: that plus a sample
    of the champion's own training rows, so a retrain does not forget what the window happens not to
    show. ``auto`` (the default): the reference sample joins only while the champion still ranks the
    window well; once its live ROC AUC has fallen by more than ``drift.max_performance_drop``, the
    relation it learned is what changed, and its rows would teach the challenger the old one.
    Rows the champion trained on never enter the holdout either way.
    """

    data: Literal["auto", "window", "window_and_reference"] = "auto"
    # The reference sample's size, as a multiple of the window's training rows.
    reference_ratio: float = Field(1.0, gt=0, le=100)
    seed: int = 0


class GatePolicy(_Frozen):
    min_labelled_rows: int = Field(500, ge=10)
    holdout_fraction: float = Field(0.3, gt=0, lt=1)
    min_auc: float = Field(0.6, ge=0, le=1)
    min_auc_gain: float = 0.0
    max_log_loss_increase: float = Field(0.02, ge=0)


class PromotionPolicy(_Frozen):
    """Who decides that a challenger that passed its gates becomes the champion (docs/retrain.md).

    ``approval`` off (the default): the retrain DAG promotes it at once. On: a person approves or
    rejects it in Airflow's Required Actions first (the run's ``require_approval`` param overrides
    this for one run); nobody answering within ``approval_timeout_hours`` fails the run and
    rejects the challenger.
    """

    approval: bool = False
    approval_timeout_hours: float = Field(12.0, gt=0, le=24 * 7)


class ModelSpec(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    target: str
    # The target's values as the data spells them; feedback may use these or 1/0.
    positive_label: Label = 1
    negative_label: Label = 0
    # The data's event-time column (for a time-ordered holdout and for backfilled history).
    time_column: str | None = None
    features: tuple[Feature, ...] = Field(min_length=1)
    model: ModelConfig
    drift: DriftPolicy = DriftPolicy()
    gates: GatePolicy = GatePolicy()
    training: TrainingPolicy = TrainingPolicy()
    promotion: PromotionPolicy = PromotionPolicy()

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))

    @model_validator(mode="after")
    def _unique_names(self) -> ModelSpec:
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"feature names repeat: {', '.join(duplicated)}")
        if self.target in names:
            raise ValueError(f"target {self.target!r} is also listed as a feature")
        if self.time_column is not None and self.time_column in (*names, self.target):
            raise ValueError(f"time_column {self.time_column!r} is also a feature or the target")
        if label_key(self.positive_label) == label_key(self.negative_label):
            raise ValueError(
                f"positive_label and negative_label are the same value ({self.positive_label!r})"
            )
        return self

    def label_of(self, value: Any) -> int:
        """The 0/1 form of a target value given as the data spells it, or as 1/0.

        Raises:
            ValueError: neither label nor 0/1 (the message lists what is accepted).
        """
        if isinstance(value, np.generic):
            value = value.item()  # NumPy's scalars (a column's values) as Python's
        if value is not None and not isinstance(value, bool | int | float | str):
            raise ValueError(
                f"label must be a string, number or boolean, got {type(value).__name__}"
            )
        if value is not None:
            text = label_key(value)
            if text == label_key(self.positive_label):
                return 1
            if text == label_key(self.negative_label):
                return 0
            if text in ("0", "1"):
                return int(text)
            if isinstance(value, bool):
                return int(value)
        raise ValueError(
            f"label {value!r} is neither {self.positive_label!r} (positive) nor "
            f"{self.negative_label!r} (negative), nor 1/0"
        )

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
            f"{_where(raw, err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise SpecError(f"model spec {source}: {problems}") from exc


def _where(raw: Any, loc: tuple[int | str, ...]) -> str:
    """A validation error's location, with a feature named rather than numbered."""
    parts = [str(p) for p in loc]
    if len(loc) >= 2 and loc[0] == "features" and isinstance(loc[1], int):
        try:
            name = raw["features"][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            name = None
        if isinstance(name, str):
            parts[:2] = [f"feature {name!r}"]
    return ".".join(parts) or "(top level)"
