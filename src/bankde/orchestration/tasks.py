"""What the Airflow DAGs run: one function per task, settings from the environment, JSON results."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from bankde.errors import BankdeError
from bankde.orchestration.airflow_env import TASK_LOCK_WAIT, WAREHOUSE_POOL
from bankde.settings import Settings, load_settings

if TYPE_CHECKING:
    from bankde.warehouse.session import WarehouseSession

__all__ = [
    "RAW_ASSET_URI",
    "WAREHOUSE_POOL",
    "MonitoringFailed",
    "build_models",
    "check_connectors",
    "check_freshness",
    "check_reconciliation",
    "check_slot_lag",
    "check_wal_retained",
    "default_args",
    "snapshot_raw",
    "sync_changes",
]

# The asset cdc_to_dwh and pg_to_ch update and dbt_incremental is scheduled on.
RAW_ASSET_URI = "bankde://warehouse/raw"


class MonitoringFailed(BankdeError):
    """A cdc_monitoring check is above its threshold (the message names the setting)."""


def default_args() -> dict[str, Any]:
    """Retries and timeouts every bankde DAG shares."""
    return {
        "owner": "bankde",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=1),
    }


def task_settings() -> Settings:
    """Settings for a task process: wait for the warehouse's named lock rather than fail."""
    settings = load_settings()
    if settings.wh_lock_wait < TASK_LOCK_WAIT:
        settings = settings.model_copy(update={"wh_lock_wait": TASK_LOCK_WAIT})
    return settings


@contextmanager
def warehouse_session() -> Iterator[tuple[Settings, WarehouseSession]]:
    """Hold the warehouse only for the task's work: close the session (and release the lock)
    afterwards so the next task in the pool, or a `bankde` command, gets it at once."""
    from bankde.warehouse.session import open_session

    settings = task_settings()
    with open_session(settings) as session:
        yield settings, session


def _skip(message: str) -> None:
    """End the task as skipped: no asset event, so downstream DAGs are not triggered for nothing."""
    from airflow.exceptions import AirflowSkipException

    raise AirflowSkipException(message)


# --- pg_to_ch -------------------------------------------------------------------------------
def snapshot_raw(engine: str = "native") -> dict[str, Any]:
    """Full resync: drop slot and landing tables, snapshot the source again, catch up (any
    engine of the registry, cdc/registry.py)."""
    from bankde.cdc.api import open_sink, resync

    with warehouse_session() as (settings, session):
        sink = open_sink(settings, session)
        return resync(settings, sink=sink, engine=engine, show_progress=False).to_dict()


# --- cdc_to_dwh -----------------------------------------------------------------------------
def sync_changes(skip_when_idle: bool = True, engine: str = "native") -> dict[str, Any]:
    """Micro-batch: apply every change committed before now (snapshot first if none yet). With
    the kafka engine "before now" includes what the connectors have not delivered to the
    topics yet: it waits for them (orchestration/kafka.py)."""
    from bankde.cdc.api import open_sink, sync
    from bankde.orchestration.kafka import sync_kafka, uses_kafka

    with warehouse_session() as (settings, session):
        sink = open_sink(settings, session)
        if uses_kafka(engine):
            result = sync_kafka(settings, sink).to_dict()
        else:
            result = sync(settings, sink=sink, engine=engine, show_progress=False).to_dict()
    if skip_when_idle and not result["changes"] and not result["snapshot_rows"]:
        _skip("no new changes in the source; models are up to date")
    return result


# --- dbt_incremental ------------------------------------------------------------------------
def build_models(select: str | None = None) -> dict[str, Any]:
    """`dbt build` (incremental models process only new changes); fails on any failed node."""
    from bankde.transform.runner import DbtFailed, run_dbt

    args = ["build"] + (["--select", select] if select else [])
    with warehouse_session() as (settings, session):
        res = run_dbt(args, settings, quiet=True, session=session)
    if not res.success:
        raise DbtFailed(f"dbt build failed: {', '.join(res.failed) or 'see the task log'}")
    return {"nodes": len(res.nodes), "seconds": round(sum(t for *_, t in res.nodes), 2)}


# --- cdc_monitoring -------------------------------------------------------------------------
def _slots(settings: Settings, engine: str) -> list[Settings]:
    """The slots an engine reads: its own, or with kafka each connector's (debezium/*.json)."""
    if engine != "kafka":
        from bankde.cdc.registry import get_engine

        return [get_engine(engine).settings_for(settings)]
    from bankde.kafka.connect import connector_files

    return [
        settings.model_copy(update={"cdc_slot": f.config["slot.name"]}) for f in connector_files()
    ]


def check_slot_lag(engine: str = "native") -> dict[str, Any]:
    """Slot lag in bytes of WAL (source only; no warehouse needed), of each slot the engine
    reads (kafka: every connector's)."""
    settings = task_settings()
    checked = [_check_slot_lag(s) for s in _slots(settings, engine)]
    return checked[0] if len(checked) == 1 else {"slots": checked}


def _check_slot_lag(settings: Settings) -> dict[str, Any]:
    from bankde.cdc.slot import slot_state

    st = slot_state(settings)
    if not st.exists:
        raise MonitoringFailed(
            f"replication slot {st.name!r} does not exist: run the pg_to_ch DAG (or `bankde cdc sync`)"
        )
    if st.lost:
        raise MonitoringFailed(
            f"replication slot {st.name!r} was invalidated (WAL removed): run the pg_to_ch DAG "
            "(`bankde cdc resync`)"
        )
    lag = st.lag_bytes or 0
    limit = settings.monitor_max_lag_bytes
    if lag > limit:
        raise MonitoringFailed(
            f"slot {st.name!r} lags {lag} bytes of WAL > BANKDE_MONITOR_MAX_LAG_BYTES={limit}: "
            "cdc_to_dwh is not keeping up or not running"
        )
    return {"slot": st.name, "lag_bytes": lag, "limit": limit, "active": st.active}


