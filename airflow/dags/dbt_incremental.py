"""dbt_incremental: dbt build of stg/ods/marts whenever new raw data landed."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, dag, task

from bankde.orchestration import tasks as bt

RAW = Asset(bt.RAW_ASSET_URI)


@dag(
    dag_id="dbt_incremental",
    schedule=[RAW],
    catchup=False,
    max_active_runs=1,
    default_args=bt.default_args(),
    tags=["bankde", "dbt"],
    doc_md="""
### dbt_incremental — models after new data
Triggered by the raw asset (updated by `cdc_to_dwh` and `pg_to_ch`). Runs `dbt build` in the
task's process on the warehouse: incremental models process only the new changes, tables are
rebuilt, every test runs; a failed model or test fails the task. Same as `bankde dbt build`.
""",
)
def dbt_incremental() -> None:
    @task(pool=bt.WAREHOUSE_POOL)
    def dbt_build() -> dict[str, Any]:
        return bt.build_models()

    dbt_build()


dbt_incremental()
