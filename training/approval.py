"""A person's approval before a promotion: whether a run asks for one, what it shows the person,
and how their answer reads.

Airflow-free: the retrain DAG's ``approve_promotion`` task (Airflow's human-in-the-loop
``HITLOperator``) shows :func:`request` in the UI's Required Actions and hands the answer on to
``promote``, which records it through :mod:`training.retrain` (:func:`~training.retrain.promote`
with the approver, or :func:`~training.retrain.record_rejection`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from training.settings import Settings
from training.spec import ModelSpec
from training.steps import Built, Validation

__all__ = [
    "APPROVE",
    "OPTIONS",
    "REJECT",
    "ApprovalRequest",
    "Review",
    "approval_required",
    "request",
    "review_of",
    "run_timeout",
]

APPROVE = "Approve"
REJECT = "Reject"
# The answers the person picks from, as the Required Actions page shows them.
OPTIONS = [APPROVE, REJECT]
MAX_COMMENT = 500


def approval_required(spec: ModelSpec, requested: bool | None) -> bool:
    """Whether this run waits for a person: the run's ``require_approval`` param when it was set
    (true or false), else the spec's ``promotion.approval``."""
    return spec.promotion.approval if requested is None else requested


def run_timeout(settings: Settings, spec: ModelSpec) -> timedelta:
    """How long a retrain run of ``spec``'s model may take before Airflow fails it (and the next
    run closes its training run): ``DRIFTLOOP_RETRAIN_TIMEOUT_HOURS``, plus the time a person is
    given to answer when the spec asks for approval. (A run whose approval only the param switched
    on keeps the shorter bound, which ends a longer wait first.)"""
    hours = settings.retrain_timeout_hours
    if spec.promotion.approval:
        hours += spec.promotion.approval_timeout_hours
    return timedelta(hours=hours)


@dataclass(frozen=True)
class ApprovalRequest:
    """What the Required Actions page shows: a one-line subject and a Markdown body."""

    subject: str
    body: str


def _metric(values: Mapping[str, float] | None, name: str) -> str:
    if not values or name not in values:
        return "-"
    return f"{values[name]:.4f}"


def request(spec: ModelSpec, validation: Validation, built: Built) -> ApprovalRequest:
    """The approval request for a challenger that passed its gates and has its Bento (and image)."""
    champion = validation.champion_tag or "no champion yet"
    rows = [
        "| metric | challenger | champion |",
        "|---|---|---|",
        *(
            f"| {name} | {_metric(validation.challenger, name)} | "
            f"{_metric(validation.champion, name)} |"
            for name in ("roc_auc", "log_loss")
        ),
    ]
    gates = [
        f"- {'passed' if gate.get('passed') else 'FAILED'}: {gate.get('detail', gate.get('name'))}"
        for gate in validation.gates
    ]
    image = built.image or f"none ({built.image_skipped or 'not built'})"
    body = "\n".join(
        [
            f"Challenger `{validation.challenger_tag}` passed its gates against `{champion}` on the"
            " same holdout. **Approve** makes it the champion of "
            f"`{spec.name}`; **Reject** keeps the champion and rejects the challenger.",
            "",
            *rows,
            "",
            *gates,
            "",
            f"Bento `{built.bento_tag}`, image {image}.",
            "",
            "Say why in the comment: it is recorded with your answer.",
        ]
    )
    return ApprovalRequest(
        subject=f"Promote {validation.challenger_tag} to champion of {spec.name}?", body=body
    )


@dataclass(frozen=True)
class Review:
    """A person's answer to an approval request."""

    approved: bool
    by: str
    comment: str
    at: str | None

    @property
    def verdict(self) -> str:
        """``approved by <who>`` or ``rejected by <who>``, then ``: <comment>`` when there is one."""
        said = f"{'approved' if self.approved else 'rejected'} by {self.by}"
        return f"{said}: {self.comment}" if self.comment else said


def review_of(response: Mapping[str, Any]) -> Review:
    """Read the approval task's result (Airflow's HITL response: ``chosen_options``,
    ``params_input``, ``responded_by_user``, ``responded_at``).

    Raises:
        ValueError: the answer is not exactly one of :data:`OPTIONS`.
    """
    chosen = list(response.get("chosen_options") or [])
    if chosen not in ([APPROVE], [REJECT]):
        raise ValueError(f"an approval answer is one of {OPTIONS}, got {chosen}")
    user = response.get("responded_by_user") or {}
    by = str(user.get("name") or user.get("id") or "an unknown user")
    comment = str((response.get("params_input") or {}).get("comment") or "")
    at = response.get("responded_at")
    return Review(
        approved=chosen == [APPROVE],
        by=by,
        # One line, and short: it ends up in a record's reason.
        comment=" ".join(comment.split())[:MAX_COMMENT],
        at=at.isoformat() if isinstance(at, datetime) else None if at is None else str(at),
    )
