"""Quarantine of change rows the warehouse cannot hold exactly: meta.cdc_rejects, written and read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bankde.warehouse.ddl import DbNames, has_table
from bankde.warehouse.types import ident, sql_str

if TYPE_CHECKING:
    from bankde.warehouse.client import Warehouse

TABLE = "cdc_rejects"


@dataclass(frozen=True)
class Reject:
    """One value that would have changed on its way into the warehouse, and the row it held back.

    The row (every column of it) is not landed: the warehouse keeps the key's previous version,
    and reconcile shows the difference until a later change of the key lands. `table` is the
    source name (bank.account); `key` the row's primary key as JSON text (key_text()); `lsn` the
    change's commit LSN (the snapshot's consistent point for snapshot rows). `topic`,
    `partition`, `offset` locate the record when it came through Kafka; None otherwise.
    """

    table: str
    key: str
    lsn: int
    column: str
    source_text: str | None
    reason: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class RejectSummary:
    """What meta.cdc_rejects holds for one source table."""

    table: str
    rows: int  # distinct (lsn, key): rows held back
    values: int  # rejected values (a row can hold several)
    last_lsn: int
    last_column: str
    last_reason: str
    last_recorded_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "values": self.values,
            "last_lsn": self.last_lsn,
            "last_column": self.last_column,
            "last_reason": self.last_reason,
            "last_recorded_at": self.last_recorded_at.isoformat()
            if self.last_recorded_at
            else None,
        }

    def line(self) -> str:
        """One line for the CLI (status, reconcile)."""
        from bankde.cdc.envelope import format_lsn

        return (
            f"{self.table}: {self.rows:,} row(s) quarantined in meta.{TABLE} "
            f"(last at {format_lsn(self.last_lsn)}: {self.last_column}: {self.last_reason})"
        )


def key_text(key: Mapping[str, Any]) -> str:
    """A primary key as meta.cdc_rejects stores it: JSON of column -> text form, in key order."""
    return json.dumps(
        {k: None if v is None else str(v) for k, v in key.items()},
        ensure_ascii=False,
        separators=(",", ":"),
    )


_COLUMNS = (
    "slot",
    "table",
    "key",
    "lsn",
    "column",
    "source_text",
    "reason",
    "topic",
    "partition",
    "offset",
)


def record_rejects(wh: Warehouse, slot: str, rejects: Sequence[Reject]) -> int:
    """Write `rejects` of `slot` to meta.cdc_rejects; returns how many were given.

    Idempotent: the table is a ReplacingMergeTree on (slot, table, lsn, key, column), so a batch
    re-delivered after a crash records each reject once (as read through FINAL). Call it before
    the offset covering the rows is written, as for data: a crash in between re-delivers.
    """
    if not rejects:
        return 0
    names = DbNames(wh.settings.wh_prefix)
    rows = []
    for r in rejects:
        rows.append(
            "("
            + ", ".join(
                (
                    sql_str(slot),
                    sql_str(r.table),
                    sql_str(r.key),
                    str(int(r.lsn)),
                    sql_str(r.column),
                    _opt_str(r.source_text),
                    sql_str(r.reason),
                    _opt_str(r.topic),
                    _opt_int(r.partition),
                    _opt_int(r.offset),
                )
            )
            + ")"
        )
    cols = ", ".join(ident(c) for c in _COLUMNS)
    wh.command(f"INSERT INTO {ident(names.meta)}.{TABLE} ({cols}) VALUES " + ", ".join(rows))
    return len(rejects)


def reject_summary(wh: Warehouse, slot: str | None = None) -> dict[str, RejectSummary]:
    """Per source table, what is quarantined (of `slot`, or of every slot). Read-only: a warehouse
    without the table (never captured into) has nothing quarantined."""
    names = DbNames(wh.settings.wh_prefix)
    if not has_table(wh, names.meta, TABLE):
        return {}
    where = "WHERE slot = {s:String}" if slot is not None else ""
    rows = wh.query(
        f"SELECT `table`, uniqExact(lsn, `key`), count(), max(lsn), argMax(`column`, lsn), "
        f"argMax(reason, lsn), max(recorded_at) FROM {ident(names.meta)}.{TABLE} FINAL {where} "
        "GROUP BY `table` ORDER BY `table`",
        {"s": slot} if slot is not None else None,
    )
    return {
        str(t): RejectSummary(str(t), int(n), int(v), int(lsn), str(col), str(reason), at)
        for t, n, v, lsn, col, reason, at in rows
    }


def recent_rejects(wh: Warehouse, slot: str | None = None, limit: int = 10) -> list[Reject]:
    """The newest quarantined values, newest first (for a closer look than the summary)."""
    names = DbNames(wh.settings.wh_prefix)
    if not has_table(wh, names.meta, TABLE):
        return []
    where = "WHERE slot = {s:String}" if slot is not None else ""
    params: dict[str, Any] = {"n": limit}
    if slot is not None:
        params["s"] = slot
    cols = ", ".join(ident(c) for c in _COLUMNS[1:])
    rows = wh.query(
        f"SELECT {cols} FROM {ident(names.meta)}.{TABLE} FINAL {where} "
        "ORDER BY lsn DESC, `table`, `key`, `column` LIMIT {n:UInt32}",
        params,
    )
    return [
        Reject(
            str(t),
            str(k),
            int(lsn),
            str(c),
            None if text is None else str(text),
            str(reason),
            None if topic is None else str(topic),
            None if part is None else int(part),
            None if off is None else int(off),
        )
        for t, k, lsn, c, text, reason, topic, part, off in rows
    ]


def _opt_str(value: str | None) -> str:
    return "NULL" if value is None else sql_str(value)


def _opt_int(value: int | None) -> str:
    return "NULL" if value is None else str(int(value))
