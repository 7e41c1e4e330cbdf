"""Profile settings of the chdb target: a warehouse directory instead of a host."""

from __future__ import annotations

from dataclasses import dataclass

from dbt.adapters.clickhouse.credentials import ClickHouseCredentials


@dataclass
class ChdbCredentials(ClickHouseCredentials):
    """dbt-clickhouse's credentials plus `path`, the chDB data directory.

    Host, port, user and TLS fields are inherited and ignored: the engine runs in this process.
    """

    path: str = ".bankde/warehouse"

    @property
    def type(self) -> str:
        return "chdb"

    @property
    def unique_field(self) -> str:
        return self.path

    def _connection_keys(self) -> tuple[str, ...]:
        return ("path", "schema", "retries", "custom_settings", "use_lw_deletes")
