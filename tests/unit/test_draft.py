"""Drafting a spec from a user's table: types, bounds, labels, what is left out, and the YAML."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.usertable import telco_table
from training.draft import MAX_CATEGORIES, Draft, DraftError, draft_spec, name_from_path
from training.sources import read_table
from training.spec import Feature, load_spec

TELCO_TYPES = {
    "gender": "categorical",
    "SeniorCitizen": "categorical",
    "Partner": "categorical",
    "tenure": "numeric",
    "InternetService": "categorical",
    "Contract": "categorical",
    "PaymentMethod": "categorical",
    "MonthlyCharges": "numeric",
    "TotalCharges": "numeric",
}


def _telco() -> pd.DataFrame:
    """The telco table with some payment methods missing too (TotalCharges has its blanks)."""
    frame = telco_table(rows=1500)
    frame.loc[frame.index % 9 == 0, "PaymentMethod"] = None
    return frame


@pytest.fixture(params=["csv", "parquet"])
def telco_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    frame = _telco()
    if request.param == "csv":
        path = tmp_path / "telco.csv"
        frame.to_csv(path, index=False)
    else:
        # As a typed Parquet file holds it: blanks are nulls, the signup a timestamp column.
        frame["TotalCharges"] = pd.to_numeric(frame["TotalCharges"], errors="coerce")
        path = tmp_path / "telco.parquet"
        frame.to_parquet(path)
    return path


def _draft(
    frame: pd.DataFrame,
    target: str = "Churn",
    *,
    name: str = "telco",
    positive: str | None = None,
    time_column: str | None = None,
) -> Draft:
    return draft_spec(frame, target, name=name, positive=positive, time_column=time_column)


def _feature(draft: Draft, name: str) -> Feature:
    return next(f for f in draft.spec.features if f.name == name)


def test_telco_file_drafts_the_types_a_person_would(telco_file: Path) -> None:
    draft = _draft(read_table(telco_file), time_column="signup_date")
    spec = draft.spec
    assert {f.name: f.type for f in spec.features} == TELCO_TYPES
    assert spec.target == "Churn"
    assert spec.time_column == "signup_date"
    assert _feature(draft, "TotalCharges").nullable
    assert _feature(draft, "PaymentMethod").nullable
    assert not _feature(draft, "tenure").nullable
    assert not _feature(draft, "MonthlyCharges").nullable
    assert _feature(draft, "SeniorCitizen").categories == ("0", "1")
    assert _feature(draft, "Contract").categories == ("Month-to-month", "One year", "Two year")
    assert {left.column: left.reason for left in draft.left_out} == {
        "customerID": "a distinct value per row (an id)",
        "signup_date": "the time column",
    }


def test_labels_keep_the_data_s_spelling(telco_file: Path) -> None:
    spec = _draft(read_table(telco_file)).spec
    assert spec.positive_label == "Yes"
    assert spec.negative_label == "No"
    assert isinstance(spec.positive_label, str)


def test_numeric_bounds_have_a_margin_and_stay_non_negative(telco_file: Path) -> None:
    draft = _draft(read_table(telco_file))
    tenure = _feature(draft, "tenure")
    assert (tenure.min, tenure.max) == (0, 80)  # seen 0 .. 72, plus 10% rounded outwards
    for item in draft.features:
        if item.seen is None:
            continue
        low, high = item.seen
        span = high - low
        lower, upper = item.feature.min, item.feature.max
        assert lower is not None
        assert upper is not None
        assert high + 0.1 * span <= upper <= high + 0.12 * span, item.feature.name
        assert lower >= 0, item.feature.name  # the telco numbers have no negatives
        assert lower == 0 or low - 0.12 * span <= lower <= low - 0.1 * span, item.feature.name
    assert _feature(draft, "MonthlyCharges").min > 0


def test_negative_data_keeps_its_margin_below() -> None:
    frame = pd.DataFrame({"balance": np.linspace(-50, 150, 40), "churned": ["yes", "no"] * 20})
    balance = _draft(frame, "churned").spec.features[0]
    assert (balance.min, balance.max) == (-70, 170)


def test_blank_text_is_missing_in_a_numeric_column() -> None:
    frame = pd.DataFrame(
        {
            "amount": [" ", "", None, "  \t"] + [str(i * 1.5) for i in range(36)],
            "churned": ["yes", "no"] * 20,
        }
    )
    amount = _draft(frame, "churned").features[0]
    assert amount.feature.type == "numeric"
    assert amount.feature.nullable
    assert amount.missing == 4


def test_the_yaml_quotes_strings_and_loads_back_equal(telco_file: Path, tmp_path: Path) -> None:
    draft = _draft(read_table(telco_file), time_column="signup_date")
    assert "positive_label: 'Yes'" in draft.text
    assert "negative_label: 'No'" in draft.text
    assert "categories: ['No', 'Yes']" in draft.text
    assert "categories: ['0', '1']" in draft.text
    raw = yaml.safe_load(draft.text)
    partner = next(f for f in raw["features"] if f["name"] == "Partner")
    assert partner["categories"] == ["No", "Yes"]
    path = tmp_path / "drafted.yaml"
    path.write_text(draft.text)
    assert load_spec(path) == draft.spec


def test_awkward_names_and_categories_survive_the_round_trip(tmp_path: Path) -> None:
    rows = 60
    frame = pd.DataFrame(
        {
            "On": ["it's", "Yes", "tab\there", "null", "#1: a", "Ünïcode"] * (rows // 6),
            "No": np.arange(rows) % 13 * 2.5,
            "target": [True, False] * (rows // 2),
        }
    )
    draft = _draft(frame, "target")
    path = tmp_path / "awkward.yaml"
    path.write_text(draft.text)
    spec = load_spec(path)
    assert spec == draft.spec
    assert spec.feature_names == ["On", "No"]
    assert set(spec.features[0].categories) == {
        "it's",
        "Yes",
        "tab\there",
        "null",
        "#1: a",
        "Ünïcode",
    }
    assert spec.positive_label is True
    assert spec.negative_label is False


def test_categories_are_capped_at_the_most_frequent(tmp_path: Path) -> None:
    rows = 2000
    # 50 values 30 times each, then 120 rarer ones about 4 times each.
    city = [f"big {i % MAX_CATEGORIES}" for i in range(MAX_CATEGORIES * 30)]
    city += [f"small {i % 120}" for i in range(rows - len(city))]
    frame = pd.DataFrame({"city": city, "churned": [1, 0] * (rows // 2)})
    draft = _draft(frame, "churned")
    feature = draft.spec.features[0]
    assert len(feature.categories) == MAX_CATEGORIES
    assert set(feature.categories) == {f"big {i}" for i in range(MAX_CATEGORIES)}
    assert any(f"the {MAX_CATEGORIES} most frequent" in note for note in draft.notes)
    path = tmp_path / "capped.yaml"
    path.write_text(draft.text)
    assert load_spec(path) == draft.spec
    assert max(len(line) for line in draft.text.splitlines() if "'big" in line) <= 100


def test_columns_that_are_not_identifiers_are_left_out_with_a_rename() -> None:
    frame = pd.DataFrame(
        {
            "Monthly Charges": np.arange(40) * 1.5,
            "tenure": np.arange(40) % 20,
            "churned": ["Yes", "No"] * 20,
        }
    )
    draft = _draft(frame, "churned")
    assert draft.spec.feature_names == ["tenure"]
    assert draft.left_out[0].column == "Monthly Charges"
    assert "Monthly_Charges" in draft.left_out[0].reason


def test_ids_constants_and_timestamps_are_left_out() -> None:
    rows = 40
    frame = pd.DataFrame(
        {
            "RowNumber": np.arange(1, rows + 1),
            "country": ["FR"] * rows,
            "seen_at": pd.date_range("2026-01-01", periods=rows, freq="h").astype(str),
            "score": np.arange(rows) * 0.7,
            "churned": ["Yes", "No"] * (rows // 2),
        }
    )
    draft = _draft(frame, "churned")
    assert draft.spec.feature_names == ["score"]
    reasons = {left.column: left.reason for left in draft.left_out}
    assert set(reasons) == {"RowNumber", "country", "seen_at"}
    assert "id" in reasons["RowNumber"]
    assert "one value" in reasons["country"]
    assert "timestamps" in reasons["seen_at"]
    assert any("--time-column" in note and "seen_at" in note for note in draft.notes)


@pytest.mark.parametrize(
    ("values", "positive", "negative"),
    [
        (["yes", "no"], "yes", "no"),
        (["TRUE", "FALSE"], "TRUE", "FALSE"),
        ([True, False], True, False),
        ([1, 0], 1, 0),
        ([1.0, 0.0], 1, 0),
        (["0", "1"], "1", "0"),
    ],
)
def test_obvious_positive_labels_are_inferred(
    values: list[object], positive: object, negative: object
) -> None:
    frame = pd.DataFrame({"x": np.arange(40) * 1.0, "y": values * 20})
    spec = _draft(frame, "y").spec
    assert (spec.positive_label, spec.negative_label) == (positive, negative)
    assert type(spec.positive_label) is type(positive)


def test_positive_chooses_among_other_values() -> None:
    spec = _draft(_telco(), "gender", positive="female").spec
    assert (spec.positive_label, spec.negative_label) == ("Female", "Male")


def test_min_labelled_rows_fits_the_table() -> None:
    small = pd.DataFrame({"x": np.arange(60) * 1.0, "y": ["Yes", "No"] * 30})
    assert _draft(small, "y").spec.gates.min_labelled_rows == 15
    tiny = small.head(12)
    assert _draft(tiny, "y").spec.gates.min_labelled_rows <= 12
    assert _draft(_telco()).spec.gates.min_labelled_rows == 1500 // 4
    assert _draft(telco_table(rows=3000)).spec.gates.min_labelled_rows == 500


def test_model_settings_are_the_builtin_spec_s() -> None:
    assert _draft(_telco()).spec.model == load_spec().model


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "Nope"}, "no target column 'Nope'"),
        ({"target": "Contract"}, "target 'Contract' has 3 values"),
        ({"target": "gender"}, "target 'gender' has values 'Male', 'Female': say which"),
        ({"target": "gender", "positive": "x"}, "--positive 'x' is not a value of target 'gender'"),
        ({"target": "Churn", "time_column": "Nope"}, "no time column 'Nope'"),
        ({"target": "Churn", "time_column": "Contract"}, "time column 'Contract' holds"),
        ({"target": "Churn", "time_column": "tenure"}, "time column 'tenure' holds numbers"),
        ({"target": "Churn", "name": "Telco"}, "model name 'Telco'"),
    ],
)
def test_errors_name_the_column_and_what_to_do(kwargs: dict[str, object], message: str) -> None:
    frame = _telco()
    frame["gender"] = np.where(np.arange(len(frame)) % 3 == 0, "Female", "Male")
    with pytest.raises(DraftError, match=re.escape(message)):
        _draft(frame, **kwargs)  # type: ignore[arg-type]


def test_a_target_with_one_value_is_refused() -> None:
    frame = pd.DataFrame({"x": np.arange(40) * 1.0, "y": ["No"] * 38 + [None, " "]})
    with pytest.raises(DraftError, match=r"target 'y' has one value \('No'\)"):
        _draft(frame, "y")


def test_missing_target_values_are_not_a_third_value() -> None:
    frame = pd.DataFrame({"x": np.arange(40) * 1.0, "y": ["Yes", "No"] * 19 + [None, ""]})
    draft = _draft(frame, "y")
    assert draft.labelled_rows == 38
    assert any("have no y value" in note for note in draft.notes)


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("telco.csv", "telco"),
        ("WA_Fn-UseC_-Telco-Customer-Churn.csv", "wa_fn-usec_-telco-customer-churn"),
        ("Churn Data.csv.gz", "churn_data"),
        ("2024.parquet", "model_2024"),
    ],
)
def test_name_from_path(file: str, name: str) -> None:
    assert name_from_path(Path(file)) == name


def test_a_time_column_train_would_refuse_is_refused_here_too() -> None:
    """init, train and backfill read times by one rule: ISO 8601, never a guessed 01/02/2026."""
    table = telco_table(300)
    table["signup_date"] = table["signup_date"].astype(str)
    table.loc[5, "signup_date"] = "01/02/2026"
    with pytest.raises(DraftError, match="'01/02/2026' is not a timestamp"):
        draft_spec(table, "Churn", name="telco", time_column="signup_date")


def test_a_code_column_with_gaps_drafts_and_trains_as_the_codes_requests_send(
    tmp_path: Path,
) -> None:
    """Parquet holds an integer column with gaps as floats; its categories are "0"/"1", not "0.0"."""
    from training.features import feature_frame

    table = telco_table(300)
    table["SeniorCitizen"] = table["SeniorCitizen"].astype("float64")
    table.loc[3, "SeniorCitizen"] = np.nan
    table["TotalCharges"] = pd.to_numeric(table["TotalCharges"], errors="coerce")
    path = tmp_path / "telco.parquet"
    table.to_parquet(path)
    draft = draft_spec(read_table(path), "Churn", name="telco")
    [senior] = [f for f in draft.spec.features if f.name == "SeniorCitizen"]
    assert senior.categories == ("0", "1")
    assert senior.nullable
    assert set(feature_frame(draft.spec, read_table(path))["SeniorCitizen"]) == {
        "0",
        "1",
        "__missing__",
    }
