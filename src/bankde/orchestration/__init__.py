"""Orchestration: the demo and run loops, and the functions the Airflow DAGs call."""
