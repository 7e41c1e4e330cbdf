"""The kafka engine in demo, run and Airflow: Kafka up, the repo's connectors running, a sync that waits for them."""

from __future__ import annotations

import time
from typing import Any

from bankde.cdc.stream import SyncResult
from bankde.contracts import Sink, StoresPositions
from bankde.errors import CaptureError, ConfigError
from bankde.settings import Settings

ENGINE = "kafka"
# Until every connector task runs (a first registration snapshots empty tables: seconds).
CONNECT_WAIT = 180.0
# `sync_kafka` gives up when the connectors have not delivered up to the target after this long.
SYNC_WAIT = 900.0


def uses_kafka(engine: str) -> bool:
    return engine == ENGINE


def start_kafka(settings: Settings) -> dict[str, Any]:
    """The managed broker and Connect worker up (idempotent; not when BANKDE_KAFKA_BOOTSTRAP
    names brokers of one's own, whose worker is the one on BANKDE_CONNECT_PORT), then
    debezium/*.json registered unchanged and every task running, as `bankde kafka up` and
    `bankde kafka connect` do."""
    from bankde.kafka.cluster import ManagedKafka
    from bankde.kafka.connect import connector_files, register, wait_running

    kafka = ManagedKafka(settings)
    started: dict[str, bool] = {}
    if settings.kafka_bootstrap is None:
        started = kafka.up()
    files = connector_files()
    # The connectors read the source's address from secrets/ under the worker's working
    # directory, $BANKDE_HOME: the same home as the worker's (else Connect answers HTTP 500).
    restarted = register(settings, kafka.connect_url, files)
    wait_running(kafka.connect_url, [f.name for f in files], CONNECT_WAIT, restarted)
    return {"started": started, "connectors": len(files), "connect_url": kafka.connect_url}


def expected_connectors() -> int:
    from bankde.kafka.connect import connector_files

    return len(connector_files())


def sync_kafka(
    settings: Settings,
    sink: Sink,
    *,
    show_progress: bool = False,
    connectors: int | None = None,
    timeout: float = SYNC_WAIT,
) -> SyncResult:
    """Every change committed before the source's WAL position now, applied through Kafka.

    One `cdc sync --engine kafka` applies what the topics hold; the connectors may not have
    delivered the newest commits yet. So: sync again until the stored cut (the commit LSN every
    connector is applied up to, advanced by their heartbeats when idle) has passed that position
    and each of the `connectors` (default: the repo's files) has reported one. A failed
    connector task stops the wait at once with its error line."""
    from bankde.cdc.api import sync
    from bankde.cdc.engines.kafka_names import engine_settings
    from bankde.cdc.envelope import format_lsn
    from bankde.cdc.slot import current_wal_lsn

    if not isinstance(sink, StoresPositions):
        raise ConfigError("the kafka engine needs a sink that stores topic positions")
    slot = engine_settings(settings).cdc_slot
    want = expected_connectors() if connectors is None else connectors
    target = current_wal_lsn(settings)
    deadline = time.monotonic() + timeout
    total: SyncResult | None = None
    while True:
        res = sync(settings, sink, engine=ENGINE, show_progress=show_progress)
        total = res if total is None else _add(total, res)
        offset = sink.load_offset(slot)
        applied = sink.load_connector_lsns(slot)
        cut = offset.lsn if offset is not None else 0
        if cut >= target and len(applied) >= want:
            total.target_lsn = target
            return total
        problem = connector_problem(settings)
        if problem:
            raise CaptureError(problem)
        if time.monotonic() > deadline:
            raise CaptureError(
                f"kafka: the connectors did not deliver up to {format_lsn(target)} in "
                f"{timeout:.0f} s (cut {format_lsn(cut)}, {len(applied)}/{want} connectors "
                "reported): see `bankde kafka status`"
            )
        time.sleep(0.5)


def connector_problem(settings: Settings) -> str | None:
    """The first failed connector or task with its error line, None when all run (or when the
    worker cannot be asked: the sync's own errors say why)."""
    from bankde.cdc.engines.kafka import kafka_status

    status = kafka_status(settings)
    problem = status.get("problem")
    return str(problem) if problem else None


def _add(a: SyncResult, b: SyncResult) -> SyncResult:
    a.changes += b.changes
    a.transactions += b.transactions
    a.batches += b.batches
    for name, n in b.snapshot_rows.items():
        a.snapshot_rows[name] = a.snapshot_rows.get(name, 0) + n
    for name, n in b.tables.items():
        a.tables[name] = a.tables.get(name, 0) + n
    a.snapshot_seconds += b.snapshot_seconds
    a.seconds += b.seconds
    a.stream_seconds += b.stream_seconds
    a.lsn = max(a.lsn, b.lsn)
    a.reconnects += b.reconnects
    return a
