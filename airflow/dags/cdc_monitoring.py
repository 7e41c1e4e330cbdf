"""cdc_monitoring: slot lag, WAL retained, freshness per table and reconciliation, with thresholds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from bankde.cdc.registry import DEFAULT_ENGINE, engine_names
from bankde.orchestration import tasks as bt


@dag(
    dag_id="cdc_monitoring",
    schedule=timedelta(minutes=15),
    catchup=False,
    max_active_runs=1,
    default_args=bt.default_args(),
    tags=["bankde", "cdc", "monitoring"],
    # The capture engine being monitored: kafka adds its connectors' task states and lag.
    params={"engine": Param(DEFAULT_ENGINE, type="string", enum=engine_names())},
    doc_md="""
### cdc_monitoring — is the warehouse keeping up, and is it right?
Each check is a task that fails with one line naming the threshold it crossed (settings
`BANKDE_MONITOR_MAX_LAG_BYTES`, `BANKDE_MONITOR_MAX_WAL_RETAINED_BYTES`,
`BANKDE_MONITOR_MAX_STALENESS_SECONDS`): slot lag and WAL retained read the source only;
freshness compares each table's newest change in the source and in the warehouse;
reconciliation compares counts and checksums (a difference fails unless the slot still holds
unapplied changes). Same figures as `bankde cdc status` and `bankde reconcile`.
With the `engine` param `kafka`, `connectors` fails on a connector task that is not running
(with its error line) and reports the consumer group's lag per topic (`bankde kafka status`).
""",
)
def cdc_monitoring() -> None:
    @task
    def slot_lag(**context: Any) -> dict[str, Any]:
        return bt.check_slot_lag(engine=context["params"]["engine"])

    @task
    def wal_retained(**context: Any) -> dict[str, Any]:
        return bt.check_wal_retained(engine=context["params"]["engine"])

    @task
    def connectors(**context: Any) -> dict[str, Any]:
        return bt.check_connectors(engine=context["params"]["engine"])

    @task(pool=bt.WAREHOUSE_POOL)
    def freshness() -> dict[str, Any]:
        return bt.check_freshness()

    @task(pool=bt.WAREHOUSE_POOL)
    def reconciliation(**context: Any) -> dict[str, Any]:
        return bt.check_reconciliation(engine=context["params"]["engine"])

    [slot_lag(), wal_retained(), connectors()] >> freshness() >> reconciliation()


cdc_monitoring()
