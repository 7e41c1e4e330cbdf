"""The capture API the CLI, the demo/run loops, Airflow tasks and benchmarks call: sync, run, resync."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bankde.cdc.progress import snapshot_progress
from bankde.cdc.registry import DEFAULT_ENGINE, get_engine, make_engine
from bankde.cdc.retry import stream
from bankde.cdc.stream import BatchStats, SyncResult
from bankde.contracts import Sink
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.session import WarehouseSession

__all__ = ["BatchStats", "SyncResult", "open_sink", "resync", "run", "sync", "sync_to"]

# How long `cdc sync` keeps retrying a source lost mid-stream before giving up (one that is
# unreachable at the start fails at once).
SYNC_RETRY_SECONDS = 120.0


def open_sink(settings: Settings, session: WarehouseSession) -> Sink:
    """The warehouse sink on `session`, under the settings' prefix (creates the schema)."""
    from bankde.warehouse.sink import ClickHouseSink

    return ClickHouseSink(session.warehouse(settings))


def sync(
    settings: Settings,
    sink: Sink,
    *,
    engine: str = DEFAULT_ENGINE,
    show_progress: bool = True,
) -> SyncResult:
    """Snapshot if needed, then apply every change committed before the WAL position current at
    the start (pg_current_wal_lsn()), then return. Safe to run repeatedly (micro-batches).

    A source that cannot be reached or opened at the start fails at once (SourceUnavailable);
    one lost mid-stream is retried with backoff for up to SYNC_RETRY_SECONDS."""
    from bankde.cdc.slot import current_wal_lsn

    return _open_and_stream(
        settings,
        sink,
        engine,
        show_progress,
        until_lsn=lambda: current_wal_lsn(settings),
        stop=None,
        max_outage=SYNC_RETRY_SECONDS,
        retry_at_start=False,
    )


def sync_to(
    settings: Settings,
    sink: Sink,
    lsn: int,
    *,
    engine: str = DEFAULT_ENGINE,
) -> SyncResult:
    """Apply exactly the transactions committed before `lsn` (a consistent point), none after:
    the warehouse then holds the source as of `lsn` (a check compares there). What follows stays
    unacknowledged in the slot for the next capture."""
    return _open_and_stream(
        settings,
        sink,
        engine,
        False,
        until_lsn=lambda: lsn,
        stop=None,
        max_outage=SYNC_RETRY_SECONDS,
        retry_at_start=False,
        exact=True,
    )


def run(
    settings: Settings,
    stop_event: threading.Event,
    sink: Sink,
    *,
    engine: str = DEFAULT_ENGINE,
    batch_rows: int | None = None,
    batch_seconds: float | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    show_progress: bool = True,
) -> SyncResult:
    """Stream until `stop_event` is set; reconnects with backoff while the source is down. On
    stop, the complete transactions held are written and acknowledged before returning."""
    return _open_and_stream(
        settings,
        sink,
        engine,
        show_progress,
        until_lsn=None,
        stop=stop_event,
        batch_rows=batch_rows,
        batch_seconds=batch_seconds,
        on_batch=on_batch,
    )


def _open_and_stream(
    settings: Settings, sink: Sink, engine: str, show_progress: bool, **options: Any
) -> SyncResult:
    """retry.stream into `sink`, with snapshot progress bars."""
    make_engine(settings, engine)  # a wrong engine name fails before anything is started
    # Its own slot, publication and offset row: never another engine's.
    engine_settings = get_engine(engine).settings_for(settings)
    with snapshot_progress(show_progress) as progress:
        return stream(
            engine_settings,
            sink,
            lambda: make_engine(settings, engine),
            progress=progress,
            **options,
        )


def resync(
    settings: Settings,
    sink: Sink,
    *,
    engine: str = DEFAULT_ENGINE,
    show_progress: bool = True,
) -> SyncResult:
    """Drop the engine's slot, snapshot every table again into staging tables, then swap them
    in at once and catch up (the way out of an invalidated slot or a lost warehouse). Until the
    swap, readers keep the old landing tables, full."""
    from bankde.cdc.slot import drop_slot

    make_engine(settings, engine)  # an engine that cannot run fails before anything is dropped
    engine_settings = get_engine(engine).settings_for(settings)
    drop_slot(engine_settings)
    sink.reset(engine_settings.cdc_slot)
    return sync(settings, sink, engine=engine, show_progress=show_progress)
