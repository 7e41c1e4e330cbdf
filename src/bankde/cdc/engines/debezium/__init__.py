"""Debezium Postgres connector engines: settings, JSON conversion, the in-process engine."""
