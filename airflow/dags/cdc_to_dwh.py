"""cdc_to_dwh: micro-batch change capture from the replication slot into the warehouse."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, task

from bankde.cdc.registry import DEFAULT_ENGINE, engine_names
from bankde.orchestration import tasks as bt

RAW = Asset(bt.RAW_ASSET_URI)


@dag(
    dag_id="cdc_to_dwh",
    schedule=timedelta(minutes=5),
    catchup=False,
    max_active_runs=1,
    default_args=bt.default_args(),
    tags=["bankde", "cdc"],
    # Which capture engine of the registry applies the changes (native, debezium, kafka).
    params={"engine": Param(DEFAULT_ENGINE, type="string", enum=engine_names())},
    doc_md="""
### cdc_to_dwh — apply new changes to raw
Reads the logical replication slot up to the WAL position current at the start and writes the
changes to the raw tables (snapshot first if there is none), then acknowledges the slot. Same as
`bankde cdc sync`. When changes landed it updates the raw asset, which triggers
`dbt_incremental`; with nothing new the task is skipped and nothing downstream runs.
The `engine` param picks the capture engine (`kafka`: the Debezium topics on Kafka).
""",
)
def cdc_to_dwh() -> None:
    @task(pool=bt.WAREHOUSE_POOL, outlets=[RAW])
    def sync(**context: Any) -> dict[str, Any]:
        return bt.sync_changes(engine=context["params"]["engine"])

    sync()


cdc_to_dwh()
