"""The kafka capture engine: Debezium change events read from Kafka topics into the one sink."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from bankde.cdc.engines.debezium.columns import (
    Irregular,
    TablePlan,
    plan_for,
    table_columns,
    transaction_ends,
)
from bankde.cdc.engines.debezium.convert import (
    TableCatalog,
    TableInfo,
    change_event,
    parse_txn_id,
)
from bankde.cdc.engines.kafka_names import (
    data_topics,
    engine_settings,
    marker_topics,
    transaction_topics,
)
from bankde.cdc.envelope import ChangeColumns, ChangeEvent, Origins, Relation, Source
from bankde.cdc.rejects import Reject, key_text
from bankde.cdc.stream import ensure_table, source_columns
from bankde.contracts import Offset, ProgressFn, Sink, StoresPositions
from bankde.errors import CaptureError, ConfigError, SourceUnavailable
from bankde.settings import Settings

log = logging.getLogger(__name__)

# Messages taken per consume() call: one pseudo-transaction of the stream.
CONSUME_BATCH = 50_000
# How often the consistent cut is re-checked against the stored positions while markers wait.
CUT_CHECK_SECONDS = 0.5
# No message for this long: a partition one offset short of its end holds a control record there.
IDLE_DRAIN_SECONDS = 1.0
# How often the transaction topics are listed again (a connector registered later adds one).
TXN_TOPICS_SECONDS = 5.0
# END records read per call from the transaction topics.
TXN_BATCH = 50_000
# Messages held behind changes that wait for their END record before reading stops.
HOLD_MAX = 4 * CONSUME_BATCH
# Commit LSNs kept before those below the cut are dropped outside a cut's advance.
COMMITS_MAX = 1_000_000


@dataclass
class KafkaBatch:
    """One consume() call's changes as a CapturedTransaction (contracts.PositionedTransaction).

    Not a source transaction: its events come from many transactions and partitions, each
    versioned by its own transaction's commit LSN (from the END record of the connector's
    transaction topic) and its position in it (the envelope's `transaction.total_order`), so
    per-key order holds whatever the interleaving. `end_lsn` is the consistent cut known when it
    was read (the commit LSN every connector is fully applied up to), which may stay put.
    """

    xid: int
    commit_lsn: int
    end_lsn: int
    ts_ms: int
    relations: list[Relation] = field(default_factory=list)
    events: list[ChangeEvent] = field(default_factory=list)
    truncates: list[tuple[str, str, int]] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    # Never cut into parts: a batch is bounded by consume()'s message count.
    part: int = 0
    final: bool = True
    # The changes converted in bulk (contracts.ColumnarTransaction), one group per table.
    columns: list[ChangeColumns] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.events) + sum(len(c) for c in self.columns)


@dataclass
class _Marker:
    """A connector's marker at `lsn`: once every data partition is applied up to `targets`
    (the end offsets read after the marker arrived), that connector is applied up to `lsn`."""

    connector: str
    lsn: int
    targets: dict[tuple[str, int], int]


class KafkaEngine:
    """Consumes the Debezium topics as a member of a consumer group and hands out batches.

    Positions: the sink stores each partition's next offset in the warehouse after the rows
    (meta.cdc_kafka_offsets); on every assignment the consumer seeks there (not to the group's
    committed offsets, which are only committed afterwards for lag monitoring). Whatever is
    read again after a crash or a rebalance carries the same versions and changes nothing.
    """

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = engine_settings(settings)
        self.slot = self.settings.cdc_slot
        self.snapshot_rows: dict[str, int] = {}
        self.snapshot_seconds = 0.0
        self._catalog = TableCatalog.of_source(self.settings, self.name)
        self._tables = self._catalog.tables
        # Per table, its bulk conversion plan (None: event by event), for the TableInfo it has.
        self._plans: dict[tuple[str, str], tuple[TableInfo, TablePlan | None]] = {}
        self._topic_tables: dict[str, tuple[str, str] | None] = {}
        self._described: set[tuple[str, str]] = set()
        self._consumer: Any = None
        self._admin: Any = None
        self._seeked: dict[tuple[str, int], int] = {}  # where each assignment started
        self._last_message_at = time.monotonic()
        self._sink: Sink | None = None
        self._stored: StoresPositions | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._error: BaseException | None = None
        self._cut = 0  # commit LSN every connector is fully applied up to
        self._connector_lsn: dict[str, int] = {}
        self._markers: list[_Marker] = []
        self._cut_checked = 0.0
        self._held: list[Message] = []
        self._targets: dict[tuple[str, int], int] | None = None
        self._connectors: set[str] = set()  # every connector with a marker topic
        self._last_positions: dict[tuple[str, int], int] = {}  # written to the warehouse
        self._written_cut = 0  # the cut last handed out in a batch
        self._data_topic = data_topics(self.settings.kafka_topic_prefix)
        self._marker_topic = marker_topics(self.settings.kafka_topic_prefix)
        self._txn_topic = transaction_topics(self.settings.kafka_topic_prefix)
        # The transaction topics, read whole by every process (not shared in the group): xid ->
        # commit end LSN of each END not yet below the cut, and per partition its ENDs' (commit
        # LSN, offset) in order, to know where a restart must read them from again.
        self._txn_consumer: Any = None
        self._txn_listed = 0.0
        self._txn_assigned: set[tuple[str, int]] = set()
        self._commits: dict[int, int] = {}
        self._txn_ends: dict[tuple[str, int], deque[tuple[int, int]]] = {}
        self._txn_safe: dict[tuple[str, int], int] = {}  # where a restart reads them from

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap or f"127.0.0.1:{self.settings.kafka_port}"

    # -- lifecycle ----------------------------------------------------------------------
    def open(self, sink: Sink, progress: ProgressFn | None = None) -> Offset:
        if not isinstance(sink, StoresPositions):
            raise ConfigError("the kafka engine needs a sink that stores topic positions")
        self._sink = sink
        self._stored = sink
        self._catalog.load()
        for (schema, table), info in self._tables.items():
            # A type changed while no capture ran: widened, or only that table stopped.
            ensure_table(sink, schema, table, source_columns(info.relation))
        offset = sink.load_offset(self.slot)
        if offset is None:
            # Debezium's own initial snapshot arrives through the topics as 'r' events, versioned
            # at its consistent point like the native snapshot: nothing to stage here.
            offset = Offset(self.slot, 0, True)
            sink.apply([], offset)
        self._cut = self._written_cut = offset.lsn
        self._connector_lsn = sink.load_connector_lsns(self.slot)
        self._connectors = set(self._connector_lsn) | self._registered_connectors()
        self._consumer = self._connect()
        from confluent_kafka.admin import AdminClient

        self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        self._txn_consumer = self._connect_transactions()
        return offset

    def _registered_connectors(self) -> set[str]:
        """The heartbeat prefixes of the connectors registered on the Connect worker for our
        topic prefix: the cut waits for each of them, also for one whose first marker has not
        come yet (still snapshotting), which a cut from the markers seen alone would skip. An
        unreachable worker (Kafka of one's own without its REST API here): the markers seen."""
        from bankde.errors import BankdeError
        from bankde.kafka.cluster import ManagedKafka, rest_get

        try:
            found = rest_get(ManagedKafka(self.settings).connect_url, "/connectors?expand=info")
        except (OSError, BankdeError, ValueError) as exc:
            log.info("kafka: connectors not listed (%s): the cut follows the markers seen", exc)
            return set()
        names: set[str] = set()
        for entry in (found or {}).values():
            config = (entry.get("info") or {}).get("config") or {}
            if config.get("topic.prefix") != self.settings.kafka_topic_prefix:
                continue
            prefixes = str(config.get("message.prefix.include.list") or "")
            names.update(p.strip() for p in prefixes.split(",") if p.strip())
        return names

    def _connect(self) -> Any:
        conf = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.settings.kafka_group,
            "client.id": f"bankde-{self.slot}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            # Rebalances hand partitions over one at a time, not all at once.
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "topic.metadata.refresh.interval.ms": 5_000,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            "error_cb": self._on_error,
        }
        try:
            consumer = Consumer(conf)
            consumer.subscribe(
                [self._data_topic.pattern, self._marker_topic.pattern],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
        except KafkaException as exc:
            raise SourceUnavailable(f"kafka at {self.bootstrap}: {exc}") from None
        return consumer

    def _connect_transactions(self) -> Any:
        """A consumer of its own for the transaction topics, assigned (no group): with several
        processes in the group each needs every connector's END records, whichever data
        partitions it owns."""
        conf = {
            "bootstrap.servers": self.bootstrap,
            "group.id": f"{self.settings.kafka_group}.transactions",
            "client.id": f"bankde-{self.slot}-txn",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "error_cb": self._on_error,
        }
        try:
            return Consumer(conf)
        except KafkaException as exc:
            raise SourceUnavailable(f"kafka at {self.bootstrap}: {exc}") from None

    def close(self) -> None:
        txn, self._txn_consumer = self._txn_consumer, None
        if txn is not None:
            try:
                txn.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("kafka transaction consumer close: %s", exc)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("kafka consumer close: %s", exc)

    # -- consumer callbacks (run inside consume()) --------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._error = CaptureError(f"kafka consumer failed: {err.str()}")
        else:
            # Broker down, connection refused...: librdkafka reconnects by itself.
            log.info("kafka: %s", err.str())

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Seek every newly assigned partition to the offset the warehouse holds for it."""
        assert self._stored is not None
        stored = self._stored.load_positions(self.slot)
        for tp in partitions:
            at = stored.get((tp.topic, tp.partition))
            tp.offset = at if at is not None else OFFSET_BEGINNING
            self._seeked[(tp.topic, tp.partition)] = at if at is not None else 0
            self._assigned.add((tp.topic, tp.partition))
            # Which partitions moved here and where they resume: what a rebalance did.
            log.info(
                "kafka: %s[%d] assigned, from %s",
                tp.topic,
                tp.partition,
                "the beginning (none stored)" if at is None else f"stored offset {at}",
            )
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            log.info("kafka: %s[%d] revoked", tp.topic, tp.partition)
        # Messages of those partitions not handed out yet: the new owner reads them.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]
        consumer.incremental_unassign(partitions)

    # -- the capture contract -------------------------------------------------------------
    @property
    def must_flush(self) -> bool:
        return False

    def poll(self, timeout: float) -> KafkaBatch | None:
        consumer = self._consumer
        assert consumer is not None
        self._raise_if_failed()
        waiting = self._waiting
        read = self._read_commits(timeout if waiting else 0.0)
        if self._held and waiting and not read:
            # Changes wait for their transactions' END records: read on behind them (in order,
            # and the group keeps us as a live member), hand out only positions and the cut.
            if len(self._held) < HOLD_MAX:
                try:
                    self._held.extend(consumer.consume(CONSUME_BATCH, 0))
                except KafkaException as exc:
                    raise SourceUnavailable(f"kafka: {exc}") from None
            self._check_cut()
            return self._idle_positions()
        if self._held:
            messages, self._held = self._held, []
        else:
            try:
                messages = consumer.consume(CONSUME_BATCH, timeout)
            except KafkaException as exc:
                raise SourceUnavailable(f"kafka: {exc}") from None
            self._raise_if_failed()
        if messages:
            self._last_message_at = time.monotonic()
        if not messages:
            self._check_cut()
            return self._idle_positions()
        log.debug(
            "kafka: %d messages, cut %X, %d markers pending",
            len(messages),
            self._cut,
            len(self._markers),
        )
        batch = self._bulk_batch(messages)
        return batch if batch is not None else self._batch(messages)

    def _bulk_batch(self, messages: list[Message]) -> KafkaBatch | None:
        """The messages converted per topic in bulk (one Arrow JSON parse per table), or None
        when any of them needs the per-event path (_batch): an error, a truncate, a table or
        column new to the catalog, a placeholder, an event that is not a plain envelope.

        A change whose transaction's END record is not read yet holds back only its partition,
        from its offset on (in order, as the per-event path does); the rest is applied."""
        positions: dict[tuple[str, int], int] = {}
        by_topic: dict[str, tuple[list[bytes], list[int], list[int]]] = {}
        topic_tables = self._topic_tables
        for msg in messages:
            if msg.error() is not None:
                return None
            topic: str = msg.topic()  # type: ignore[assignment]
            part: int = msg.partition()  # type: ignore[assignment]
            offset: int = msg.offset()  # type: ignore[assignment]
            positions[(topic, part)] = offset + 1
            raw = msg.value()
            if raw is None:  # a tombstone
                continue
            group = by_topic.get(topic)
            if group is None:
                if topic not in topic_tables:
                    topic_tables[topic] = self._topic_table(topic)
                group = by_topic[topic] = ([], [], [])
            group[0].append(raw)
            group[1].append(part)
            group[2].append(offset)
        batch = KafkaBatch(0, self._cut, self._cut, 0, positions=positions)
        markers: dict[str, int] = {}
        # Partition -> offset of its first change still waiting for its END record.
        blocked: dict[tuple[str, int], int] = {}
        try:
            for topic, (values, parts, offsets) in by_topic.items():
                key = topic_tables[topic]
                if key is None:
                    if not self._marker_topic.match(topic):
                        return None
                    for raw in values:
                        value = orjson.loads(raw)
                        if value.get("op") != "m":
                            return None
                        name, at = str(value["message"]["prefix"]), int(value["source"]["lsn"])
                        if at > markers.get(name, 0):
                            markers[name] = at
                    continue
                plan = self._plan(key)
                if plan is None:
                    return None
                cols, _ = table_columns(plan, values, self._commits, hold=True)
                part_np = np.array(parts, np.int32)
                offset_np = np.array(offsets, np.int64)
                cols.origins = Origins(np.full(len(values), topic, object), part_np, offset_np)
                waiting = cols.lsn == 0
                if waiting.any():
                    for p in np.unique(part_np[waiting]).tolist():
                        first = int(offset_np[waiting & (part_np == p)].min())
                        blocked[(topic, p)] = first
                    keep = np.ones(len(values), bool)
                    for (t, p), first in blocked.items():
                        if t == topic:
                            keep &= ~((part_np == p) & (offset_np >= first))
                    cols = cols.take(np.flatnonzero(keep))
                if not len(cols):
                    continue
                batch.columns.append(cols)
                batch.ts_ms = max(batch.ts_ms, int(cols.ts_ms.max()))
                if key not in self._described:
                    batch.relations.append(plan.info.relation)
        except (Irregular, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.debug("kafka: batch read event by event (%s)", exc)
            return None
        for rel in batch.relations:
            self._described.add((rel.schema, rel.table))
        self._waiting = bool(blocked)
        if blocked:
            held = []
            for msg in messages:
                start = blocked.get((msg.topic() or "", msg.partition() or 0))
                if start is not None and (msg.offset() or 0) >= start:
                    held.append(msg)
            self._held = held + self._held
            positions.update(blocked)
        if markers:
            self._add_markers(markers)
        self._add_txn_positions(positions)
        batch.end_lsn = self._written_cut = self._cut
        return batch

    def _topic_table(self, topic: str) -> tuple[str, str] | None:
        """(schema, table) of a data topic (<prefix>.<schema>.<table>), None for others."""
        if not self._data_topic.match(topic):
            return None
        schema, _, table = topic[len(self.settings.kafka_topic_prefix) + 1 :].partition(".")
        return schema, table

    def _plan(self, key: tuple[str, str]) -> TablePlan | None:
        info = self._tables.get(key)
        if info is None:
            return None  # new to the catalog: the per-event path reads it again
        held = self._plans.get(key)
        if held is None or held[0] is not info:
            held = self._plans[key] = (info, plan_for(info))
        return held[1]

    def _batch(self, messages: list[Message]) -> KafkaBatch:
        batch = KafkaBatch(0, self._cut, self._cut, 0)
        events = batch.events
        positions = batch.positions
        tables = self._tables
        commits = self._commits
        markers: dict[str, int] = {}
        # Partitions stopped at a change whose transaction's END is not read yet: the rest of
        # each waits behind it (in order), and its position stays before it.
        blocked: set[tuple[str, int]] = set()
        held: list[Message] = []
        self._waiting = False
        for i, msg in enumerate(messages):
            err = msg.error()
            topic: str = msg.topic() or ""
            if blocked and (topic, msg.partition() or 0) in blocked:
                held.append(msg)
                continue
            if err is not None:
                if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    # A subscribed pattern no topic matches yet (connectors not started): wait.
                    continue
                if err.fatal() or not err.retriable():
                    raise CaptureError(f"kafka {topic}: {err.str()}")
                continue
            part: int = msg.partition() or 0
            next_offset = (msg.offset() or 0) + 1
            raw = msg.value()
            if raw is None:  # a tombstone (tombstones.on.delete is off; compaction leftovers)
                positions[(topic, part)] = next_offset
                continue
            try:
                value = orjson.loads(raw)
                src = value["source"]
                op = value["op"]
                if op == "m":
                    # The newest marker per connector of this batch is the one that matters.
                    name, at = str(value["message"]["prefix"]), int(src["lsn"])
                    if at > markers.get(name, 0):
                        markers[name] = at
                    positions[(topic, part)] = next_offset
                    continue
                key = (src["schema"], src["table"])
                commit = 0
                if op != "r":
                    txn = value["transaction"]
                    xid = parse_txn_id(txn["id"])[0]
                    commit = commits.get(xid, 0)
                    if not commit:
                        blocked.add((topic, part))
                        held.append(msg)
                        self._waiting = True
                        continue
                if op == "t":
                    if events or batch.truncates:
                        # A truncate is versioned through its batch's commit LSN: it ends one.
                        held.extend(messages[i:])
                        break
                    batch.commit_lsn = commit
                    batch.truncates.append((key[0], key[1], int(txn["total_order"])))
                    positions[(topic, part)] = next_offset
                    continue
                info = tables.get(key)
                row = value.get("after") or value.get("before") or ()
                if (
                    info is None
                    or not info.names.issuperset(row)
                    or (row and info.misfit(row) is not None)
                ):
                    # New to the catalog, or a value its type cannot hold (a type change).
                    info, refreshed = self._catalog.for_event(key, value)
                    if refreshed:
                        self._described.discard(key)
                if key not in self._described:
                    batch.relations.append(info.relation)
                    self._described.add(key)
                if op == "r":
                    # A snapshot read: at the consistent point, below every streamed change, and
                    # of no transaction (as the native snapshot lands it).
                    lsn, pos, xid = int(src["lsn"]), 0, 0
                else:
                    # Versioned by its transaction's commit LSN (the END record's; the LSN in
                    # the data event's transaction id is the transaction's first) and its place
                    # in it: versions grow in commit order, and a transaction's rows are below
                    # a cut exactly when the whole transaction is, in every connector.
                    lsn, pos = commit, int(txn["total_order"])
                ts = int(src["ts_ms"])
                ev = change_event(
                    info,
                    op,
                    value.get("before"),
                    value.get("after"),
                    Source(lsn, xid, ts, key[0], key[1], op == "r"),
                    pos,
                )
                ev.origin = (topic, part, next_offset - 1)
                events.append(ev)
                if ts > batch.ts_ms:
                    batch.ts_ms = ts
            except CaptureError:
                raise
            except Exception as exc:
                self._reject(msg, raw, exc)
            positions[(topic, part)] = next_offset
        self._held = held + self._held
        if markers:
            self._add_markers(markers)
        self._add_txn_positions(positions)
        batch.end_lsn = self._written_cut = self._cut
        return batch

    def _reject(self, msg: Message, raw: bytes, exc: Exception) -> None:
        """An event that cannot be converted: quarantined (before its position is written) with
        its topic, partition and offset, never skipped silently."""
        assert self._stored is not None
        table, key, lsn = msg.topic() or "", "", 0
        try:
            value = orjson.loads(raw)
            src = value.get("source") or {}
            table = f"{src['schema']}.{src['table']}"
            row = value.get("after") or value.get("before") or {}
            info = self._tables.get((src["schema"], src["table"]))
            if info is not None:
                key = key_text({k: row.get(k) for k in info.relation.key})
            lsn = int(src.get("lsn") or 0)
            txn = value.get("transaction")
            if txn:
                lsn = parse_txn_id(txn["id"])[1]
        except Exception:  # the event is not even JSON of an envelope: the text says it all
            pass
        reason = f"{type(exc).__name__}: {exc}"
        log.warning(
            "kafka %s[%d]@%d: event quarantined (%s)",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            reason,
        )
        text = raw.decode("utf-8", "replace")
        self._stored.quarantine(
            self.slot,
            [
                Reject(
                    table,
                    key,
                    lsn,
                    "",
                    text,
                    reason,
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                )
            ],
        )

    def _idle_positions(self) -> KafkaBatch | None:
        """Nothing to read: positions past transaction control records (no message tells of
        them) and a moved cut, as a batch without rows, so both reach the warehouse."""
        consumer = self._consumer
        if not self._assigned:
            return None
        tps = [TopicPartition(t, p) for t, p in self._assigned]
        try:
            now = consumer.position(tps)
        except KafkaException:
            return None
        # A partition with messages held is read past them: its position is theirs to move.
        held = {(m.topic(), m.partition()) for m in self._held}
        positions = {
            (tp.topic, tp.partition): tp.offset
            for tp in now
            if tp.offset not in (OFFSET_INVALID,)
            and tp.offset >= 0
            and (tp.topic, tp.partition) not in held
        }
        self._add_txn_positions(positions)
        last = self._last_positions
        moved = {k: v for k, v in positions.items() if last.get(k, -1) < v}
        if not moved and self._cut <= self._written_cut:
            return None
        batch = KafkaBatch(0, self._cut, self._cut, 0, positions=moved)
        self._written_cut = self._cut
        return batch

    def acknowledge(self, lsn: int) -> None:
        # Positions, not LSNs, say how far the warehouse is: see commit_positions.
        return

    def commit_positions(self, positions: dict[tuple[str, int], int]) -> None:
        """The warehouse holds these positions: commit them to the group (lag monitoring)."""
        self._last_positions = {**self._last_positions, **positions}
        mine = [
            TopicPartition(t, p, o) for (t, p), o in positions.items() if (t, p) in self._assigned
        ]
        if mine and self._consumer is not None:
            try:
                self._consumer.commit(offsets=mine, asynchronous=True)
            except KafkaException as exc:
                # A rebalance in progress: the next batch commits again.
                log.info("kafka commit: %s", exc)

    def caught_up(self, target_lsn: int) -> bool:
        """Drained to the end offsets every partition had when first asked (`cdc sync`), those
        positions written, and the cut they lead to handed out."""
        consumer = self._consumer
        assert self._stored is not None
        if self._targets is None:
            self._targets = self._end_offsets()
        if self._held:
            return False
        if self._targets and not self._assigned:
            return False
        try:
            now = consumer.position([TopicPartition(t, p) for t, p in self._assigned])
        except KafkaException:
            return False
        current = {(tp.topic, tp.partition): tp.offset for tp in now if tp.offset >= 0}
        others: dict[tuple[str, int], int] | None = None
        for key, end in self._targets.items():
            if key in self._assigned:
                at = max(current.get(key, -1), self._seeked.get(key, -1))
                if not self._reached(at, end):
                    return False
                continue
            # Another member owns it (or nobody yet): the warehouse must show it read.
            if others is None:
                others = self._stored.load_positions(self.slot)
            if not self._reached(others.get(key, -1), end):
                return False
        # Everything read must be written (its positions too) before the cut can follow it.
        written = self._last_positions
        if any(written.get(k, -1) < v for k, v in current.items()):
            return False
        self._check_cut(force=True)
        return self._cut <= self._written_cut

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        """The last stable offset (read_committed's end) of every partition of our topics, in
        one request of a separate admin client (the subscribed consumer answers slowly)."""
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import OffsetSpec

        admin = self._admin
        assert admin is not None
        try:
            meta = admin.list_topics(timeout=10)
            request = {
                TopicPartition(name, p): OffsetSpec.latest()
                for name, topic in meta.topics.items()
                if self._data_topic.match(name) or self._marker_topic.match(name)
                for p in topic.partitions
            }
            if not request:
                return {}
            futures = admin.list_offsets(
                request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10
            )
            ends = {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
        except KafkaException as exc:
            raise SourceUnavailable(f"kafka at {self.bootstrap}: {exc}") from None
        return {k: v for k, v in ends.items() if v > 0}

    # -- the consistent cut -----------------------------------------------------------------
    def _add_markers(self, markers: dict[str, int]) -> None:
        """Connectors (named by their heartbeat's message prefix) delivered a logical-decoding
        message at an LSN: every change each captured before is in Kafka (read_committed shows
        a transaction whole). Once every data partition is applied up to the end offsets read
        now, the connector is applied up to its marker's LSN."""
        self._connectors.update(markers)
        new = {c: lsn for c, lsn in markers.items() if lsn > self._connector_lsn.get(c, 0)}
        if not new:
            return
        ends = self._data_ends()
        for connector, lsn in new.items():
            self._markers.append(_Marker(connector, lsn, ends))

    def _data_ends(self) -> dict[tuple[str, int], int]:
        return {k: v for k, v in self._end_offsets().items() if self._data_topic.match(k[0])}

    def _check_cut(self, force: bool = False) -> None:
        if not self._markers:
            return
        if not force and time.monotonic() - self._cut_checked < CUT_CHECK_SECONDS:
            return
        self._cut_checked = time.monotonic()
        assert self._stored is not None
        stored = self._stored.load_positions(self.slot)
        # A partition holding a change at its last offset is not one control record short.
        held = {(m.topic() or "", m.partition() or 0) for m in self._held}
        done: dict[str, int] = {}
        waiting = []
        for m in self._markers:
            if all(
                self._reached(stored.get(k, 0), end, k not in held) for k, end in m.targets.items()
            ):
                done[m.connector] = max(done.get(m.connector, 0), m.lsn)
            else:
                waiting.append(m)
        self._markers = waiting
        if not done:
            return
        self._connector_lsn.update(done)
        self._stored.write_connector_lsns(self.slot, done)
        # A connector with a marker topic but no marker applied yet holds the cut where it is.
        if self._connectors <= set(self._connector_lsn):
            self._cut = max(self._cut, min(self._connector_lsn.values()))
            self._forget_commits()

    # -- commit LSNs from the transaction topics ------------------------------------------
    _waiting = False  # the last batch held changes for want of their END record

    def _read_commits(self, timeout: float) -> int:
        """Read the transaction topics' new END records (BEGINs only move the position); with
        changes waiting, for up to `timeout`. Returns how many ENDs were read."""
        txn = self._txn_consumer
        if txn is None:
            return 0
        self._assign_transaction_topics()
        if not self._txn_assigned:
            return 0
        try:
            records = txn.consume(TXN_BATCH, timeout)
        except KafkaException as exc:
            raise SourceUnavailable(f"kafka: {exc}") from None
        self._raise_if_failed()
        # Errors (partition EOF, broker hiccups: librdkafka carries on) and empty values skipped.
        records = [m for m in records if m.error() is None and m.value() is not None]
        found = transaction_ends([m.value() for m in records])
        if found is None:
            found = self._ends_one_by_one(records)
        at, xids, lsns = found
        commits, cut = self._commits, self._cut
        for i, xid, lsn in zip(at, xids, lsns, strict=True):
            commits[xid] = lsn
            if lsn > cut:
                msg = records[i]
                key = (msg.topic() or "", msg.partition() or 0)
                self._txn_ends.setdefault(key, deque()).append((lsn, msg.offset() or 0))
        ends = len(at)
        if len(self._commits) > COMMITS_MAX:
            # Read from the start of a long topic: what is below the cut is applied already.
            self._forget_commits()
        return ends

    @staticmethod
    def _ends_one_by_one(records: list[Message]) -> tuple[list[int], list[int], list[int]]:
        """transaction_ends record by record: a record that is not a Debezium transaction
        record stops the capture, named by where it was read."""
        at, xids, lsns = [], [], []
        for i, msg in enumerate(records):
            try:
                value = orjson.loads(msg.value())  # type: ignore[arg-type]
                if value.get("status") != "END":
                    continue
                xid, lsn = parse_txn_id(value["id"])
            except Exception as exc:
                raise CaptureError(
                    f"kafka {msg.topic()}[{msg.partition()}]@{msg.offset()}: not a Debezium "
                    f"transaction record ({type(exc).__name__}: {exc})"
                ) from None
            at.append(i)
            xids.append(xid)
            lsns.append(lsn)
        return at, xids, lsns

    def _assign_transaction_topics(self) -> None:
        """Every transaction topic of the prefix, from where the warehouse says a restart must
        read (the first END above the stored cut), or from the beginning."""
        now = time.monotonic()
        if now - self._txn_listed < TXN_TOPICS_SECONDS:
            return
        self._txn_listed = now
        assert self._admin is not None and self._stored is not None
        try:
            meta = self._admin.list_topics(timeout=10)
        except KafkaException as exc:
            raise SourceUnavailable(f"kafka at {self.bootstrap}: {exc}") from None
        new = [
            (name, p)
            for name, topic in meta.topics.items()
            if self._txn_topic.match(name)
            for p in topic.partitions
            if (name, p) not in self._txn_assigned
        ]
        if not new:
            return
        stored = self._stored.load_positions(self.slot)
        tps = []
        for key in new:
            at = stored.get(key)
            tps.append(TopicPartition(key[0], key[1], OFFSET_BEGINNING if at is None else at))
            self._txn_assigned.add(key)
        self._txn_consumer.incremental_assign(tps)

    def _forget_commits(self) -> None:
        """ENDs at or below the cut: every change of theirs is applied and its position stored,
        so a restart never reads them again; the transaction topics' positions move past them."""
        cut = self._cut
        for key, ends in self._txn_ends.items():
            while ends and ends[0][0] <= cut:
                _, offset = ends.popleft()
                self._txn_safe[key] = offset + 1
        self._commits = {x: lsn for x, lsn in self._commits.items() if lsn > cut}

    def _add_txn_positions(self, positions: dict[tuple[str, int], int]) -> None:
        """The transaction topics' restart positions go to the warehouse with a batch."""
        last = self._last_positions
        for key, at in self._txn_safe.items():
            if last.get(key, -1) < at:
                positions[key] = at

    def _reached(self, at: int, end: int, idle_gap: bool = True) -> bool:
        """Whether position `at` is at the partition's last stable offset `end`. With exactly-once
        producers each transaction leaves a control record the consumer never returns, so a
        partition whose last record is one stays one short; after IDLE_DRAIN_SECONDS without any
        message that gap is taken as that record (unless `idle_gap` is off: a change is held
        there)."""
        if at >= end:
            return True
        return (
            idle_gap
            and at == end - 1
            and time.monotonic() - self._last_message_at >= IDLE_DRAIN_SECONDS
        )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def kafka_status(settings: Settings, warehouse: Any = None) -> dict[str, Any]:
    """The kafka part of `cdc status --engine kafka`: every connector with its tasks' states and
    the first line of a failed task's error, the consumer group's lag per topic, and the LSN
    each connector is applied up to. `problem` names the first failed connector or task."""
    from bankde.errors import BankdeError
    from bankde.kafka.admin import BrokerError, group_lag
    from bankde.kafka.cluster import ManagedKafka
    from bankde.kafka.connect import connector_states

    s = engine_settings(settings)
    kafka = ManagedKafka(s)
    out: dict[str, Any] = {"connectors": None, "lag": None, "connector_lsn": None}
    try:
        states = connector_states(kafka.connect_url)
        out["connectors"] = {
            c.name: {
                "state": c.state,
                "error": c.error,
                "tasks": {t.id: t.state + (f": {t.error}" if t.error else "") for t in c.tasks},
            }
            for c in states
        }
        for c in states:
            failed = [t for t in c.tasks if t.state == "FAILED"]
            if c.state == "FAILED" or failed:
                line = c.error or (failed[0].error if failed else None) or "no error line"
                out["problem"] = f"connector {c.name} FAILED: {line}"
                break
    except (OSError, BankdeError) as exc:
        out["connectors_error"] = f"Connect at {kafka.connect_url}: {exc}"
    bootstrap = s.kafka_bootstrap or kafka.bootstrap
    try:
        lag: dict[str, int] = {}
        for g in group_lag(bootstrap, [s.kafka_group]):
            lag[g.topic] = lag.get(g.topic, 0) + g.lag
        out["lag"] = lag
    except BrokerError as exc:
        out["lag_error"] = str(exc)
    if warehouse is not None:
        from bankde.warehouse.ddl import db_names, has_table

        if has_table(warehouse, db_names(s).meta, "cdc_connector_lsn"):
            from bankde.cdc.envelope import format_lsn

            rows = warehouse.query(
                f"SELECT connector, max(lsn) FROM {db_names(s).meta_table('cdc_connector_lsn')} "
                "WHERE slot = {s:String} GROUP BY connector ORDER BY connector",
                {"s": s.cdc_slot},
            )
            out["connector_lsn"] = {str(c): format_lsn(int(v)) for c, v in rows}
    return out


# The registry's entry point (cdc/registry.py).
Engine = KafkaEngine
