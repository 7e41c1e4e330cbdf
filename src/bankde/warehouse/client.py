"""One warehouse client for embedded chDB (one engine per process) and a ClickHouse server."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bankde.errors import BankdeError, ConfigError
from bankde.settings import Settings, get_settings
from bankde.warehouse.lock import WarehouseLock, lock_path_for
from bankde.warehouse.types import arrow_to_ch_type, ident, sql_str

if TYPE_CHECKING:
    import pyarrow as pa
    from clickhouse_connect.driver.client import Client

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


class _Embedded:
    """The process-wide chDB engine: its lock, a raw connection for Arrow inserts, a shared
    clickhouse-connect client for queries; every statement on either runs under `mutex`."""

    def __init__(self, path: str, wait: float) -> None:
        import chdb

        self.path = path
        self.lock = WarehouseLock(lock_path_for(Path(path)))
        self.lock.acquire(wait)
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.conn = chdb.connect(path)
        except Exception as exc:
            self.lock.release()
            raise WarehouseError(f"cannot open warehouse {path}: {_first_line(exc)}") from None
        # chDB handles are not re-entrant: one statement at a time per handle, and the sink's
        # writer thread, capture engines and callers on other threads share these two.
        self.mutex = threading.RLock()
        self._cc: Client | None = None

    def with_client(self, fn: Callable[[Client], _T]) -> _T:
        """`fn(client)` on the shared clickhouse-connect client, holding the mutex."""
        with self.mutex:
            if self._cc is None:
                import clickhouse_connect

                self._cc = clickhouse_connect.get_client(interface="chdb", path=self.path)
            return fn(self._cc)

    def run(self, sql: str) -> None:
        with self.mutex:
            self.conn.query(sql)

    def run_with(self, sql: str, data: pa.Table) -> None:
        """Run `sql`, where the Arrow table is visible to chDB's Python() table function."""
        # chDB resolves Python(name) by looking the name up in the calling frames.
        bankde_arrow = data  # noqa: F841
        with self.mutex:
            self.conn.query(sql.replace("{arrow}", "Python(bankde_arrow)"))

    def close(self) -> None:
        with self.mutex:
            if self._cc is not None:
                self._cc.close()
                self._cc = None
            self.conn.close()
            self.lock.release()


_ENGINE_MUTEX = threading.Lock()
_embedded: _Embedded | None = None
_servers: dict[str, Client] = {}


def _embedded_engine(path: str, wait: float) -> _Embedded:
    global _embedded
    with _ENGINE_MUTEX:
        if _embedded is not None:
            if _embedded.path != path:
                raise ConfigError(
                    f"this process already has the warehouse {_embedded.path} open; chDB allows one "
                    f"data directory per process, so {path} cannot be opened too"
                )
            return _embedded
        _embedded = _Embedded(path, wait)
        return _embedded


def _server_client(url: str) -> Client:
    with _ENGINE_MUTEX:
        client = _servers.get(url)
        if client is None:
            import clickhouse_connect

            try:
                # One client shared by threads: no session (a server locks a session to one
                # query at a time).
                client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
            except Exception as exc:
                raise WarehouseError(
                    f"cannot connect to ClickHouse at BANKDE_CLICKHOUSE_URL: {_first_line(exc)}"
                ) from None
            _servers[url] = client
        return client


def close_warehouse() -> None:
    """Close the process's embedded engine and release its lock (end of a command or test run)."""
    global _embedded
    with _ENGINE_MUTEX:
        if _embedded is not None:
            _embedded.close()
            _embedded = None
        for client in _servers.values():
            client.close()
        _servers.clear()


class Warehouse:
    """Queries, commands and Arrow inserts against whichever warehouse the settings select.

    Embedded: statements run on the process's single chDB engine; inserts read Arrow in place
    through the Python() table function. Server: clickhouse-connect over HTTP; inserts stream
    Arrow IPC into `INSERT ... SELECT ... FROM input()`. Thread-safe.
    """

    def __init__(self, settings: Settings, wait: float | None = None) -> None:
        self.settings = settings
        self._embedded: _Embedded | None = None
        self._server: Client | None = None
        # --- served warehouse: another process owns it and serves it (warehouse/discovery) ---
        from bankde.warehouse.discovery import find_served

        self.served = find_served(settings) if settings.embedded_warehouse else None
        if self.served is not None:
            self._server = _server_client(self.served.client_url)
        elif settings.embedded_warehouse:
            lock_wait = settings.wh_lock_wait if wait is None else wait
            self._embedded = _embedded_engine(warehouse_path(settings), lock_wait)
        else:
            assert settings.clickhouse_url is not None
            self._server = _server_client(settings.clickhouse_url)

    @property
    def embedded(self) -> bool:
        return self._embedded is not None

    @property
    def location(self) -> str:
        if self._embedded is not None:
            return self._embedded.path
        if self.served is not None:
            return f"{self.served.path} (served by pid {self.served.pid} at {self.served.url})"
        return "ClickHouse server (BANKDE_CLICKHOUSE_URL)"

    def owner_lock(self) -> WarehouseLock:
        """The lock this process holds on the embedded warehouse (the server publishes its URL
        there)."""
        if self._embedded is None:
            raise ConfigError("this process does not own an embedded warehouse")
        return self._embedded.lock

    def _with_client(self, fn: Callable[[Client], _T]) -> _T:
        """`fn` on the clickhouse-connect client: embedded, under the engine's mutex (its
        handles take one statement at a time); a server client is thread-safe by itself."""
        if self._embedded is not None:
            return self._embedded.with_client(fn)
        assert self._server is not None
        return fn(self._server)

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
        if self._embedded is not None and not params:
            embedded = self._embedded
            self._guard(lambda: embedded.run(sql))
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
        if self._embedded is not None:
            embedded = self._embedded
            self._guard(lambda: embedded.run_with(body, table_data), context=f"insert into {table}")
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


def open_warehouse(settings: Settings | None = None, wait: float | None = None) -> Warehouse:
    """The warehouse the settings select. Embedded: opens (once per process) the chDB engine,
    holding the lock file; another process holding it makes this wait up to `wait` seconds
    (default BANKDE_WH_LOCK_WAIT) and then raise WarehouseLocked naming that process."""
    return Warehouse(settings or get_settings(), wait)
