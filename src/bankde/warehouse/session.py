"""The warehouse session: what one process holds of the warehouse, opened once and passed down."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bankde.errors import ConfigError
from bankde.settings import Settings
from bankde.warehouse.client import Warehouse, WarehouseError, _first_line, warehouse_path
from bankde.warehouse.lock import WarehouseLock, lock_path_for

if TYPE_CHECKING:
    import pyarrow as pa
    from clickhouse_connect.driver.client import Client

_T = TypeVar("_T")


class _ProcessEngine:
    """The one constraint chDB puts on a process, checked: it hosts one engine, on one data
    directory, for the process's lifetime (a second directory is refused by chDB itself, and
    paths are compared literally). So at most one embedded session is open at a time; opening
    another raises ConfigError naming both, whatever its path. This records which one is open;
    it is not a cache: nothing is ever handed out from it."""

    _mutex = threading.Lock()
    _open: str | None = None

    @classmethod
    def claim(cls, path: str) -> None:
        with cls._mutex:
            if cls._open is not None:
                why = (
                    "pass that session down instead of opening another"
                    if cls._open == path
                    else "chDB hosts one data directory per process"
                )
                raise ConfigError(
                    f"this process already has the embedded warehouse {cls._open} open, so "
                    f"{path} cannot be opened too: {why}"
                )
            cls._open = path

    @classmethod
    def release(cls, path: str) -> None:
        with cls._mutex:
            if cls._open == path:
                cls._open = None


class _EmbeddedEngine:
    """The chDB engine on one data directory: its lock, a raw connection for Arrow inserts, a
    clickhouse-connect client for queries; every statement on either runs under `mutex`."""

    def __init__(self, path: str, wait: float) -> None:
        import chdb

        self.path = path
        _ProcessEngine.claim(path)
        self.lock = WarehouseLock(lock_path_for(Path(path)))
        try:
            self.lock.acquire(wait)
        except BaseException:
            _ProcessEngine.release(path)
            raise
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.conn = chdb.connect(path)
        except Exception as exc:
            self.lock.release()
            _ProcessEngine.release(path)
            raise WarehouseError(f"cannot open warehouse {path}: {_first_line(exc)}") from None
        # chDB handles are not re-entrant: one statement at a time per handle, and the sink's
        # writer thread, capture engines and callers on other threads share these two.
        self.mutex = threading.RLock()
        self._cc: Client | None = None

    def with_client(self, fn: Callable[[Client], _T]) -> _T:
        with self.mutex:
            if self._cc is None:
                import clickhouse_connect

                self._cc = clickhouse_connect.get_client(interface="chdb", path=self.path)
            return fn(self._cc)

    def close(self) -> None:
        with self.mutex:
            if self._cc is not None:
                self._cc.close()
                self._cc = None
            self.conn.close()
            self.lock.release()
            _ProcessEngine.release(self.path)


class WarehouseSession:
    """One process's hold on the warehouse: either the embedded chDB engine it owns (under the
    lock file, one per data directory) or a client of a ClickHouse URL. Which one is decided
    here, in __init__, and nowhere else.

    The process that owns the work opens one session (`with open_session(settings) as s:`) and
    passes it, or Warehouse views of it (`s.warehouse()`), to what it calls; nothing else in the
    process opens one, and there is no process-wide registry to find it in. An embedded session
    is at most one per process (_ProcessEngine: chDB hosts one engine per process). Thread-safe;
    statements on the embedded engine run one at a time. `schema_applied` holds the prefixes
    whose schema file this session applied (ddl.ensure_schema).
    """

    def __init__(self, settings: Settings, wait: float | None = None) -> None:
        self.settings = settings
        self.schema_applied: set[str] = set()
        self._embedded: _EmbeddedEngine | None = None
        self._server: Client | None = None
        # --- served warehouse: another process owns it and serves it (warehouse/discovery) ---
        from bankde.warehouse.discovery import find_served

        self.served = find_served(settings) if settings.embedded_warehouse else None
        if self.served is not None:
            self._server = _server_client(self.served.client_url)
        elif settings.embedded_warehouse:
            lock_wait = settings.wh_lock_wait if wait is None else wait
            self._embedded = _EmbeddedEngine(warehouse_path(settings), lock_wait)
        else:
            assert settings.clickhouse_url is not None
            self._server = _server_client(settings.clickhouse_url)
        self.target = _target(settings)

    @property
    def embedded(self) -> bool:
        """Whether this process owns the embedded engine (else it is a client of a URL)."""
        return self._embedded is not None

    @property
    def location(self) -> str:
        if self._embedded is not None:
            return self._embedded.path
        if self.served is not None:
            return f"{self.served.path} (served by pid {self.served.pid} at {self.served.url})"
        return "ClickHouse server (BANKDE_CLICKHOUSE_URL)"

    def owner_lock(self) -> WarehouseLock:
        """The lock this process holds on the embedded warehouse (the HTTP server publishes its
        URL there)."""
        return self._require_embedded().lock

    @property
    def closed(self) -> bool:
        return self._embedded is None and self._server is None

    def warehouse(self, settings: Settings | None = None) -> Warehouse:
        """A Warehouse on this session; `settings` (default the session's) give its prefix."""
        return Warehouse(settings or self.settings, self)

    def with_client(self, fn: Callable[[Client], _T]) -> _T:
        """`fn` on the clickhouse-connect client: embedded, under the engine's mutex (its
        handles take one statement at a time); a server client is thread-safe by itself."""
        if self._embedded is not None:
            return self._embedded.with_client(fn)
        if self._server is None:
            raise WarehouseError("the warehouse session is closed")
        return fn(self._server)

    def run(self, sql: str) -> None:
        """A statement without parameters on the embedded engine's raw connection."""
        engine = self._require_embedded()
        with engine.mutex:
            engine.conn.query(sql)

    def run_with(self, sql: str, data: pa.Table) -> None:
        """Run `sql` on the embedded engine, where `{arrow}` reads the Arrow table in place."""
        engine = self._require_embedded()
        # chDB resolves Python(name) by looking the name up in the calling frames.
        bankde_arrow = data  # noqa: F841
        with engine.mutex:
            engine.conn.query(sql.replace("{arrow}", "Python(bankde_arrow)"))

    def _require_embedded(self) -> _EmbeddedEngine:
        if self._embedded is None:
            raise WarehouseError("the warehouse session is closed or not embedded")
        return self._embedded

    def close(self) -> None:
        """Release the engine and its lock (embedded) or the HTTP client (server)."""
        if self._embedded is not None:
            self._embedded.close()
            self._embedded = None
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> WarehouseSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(settings: Settings, wait: float | None = None) -> WarehouseSession:
    """A new session on the warehouse the settings select (see WarehouseSession); use it as a
    context manager, which closes it. Embedded: another process holding the lock makes this
    wait up to `wait` seconds (default BANKDE_WH_LOCK_WAIT), then raise WarehouseLocked naming
    it; this process already owning an embedded engine raises ConfigError (one per process)."""
    return WarehouseSession(settings, wait)


def _target(settings: Settings) -> str:
    if settings.embedded_warehouse:
        return f"chdb:{warehouse_path(settings)}"
    return f"url:{settings.clickhouse_url}"


def _server_client(url: str) -> Client:
    import clickhouse_connect

    try:
        # One client shared by threads: no server session (a server runs one query at a time
        # per session and refuses a second with SESSION_IS_LOCKED).
        return clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
    except Exception as exc:
        raise WarehouseError(
            f"cannot connect to ClickHouse at BANKDE_CLICKHOUSE_URL: {_first_line(exc)}"
        ) from None
