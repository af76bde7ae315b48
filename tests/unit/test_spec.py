"""The model spec: the built-in one loads, bad specs are refused by field, the request schema holds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.spec import SpecError, load_spec


def test_builtin_spec_describes_the_churn_model() -> None:
    spec = load_spec()
    assert spec.name == "churn"
    assert spec.target == "churned"
    assert set(spec.categorical_features) == {"contract", "payment_method", "region"}
    assert len(spec.numeric_features) == 5


def test_example_request_is_valid() -> None:
    spec = load_spec()
    request = spec.request_model(**spec.example_request())
    assert request.model_dump() == pytest.approx(spec.example_request())


@pytest.mark.parametrize(
    ("change", "field", "error_type"),
    [
        ({"age": math.nan}, "age", "finite_number"),
        ({"age": math.inf}, "age", "finite_number"),
        ({"age": "old"}, "age", "float_type"),
        ({"age": "60"}, "age", "float_type"),
        ({"age": True}, "age", "float_type"),
        ({"age": 200}, "age", "less_than_equal"),
        ({"tenure_months": -1}, "tenure_months", "greater_than_equal"),
        ({"contract": ""}, "contract", "string_too_short"),
        ({"favourite_colour": "red"}, "favourite_colour", "extra_forbidden"),
    ],
)
def test_request_schema_names_the_bad_field(
    change: dict[str, object], field: str, error_type: str
) -> None:
    spec = load_spec()
    with pytest.raises(ValidationError) as caught:
        spec.request_model(**(spec.example_request() | change))
    errors = caught.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [((field,), error_type)]


def test_missing_field_is_named() -> None:
    spec = load_spec()
    body = spec.example_request()
    del body["region"]
    with pytest.raises(ValidationError) as caught:
        spec.request_model(**body)
    assert caught.value.errors()[0]["loc"] == ("region",)


def test_unseen_category_is_accepted_because_it_is_drift_to_observe() -> None:
    spec = load_spec()
    request = spec.request_model(**(spec.example_request() | {"region": "atlantis"}))
    assert request.model_dump()["region"] == "atlantis"


def test_bad_spec_file_names_file_and_field(tmp_path: Path) -> None:
    source = Path(__file__).parents[2] / "training" / "specs" / "churn.yaml"
    broken = tmp_path / "broken.yaml"
    broken.write_text(source.read_text().replace("family: lightgbm", "family: xgboostish"))
    with pytest.raises(SpecError, match=r"broken\.yaml: model\.family"):
        load_spec(broken)


def test_duplicate_feature_names_are_refused(tmp_path: Path) -> None:
    source = Path(__file__).parents[2] / "training" / "specs" / "churn.yaml"
    broken = tmp_path / "dup.yaml"
    broken.write_text(source.read_text().replace("name: age", "name: tenure_months"))
    with pytest.raises(SpecError, match="feature names repeat: tenure_months"):
        load_spec(broken)


def test_missing_spec_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read it"):
        load_spec(tmp_path / "nope.yaml")


def test_labels_accept_numpy_scalars_as_a_column_gives_them() -> None:
    import numpy as np

    spec = load_spec()
    assert [spec.label_of(v) for v in (np.int64(1), np.bool_(False), np.float64(0.0))] == [1, 0, 0]
