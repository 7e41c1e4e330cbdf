"""Freshness per table: how far the warehouse's newest change trails the source's newest change."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import sql

from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.client import Warehouse


@dataclass(frozen=True)
class TableFreshness:
    """One captured bank table. `staleness_s` is source max(updated_at) minus the warehouse's
    max(updated_at) over current rows: 0 when the warehouse holds the newest change, whatever
    the wall clock says (a quiet table is not stale). None when either side is empty."""

    table: str
    source_latest: datetime | None
    warehouse_latest: datetime | None
    staleness_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_latest(settings: Settings) -> dict[str, datetime | None]:
    """max(updated_at) of every bank.* table that has the column."""
    from bankde.source.connection import connect, source_info

    with connect(source_info(settings)) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = 'bank' AND column_name = 'updated_at' ORDER BY 1"
            ).fetchall()
        ]
        out: dict[str, datetime | None] = {}
        for t in tables:
            q = sql.SQL("SELECT max(updated_at) FROM bank.{}").format(sql.Identifier(t))
            row = conn.execute(q).fetchone()
            out[t] = row[0] if row else None
        return out


def freshness(settings: Settings, warehouse: Warehouse) -> list[TableFreshness]:
    """Freshness of every captured bank table (source read first, so a change committed in
    between can only make the warehouse look fresher, never staler)."""
    from bankde.warehouse.ddl import db_names
    from bankde.warehouse.types import ident

    src = source_latest(settings)
    wh = warehouse
    raw = db_names(settings).raw
    present = {
        str(r[0])
        for r in wh.query(
            "select table from system.columns where database = {db:String} and name = 'updated_at'",
            {"db": raw},
        )
    }
    result: list[TableFreshness] = []
    for table, s_latest in src.items():
        w_latest: datetime | None = None
        if table in present:
            w_latest = wh.scalar(
                f"select max(updated_at) from {ident(raw)}.{ident(table)} FINAL "
                "where _is_deleted = 0 having count() > 0"
            )
        staleness: float | None = None
        if s_latest is not None and w_latest is not None:
            staleness = max(0.0, (s_latest - _aware(w_latest, s_latest)).total_seconds())
        elif s_latest is not None:
            # The source has rows the warehouse has never seen.
            staleness = float("inf")
        result.append(TableFreshness(table, s_latest, w_latest, staleness))
    return result


def _aware(value: datetime, like: datetime) -> datetime:
    """The warehouse returns UTC; give it a zone when the driver dropped it."""
    if value.tzinfo is None and like.tzinfo is not None:
        from datetime import UTC

        return value.replace(tzinfo=UTC)
    return value
