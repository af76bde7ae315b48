"""
### driftloop: retrain on drift

One DAG per model of the deployment (`driftloop_retrain__<model>`, from the specs in the models
folder). Every day (or when triggered with params), for its model:

1. **extract** the labelled window `[end - window_days, end)` from the feedback store (`COPY` → Parquet);
2. **check_drift**: Evidently drift of the window against the champion's training data, the label's
   distribution, and the champion's ROC AUC on recent labels; decide *retrain* or *skip*, with the reason;
3. **train_challenger** on the older part of the window (and, by the spec's training policy, a
   sample of the champion's training rows); **validate** it against the champion on the newest
   part the champion never trained on (same holdout for both); a failed gate marks it *rejected*;
4. **build_bento** of a challenger that passed, **containerize** it (an OCI image, when
   `DRIFTLOOP_CONTAINERIZE` is on; skipped otherwise), then **promote** it to champion; with
   approval on (the spec's `promotion.approval`, or the `require_approval` param for one run),
   **approve_promotion** first waits for a person to approve or reject it in Required Actions
   (a rejection is recorded with who and why; no answer in time fails the run);
5. **rollout** the new champion to Kubernetes through a canary (when `DRIFTLOOP_ROLLOUT` is on;
   skipped otherwise): a failed rollout fails the task with the reason, without retries, and the
   champion it replaced is the champion again (docs/rollout.md).

Every step records what it did in PostgreSQL (`drift_runs`, `training_runs`, `model_versions`) and
can run again for the same run (a cleared task) without a second record, model or Bento. A failed
task is retried (`DRIFTLOOP_RETRAIN_RETRIES`, exponential backoff); once no retry remains, the run
is marked `failed` (with the step and the error) and its candidate `rejected`. A run going longer
than `DRIFTLOOP_RETRAIN_TIMEOUT_HOURS` fails, and the next run closes training runs a crash left
open. **promote** updates the Asset `driftloop://<model>/champion`: DAGs scheduled on it run after
every promotion. Params: `force` retrains whatever the drift check says (still gated);
`window_days` sets the window; `require_approval` on or off overrides the spec for this run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, Param, dag, task
from airflow.sdk.serde import allow_class

# Light (dataclasses only); the steps pass these to each other through XCom, which rebuilds only
# classes it was told to trust.
from training.steps import STEP_TYPES

if TYPE_CHECKING:
    from training.retrain import StepContext
    from training.spec import ModelSpec
    from training.steps import Built, Decision, Extracted, Promotion, Skipped, Trained, Validation

for _type in STEP_TYPES:
    allow_class(_type)


def _settings() -> Any:
    from training.settings import get_settings

    return get_settings()


def _context(model: str, run_id: str | None) -> StepContext:
    from training.retrain import StepContext

    return StepContext.build(_settings(), model, str(run_id))


def _specs() -> dict[str, ModelSpec]:
    # Specs are small YAML files: reading them at parse time is cheap and touches no database.
    from training.models import model_entries

    return {name: entry.spec for name, entry in model_entries(_settings()).items()}


def champion_asset(model: str) -> Asset:
    """The Airflow Asset updated each time ``model`` gets a new champion: schedule a DAG on it
    (``schedule=[champion_asset("churn")]``) to act on every promotion."""
    return Asset(f"driftloop://{model}/champion")


def _record_failure(model: str) -> Any:
    """The tasks' failure callback: the run ``failed`` in the store, its candidate rejected (else
    the run would stay ``trained`` and its model a ``candidate`` forever).

    Airflow calls ``on_failure_callback`` only once no retry remains: a try that will be retried
    calls ``on_retry_callback`` instead, so a transient error that a retry gets past leaves the run
    open. (Comparing ``try_number`` with ``max_tries`` here would be wrong: an
    ``AirflowFailException`` fails for good on the first try.)
    """

    def callback(context: Any) -> None:
        from airflow.providers.standard.exceptions import HITLTimeoutError

        from training.runs import record_failure

        ti = context["ti"]
        error = context.get("exception")
        if isinstance(error, HITLTimeoutError):
            # The scheduler failed the approval task: its wait ran out without an answer.
            hours = context["task"].response_timeout.total_seconds() / 3600
            reason = f"nobody answered within {hours:g} h (approval timed out)"
        else:
            reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        record_failure(_settings(), model, str(context["run_id"]), ti.task_id, reason)

    return callback


def _default_args(model: str) -> dict[str, Any]:
    settings = _settings()
    return {
        "on_failure_callback": _record_failure(model),
        "retries": settings.retrain_retries,
        "retry_delay": timedelta(seconds=settings.retrain_retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=settings.retrain_retry_max_delay_s),
    }


def retrain_dag(spec: ModelSpec) -> Any:
    """The retrain DAG of one model."""
    from training.models import dag_id

    return _retrain_dag(dag_id(spec.name), spec)


def _retrain_dag(dag_id: str, spec: ModelSpec) -> Any:
    from training.approval import OPTIONS, run_timeout

    model = spec.name

    @dag(
        dag_id=dag_id,
        schedule="@daily",
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        # A run a crash left `running` would hold back every later one (max_active_runs=1).
        dagrun_timeout=run_timeout(_settings(), spec),
        default_args=_default_args(model),
        doc_md=__doc__,
        tags=["driftloop"],
        params={
            "force": Param(False, type="boolean", description="retrain even without drift"),
            "window_days": Param(
                7, type="number", minimum=0.01, maximum=365, description="days of data to look at"
            ),
            "require_approval": Param(
                None,
                type=["null", "boolean"],
                description="a person approves the promotion first (unset: as the spec says)",
            ),
        },
    )
    def driftloop_retrain() -> None:
        @task
        def extract(
            params: dict[str, Any] | None = None,
            run_id: str | None = None,
            dag_run: Any = None,
            data_interval_end: datetime | None = None,
        ) -> Extracted:
            assert params is not None
            from training.retrain import extract as step

            # Manual runs have no data interval; they look back from when they were asked to run.
            end = data_interval_end or dag_run.run_after
            return step(_context(model, run_id), end, float(params["window_days"]))

        @task
        def check_drift(
            extracted: Extracted,
            params: dict[str, Any] | None = None,
            run_id: str | None = None,
        ) -> Decision:
            assert params is not None
            from training.retrain import check_drift as step

            return step(_context(model, run_id), extracted, force=bool(params["force"]))

        @task.branch
        def decide(decision: Decision) -> str:
            return "train_challenger" if decision.decision == "retrain" else "record_skip"

        @task
        def record_skip(decision: Decision, run_id: str | None = None) -> Skipped:
            from training.retrain import record_skip as step

            return step(_context(model, run_id), decision)

        @task
        def train_challenger(
            decision: Decision, extracted: Extracted, run_id: str | None = None
        ) -> Trained:
            from training.retrain import train_challenger as step

            return step(_context(model, run_id), decision, extracted.dataset_uri)

        @task
        def validate(trained: Trained, run_id: str | None = None) -> Validation:
            from training.retrain import validate as step

            return step(_context(model, run_id), trained)

        @task.short_circuit
        def passed_gates(validation: Validation) -> bool:
            return validation.passed

        @task
        def build_bento(validation: Validation, run_id: str | None = None) -> Built:
            from training.retrain import build_challenger_bento as step

            return step(_context(model, run_id), validation.challenger_tag)

        @task
        def containerize(built: Built, run_id: str | None = None) -> Built:
            from training.retrain import containerize_bento as step

            return step(_context(model, run_id), built)

        @task.branch
        def needs_approval(
            validation: Validation,
            built: Built,
            params: dict[str, Any] | None = None,
            ti: Any = None,
        ) -> str:
            from training.approval import approval_required, request
            from training.models import select_spec

            # The spec as it is now (a YAML read, no database): it may have changed since parsing.
            current = select_spec(_settings(), model)
            if not approval_required(current, (params or {}).get("require_approval")):
                return "promote"
            asked = request(current, validation, built)
            ti.xcom_push(key="subject", value=asked.subject)
            ti.xcom_push(key="body", value=asked.body)
            return "approve_promotion"

        # Waits in `awaiting_input` until a person answers in Required Actions (or the REST API);
        # no default answer, so no answer in time fails it, and it is never retried.
        approve_promotion = HITLOperator(
            task_id="approve_promotion",
            subject="{{ ti.xcom_pull(task_ids='needs_approval', key='subject') }}",
            body="{{ ti.xcom_pull(task_ids='needs_approval', key='body') }}",
            options=OPTIONS,
            params={
                "comment": Param(
                    None, type=["null", "string"], description="why (recorded with your answer)"
                )
            },
            response_timeout=timedelta(hours=spec.promotion.approval_timeout_hours),
            retries=0,
        )

        # Runs after the approval, or straight after `needs_approval` when none is asked for.
        @task(outlets=[champion_asset(model)], trigger_rule="none_failed_min_one_success")
        def promote(
            built: Built, run_id: str | None = None, outlet_events: Any = None, ti: Any = None
        ) -> Promotion:
            from airflow.sdk.exceptions import AirflowSkipException

            from training.approval import review_of
            from training.retrain import promote as step
            from training.retrain import record_rejection

            ctx = _context(model, run_id)
            answer = ti.xcom_pull(task_ids="approve_promotion")
            review = review_of(answer) if answer else None
            if review is not None and not review.approved:
                # Skipped, not failed: the run did what it should; rollout is skipped too.
                raise AirflowSkipException(record_rejection(ctx, built, review))
            promotion = step(ctx, built, review)
            # The asset event says which champion it is about (a re-run that changed nothing too:
            # consumers read the tag and find it already served).
            outlet_events[champion_asset(model)].extra = {
                "champion_tag": promotion.champion_tag,
                "bento_tag": promotion.bento_tag,
                "version": promotion.version,
                "changed": promotion.changed,
            }
            return promotion

        @task
        def rollout(promotion: Promotion, run_id: str | None = None) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from training.errors import DriftloopError
            from training.release.deploy import rollout_after_promotion as step

            try:
                done = step(
                    _settings(),
                    model,
                    str(run_id),
                    champion_tag=promotion.champion_tag,
                    bento_tag=promotion.bento_tag,
                    previous_champion=promotion.previous_champion,
                )
            except DriftloopError as exc:
                # A retry would roll out a version the registry no longer calls the champion.
                raise AirflowFailException(str(exc)) from exc
            if "skipped" in done:
                raise AirflowSkipException(done["skipped"])
            return done

        extracted = extract()
        decision = check_drift(extracted)
        branch = decide(decision)
        trained = train_challenger(decision, extracted)
        branch >> [trained, record_skip(decision)]
        validation = validate(trained)
        built = build_bento(validation)
        passed_gates(validation) >> built
        ready = containerize(built)
        route = needs_approval(validation, ready)
        promoted = promote(ready)
        route >> [approve_promotion, promoted]
        approve_promotion >> promoted
        rollout(promoted)

    return driftloop_retrain()


for _spec in _specs().values():
    # Module globals, so Airflow (and `runpy` in driftloop's own `dag.test()` runs) find every DAG.
    _dag = retrain_dag(_spec)
    globals()[_dag.dag_id] = _dag
