"""`cdc status`: the slot as the server sees it, the stored offset, recent batches, row counts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from bankde.cdc.envelope import format_lsn
from bankde.cdc.slot import slot_state
from bankde.errors import BankdeError
from bankde.settings import Settings


def status(settings: Settings, *, counts: bool = True, wait: float = 0.0) -> dict[str, Any]:
    """Everything `bankde cdc status` prints, as plain data (JSON-ready).

    Lag: bytes of WAL between the server's current position and what the slot confirmed; seconds
    since the newest change the warehouse holds was committed, while there is unconfirmed WAL.
    When another process owns the embedded warehouse, the warehouse part names it instead.
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
        "warehouse": "ok",
    }
    if st.lost:
        from bankde.cdc.slot import lost_slot_message

        data["problem"] = lost_slot_message(settings)
    try:
        from bankde.warehouse.client import open_warehouse

        wh = open_warehouse(settings, wait=wait)
    except BankdeError as exc:
        data["warehouse"] = str(exc)
        return data
    from bankde.warehouse.ddl import db_names
    from bankde.warehouse.sink import ClickHouseSink

    names = db_names(settings)
    offset = ClickHouseSink(wh).load_offset(settings.cdc_slot)
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
        f"SELECT max(finished_at), argMax(lag_ms, finished_at) FROM {names.batches} "
        f"WHERE slot = {{s:String}}",
        {"s": settings.cdc_slot},
    )
    if last and last[0][0] is not None and last[0][0].year > 1970:
        finished: datetime = last[0][0]
        data["last_batch_at"] = finished.isoformat()
        if st.lag_bytes:
            age = time.time() - finished.replace(tzinfo=finished.tzinfo or UTC).timestamp()
            data["lag_seconds"] = round(max(0.0, age) + (last[0][1] or 0) / 1000, 3)
        else:
            data["lag_seconds"] = 0.0
    if rows and rows[0][1]:
        span_ms = max(int(rows[0][2] or 0), 1000)
        data["changes_per_s"] = round(int(rows[0][1]) * 1000 / span_ms, 1)
    if counts:
        data["tables"] = table_counts(settings, wh)
    return data


def table_counts(settings: Settings, wh: Any) -> dict[str, dict[str, int | None]]:
    """Rows per captured table: source count(*) vs warehouse rows visible through FINAL."""
    from bankde.source.connection import source_info
    from bankde.source.schema import table_counts as source_counts
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
