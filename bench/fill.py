"""Benchmark: `bankde fill` end to end vs a plain binary COPY of pre-built rows (the ceiling)."""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _cluster import peak_rss_mib, start_cluster, stop_cluster

from bankde.generator.activity import Timeline
from bankde.generator.config import FillConfig
from bankde.generator.runner import Generator, fill, to_us
from bankde.generator.world import load_world
from bankde.generator.writer import TXN_COLUMNS, _copy_blocks, fk_triggers_skippable
from bankde.settings import Settings
from bankde.source.connection import admin_info, connect, owner_info, source_info
from bankde.source.schema import init_source


def _server_cpu(data_dir: Path | None) -> float:
    """CPU seconds used so far by the managed cluster (postmaster, live and exited children):
    a figure other load on the machine does not inflate, unlike wall time."""
    if data_dir is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    master = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(entry.name) == master or int(fields[1]) == master:
            total += sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def _maintain(settings: Settings, truncate: str) -> None:
    """TRUNCATE as the tables' owner, then CHECKPOINT as the superuser (the application role
    may do neither), so every round starts clean, as the fill did on its fresh cluster."""
    with connect(owner_info(settings)) as conn:
        conn.execute(truncate)  # type: ignore[arg-type]
        conn.commit()
    checkpointer = admin_info(settings) if source_info(settings).managed else owner_info(settings)
    with connect(checkpointer, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _empty(settings: Settings) -> None:
    """Back to an empty schema for the next round (same seed then gives the same data)."""
    _maintain(
        settings,
        "TRUNCATE bank.customer, bank.account, bank.card, bank.terminal, bank.transaction,"
        " truth.fraud_episode, truth.fraud_label RESTART IDENTITY CASCADE",
    )


def ceiling(settings: Settings, n: int, batch: int, like_filler: bool) -> float:
    """Rows/s of binary COPY of ready-made transaction rows into the (emptied) same table.

    `like_filler` runs each COPY with the session settings the filler's bulk batches use
    (no foreign-key triggers when the role may skip them, asynchronous commit but the last);
    otherwise it is a COPY in a default session, where every row fires three FK triggers.
    """
    info = source_info(settings)
    with connect(info) as conn:
        skip_fk = like_filler and fk_triggers_skippable(conn)
        world = load_world(conn)
        conn.commit()
        config = FillConfig(seed=7, fraud_share=0.0, batch_size=batch)
        gen = Generator(world, config, np.random.default_rng(7))
        now = to_us(datetime.now(UTC))
        blocks = gen.window(Timeline(now - 86_400_000_000, now), 0.0, 1.0, batch, True).txn_blocks
        _maintain(settings, "TRUNCATE bank.transaction CASCADE")
        first = min(int(b["v0"].min()) for b in blocks)
        for b in blocks:
            b["v0"] -= first - 1
        done = 0
        started = time.perf_counter()
        while done < n:
            last = done + batch >= n
            with conn.transaction(), conn.cursor() as cur:
                if skip_fk:
                    cur.execute("SET LOCAL session_replication_role = replica")
                if like_filler and not last:
                    cur.execute("SET LOCAL synchronous_commit = off")
                _copy_blocks(cur, "bank.transaction", TXN_COLUMNS, blocks)
            done += batch
            for b in blocks:
                b["v0"] += batch  # next chunk: fresh ids, same bytes otherwise
        rate = done / (time.perf_counter() - started)
        conn.commit()
    with connect(owner_info(settings)) as owner:
        owner.execute("TRUNCATE bank.transaction CASCADE")
        owner.commit()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--txns", type=int, default=1_000_000)
    ap.add_argument("--backfill-days", type=int, default=30)
    # Default: a month of ~200 transactions per customer. A fixed small world would run out of
    # open cards at 10M (every after_card_closed episode closes one) and write fewer rows.
    ap.add_argument("--customers", type=int, default=None, help="default: txns / 200")
    ap.add_argument("--terminals", type=int, default=None, help="default: txns / 1000")
    ap.add_argument("--batch-size", type=int, default=100_000)
    ap.add_argument("--fraud-share", type=float, default=0.02)
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds of fill + ceiling; the best of each counts"
    )
    ap.add_argument(
        "--configured",
        action="store_true",
        help="Use the configured source (an empty scratch database) instead of a fresh cluster.",
    )
    args = ap.parse_args()

    home: Path | None = None
    cluster = None
    if args.configured:
        settings = Settings()
    else:
        home, settings, cluster = start_cluster("bankde-bench-")
    try:
        init_source(settings)
        if args.configured:
            with connect(source_info(settings)) as conn:
                if conn.execute("SELECT EXISTS (SELECT 1 FROM bank.transaction)").fetchone() != (
                    False,
                ):
                    raise SystemExit(
                        "error: --configured needs an empty bank.transaction (the ceiling "
                        "truncates it); use a scratch database"
                    )
        customers = args.customers if args.customers is not None else max(1_000, args.txns // 200)
        terminals = args.terminals if args.terminals is not None else max(200, args.txns // 1_000)
        current = args.txns // 10
        per_day = (args.txns - current) // max(args.backfill_days, 1)
        current = args.txns - per_day * args.backfill_days
        config = FillConfig(
            n_new_txns=current, backfill_days=args.backfill_days, backfill_txns_per_day=per_day,
            fraud_share=args.fraud_share, seed=42, customers=customers, terminals=terminals,
            batch_size=args.batch_size,
        )  # fmt: skip
        data_dir = None if cluster is None else cluster.data_dir
        load = os.getloadavg()
        rounds = []  # (fill txns/s, filler CPU, Postgres CPU, ceiling rows/s, ceiling Postgres CPU)
        for r in range(args.repeat):
            if r:
                _empty(settings)
            cpu0, srv0 = time.process_time(), _server_cpu(data_dir)
            summary = fill(settings, config)
            cpu, srv = time.process_time() - cpu0, _server_cpu(data_dir) - srv0
            if summary.transactions != args.txns:
                raise SystemExit(f"error: the fill wrote {summary.transactions:,} of {args.txns:,}")
            srv0 = _server_cpu(data_dir)
            # Right after its fill, so that both see about the same load on a shared machine.
            same = ceiling(settings, args.txns, args.batch_size, like_filler=True)
            rounds.append((summary.txns_per_second, cpu, srv, same, _server_cpu(data_dir) - srv0))
        rss = peak_rss_mib()
        # Informational only and slow (FK triggers): at most 1M rows.
        plain_n = min(args.txns, 1_000_000)
        plain = ceiling(settings, plain_n, args.batch_size, like_filler=False)
        rate, cpu, srv, _, _ = max(rounds)
        same, same_srv = max((x[3], x[4]) for x in rounds)
        ratios = sorted(x[0] / x[3] for x in rounds)
        fk = "skipped" if summary.fk_triggers_skipped else "checked (role may not skip them)"
        print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f} before the run (other work on the machine skews every figure)")  # fmt: skip
        best = f"best of {args.repeat}" if args.repeat > 1 else "one run"
        print(f"fill:    {summary.transactions:,} txns ({args.backfill_days} backfill days, "
              f"fraud {summary.fraud_share:.2%}, {summary.rows.get('bank.customer', 0):,} customers, "
              f"batches of {args.batch_size:,}, FK triggers {fk}) = {rate:,.0f} txns/s ({best}: "
              f"{', '.join(f'{x[0]:,.0f}' for x in rounds)})")  # fmt: skip
        print(f"ceiling: binary COPY of {args.txns:,} pre-built rows into bank.transaction, "
              f"same session settings as the filler = {same:,.0f} rows/s ({best}: "
              f"{', '.join(f'{x[3]:,.0f}' for x in rounds)})")  # fmt: skip
        print(
            f"         {plain_n:,} rows in a default session (FK triggers fire) = {plain:,.0f} rows/s"
        )
        # Each round's fill and ceiling run back to back under about the same load: the median
        # of those ratios is the figure for the target; best against best is shown beside it.
        mid = ratios[len(ratios) // 2]
        print(f"ratio:   {mid:.2f} x ceiling, median of the rounds "
              f"({', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.6: "
              f"{'met' if mid >= 0.6 else 'NOT met'}); best against best {rate / same:.2f}; "
              f"{rate / plain:.2f} x the default-session COPY")  # fmt: skip
        print(f"speed:   {rate:,.0f} txns/s (target >= 250,000: "
              f"{'met' if rate >= 250_000 else 'NOT met'})")  # fmt: skip
        print(f"CPU:     fill: filler process {cpu:.2f} s + Postgres {srv:.2f} s; ceiling: Postgres "
              f"{same_srv:.2f} s, of the best rounds (on 2 idle cores the fill is bound by the larger "
              f"of its two)")  # fmt: skip
        print(f"memory:  peak RSS of the filler process {rss:,.0f} MiB (target <= 1024 MiB at 10M)")
    finally:
        if home is not None and cluster is not None:
            stop_cluster(home, cluster)


if __name__ == "__main__":
    main()
