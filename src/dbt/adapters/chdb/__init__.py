"""dbt adapter plugin `chdb`: dbt-clickhouse served by the in-process chDB engine."""

from dbt.adapters.base import AdapterPlugin

from dbt.adapters.chdb.credentials import ChdbCredentials
from dbt.adapters.chdb.impl import ChdbAdapter
from dbt.include import chdb

Plugin = AdapterPlugin(
    adapter=ChdbAdapter,  # type: ignore[arg-type]
    credentials=ChdbCredentials,
    include_path=chdb.PACKAGE_PATH,
    dependencies=["clickhouse"],
)
