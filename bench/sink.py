"""Benchmark the warehouse sink: mixed change events/s into raw.transaction, and snapshot rows/s."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bankde.cdc.envelope import ChangeEvent, Source
from bankde.contracts import Offset
from bankde.settings import Settings
from bankde.warehouse.session import open_session
from bankde.warehouse.sink import ClickHouseSink

TARGET_EVENTS_PER_S = 100_000
TARGET_SNAPSHOT_ROWS_PER_S = 250_000


def txn_row(rng: np.random.Generator, txn_id: int) -> dict[str, str | None]:
    """One bank.transaction row in Postgres text form, as pgoutput sends it."""
    cents = int(rng.integers(1, 50_000_00))
    declined = rng.random() < 0.05
    return {
        "txn_id": str(txn_id),
        "txn_ref": f"550e8400-e29b-41d4-a716-{txn_id:012x}",
        "account_id": str(int(rng.integers(1, 100_000))),
        "card_id": str(int(rng.integers(1, 150_000))),
        "terminal_id": str(int(rng.integers(1, 20_000))),
        "txn_type": "purchase",
        "status": "declined" if declined else "approved",
        "decline_reason": "insufficient_funds" if declined else None,
        "amount": f"{cents // 100}.{cents % 100:02d}",
        "currency": "EUR",
        "balance_after": f"{cents * 3 // 100}.{cents % 100:02d}",
        "description": "card purchase",
        "occurred_at": f"2024-03-04 05:06:07.{txn_id % 1_000_000:06d}+00",
        "created_at": "2024-03-04 05:06:08.123456+00",
        "updated_at": "2024-03-04 05:06:08.123456+00",
    }


def mixed_events(n: int, seed: int = 7) -> list[ChangeEvent]:
    """70% inserts, 20% updates of earlier rows, 10% deletes; 100 events per transaction."""
    rng = np.random.default_rng(seed)
    events: list[ChangeEvent] = []
    next_id = 1
    lsn = 1 << 32
    ts = int(time.time() * 1000)
    for i in range(n):
        pos = i % 100 + 1
        if pos == 1:
            lsn += 10_000
        src = Source(lsn, 1000 + i // 100, ts, "bank", "transaction")
        r = rng.random()
        if r < 0.7 or next_id < 10:
            row = txn_row(rng, next_id)
            next_id += 1
            events.append(ChangeEvent("c", None, row, src, ts, pos))
        elif r < 0.9:
            row = txn_row(rng, int(rng.integers(1, next_id)))
            row["status"] = "reversed"
            events.append(ChangeEvent("u", None, row, src, ts, pos))
        else:
            key = {"txn_id": str(int(rng.integers(1, next_id)))}
            events.append(ChangeEvent("d", key, None, src, ts, pos))
    return events


def snapshot_batch(n: int) -> pa.RecordBatch:
    """Arrow as the capture's binary COPY produces it (numeric and uuid as text)."""
    ids = np.arange(1, n + 1, dtype=np.int64)
    cents = (ids * 7919) % 5_000_000 + 1
    amount = pa.array([f"{c // 100}.{c % 100:02d}" for c in cents.tolist()], pa.string())
    ts = pa.array(
        np.full(n, 1_709_528_767_000_000, dtype=np.int64) + ids, pa.timestamp("us", "UTC")
    )
    return pa.RecordBatch.from_pydict(
        {
            "txn_id": pa.array(ids),
            "txn_ref": pa.array([f"550e8400-e29b-41d4-a716-{i:012x}" for i in ids.tolist()]),
            "account_id": pa.array(ids % 100_000),
            "card_id": pa.array(ids % 150_000),
            "terminal_id": pa.array(ids % 20_000),
            "txn_type": pa.array(["purchase"] * n),
            "status": pa.array(["approved"] * n),
            "decline_reason": pa.array([None] * n, pa.string()),
            "amount": amount,
            "currency": pa.array(["EUR"] * n),
            "balance_after": amount,
            "description": pa.array(["card purchase"] * n),
            "occurred_at": ts,
            "created_at": ts,
            "updated_at": ts,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=20_000, help="events per apply() call")
    ap.add_argument("--snapshot-rows", type=int, default=1_000_000)
    ap.add_argument("--passes", type=int, default=3, help="timed passes; the best is reported")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bankde-bench-sink-", dir="/tmp"))
    session = open_session(Settings(home=home))
    try:
        wh = session.warehouse()
        sink = ClickHouseSink(wh)

        events = mixed_events(args.events)
        # Warm-up (first-insert costs are paid once per process in a real capture); re-applying
        # those events in the timed passes is harmless, apply() being idempotent.
        sink.apply(events[:2000], Offset("bench", 1, True))

        # Baseline: the same number of rows as already-typed Arrow, inserted with no parsing.
        typed = snapshot_batch(args.events)
        wh.command("CREATE TABLE raw.transaction_baseline AS raw.transaction")
        exprs = [
            *(f"`{n}`" for n in typed.schema.names[:8]),
            "toDecimal64(amount, 2)",
            "currency",
            "toDecimal64(balance_after, 2)",
            "description",
            "occurred_at",
            "created_at",
            "updated_at",
            "toUInt128(1)",
            "0",
            "'r'",
            "1",
            "0",
            "now64(3)",
        ]
        cols = [
            *typed.schema.names,
            "_version",
            "_is_deleted",
            "_op",
            "_lsn",
            "_tx_id",
            "_source_ts",
        ]
        baseline_s = []
        for _ in range(args.passes):
            t0 = time.perf_counter()
            wh.insert_select("raw.transaction_baseline", cols, exprs, typed)
            baseline_s.append(time.perf_counter() - t0)
        baseline = args.events / min(baseline_s)

        pass_s = []
        for _ in range(args.passes):
            t0 = time.perf_counter()
            for start in range(0, len(events), args.batch):
                chunk = events[start : start + args.batch]
                sink.apply(chunk, Offset("bench", chunk[-1].source.lsn + 1, True))
            pass_s.append(time.perf_counter() - t0)
        rate = args.events / min(pass_s)
        median = args.events / statistics.median(pass_s)

        snap = snapshot_batch(args.snapshot_rows)
        sink.reset_for_snapshot("bench_snap", [("bank", "transaction")])
        t0 = time.perf_counter()
        step = 250_000
        for start in range(0, snap.num_rows, step):
            sink.load_snapshot("bank", "transaction", snap.slice(start, step), 1 << 40)
        sink.apply([], Offset("bench_snap", (1 << 40) + 1, True))
        snap_rate = args.snapshot_rows / (time.perf_counter() - t0)
        visible = wh.scalar("SELECT count() FROM raw.transaction FINAL WHERE _is_deleted = 0")

        print(
            f"sink.apply, {args.events:,} mixed events (70% c / 20% u / 10% d) in batches of "
            f"{args.batch:,}: {rate:,.0f} events/s (best of {args.passes}; median {median:,.0f})"
        )
        print(
            f"  baseline, same rows as typed Arrow with no parsing: {baseline:,.0f} rows/s; "
            f"ratio {rate / baseline:.2f}"
        )
        print(f"  vs the 100k/s end-to-end target: {rate / TARGET_EVENTS_PER_S:.1f}x")
        print(
            f"sink.load_snapshot, {args.snapshot_rows:,} rows (staged, then swapped in): "
            f"{snap_rate:,.0f} rows/s; vs the 250k/s target: "
            f"{snap_rate / TARGET_SNAPSHOT_ROWS_PER_S:.1f}x; visible after swap: {visible:,}"
        )
    finally:
        session.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
