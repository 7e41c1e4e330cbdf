"""pg_to_ch: full snapshot (resync) of the source Postgres into the warehouse's raw tables."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, dag, task

from bankde.orchestration import tasks as bt

RAW = Asset(bt.RAW_ASSET_URI)


@dag(
    dag_id="pg_to_ch",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=bt.default_args(),
    tags=["bankde", "cdc", "snapshot"],
    doc_md="""
### pg_to_ch — full load of raw from Postgres
Drops the replication slot and the raw landing tables, takes a consistent snapshot of every
`bank.*` and `truth.*` table (exported snapshot + binary COPY) and catches up with the stream,
then checks source and warehouse are equal. Run it once to start, or to recover from an
invalidated slot (`cdc_monitoring` says when). Updates the raw asset, which triggers
`dbt_incremental`. Same as `bankde cdc resync`.
""",
)
def pg_to_ch() -> None:
    @task(pool=bt.WAREHOUSE_POOL, outlets=[RAW])
    def resync_raw() -> dict[str, Any]:
        return bt.snapshot_raw()

    @task(pool=bt.WAREHOUSE_POOL)
    def reconcile() -> dict[str, Any]:
        return bt.check_reconciliation()

    resync_raw() >> reconcile()


pg_to_ch()
