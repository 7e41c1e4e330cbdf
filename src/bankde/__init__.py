"""bankde: a bank's OLTP source, CDC into ClickHouse and the dbt warehouse downstream."""

import os

__version__ = "0.1.0"

# Everything bankde writes (chDB's warehouse files, Airflow's home, logs, keys, lock files) holds
# bank data or secrets: private to the owner from the first byte, in every process that imports
# bankde (the CLI, Airflow's workers, the Debezium JVM it starts), before chDB opens a file.
os.umask(0o077)
