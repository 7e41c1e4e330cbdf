"""bankde: a bank's OLTP source, CDC into ClickHouse and the dbt warehouse downstream."""

__version__ = "0.1.0"