def check_wal_retained(engine: str = "native") -> dict[str, Any]:
    """WAL the engine's slots keep on the source's disk."""
    settings = task_settings()
    checked = [_check_wal_retained(s) for s in _slots(settings, engine)]
    return checked[0] if len(checked) == 1 else {"slots": checked}


def _check_wal_retained(settings: Settings) -> dict[str, Any]:
    from bankde.cdc.slot import slot_state

    st = slot_state(settings)
    retained = st.retained_bytes or 0
    limit = settings.monitor_max_wal_retained_bytes
    if retained > limit:
        raise MonitoringFailed(
            f"slot {st.name!r} retains {retained} bytes of WAL > "
            f"BANKDE_MONITOR_MAX_WAL_RETAINED_BYTES={limit}: the source's disk fills until "
            "cdc_to_dwh catches up"
        )
    return {"slot": st.name, "wal_retained_bytes": retained, "limit": limit}


def check_connectors(engine: str = "native") -> dict[str, Any]:
    """The kafka engine's connectors: every task's state (a failed one fails the check with its
    error line) and the consumer group's lag per topic (kafka status). Nothing to check for the
    engines that read a slot themselves (their slot_lag says it)."""
    if engine != "kafka":
        return {"engine": engine, "connectors": None, "note": "no Kafka Connect connectors"}
    from bankde.cdc.engines.kafka import kafka_status

    settings = task_settings()
    status = kafka_status(settings)
    if status.get("connectors_error"):
        raise MonitoringFailed(str(status["connectors_error"]))
    if status.get("problem"):
        raise MonitoringFailed(str(status["problem"]))
    connectors = status.get("connectors") or {}
    if not connectors:
        raise MonitoringFailed(
            "no connector is registered on Kafka Connect: run `bankde kafka connect`"
        )
    stopped = sorted(
        name
        for name, c in connectors.items()
        if c["state"] != "RUNNING" or any(t != "RUNNING" for t in c["tasks"].values())
    )
    if stopped:
        raise MonitoringFailed(f"connector(s) not running: {', '.join(stopped)}")
    if status.get("lag_error"):
        raise MonitoringFailed(f"consumer lag unknown: {status['lag_error']}")
    lag = status.get("lag") or {}
    total = sum(lag.values())
    return {
        "engine": engine,
        "connectors": {name: c["tasks"] for name, c in connectors.items()},
        "lag": lag,
        "lag_total": total,
    }


def check_freshness() -> dict[str, Any]:
    """Per table: the warehouse's newest change vs the source's newest change."""
    from bankde.monitoring.freshness import freshness

    with warehouse_session() as (settings, session):
        rows = freshness(settings, session.warehouse(settings))
        limit = settings.monitor_max_staleness_seconds
    stale = [
        f"{r.table} ({'never captured' if r.staleness_s == math.inf else f'{r.staleness_s:.0f}s'})"
        for r in rows
        if r.staleness_s is not None and r.staleness_s > limit
    ]
    if stale:
        raise MonitoringFailed(
            f"stale in the warehouse beyond BANKDE_MONITOR_MAX_STALENESS_SECONDS={limit:g}: "
            + ", ".join(stale)
        )
    return {
        "limit_s": limit,
        "tables": {
            r.table: (None if r.staleness_s is None else round(r.staleness_s, 3)) for r in rows
        },
    }


def check_reconciliation(engine: str = "native") -> dict[str, Any]:
    """Source vs warehouse, count and checksum per table, compared as of one LSN: the check
    catches the warehouse up to exactly a consistent point of the source (or waits for the
    running stream to pass it) and reads the source at that point, so a difference fails the
    task however busy the source is (monitoring.reconcile.reconcile_at_one_lsn)."""
    from bankde.monitoring.reconcile import reconcile_at_one_lsn

    with warehouse_session() as (settings, session):
        res, info = reconcile_at_one_lsn(settings, session, engine=engine)
    result = res.to_dict()
    result["differing"] = [t.table for t in res.differing]
    result.update(info)
    real = [t for t in result["differing"] if t not in info["not_comparable"]]
    if not real:
        if result["differing"]:
            result["note"] = (
                f"{', '.join(result['differing'])} changed after {info['lsn']} in the running "
                "stream: not comparable at that LSN; lag and freshness judge it"
            )
        return result
    raise MonitoringFailed(
        f"source and warehouse differ at {info['lsn']} in {', '.join(real)}: "
        "run `bankde reconcile` for sample keys, then the pg_to_ch DAG to resync"
    )


def pending_changes(settings: Settings) -> bool | None:
    """Whether the slot holds committed changes the warehouse has not applied yet (peeked, not
    consumed). None when it cannot tell: the slot is streaming to a consumer right now."""
    from bankde.cdc.slot import peek_pending

    # Bounded: a peek holds the slot while it decodes, and the capture cannot start meanwhile.
    pending = peek_pending(settings, timeout_ms=PEEK_TIMEOUT_MS)
    return None if pending is None else pending.changes


# A peek at the slot gives up after this long (it holds the slot against the capture meanwhile).
PEEK_TIMEOUT_MS = 2000
