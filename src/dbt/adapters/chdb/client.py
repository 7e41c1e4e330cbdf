"""dbt-clickhouse's clickhouse-connect client wrapper, pointed at the in-process chDB engine."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import clickhouse_connect
from dbt.adapters.clickhouse.dbclient import ChRetryableException
from dbt.adapters.clickhouse.httpclient import ChHttpClient
from dbt.adapters.exceptions import FailedToConnectError

from bankde.errors import BankdeError, ConfigError, WarehouseLocked
from dbt.adapters.chdb.credentials import ChdbCredentials

if TYPE_CHECKING:
    from bankde.warehouse.session import WarehouseSession


def warehouse_path(raw: str) -> str:
    """The profile's `path`, a relative one taken from the repo root (the dbt project's parent),
    so `cd dbt && dbt run` and `dbt run --project-dir dbt` open the same warehouse as bankde."""
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute():
        from dbt.flags import get_flags

        project = getattr(get_flags(), "PROJECT_DIR", None)
        path = Path(project or os.getcwd()).resolve().parent / path
    return os.path.realpath(path)


# Sessions lent by bankde's runner for the length of one dbtRunner invocation, by path.
#
# This is the one handoff that is not an argument, and why: dbt builds the adapter and its
# connections itself, from the rendered profile, and only plain data survives that road (the
# credentials and --vars are validated against a JSON schema, hashed for partial parsing,
# copied and logged). A live session (an engine, a lock) cannot travel in them; its path can,
# and names the session lent here. Only bankde.transform.runner.run_dbt lends, only while its
# invoke() runs; nothing else reads this.
_lent: dict[str, WarehouseSession] = {}
_lent_mutex = threading.Lock()
# Plain `dbt` (no bankde runner): the adapter owns the process's warehouse, so it opens the one
# session itself, on first connect, and holds it until the process exits.
_own: WarehouseSession | None = None


@contextmanager
def lend_session(path: str, session: WarehouseSession) -> Iterator[None]:
    """Let the chdb adapter's connections on `path` use `session` while dbt runs."""
    with _lent_mutex:
        if path in _lent:
            raise ConfigError(f"a dbt invocation on {path} is already running in this process")
        _lent[path] = session
    try:
        yield
    finally:
        with _lent_mutex:
            _lent.pop(path, None)


def hold_warehouse(path: str) -> WarehouseSession:
    """The session dbt's connections on `path` (credentials.path) work on.

    Under `bankde dbt` (or any caller of run_dbt) the runner lent its session. Plain dbt opens
    one for the process here, taking the named warehouse lock and waiting up to
    BANKDE_WH_LOCK_WAIT for another process (a running `bankde cdc run`, say) to let go, so two
    processes never share one chDB directory; when another process serves it, the session is
    its HTTP client.
    """
    global _own
    with _lent_mutex:
        lent = _lent.get(path)
        if lent is not None:
            return lent
        if _lent:
            raise FailedToConnectError(
                f"profile path {path} is not the warehouse bankde lent to dbt "
                f"({', '.join(_lent)}); the profile must name the same directory"
            )
        if _own is not None and not _own.closed:
            return _own
        from bankde.settings import load_settings
        from bankde.warehouse.session import open_session

        try:
            settings = load_settings().model_copy(
                update={"wh_dir": Path(path), "clickhouse_url": None}
            )
            _own = open_session(settings)
        except WarehouseLocked as exc:
            raise FailedToConnectError(
                f"{exc} (plain dbt: BANKDE_WH_LOCK_WAIT=<seconds>)"
            ) from None
        except BankdeError as exc:
            raise FailedToConnectError(str(exc)) from None
        return _own


class ChdbClient(ChHttpClient):
    """Same query/command surface as the HTTP client; only the transport differs.

    chDB hosts one engine per process. Every client opened on the same (real) path gets its own
    handle on that shared engine, so dbt and bankde's warehouse client see the same data; the
    engine itself is opened, under the warehouse lock, by the session (hold_warehouse). The
    handle runs outside the session's statement mutex on purpose: chDB handles on one engine
    run concurrently, each serialising its own statements (docs/dbt.md, "One engine, two
    handles").
    """

    _session: WarehouseSession | None = None

    def _create_client(self, credentials: ChdbCredentials) -> Any:  # type: ignore[override]
        path = warehouse_path(credentials.path)
        self._session = hold_warehouse(path)
        served = self._session.served
        try:
            if served is not None:
                # Another process serves the warehouse: its engine is not ours to open.
                return clickhouse_connect.get_client(
                    dsn=served.client_url, query_limit=0, settings=self._conn_settings
                )
            return clickhouse_connect.get_client(
                interface="chdb",
                path=path,
                query_limit=0,
                settings=self._conn_settings,
            )
        except Exception as ex:
            raise ChRetryableException(str(ex)) from ex
