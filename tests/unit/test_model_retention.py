"""The retention rule (``training.model_retention.decide``) on tiny registries: what is kept, what
goes, and the reason given for each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from training.model_retention import Facts, decide
from training.registry import ModelVersion

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _v(
    version: int, status: str, promoted_day: int | None = None, bento: bool = True
) -> ModelVersion:
    return ModelVersion(
        model_name="churn",
        version=version,
        tag=f"churn:v{version}",
        status=status,  # type: ignore[arg-type]
        metrics={},
        train_data_uri=f"/a/v{version}.parquet",
        bento_tag=f"churn_service:v{version}" if bento else None,
        training_run_id=None,
        created_at=T0 + timedelta(days=version),
        promoted_at=None if promoted_day is None else T0 + timedelta(days=promoted_day),
    )


def _kept(verdicts: list) -> dict[int, bool]:  # type: ignore[type-arg]
    return {v.version.version: v.keep for v in verdicts}


# v1..v5 champions in turn (v5 now), v6 rejected, v7 a candidate.
REGISTRY = [
    _v(1, "retired", 1),
    _v(2, "retired", 2),
    _v(3, "retired", 3),
    _v(4, "retired", 4),
    _v(5, "champion", 5),
    _v(6, "rejected", bento=False),
    _v(7, "candidate", bento=False),
]


def test_the_champion_and_the_n_champions_before_it_stay() -> None:
    verdicts = decide(REGISTRY, Facts(), keep=2)
    assert _kept(verdicts) == {1: False, 2: False, 3: True, 4: True, 5: True, 6: False, 7: True}
    why = {v.version.version: v.why for v in verdicts}
    assert why[5] == "the champion"
    assert why[4] == "champion before the current one (#1 of 2 kept)"
    assert why[3] == "champion before the current one (#2 of 2 kept)"
    assert why[2] == "retired; champion #3 before the current one, 2 kept"
    assert why[6] == "rejected; never champion"
    assert why[7] == "a candidate: its run may still promote it"


def test_keep_zero_leaves_the_champion_only_and_order_follows_the_last_promotion() -> None:
    # v2 was champion again (a rollback) on day 9, after v3; v5 is champion since day 10: v2 is
    # the last champion before it.
    registry = [
        _v(1, "retired", 1),
        _v(2, "retired", 9),
        _v(3, "retired", 3),
        _v(5, "champion", 10),
    ]
    assert _kept(decide(registry, Facts(), keep=0)) == {1: False, 2: False, 3: False, 5: True}
    assert _kept(decide(registry, Facts(), keep=1)) == {1: False, 2: True, 3: False, 5: True}


def test_the_rollback_target_live_runs_and_deployed_bentos_stay_whatever_n() -> None:
    facts = Facts(
        rollback="churn:v1",
        live_runs={"churn:v6": "manual__1"},
        deployed={"churn_service:v2": "target default/driftloop (promoted)"},
    )
    verdicts = decide(REGISTRY, facts, keep=0)
    assert _kept(verdicts) == {1: True, 2: True, 3: False, 4: False, 5: True, 6: True, 7: True}
    why = {v.version.version: v.why for v in verdicts}
    assert why[1] == "the version `driftloop rollback` goes back to"
    assert why[2] == "its Bento is deployed: target default/driftloop (promoted)"
    assert why[6] == "used by the unfinished run manual__1"


def test_several_reasons_are_all_given() -> None:
    facts = Facts(rollback="churn:v4", deployed={"churn_service:v4": "target local (serving)"})
    [verdict] = [v for v in decide(REGISTRY, facts, keep=1) if v.version.version == 4]
    assert verdict.keep
    assert verdict.why == (
        "champion before the current one (#1 of 1 kept); the version `driftloop rollback` goes "
        "back to; its Bento is deployed: target local (serving)"
    )


def test_a_negative_keep_is_refused() -> None:
    with pytest.raises(ValueError, match="--keep must be 0 or more, got -1"):
        decide(REGISTRY, Facts(), keep=-1)
