"""The warehouse client: queries, commands and Arrow inserts on a session (embedded or a server)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bankde.errors import BankdeError
from bankde.settings import Settings, get_settings
from bankde.warehouse.types import arrow_to_ch_type, ident, sql_str

if TYPE_CHECKING:
    import pyarrow as pa
    from clickhouse_connect.driver.client import Client

    from bankde.warehouse.session import WarehouseSession

_T = TypeVar("_T")


class WarehouseError(BankdeError):
    """A warehouse statement failed; the message is the engine's first line plus context."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:500]
    return type(exc).__name__


def warehouse_path(settings: Settings | None = None) -> str:
    """The embedded engine's data directory, spelled exactly as every client in the process must
    pass it (chDB compares paths literally): realpath of $BANKDE_HOME/warehouse or BANKDE_WH_DIR."""
    settings = settings or get_settings()
    return os.path.realpath(settings.warehouse_dir)


class Warehouse:
    """Queries, commands and Arrow inserts on one warehouse session, under one prefix.

    Embedded: statements run on the session's chDB engine; inserts read Arrow in place through
    the Python() table function. Server: clickhouse-connect over HTTP; inserts stream Arrow IPC
    into `INSERT ... SELECT ... FROM input()`. Thread-safe. `settings` give the prefix.
    """

    def __init__(self, settings: Settings, session: WarehouseSession) -> None:
        self.settings = settings
        self.session = session

    @property
    def embedded(self) -> bool:
        return self.session.embedded

    @property
    def location(self) -> str:
        return self.session.location

    def _with_client(self, fn: Callable[[Client], _T]) -> _T:
        return self.session.with_client(fn)

    # --- reads -------------------------------------------------------------------------
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows as tuples of Python values (Decimal, datetime, int...)."""
        _names, rows = self.query_with_names(sql, params)
        return rows

    def query_with_names(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        def read(client: Client) -> tuple[list[str], list[tuple[Any, ...]]]:
            # Rows are materialised inside the lock: a result may be read lazily otherwise.
            res = client.query(sql, parameters=params)
            return list(res.column_names), [tuple(r) for r in res.result_rows]

        return self._guard(lambda: self._with_client(read))

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._guard(
            lambda: self._with_client(lambda c: c.query_arrow(sql, parameters=params))
        )

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    # --- writes ------------------------------------------------------------------------
    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """DDL or DML without a result."""
        if self.session.embedded and not params:
            session = self.session
            self._guard(lambda: session.run(sql))
            return
        self._guard(lambda: self._with_client(lambda c: c.command(sql, parameters=params)))

    def insert_select(
        self,
        table: str,
        columns: Sequence[str],
        exprs: Sequence[str],
        data: pa.Table | pa.RecordBatch,
        where: str | None = None,
    ) -> None:
        """INSERT INTO table (columns) SELECT exprs FROM <data> [WHERE where], in one statement.

        `exprs` refer to `data`'s columns by name; the engine does every conversion, in bulk.
        """
        import pyarrow as pa

        table_data = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        cols = ", ".join(ident(c) for c in columns)
        body = f"INSERT INTO {table} ({cols}) SELECT {', '.join(exprs)} FROM {{arrow}}"
        if where:
            body += f" WHERE {where}"
        if self.session.embedded:
            session = self.session
            self._guard(lambda: session.run_with(body, table_data), context=f"insert into {table}")
            return
        structure = ", ".join(
            f"{ident(f.name)} Nullable({arrow_to_ch_type(f.type)})" for f in table_data.schema
        )
        sql = body.replace("{arrow}", f"input({sql_str(structure)})") + " FORMAT ArrowStream"
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table_data.schema) as writer:
            writer.write_table(table_data)
        payload = sink.getvalue().to_pybytes()
        self._guard(
            lambda: self._with_client(lambda c: c.command(sql, data=payload)),
            context=f"insert into {table}",
        )

    def _guard(self, fn: Any, context: str | None = None) -> Any:
        try:
            return fn()
        except BankdeError:
            raise
        except Exception as exc:
            where = f"{context}: " if context else ""
            raise WarehouseError(f"warehouse error: {where}{_first_line(exc)}") from exc
