"""Source Postgres: the managed cluster, connections, the bank schema and its roles."""
