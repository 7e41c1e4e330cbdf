"""Benchmark: `bankde fill` end to end vs a plain binary COPY of pre-built rows (the ceiling)."""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bankde.generator.activity import Timeline, Trips
from bankde.generator.config import FillConfig
from bankde.generator.runner import Generator, fill, to_us
from bankde.generator.world import load_world
from bankde.generator.writer import TXN_COLUMNS, _copy_blocks
from bankde.settings import Settings
from bankde.source.connection import connect, source_info
from bankde.source.schema import init_source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ceiling(settings: Settings, n: int, batch: int) -> float:
    """Rows/s of binary COPY of ready-made transaction rows into the (emptied) same table."""
    info = source_info(settings)
    with connect(info) as conn:
        world = load_world(conn)
        conn.commit()
        config = FillConfig(seed=7, fraud_share=0.0, batch_size=batch)
        gen = Generator(world, config, np.random.default_rng(7), Trips())
        now = to_us(datetime.now(UTC))
        blocks = gen.window(Timeline(now - 86_400_000_000, now), 0.0, 1.0, batch, True).txn_blocks
        conn.execute("TRUNCATE bank.transaction CASCADE")
        conn.commit()
        first = min(int(b["v0"].min()) for b in blocks)
        for b in blocks:
            b["v0"] -= first - 1
        done = 0
        started = time.perf_counter()
        while done < n:
            with conn.transaction(), conn.cursor() as cur:
                _copy_blocks(cur, "bank.transaction", TXN_COLUMNS, blocks)
            done += batch
            for b in blocks:
                b["v0"] += batch  # next chunk: fresh ids, same bytes otherwise
        return done / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--txns", type=int, default=1_000_000)
    ap.add_argument("--backfill-days", type=int, default=30)
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--terminals", type=int, default=1_000)
    ap.add_argument("--batch-size", type=int, default=100_000)
    ap.add_argument("--fraud-share", type=float, default=0.02)
    ap.add_argument(
        "--configured",
        action="store_true",
        help="Use the configured source instead of a fresh cluster.",
    )
    args = ap.parse_args()

    home: Path | None = None
    cluster = None
    if args.configured:
        settings = Settings()
    else:
        from bankde.source.cluster import ManagedCluster

        home = Path(tempfile.mkdtemp(prefix="bankde-bench-", dir="/tmp"))
        home.chmod(0o755)
        settings = Settings(home=home, pg_port=_free_port(), pg_dsn=None, db_host=None)
        cluster = ManagedCluster(settings)
        cluster.init()
        cluster.start()
    try:
        init_source(settings)
        current = args.txns // 10
        per_day = (args.txns - current) // max(args.backfill_days, 1)
        current = args.txns - per_day * args.backfill_days
        config = FillConfig(
            n_new_txns=current, backfill_days=args.backfill_days, backfill_txns_per_day=per_day,
            fraud_share=args.fraud_share, seed=42, customers=args.customers, terminals=args.terminals,
            batch_size=args.batch_size,
        )  # fmt: skip
        summary = fill(settings, config)
        rss = _peak_rss_mib()
        ceil_n = min(args.txns, 1_000_000)
        ceil = ceiling(settings, ceil_n, args.batch_size)
        rate = summary.txns_per_second
        print(f"fill:    {summary.transactions:,} txns ({args.backfill_days} backfill days, "
              f"fraud {summary.fraud_share:.2%}, {summary.rows.get('bank.customer', 0):,} customers) "
              f"in {summary.seconds:.2f} s = {rate:,.0f} txns/s")  # fmt: skip
        print(
            f"ceiling: binary COPY of {ceil_n:,} pre-built rows into bank.transaction = {ceil:,.0f} rows/s"
        )
        print(f"ratio:   {rate / ceil:.2f} x ceiling (target >= 0.6); target >= 250,000 txns/s: "
              f"{'met' if rate >= 250_000 else 'NOT met'}")  # fmt: skip
        print(f"peak RSS of the filler process: {rss:,.0f} MiB (target <= 1024 MiB at 10M)")
    finally:
        if cluster is not None:
            cluster.stop()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
