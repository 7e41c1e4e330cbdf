"""What the broker holds, through confluent-kafka's AdminClient: topics' end offsets, groups' lag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bankde.errors import BankdeError, ConfigError
from bankde.kafka.cluster import CONNECT_GROUP


def _admin(bootstrap: str) -> Any:
    try:
        from confluent_kafka.admin import AdminClient
    except ModuleNotFoundError:
        raise ConfigError(
            "confluent-kafka is not installed: pip install 'bankde[kafka]' (or make .venv/.installed-dev)"
        ) from None
    # librdkafka logs every refused connection on stderr: quiet while the broker is down.
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": 5000})


class BrokerError(BankdeError):
    """The broker did not answer (in time) or refused a request."""


def _kafka_call(what: str, fn: Any, *args: Any) -> Any:
    from confluent_kafka import KafkaException

    try:
        return fn(*args)
    except KafkaException as exc:
        raise BrokerError(f"{what}: {exc.args[0] if exc.args else exc}") from None


def broker_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True once the broker answers a metadata request (it lists its own id)."""
    try:
        meta = _admin(bootstrap).list_topics(timeout=timeout)
    except ConfigError:
        raise
    except Exception:  # KafkaException while the listener is not up yet
        return False
    return bool(meta.brokers)


@dataclass(frozen=True)
class TopicOffsets:
    topic: str
    partitions: int
    end_offset: int  # sum over partitions of the next offset to be written


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    end_offset: int

    @property
    def lag(self) -> int:
        return self.end_offset - (self.committed or 0)


def _end_offsets(admin: Any, parts: list[Any], timeout: float) -> dict[tuple[str, int], int]:
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    if not parts:
        return {}
    req = {TopicPartition(p.topic, p.partition): OffsetSpec.latest() for p in parts}
    # read_committed: the end a read_committed consumer (the kafka engine) can reach; an open
    # Connect transaction is not counted as lag.
    futures = admin.list_offsets(
        req, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout
    )
    return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}


def topic_offsets(bootstrap: str, timeout: float = 10.0) -> list[TopicOffsets]:
    """Every non-internal topic with its partition count and summed end offset."""
    return list(_kafka_call("topic end offsets", _topic_offsets, bootstrap, timeout))


def _topic_offsets(bootstrap: str, timeout: float) -> list[TopicOffsets]:
    from confluent_kafka import TopicPartition

    admin = _admin(bootstrap)
    meta = admin.list_topics(timeout=timeout)
    parts = [
        TopicPartition(name, pid)
        for name, t in meta.topics.items()
        if not name.startswith("__")
        for pid in t.partitions
    ]
    ends = _end_offsets(admin, parts, timeout)
    out: dict[str, list[int]] = {}
    for (topic, _), end in ends.items():
        out.setdefault(topic, []).append(end)
    return [TopicOffsets(t, len(v), sum(v)) for t, v in sorted(out.items())]


def group_lag(
    bootstrap: str, groups: list[str] | None = None, timeout: float = 10.0
) -> list[GroupLag]:
    """Committed offset and end offset per partition of each consumer group (all groups when None,
    but Connect's own)."""
    return list(_kafka_call("consumer group offsets", _group_lag, bootstrap, groups, timeout))


def _group_lag(bootstrap: str, groups: list[str] | None, timeout: float) -> list[GroupLag]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = _admin(bootstrap)
    if groups is None:
        listed = admin.list_consumer_groups(request_timeout=timeout).result()
        groups = sorted(g.group_id for g in listed.valid if g.group_id != CONNECT_GROUP)
    rows: list[GroupLag] = []
    for group in groups:
        futures = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
        )
        committed = futures[group].result().topic_partitions or []
        ends = _end_offsets(admin, committed, timeout)
        for tp in committed:
            offset = int(tp.offset) if tp.offset >= 0 else None
            end = ends.get((tp.topic, tp.partition), 0)
            rows.append(GroupLag(group, tp.topic, tp.partition, offset, end))
    return rows


def delete_topics(bootstrap: str, prefixes: tuple[str, ...], timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with one of `prefixes`; the names deleted."""
    admin = _admin(bootstrap)
    names = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefixes)]
    if names:
        for f in admin.delete_topics(names, operation_timeout=timeout).values():
            f.result()
    return sorted(names)
