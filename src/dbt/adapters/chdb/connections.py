"""Connection manager of the chdb adapter: dbt-clickhouse's, opening chDB clients."""

from __future__ import annotations

from typing import Any

from dbt.adapters.clickhouse.connections import ClickHouseConnectionManager, retryable_exceptions
from dbt.adapters.clickhouse.logger import logger

from dbt.adapters.chdb.client import ChdbClient


class ChdbConnectionManager(ClickHouseConnectionManager):
    TYPE = "chdb"

    @classmethod
    def open(cls, connection: Any) -> Any:
        if connection.state == "open":
            return connection
        credentials = cls.get_credentials(connection.credentials)

        def connect() -> ChdbClient:
            return ChdbClient(credentials)

        return cls.retry_connection(
            connection,
            connect=connect,
            logger=logger,
            retry_limit=credentials.retries,
            retryable_exceptions=retryable_exceptions,
        )
