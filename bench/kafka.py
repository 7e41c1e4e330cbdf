"""Benchmark: the kafka engine (a pre-filled topic; then Postgres -> Connect -> Kafka -> warehouse) next to native."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
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


def cpu_seconds() -> float:
    """User and system CPU of this process so far, all its threads (librdkafka's, Arrow's and
    chDB's included): what a step costs whatever else runs on a shared machine."""
    t = os.times()
    return t.user + t.system


def decode_baseline(bootstrap: str, events: int) -> tuple[float, float]:
    """Events/s of consuming the topic and orjson-decoding each value, nothing else, and the
    CPU microseconds it took per event."""
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
    cpu = cpu_seconds()
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
    cpu = cpu_seconds() - cpu
    c.close()
    return events / secs, cpu / events * 1e6


def rss_mib(pid: int | None) -> int:
    """Current resident set of a process, MiB (0 when it is gone)."""
    if not pid:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Peak RSS of the broker, the worker and this process (the consumers), sampled each 0.5 s."""

    def __init__(self, kafka: Any) -> None:
        self.pids = {"broker": kafka.state("broker").pid, "worker": kafka.state("worker").pid}
        self.pids["consumer"] = os.getpid()
        self.peak = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mib(pid))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def seed(settings: Any, txns: int) -> None:
    """Customers, accounts, cards, terminals and `txns` transactions: Debezium's snapshot."""
    from bankde.source.connection import connect, owner_info

    with connect(owner_info(settings)) as conn:
        for stmt in (
            "INSERT INTO bank.customer (customer_id, first_name, last_name, email, phone, "
            "birth_date, address, city, country, home_lat, home_lon, segment) SELECT g, "
            "'F' || g, 'L' || g, 'u' || g || '@x.org', '+49' || g, date '1980-01-01' + g, "
            "g || ' Hauptstr.', 'Berlin', 'DE', 52.52, 13.40, 'retail' "
            "FROM generate_series(1, 100) g",
            "INSERT INTO bank.account (account_id, customer_id, iban, kind, currency, balance, "
            "overdraft_limit) SELECT g, g, 'DE' || lpad(g::text, 20, '0'), 'checking', 'EUR', "
            "100, 50 FROM generate_series(1, 100) g",
            "INSERT INTO bank.terminal (terminal_id, kind, merchant_name, mcc, city, country, "
            "lat, lon) SELECT g, 'pos', 'Shop ' || g, '5411', 'Berlin', 'DE', 52.1, 13.2 "
            "FROM generate_series(1, 10) g",
        ):
            conn.execute(stmt)
        conn.commit()
        insert_txns(conn, 1, txns)


def insert_txns(conn: Any, first: int, n: int, per_txn: int = 5000) -> None:
    """Transactions first.. first+n-1, committed `per_txn` rows at a time."""
    for lo in range(first, first + n, per_txn):
        hi = min(first + n, lo + per_txn) - 1
        conn.execute(
            "INSERT INTO bank.transaction (txn_id, account_id, terminal_id, txn_type, status, "
            "amount, currency, balance_after, description, occurred_at) SELECT g, 1 + g %% 100, "
            "1 + g %% 10, 'purchase', 'approved', (g %% 1000) / 100.0 + 0.01, 'EUR', 99.99, "
            "'txn ' || g, now() FROM generate_series(%s::bigint, %s::bigint) g",
            (lo, hi),
        )
        conn.commit()


class Applied:
    """Rows of bank.transaction a running capture has applied, as its on_batch reports them."""

    def __init__(self) -> None:
        self.rows = 0
        self.cond = threading.Condition()

    def on_batch(self, b: Any) -> None:
        with self.cond:
            self.rows += b.tables.get("bank.transaction", 0)
            self.cond.notify_all()

    def wait_for(self, rows: int, timeout: float) -> float | None:
        """Monotonic time at which `rows` were applied, None on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.rows < rows:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
        return time.monotonic()


class TopicLag:
    """Where the kafka engine's latency is spent upstream: a read_committed reader of the
    transaction topic records, per change of the steady load, its commit time (source.ts_ms),
    the record's Kafka timestamp (when Connect sent it) and when it became visible here."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.rows: list[tuple[int, int, int, float]] = []  # txn_id, commit ms, sent ms, seen ms
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-lag-{os.getpid()}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe([topic])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in self._consumer.consume(10_000, 0.2):
                if m.error() is not None or m.value() is None:
                    continue
                seen = time.time() * 1000
                v = orjson.loads(m.value())
                after = v.get("after") or {}
                if v.get("op") == "c" and "txn_id" in after:
                    self.rows.append(
                        (after["txn_id"], v["source"]["ts_ms"], m.timestamp()[1], seen)
                    )

    def quantiles(self, lo: int, hi: int) -> tuple[float, float, float, float]:
        """p50/p99 of commit -> sent and commit -> visible, ms, for txn_id in [lo, hi)."""
        import numpy as np

        sent = np.array([s - c for t, c, s, _ in self.rows if lo <= t < hi], float)
        seen = np.array([v - c for t, c, _, v in self.rows if lo <= t < hi], float)
        if not len(sent):
            return (float("nan"),) * 4  # type: ignore[return-value]
        q = [50, 99]
        return (*np.percentile(sent, q), *np.percentile(seen, q))  # type: ignore[return-value]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()


def end_to_end(settings: Any, kafka: Any, wh_dir: Path, args: argparse.Namespace) -> None:
    """Debezium's initial snapshot, then a steady load and a burst, through native and kafka
    running side by side in this process on the same source (same load, same moment)."""
    from bankde.cdc.slot import ensure_publication
    from bankde.kafka.connect import connector_files, register, wait_running
    from bankde.source.connection import connect, owner_info

    seed(settings, args.snapshot_rows)
    nat = settings.model_copy(update={"wh_dir": wh_dir, "wh_prefix": "bkn_"})
    kaf = settings.model_copy(
        update={
            "wh_dir": wh_dir,
            "wh_prefix": "bke_",
            "kafka_bootstrap": kafka.bootstrap,
            "kafka_topic_prefix": "bankde",
            "kafka_group": f"bench-e2e-{os.getpid()}",
        }
    )
    rss = PeakRss(kafka)
    with open_session(nat) as session:
        ensure_publication(nat)
        res = capture.sync(nat, capture.open_sink(nat, session), show_progress=False)
        native_snap = res.snapshot_rows_per_s
        stop = threading.Event()
        applied = {"native": Applied(), "kafka": Applied()}
        runners = [
            threading.Thread(
                target=capture.run,
                args=(s, stop, capture.open_sink(s, session)),
                kwargs={"engine": name, "on_batch": applied[name].on_batch, "show_progress": False},
                daemon=True,
            )
            for name, s in (("native", nat), ("kafka", kaf))
        ]
        files = connector_files()
        started = time.monotonic()
        register(settings, kafka.connect_url, files)
        wait_running(kafka.connect_url, [f.name for f in files], 300)
        for r in runners:
            r.start()
        # Debezium's initial snapshot: registration -> every row in the warehouse (kafka engine).
        done = applied["kafka"].wait_for(args.snapshot_rows, 600)
        if done is None:
            raise SystemExit(
                f"Debezium snapshot: not in the warehouse after 600 s ({applied['kafka'].rows:,} rows)"
            )
        snap = done - started
        snap_rate = args.snapshot_rows / snap
        print(
            f"Debezium initial snapshot: {args.snapshot_rows:,} rows of bank.transaction in "
            f"{snap:.1f} s = {snap_rate:,.0f} rows/s (registration to warehouse) | native "
            f"snapshot {native_snap:,.0f} rows/s | ratio {snap_rate / native_snap:.2f}"
        )
        upstream = TopicLag(kafka.bootstrap, "bankde.bank.transaction")
        base = {n: a.rows for n, a in applied.items()}
        base["native"] = 0  # native took the snapshot rows with its own snapshot, not the stream
        # Steady load: rate changes/s (inserts of bank.transaction) for `seconds`.
        first = args.snapshot_rows + 1
        nxt = first
        with connect(owner_info(settings)) as conn:
            # Each 10 ms, the rows due by then: a slow commit is caught up with, so the rate
            # offered stays `rate` on average however busy the machine is.
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < args.seconds:
                due = first + int(args.rate * elapsed) - nxt
                if due <= 0:
                    time.sleep(0.01)
                    continue
                conn.execute(
                    "INSERT INTO bank.transaction (txn_id, account_id, txn_type, status, amount, "
                    "currency, occurred_at) SELECT g, 1, 'deposit', 'approved', 1.00, 'EUR', now() "
                    "FROM generate_series(%s::bigint, %s::bigint) g",
                    (nxt, nxt + due - 1),
                )
                conn.commit()
                nxt += due
            offered = (nxt - first) / (time.perf_counter() - t0)
            steady = nxt - first
            for name, a in applied.items():
                if a.wait_for(base[name] + steady, 300) is None:
                    raise SystemExit(f"{name}: steady load not applied after 300 s")
            # Burst: as fast as Postgres takes it, in transactions of 5,000 rows.
            burst_from = nxt
            t_burst = time.monotonic()
            insert_txns(conn, burst_from, args.burst)
        lat = {}
        for name, s in (("native", nat), ("kafka", kaf)):
            q = session.warehouse(s).query(
                "SELECT quantiles(0.5, 0.99)(dateDiff('millisecond', _source_ts, _ingested_at)), "
                f"count() FROM {s.wh_prefix}raw.transaction WHERE txn_id >= {first} "
                f"AND txn_id < {burst_from}"
            )
            (p50, p99), n = q[0]
            lat[name] = (p50, p99, n)
        rates = {}
        for name, a in applied.items():
            t = a.wait_for(base[name] + steady + args.burst, 600)
            if t is None:
                raise SystemExit(f"{name}: burst not applied after 600 s")
            rates[name] = args.burst / (t - t_burst)
        stop.set()
        for r in runners:
            r.join(timeout=120)
        upstream.stop()
    peak = rss.stop()
    sent50, sent99, seen50, seen99 = upstream.quantiles(first, burst_from)
    (n50, n99, nn), (k50, k99, kn) = lat["native"], lat["kafka"]
    print(
        f"end to end at a steady {offered:,.0f} changes/s for {args.seconds:.0f} s: commit to "
        f"warehouse p50 {k50:,.0f} ms, p99 {k99:,.0f} ms ({kn:,} rows) | native p50 "
        f"{n50:,.0f} ms, p99 {n99:,.0f} ms ({nn:,} rows) | ratio p50 {k50 / max(n50, 1):.1f}"
    )
    print(
        f"  of which upstream (Debezium, Connect, Kafka): commit to sent by Connect p50 "
        f"{sent50:,.0f} ms, p99 {sent99:,.0f} ms; commit to visible to a read_committed reader "
        f"p50 {seen50:,.0f} ms, p99 {seen99:,.0f} ms"
    )
    print(
        f"end to end burst of {args.burst:,} changes: kafka {rates['kafka']:,.0f} changes/s "
        f"(commit of the first to the last in the warehouse) | native {rates['native']:,.0f} "
        f"changes/s | ratio {rates['kafka'] / rates['native']:.2f}"
    )
    print(
        f"  peak RSS end to end: broker {peak['broker']} MiB, worker {peak['worker']} MiB, "
        f"consumers (this process: kafka and native engines) {peak['consumer']} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="Events pre-filled.")
    parser.add_argument(
        "--snapshot-rows", type=int, default=200_000, help="Rows for Debezium's initial snapshot."
    )
    parser.add_argument("--rate", type=int, default=2000, help="Changes/s of the steady load.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of the steady load.")
    parser.add_argument("--burst", type=int, default=100_000, help="Changes of the burst.")
    parser.add_argument(
        "--no-e2e", action="store_true", help="Only the pre-filled topic (no Connect, no load)."
    )
    parser.add_argument(
        "--no-per-event",
        action="store_true",
        help="Skip the same topic through the per-event path (the baseline before bulk).",
    )
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
        baseline, baseline_cpu = decode_baseline(bootstrap, args.events)
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
            sink = capture.open_sink(s, session)
            cpu = cpu_seconds()
            res = capture.sync(s, sink, engine="kafka", show_progress=False)
            cpu = cpu_seconds() - cpu
            rows = session.warehouse().scalar("SELECT count() FROM bk_raw.transaction FINAL")
            per_event = 0.0
            if not args.no_per_event:
                # The same topic through the engine's per-event path (orjson and change_event
                # per message: the engine before the bulk conversion), its own group and tables.
                from bankde.cdc.engines.kafka import KafkaEngine

                bulk = KafkaEngine._bulk_batch
                KafkaEngine._bulk_batch = lambda self, messages: None  # type: ignore[method-assign]
                try:
                    pe = s.model_copy(
                        update={"wh_prefix": "bkp_", "kafka_group": f"bench-pe-{os.getpid()}"}
                    )
                    r2 = capture.sync(
                        pe, capture.open_sink(pe, session), engine="kafka", show_progress=False
                    )
                finally:
                    KafkaEngine._bulk_batch = bulk  # type: ignore[method-assign]
                per_event = r2.changes / r2.stream_seconds if r2.stream_seconds else 0.0
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
        print(
            f"  CPU of this process (all threads) per event: consumer {cpu / max(res.changes, 1) * 1e6:.1f}"
            f" us (whole sync, warehouse included) | baseline {baseline_cpu:.1f} us | ratio "
            f"{cpu / max(res.changes, 1) * 1e6 / baseline_cpu:.2f}"
        )
        print(
            f"  baseline (consume + orjson.loads only, same topic): {baseline:,.0f} events/s | "
            f"ratio {applied / baseline:.2f} | target 100,000 events/s: {applied / 100_000:.2f}"
        )
        print(
            f"  RSS: broker {rss.get('broker', '?')} MiB, worker {rss.get('worker', '?')} MiB, "
            f"consumer (peak) {peak_rss_mib():.0f} MiB"
        )
        if per_event:
            print(
                f"  per-event path (orjson + change_event per message, as before the bulk "
                f"conversion), same topic: {per_event:,.0f} events/s | bulk/per-event "
                f"{applied / per_event:.2f}"
            )
        if not args.no_e2e:
            end_to_end(settings, kafka, wh_home / "e2e", args)
        print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    finally:
        kafka.down()
        stop_cluster(home, cluster)
        shutil.rmtree(wh_home, ignore_errors=True)


if __name__ == "__main__":
    main()
