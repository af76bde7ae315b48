"""
### driftloop: back up the store and the models

Once a day (02:30 UTC), `driftloop backup`: a consistent `pg_dump` of the feedback store, every
registered model version's Bento (or model) and training set, and a manifest with their sizes and
SHA-256 checksums, into the artifact store's `backups/` (or the `to` param: a folder or
`s3://bucket/prefix`). Then all but the newest `keep` backups there are deleted.

The DAG is paused when it first appears: unpause it where Airflow is the scheduler you want for
backups (on Kubernetes, the CronJob in `deploy/components/backup` does the same job). Restore with
`driftloop restore <the URI this task returns>`; the README's "Backup and restore" says how.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

log = logging.getLogger(__name__)


@dag(
    dag_id="driftloop_backup",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    dagrun_timeout=timedelta(hours=6),
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    doc_md=__doc__,
    tags=["driftloop"],
    params={
        "keep": Param(14, type="integer", minimum=1, description="backups to keep"),
        "to": Param(
            "",
            type="string",
            description="a folder or s3://bucket/prefix (empty: the artifact store's backups/)",
        ),
    },
)
def driftloop_backup() -> None:
    @task
    def backup(params: dict[str, Any] | None = None) -> str:
        assert params is not None
        from training.backup import backup as run
        from training.settings import get_settings

        uri, _ = run(
            get_settings(), to=params["to"] or None, keep=int(params["keep"]), progress=log.info
        )
        return uri

    backup()


backup_dag = driftloop_backup()
