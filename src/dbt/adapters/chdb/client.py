"""dbt-clickhouse's clickhouse-connect client wrapper, pointed at the in-process chDB engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import clickhouse_connect
from dbt.adapters.clickhouse.dbclient import ChRetryableException
from dbt.adapters.clickhouse.httpclient import ChHttpClient
from dbt.adapters.exceptions import FailedToConnectError

from bankde.errors import BankdeError, WarehouseLocked
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


def hold_warehouse(path: str) -> WarehouseSession:
    """The process's warehouse session on `path` (credentials.path), opened if need be.

    Under `bankde dbt` the process already holds it (the runner opened it) and this returns it.
    Plain `dbt` takes the named warehouse lock here, waiting up to BANKDE_WH_LOCK_WAIT for
    another process (a running `bankde cdc run`, say) to let go, so two processes never share
    one chDB directory; when another process serves it, the session is its HTTP client.
    """
    from bankde.settings import load_settings
    from bankde.warehouse.session import open_session

    try:
        settings = load_settings().model_copy(update={"wh_dir": Path(path), "clickhouse_url": None})
        return open_session(settings)
    except WarehouseLocked as exc:
        raise FailedToConnectError(f"{exc} (plain dbt: BANKDE_WH_LOCK_WAIT=<seconds>)") from None
    except BankdeError as exc:
        raise FailedToConnectError(str(exc)) from None


class ChdbClient(ChHttpClient):
    """Same query/command surface as the HTTP client; only the transport differs.

    chDB hosts one engine per process. Every client opened on the same (real) path gets its own
    handle on that shared engine, so dbt and bankde's warehouse client see the same data; the
    engine itself is opened, under the warehouse lock, by bankde's warehouse client.
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
