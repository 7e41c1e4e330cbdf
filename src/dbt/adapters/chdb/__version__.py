"""Version of the in-repo chDB adapter plugin (follows the dbt-clickhouse it builds on)."""

version = "1.10.0"
