"""Managed Kafka: a KRaft broker and a Kafka Connect worker running the repo's Debezium connectors."""
