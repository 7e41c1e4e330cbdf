"""The test session's one managed Kafka broker and Connect worker (fixture `kafka_cluster`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bankde.settings import Settings


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class KafkaCluster:
    """A running broker + Connect worker (Debezium on its plugin.path) for the whole session.

    It lives under the session Postgres cluster's home (`home`/kafka), so every `fresh_source_db`
    settings object, and `bankde` subprocesses run with `cli_env(settings)`, find it (the ports
    are in `home`/kafka/state.json). The connectors have fixed names, slots and topics: one test
    at a time registers them, with `connectors(settings)`, which removes them afterwards.

    - `bootstrap`: "127.0.0.1:PORT" for confluent-kafka clients
    - `connect_url`: "http://127.0.0.1:PORT", Connect's REST API
    - `settings`: the session cluster's settings with the Kafka ports
    - `connectors(source_settings, wait=120)`: context manager: register debezium/*.json against
      that source database (as `bankde kafka connect`), wait until every task runs, yield the
      connector files; on exit stop and delete them with their stored offsets, drop their
      slots and delete their topics, so the next test starts from an empty broker.
    """

    settings: Settings
    bootstrap: str
    connect_url: str

    @property
    def home(self) -> Path:
        return self.settings.home_dir

    def env(self, settings: Settings | None = None) -> dict[str, str]:
        """BANKDE_* variables of the Kafka ports (add to cli_env(...) for `bankde` subprocesses)."""
        s = settings or self.settings
        return {
            "BANKDE_KAFKA_PORT": str(s.kafka_port),
            "BANKDE_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port),
            "BANKDE_CONNECT_PORT": str(s.connect_port),
        }

    @contextmanager
    def connectors(self, source_settings: Settings, wait: float = 120.0) -> Iterator[list]:
        from bankde.kafka.connect import connector_files, register, wait_running

        files = connector_files()
        try:
            register(source_settings, self.connect_url, files)
            if wait > 0:
                wait_running(self.connect_url, [f.name for f in files], wait)
            yield files
        finally:
            self.reset(source_settings)

    def reset(self, source_settings: Settings) -> None:
        """Remove the repo's connectors, their offsets, slots and topics (idempotent)."""
        from bankde.kafka.admin import delete_topics
        from bankde.kafka.connect import connector_files, remove

        remove(source_settings, self.connect_url, connector_files(), drop_slots=True)
        delete_topics(self.bootstrap, ("bankde.", "__debezium-heartbeat.bankde"))


def start_kafka(cluster_settings: Settings) -> Iterator[KafkaCluster]:
    """Start the broker and the worker under the cluster's home on free ports; stop them after."""
    from bankde.kafka.cluster import ManagedKafka

    broker, controller, connect = free_ports(3)
    settings = cluster_settings.model_copy(
        update={"kafka_port": broker, "kafka_controller_port": controller, "connect_port": connect}
    )
    kafka = ManagedKafka(settings)
    try:
        kafka.up()
        yield KafkaCluster(settings, kafka.bootstrap, kafka.connect_url)
    finally:
        kafka.down()
        # A test may have restarted it under other pids: the pid files name what runs now.
        assert not kafka.state("broker").running and not kafka.state("worker").running
