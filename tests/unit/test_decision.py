"""Every retrain/skip rule of :func:`training.decision.decide`, on tiny values."""

from __future__ import annotations

import pandas as pd
import pytest

from training.decision import LiveCheck, decide, judgeable, relation_changed
from training.drift import ColumnDrift, DriftResult
from training.spec import ModelSpec, load_spec


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec()  # min_labelled_rows 500, share_threshold 0.3, max_performance_drop 0.05


def _drift(
    share: float, label_moved: bool = False, scores_moved: bool | None = None
) -> DriftResult:
    columns = tuple(
        ColumnDrift(f"f{i}", "wasserstein", 0.2 if i < share * 10 else 0.01, 0.1, i < share * 10)
        for i in range(10)
    )
    target = ColumnDrift("churned", "jensenshannon", 0.3 if label_moved else 0.01, 0.1, label_moved)
    return DriftResult(
        rows_reference=1000,
        rows_current=1000,
        drift_share=share,
        drifted=share >= 0.3,
        columns=columns,
        target=target,
        prediction=None
        if scores_moved is None
        else ColumnDrift(
            "__prediction__", "K-S + Wasserstein", 0.25 if scores_moved else 0.02, 0.1, scores_moved
        ),
    )


def _decide(spec: ModelSpec, **changes: object) -> tuple[str, str]:
    args: dict[str, object] = {
        "labelled_rows": 1000,
        "has_champion": True,
        "drift": _drift(0.0),
        "live": LiveCheck(0.80, 0.79),
        "unjudgeable": None,
        "force": False,
    } | changes
    verdict = decide(spec, **args)  # type: ignore[arg-type]
    return verdict.decision, verdict.reason


def test_too_few_labels_skip_even_when_forced(spec: ModelSpec) -> None:
    assert _decide(spec, labelled_rows=499, force=True) == (
        "skip",
        "too few labelled rows: 499 in the window, 500 needed",
    )


def test_an_unjudgeable_holdout_skips_even_when_forced(spec: ModelSpec) -> None:
    decision, reason = _decide(spec, unjudgeable="holds only class 0", force=True)
    assert (decision, reason) == ("skip", "cannot judge a challenger: holds only class 0")


def test_force_retrains_and_keeps_the_reasons(spec: ModelSpec) -> None:
    assert _decide(spec, force=True) == ("retrain", "forced by the run's params")
    decision, reason = _decide(spec, force=True, drift=_drift(0.4))
    assert decision == "retrain"
    assert reason.startswith("forced by the run's params (feature drift in 40% of columns")


def test_no_champion_retrains(spec: ModelSpec) -> None:
    assert _decide(spec, has_champion=False, drift=None, live=None) == (
        "retrain",
        "no champion yet",
    )


def test_feature_drift_at_the_threshold_retrains_and_names_the_columns(spec: ModelSpec) -> None:
    decision, reason = _decide(spec, drift=_drift(0.3))
    assert decision == "retrain"
    assert reason == "feature drift in 30% of columns: f0, f1, f2"
    assert _decide(spec, drift=_drift(0.2))[0] == "skip"


def test_a_moved_label_retrains(spec: ModelSpec) -> None:
    assert _decide(spec, drift=_drift(0.0, label_moved=True)) == (
        "retrain",
        "label distribution moved (jensenshannon 0.300)",
    )


def test_a_performance_drop_past_the_limit_retrains(spec: ModelSpec) -> None:
    assert _decide(spec, live=LiveCheck(0.80, 0.74)) == (
        "retrain",
        "champion ROC AUC fell 0.060 (from 0.800 to 0.740)",
    )
    assert _decide(spec, live=LiveCheck(0.80, 0.76))[0] == "skip"  # 0.04 <= 0.05


def test_every_reason_is_given(spec: ModelSpec) -> None:
    _, reason = _decide(spec, drift=_drift(0.5, label_moved=True), live=LiveCheck(0.9, 0.7))
    assert reason.count(";") == 2


def test_nothing_moved_skips(spec: ModelSpec) -> None:
    assert _decide(spec) == ("skip", "no drift and the champion holds its accuracy")


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ([], "no labelled rows"),
        ([0] * 50, "holds only class 0"),
        ([1] * 46 + [0] * 4, "has 4 row(s) of class 0, 5 needed"),
        ([1] * 45 + [0] * 5, None),
    ],
)
def test_judgeable_names_what_a_holdout_lacks(labels: list[int], problem: str | None) -> None:
    found = judgeable(pd.DataFrame({"y": pd.Series(labels, dtype="int64")}), "y")
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def _scores_retrain(spec: ModelSpec) -> ModelSpec:
    data = spec.model_dump()
    return ModelSpec.model_validate(
        {**data, "drift": {**data["drift"], "prediction_retrains": True}}
    )


def test_moved_scores_alone_do_not_retrain_by_default(spec: ModelSpec) -> None:
    assert _decide(spec, drift=_drift(0.0, scores_moved=True)) == (
        "skip",
        "no drift and the champion holds its accuracy",
    )


def test_moved_scores_retrain_and_say_by_how_much(spec: ModelSpec) -> None:
    spec = _scores_retrain(spec)
    decision, reason = _decide(spec, drift=_drift(0.0, scores_moved=True))
    assert (decision, reason) == (
        "retrain",
        "the champion's scores moved (Wasserstein 0.250 reference σ, >= 0.100)",
    )
    assert _decide(spec, drift=_drift(0.0, scores_moved=False))[0] == "skip"
    # Without a champion to score with, there is no prediction drift to weigh.
    assert _decide(spec, drift=_drift(0.0, scores_moved=None))[0] == "skip"


def test_moved_scores_join_the_other_reasons(spec: ModelSpec) -> None:
    spec = _scores_retrain(spec)
    decision, reason = _decide(
        spec, drift=_drift(0.3, label_moved=True, scores_moved=True), live=LiveCheck(0.80, 0.70)
    )
    assert decision == "retrain"
    assert reason.split("; ")[1] == (
        "the champion's scores moved (Wasserstein 0.250 reference σ, >= 0.100)"
    )
    assert len(reason.split("; ")) == 4


def test_the_relation_changed_only_past_the_allowed_drop(spec: ModelSpec) -> None:
    assert spec.drift.max_performance_drop == 0.05
    assert relation_changed(spec, None) is None
    assert relation_changed(spec, LiveCheck(0.80, 0.76)) is None
    assert relation_changed(spec, LiveCheck(0.80, 0.74)) == "its live ROC AUC fell 0.060"
