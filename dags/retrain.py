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
   `DRIFTLOOP_CONTAINERIZE` is on; skipped otherwise), then **promote** it to champion.

Every step records what it did in PostgreSQL (`drift_runs`, `training_runs`, `model_versions`); a
step that fails marks the run `failed` (with the step and the error) and its candidate `rejected`.
Params: `force` retrains whatever the drift check says (still gated); `window_days` sets the window.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task


def _settings() -> Any:
    from training.settings import get_settings

    return get_settings()


def _model_names() -> list[str]:
    # Specs are small YAML files: reading them at parse time is cheap and touches no database.
    from training.models import model_entries
    from training.settings import get_settings

    return list(model_entries(get_settings()))


def _record_failure(model: str) -> Any:
    """The tasks' failure callback: the run ``failed`` in the store, its candidate rejected (else
    the run would stay ``trained`` and its model a ``candidate`` forever)."""

    def callback(context: Any) -> None:
        from training.runs import record_failure

        error = context.get("exception")
        record_failure(
            _settings(),
            model,
            str(context["run_id"]),
            context["ti"].task_id,
            f"{type(error).__name__}: {error}" if error is not None else "unknown error",
        )

    return callback


def retrain_dag(model: str) -> Any:
    """The retrain DAG of one model."""
    from training.models import dag_id

    return _retrain_dag(dag_id(model), model)


def _retrain_dag(dag_id: str, model: str) -> Any:
    @dag(
        dag_id=dag_id,
        schedule="@daily",
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args={"on_failure_callback": _record_failure(model)},
        doc_md=__doc__,
        tags=["driftloop"],
        params={
            "force": Param(False, type="boolean", description="retrain even without drift"),
            "window_days": Param(
                7, type="number", minimum=0.01, maximum=365, description="days of data to look at"
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
        ) -> dict[str, Any]:
            assert params is not None
            from training.retrain import extract as step

            # Manual runs have no data interval; they look back from when they were asked to run.
            end = data_interval_end or dag_run.run_after
            return step(_settings(), model, str(run_id), end, float(params["window_days"]))

        @task
        def check_drift(
            extracted: dict[str, Any],
            params: dict[str, Any] | None = None,
            run_id: str | None = None,
        ) -> dict[str, Any]:
            assert params is not None
            from training.retrain import check_drift as step

            return step(_settings(), model, str(run_id), extracted, force=bool(params["force"]))

        @task.branch
        def decide(decision: dict[str, Any]) -> str:
            return "train_challenger" if decision["decision"] == "retrain" else "record_skip"

        @task
        def record_skip(decision: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            from training.retrain import record_skip as step

            return step(_settings(), model, str(run_id), decision)

        @task
        def train_challenger(
            decision: dict[str, Any], extracted: dict[str, Any], run_id: str | None = None
        ) -> dict[str, Any]:
            from training.retrain import train_challenger as step

            return step(_settings(), model, str(run_id), decision, extracted["dataset_uri"])

        @task
        def validate(trained: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            from training.retrain import validate as step

            return step(_settings(), model, str(run_id), trained)

        @task.short_circuit
        def passed_gates(validation: dict[str, Any]) -> bool:
            return bool(validation["passed"])

        @task
        def build_bento(validation: dict[str, Any]) -> dict[str, Any]:
            from training.retrain import build_challenger_bento as step

            return step(_settings(), validation)

        @task
        def containerize(built: dict[str, Any]) -> dict[str, Any]:
            from training.retrain import containerize_bento as step

            return step(_settings(), built)

        @task
        def promote(built: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            from training.retrain import promote as step

            return step(_settings(), model, str(run_id), built)

        extracted = extract()
        decision = check_drift(extracted)
        branch = decide(decision)
        trained = train_challenger(decision, extracted)
        branch >> [trained, record_skip(decision)]
        validation = validate(trained)
        built = build_bento(validation)
        passed_gates(validation) >> built
        promote(containerize(built))

    return driftloop_retrain()


for _model in _model_names():
    # Module globals, so Airflow (and `runpy` in driftloop's own `dag.test()` runs) find every DAG.
    _dag = retrain_dag(_model)
    globals()[_dag.dag_id] = _dag
