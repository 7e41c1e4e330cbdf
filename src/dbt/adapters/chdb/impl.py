"""The chdb adapter: dbt-clickhouse's adapter with the chDB connection manager."""

from __future__ import annotations

from dbt.adapters.clickhouse.impl import ClickHouseAdapter

from dbt.adapters.chdb.connections import ChdbConnectionManager


class ChdbAdapter(ClickHouseAdapter):
    """Every macro and materialization comes from dbt-clickhouse (plugin dependency)."""

    ConnectionManager = ChdbConnectionManager

    @classmethod
    def type(cls) -> str:
        return "chdb"
