"""dbt-clickhouse's clickhouse-connect client wrapper, pointed at the in-process chDB engine."""

from __future__ import annotations

import os
from typing import Any

import clickhouse_connect
from dbt.adapters.clickhouse.dbclient import ChRetryableException
from dbt.adapters.clickhouse.httpclient import ChHttpClient
from dbt.adapters.exceptions import FailedToConnectError

from dbt.adapters.chdb.credentials import ChdbCredentials


class ChdbClient(ChHttpClient):
    """Same query/command surface as the HTTP client; only the transport differs.

    chDB hosts one engine per process. Every client opened on the same (real) path gets its own
    handle on that shared engine, so dbt and bankde's warehouse client see the same data; a
    different path while the engine is open is refused by chDB and reported here as a
    connection failure naming both.
    """

    def _create_client(self, credentials: ChdbCredentials) -> Any:  # type: ignore[override]
        path = os.path.realpath(os.path.expanduser(credentials.path))
        os.makedirs(path, exist_ok=True)
        try:
            return clickhouse_connect.get_client(
                interface="chdb",
                path=path,
                query_limit=0,
                settings=self._conn_settings,
            )
        except Exception as ex:
            msg = str(ex)
            if "path" in msg.lower() or "another" in msg.lower():
                raise FailedToConnectError(
                    f"chDB engine in this process is already open on another directory "
                    f"(wanted {path}): {msg}"
                ) from ex
            raise ChRetryableException(msg) from ex
