"""Approval before promotion, without Airflow: who decides, what the person sees, how an answer reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from training.approval import approval_required, request, review_of, run_timeout
from training.settings import Settings
from training.spec import ModelSpec, load_spec
from training.steps import Built, Validation


def _spec(approval: bool, hours: float = 12) -> ModelSpec:
    spec = load_spec()
    return spec.model_copy(
        update={
            "promotion": spec.promotion.model_copy(
                update={"approval": approval, "approval_timeout_hours": hours}
            )
        }
    )


def test_approval_is_off_by_default_and_the_param_overrides_the_spec_either_way() -> None:
    assert load_spec().promotion.approval is False
    assert approval_required(_spec(False), None) is False
    assert approval_required(_spec(True), None) is True
    assert approval_required(_spec(False), True) is True
    assert approval_required(_spec(True), False) is False


def test_a_run_that_may_wait_for_a_person_gets_that_long_on_top() -> None:
    settings = Settings(retrain_timeout_hours=6)
    assert run_timeout(settings, _spec(False)) == timedelta(hours=6)
    assert run_timeout(settings, _spec(True, hours=4)) == timedelta(hours=10)


def test_the_spec_refuses_a_timeout_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="approval_timeout_hours"):
        ModelSpec.model_validate(
            {**load_spec().model_dump(), "promotion": {"approval_timeout_hours": 0}}
        )


def test_an_answer_reads_as_who_said_what_and_why() -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    approved = review_of(
        {
            "chosen_options": ["Approve"],
            "params_input": {"comment": "  fine\nby me "},
            "responded_by_user": {"id": "7", "name": "ana"},
            "responded_at": at,
        }
    )
    assert approved.approved
    assert approved.verdict == "approved by ana: fine by me"
    assert approved.at == at.isoformat()

    rejected = review_of(
        {"chosen_options": ["Reject"], "params_input": {"comment": None}, "responded_by_user": None}
    )
    assert not rejected.approved
    assert rejected.verdict == "rejected by an unknown user"

    long = review_of(
        {
            "chosen_options": ["Reject"],
            "params_input": {"comment": "x" * 2000},
            "responded_by_user": {"id": "u1"},
        }
    )
    assert long.by == "u1"
    assert len(long.comment) == 500


@pytest.mark.parametrize("chosen", [[], ["Approve", "Reject"], ["Maybe"]])
def test_an_answer_that_is_not_one_option_is_refused(chosen: list[str]) -> None:
    with pytest.raises(ValueError, match="one of \\['Approve', 'Reject'\\]"):
        review_of({"chosen_options": chosen})


def test_the_request_shows_both_models_metrics_the_gates_and_the_bento() -> None:
    validation = Validation(
        passed=True,
        reason="passed",
        challenger_tag="churn:new",
        champion_tag="churn:old",
        challenger={"roc_auc": 0.81234, "log_loss": 0.4},
        champion={"roc_auc": 0.7, "log_loss": 0.45},
        gates=[{"name": "min_auc", "passed": True, "detail": "ROC AUC 0.8123 vs required 0.65"}],
    )
    built = Built(challenger_tag="churn:new", bento_tag="churn_service:abc")
    asked = request(load_spec(), validation, built)
    assert asked.subject == "Promote churn:new to champion of churn?"
    assert "| roc_auc | 0.8123 | 0.7000 |" in asked.body
    assert "- passed: ROC AUC 0.8123 vs required 0.65" in asked.body
    assert "`churn_service:abc`" in asked.body
    assert "`churn:old`" in asked.body
