"""cdc_monitoring: slot lag, WAL retained, freshness per table and reconciliation, with thresholds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task

from bankde.orchestration import tasks as bt


@dag(
    dag_id="cdc_monitoring",
    schedule=timedelta(minutes=15),
    catchup=False,
    max_active_runs=1,
    default_args=bt.default_args(),
    tags=["bankde", "cdc", "monitoring"],
    doc_md="""
### cdc_monitoring — is the warehouse keeping up, and is it right?
Each check is a task that fails with one line naming the threshold it crossed (settings
`BANKDE_MONITOR_MAX_LAG_BYTES`, `BANKDE_MONITOR_MAX_WAL_RETAINED_BYTES`,
`BANKDE_MONITOR_MAX_STALENESS_SECONDS`): slot lag and WAL retained read the source only;
freshness compares each table's newest change in the source and in the warehouse;
reconciliation compares counts and checksums (a difference fails unless the slot still holds
unapplied changes). Same figures as `bankde cdc status` and `bankde reconcile`.
""",
)
def cdc_monitoring() -> None:
    @task
    def slot_lag() -> dict[str, Any]:
        return bt.check_slot_lag()

    @task
    def wal_retained() -> dict[str, Any]:
        return bt.check_wal_retained()

    @task(pool=bt.WAREHOUSE_POOL)
    def freshness() -> dict[str, Any]:
        return bt.check_freshness()

    @task(pool=bt.WAREHOUSE_POOL)
    def reconciliation() -> dict[str, Any]:
        return bt.check_reconciliation()

    [slot_lag(), wal_retained()] >> freshness() >> reconciliation()


cdc_monitoring()
