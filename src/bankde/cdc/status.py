"""`cdc status`: the slot as the server sees it, the stored offset, recent batches, row counts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from bankde.cdc.envelope import format_lsn
from bankde.cdc.slot import SlotState, peek_pending, slot_state, walsender_lag
from bankde.errors import BankdeError
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.client import Warehouse

# A status call must stay quick; a slot whose first captured change lies behind much other WAL
# falls back to the time since the last batch.
PEEK_TIMEOUT_MS = 2000


def status(
    settings: Settings,
    *,
    warehouse: Warehouse | BankdeError,
    counts: bool = True,
) -> dict[str, Any]:
    """Everything `bankde cdc status` prints, as plain data (JSON-ready).

    lag_bytes: WAL between the server's current position and what the slot confirmed (it counts
    WAL of tables outside the publication too, so it is rarely 0 on a busy server).
    lag_seconds: how far the warehouse is behind in time. Slot active: the flush lag (else replay
    lag) pg_stat_replication reports for the slot's walsender, 0 once it has caught up. Slot
    idle: the age of the oldest committed captured change still waiting in the slot (peeked,
    never consumed), 0 when none waits. Where neither can be read (the walsender's figures need
    superuser or pg_read_all_stats; a peek slower than PEEK_TIMEOUT_MS), 0 without unconfirmed
    WAL, else the time since the last applied batch.
    None before any of that is known (no slot, nothing applied yet).
    rejects: per source table, the rows this slot's capture quarantined in meta.cdc_rejects
    (values the warehouse type cannot hold exactly), {} when none.
    stopped: schema.table -> the one-line reason, of tables stopped by a source type change the
    warehouse cannot take in place (their changes held in meta.hold__*), {} when none.
    When another process owns the embedded warehouse, the warehouse part names it instead.
    Read-only: `warehouse` is never written; the error that kept the caller from opening it
    (another process owns it, say) is reported in its place.
    """
    st = slot_state(settings)
    data: dict[str, Any] = {
        "slot": st.name,
        "publication": settings.cdc_publication,
        "exists": st.exists,
        "active": st.active,
        "active_pid": st.active_pid,
        "wal_status": st.wal_status,
        "current_lsn": format_lsn(st.current_lsn),
        "confirmed_flush_lsn": _fmt(st.confirmed_flush_lsn),
        "restart_lsn": _fmt(st.restart_lsn),
        "lag_bytes": st.lag_bytes,
        "wal_retained_bytes": st.retained_bytes,
        "lag_seconds": None,
        "offset_lsn": None,
        "snapshot_done": None,
        "last_batch_at": None,
        "changes_per_s": None,
        "tables": {},
        "rejects": {},
        "stopped": {},
        "warehouse": "ok",
    }
    if st.lost:
        from bankde.cdc.slot import lost_slot_message

        data["problem"] = lost_slot_message(settings)
    if isinstance(warehouse, BankdeError):
        data["warehouse"] = str(warehouse)
        data["lag_seconds"] = lag_seconds(settings, st, None)
        return data
    wh = warehouse
    from bankde.warehouse.ddl import db_names, has_table
    from bankde.warehouse.sink import load_offset

    # Read-only: a warehouse nothing was captured into yet is reported as such, never created.
    names = db_names(settings)
    if not has_table(wh, names.meta, "cdc_batches"):
        data["lag_seconds"] = lag_seconds(settings, st, None)
        if counts:
            data["tables"] = table_counts(settings, wh)
        return data
    from bankde.cdc.rejects import reject_summary

    # Rows held back in meta.cdc_rejects by this slot's capture, per source table.
    data["rejects"] = {t: r.to_dict() for t, r in reject_summary(wh, settings.cdc_slot).items()}
    from bankde.warehouse.sink import stopped_tables

    # Tables stopped by a source type change: their changes held until `cdc resync --table`.
    data["stopped"] = stopped_tables(wh)
    offset = load_offset(wh, settings.cdc_slot)
    if offset is not None:
        data["offset_lsn"] = format_lsn(offset.lsn)
        data["snapshot_done"] = offset.snapshot_done
    rows = wh.query(
        f"SELECT max(finished_at), sum(events), "
        f"dateDiff('millisecond', min(started_at), max(finished_at)), argMax(lag_ms, finished_at) "
        f"FROM {names.batches} WHERE slot = {{s:String}} AND kind != 'snapshot' "
        f"AND finished_at > now64(6) - INTERVAL 60 SECOND",
        {"s": settings.cdc_slot},
    )
    last = wh.query(
        f"SELECT max(finished_at) FROM {names.batches} WHERE slot = {{s:String}}",
        {"s": settings.cdc_slot},
    )
    finished: datetime | None = None
    if last and last[0][0] is not None and last[0][0].year > 1970:
        finished = last[0][0]
        data["last_batch_at"] = finished.isoformat()
    data["lag_seconds"] = lag_seconds(settings, st, finished)
    if rows and rows[0][1]:
        span_ms = max(int(rows[0][2] or 0), 1000)
        data["changes_per_s"] = round(int(rows[0][1]) * 1000 / span_ms, 1)
    if counts:
        data["tables"] = table_counts(settings, wh)
    return data


def lag_seconds(settings: Settings, st: SlotState, last_batch: datetime | None) -> float | None:
    """lag_seconds as status() defines it."""
    if not st.exists:
        return None
    if st.active and st.active_pid is not None:
        try:
            lag = walsender_lag(settings, st.active_pid)
        except (psycopg.Error, BankdeError):  # the owner role is not reachable: fall back
            lag = None
        if lag is not None:
            return lag
    elif st.lag_bytes and not st.lost:
        try:
            pending = peek_pending(settings, timeout_ms=PEEK_TIMEOUT_MS)
        except (psycopg.Error, BankdeError):  # e.g. dropped or invalidated meanwhile: fall back
            pending = None
        if pending is not None and not pending.changes:
            return 0.0
        if pending is not None and pending.oldest_commit_us is not None:
            return round(max(0.0, time.time() - pending.oldest_commit_us / 1e6), 3)
    if st.lag_bytes == 0:
        return 0.0
    if last_batch is None:
        return None
    age = time.time() - last_batch.replace(tzinfo=last_batch.tzinfo or UTC).timestamp()
    return round(max(0.0, age), 3)


def table_counts(settings: Settings, wh: Warehouse) -> dict[str, dict[str, int | None]]:
    """Rows per captured table: source count(*) vs warehouse rows visible through FINAL."""
    from bankde.source.catalog import table_counts as source_counts
    from bankde.source.connection import source_info
    from bankde.warehouse.ddl import db_names
    from bankde.warehouse.types import ident

    names = db_names(settings)
    out: dict[str, dict[str, int | None]] = {}
    for name, n in source_counts(source_info(settings)).items():
        schema, table = name.split(".", 1)
        target = f"{ident(names.landing_db(schema))}.{ident(table)}"
        try:
            got = wh.scalar(f"SELECT count() FROM {target} FINAL WHERE _is_deleted = 0")
            whn: int | None = int(got)
        except BankdeError:
            whn = None
        out[name] = {"source": n, "warehouse": whn}
    return out


def _fmt(lsn: int | None) -> str | None:
    return format_lsn(lsn) if lsn is not None else None
