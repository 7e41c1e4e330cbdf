"""dbt-clickhouse's clickhouse-connect client wrapper, pointed at the in-process chDB engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import clickhouse_connect
from dbt.adapters.clickhouse.dbclient import ChRetryableException
from dbt.adapters.clickhouse.httpclient import ChHttpClient
from dbt.adapters.exceptions import FailedToConnectError

from bankde.errors import BankdeError, WarehouseLocked
from dbt.adapters.chdb.credentials import ChdbCredentials


def hold_warehouse(path: str) -> None:
    """Own the engine on `path` in this process, as bankde's warehouse client does.

    Under `bankde dbt` the process already owns it and this returns at once. Plain `dbt` takes
    the named warehouse lock here, waiting up to BANKDE_WH_LOCK_WAIT for another process (a
    running `bankde cdc run`, say) to let go, so two processes never share one chDB directory.
    """
    from bankde.settings import load_settings
    from bankde.warehouse.session import open_session

    try:
        settings = load_settings().model_copy(update={"wh_dir": Path(path), "clickhouse_url": None})
        open_session(settings)
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

    def _create_client(self, credentials: ChdbCredentials) -> Any:  # type: ignore[override]
        path = os.path.realpath(os.path.expanduser(credentials.path))
        hold_warehouse(path)
        try:
            return clickhouse_connect.get_client(
                interface="chdb",
                path=path,
                query_limit=0,
                settings=self._conn_settings,
            )
        except Exception as ex:
            raise ChRetryableException(str(ex)) from ex
