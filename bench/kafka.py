"""Benchmark: the kafka engine applying a pre-filled topic of Debezium JSON events, with baselines."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _cluster import free_port, peak_rss_mib, start_cluster, stop_cluster

from bankde.cdc import api as capture
from bankde.warehouse.session import open_session

PREFIX = "benchk"
TOPIC = f"{PREFIX}.bank.transaction"
# The connector's transaction topic: each END record carries its transaction's commit LSN,
# which versions the changes (the engine holds a change until its END is read).
TXN_TOPIC = f"{PREFIX}.transaction.bench"
PARTITIONS = 3


def envelope(i: int, lsn: int) -> bytes:
    """An insert into bank.transaction as Debezium's JSON converter writes it (no schemas)."""
    after = {
        "txn_id": i,
        "txn_ref": f"00000000-0000-4000-8000-{i:012d}",
        "account_id": 1 + i % 5000,
        "card_id": 1 + i % 4000,
        "terminal_id": 1 + i % 300,
        "txn_type": "purchase",
        "status": "approved",
        "decline_reason": None,
        "amount": f"{(i % 100000) / 100:.2f}",
        "currency": "EUR",
        "balance_after": "1234.56",
        "description": f"purchase {i}",
        "occurred_at": "2024-03-01T12:00:00.500000Z",
        "created_at": "2024-03-01T12:00:00.500000Z",
        "updated_at": "2024-03-01T12:00:00.500000Z",
    }
    return orjson.dumps(
        {
            "before": None,
            "after": after,
            "source": {
                "version": "3.6.1.Final",
                "connector": "postgresql",
                "name": PREFIX,
                "ts_ms": 1_700_000_000_000 + i // 10,
                "snapshot": "false",
                "db": "bank",
                "schema": "bank",
                "table": "transaction",
                "txId": 1000 + i // 10,
                "lsn": lsn,
            },
            "transaction": {
                "id": f"{1000 + i // 10}:{lsn}",
                "total_order": 1 + i % 10,
                "data_collection_order": 1 + i % 10,
            },
            "op": "c",
            "ts_ms": 1_700_000_000_000 + i // 10,
        }
    )


def fill_topic(bootstrap: str, events: int) -> float:
    """Produce `events` envelopes keyed by primary key; returns seconds."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result()
    admin.create_topics([NewTopic(TXN_TOPIC, 1, 1)])[TXN_TOPIC].result()
    prod = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    started = time.perf_counter()
    lsn = 0x1_0000_0000
    for i in range(1, events + 1):
        lsn += 120
        while True:
            try:
                prod.produce(TOPIC, envelope(i, lsn), key=orjson.dumps({"txn_id": i}))
                break
            except BufferError:
                prod.poll(0.05)
        if i % 10 == 9 or i == events:  # the last change of transaction 1000 + i // 10
            end = {"status": "END", "id": f"{1000 + i // 10}:{lsn}", "event_count": 10}
            while True:
                try:
                    prod.produce(TXN_TOPIC, orjson.dumps(end))
                    break
                except BufferError:
                    prod.poll(0.05)
    prod.flush()
    return time.perf_counter() - started


def decode_baseline(bootstrap: str, events: int) -> float:
    """Events/s of consuming the topic and orjson-decoding each value, nothing else."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-baseline-{os.getpid()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )
    c.subscribe([TOPIC])
    n = 0
    started: float | None = None
    while n < events:
        msgs = c.consume(20_000, 1.0)
        if msgs and started is None:
            started = time.perf_counter()
        for m in msgs:
            orjson.loads(m.value())
        n += len(msgs)
    assert started is not None
    secs = time.perf_counter() - started
    c.close()
    return events / secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()

    from bankde.kafka.cluster import ManagedKafka
    from bankde.source.schema import init_source

    home, settings, cluster = start_cluster("bankde-bench-kafka-")
    kafka = ManagedKafka(
        settings.model_copy(
            update={
                "kafka_port": free_port(),
                "kafka_controller_port": free_port(),
                "connect_port": free_port(),
            }
        )
    )
    wh_home = Path(tempfile.mkdtemp(prefix="bankde-bench-kafka-wh-"))
    try:
        init_source(settings)
        kafka.up()
        bootstrap = kafka.bootstrap
        fill = fill_topic(bootstrap, args.events)
        print(f"filled {TOPIC} ({PARTITIONS} partitions): {args.events:,} events in {fill:.1f} s")
        baseline = decode_baseline(bootstrap, args.events)
        s = settings.model_copy(
            update={
                "kafka_bootstrap": bootstrap,
                "kafka_topic_prefix": PREFIX,
                "kafka_group": f"bench-{os.getpid()}",
                "wh_dir": wh_home / "warehouse",
                "wh_prefix": "bk_",
            }
        )
        with open_session(s) as session:
            res = capture.sync(
                s, capture.open_sink(s, session), engine="kafka", show_progress=False
            )
            rows = session.warehouse().scalar("SELECT count() FROM bk_raw.transaction FINAL")
        applied = res.changes / res.stream_seconds if res.stream_seconds else 0.0
        rss: dict[str, Any] = {}
        for name in ("broker", "worker"):
            pid = kafka.state(name).pid
            if pid:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss[name] = int(line.split()[1]) // 1024
        print(
            f"consumer alone: {res.changes:,} events applied in {res.stream_seconds:.1f} s = "
            f"{applied:,.0f} events/s ({rows:,} rows through FINAL)"
        )
        print(f"  baseline (consume + orjson.loads only, same topic): {baseline:,.0f} events/s")
        print(
            f"  RSS: broker {rss.get('broker', '?')} MiB, worker {rss.get('worker', '?')} MiB, "
            f"consumer (peak) {peak_rss_mib():.0f} MiB"
        )
    finally:
        kafka.down()
        stop_cluster(home, cluster)
        shutil.rmtree(wh_home, ignore_errors=True)


if __name__ == "__main__":
    main()
