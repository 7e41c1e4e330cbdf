"""Benchmark one huge source transaction through CDC: capture peak RSS and time, in parts vs whole."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cluster import start_cluster, stop_cluster

from bankde.settings import Settings
from bankde.source.connection import connect, owner_info
from bankde.source.schema import init_source

BANKDE = str(Path(sys.executable).with_name("bankde"))
RSS_TARGET_MIB = 1024


def seed(settings: Settings, rows: int) -> None:
    """A few accounts, cards and terminals, and `rows` transactions (plain SQL: fast)."""
    with connect(owner_info(settings)) as conn:
        conn.execute(
            "INSERT INTO bank.customer (customer_id, first_name, last_name, email, phone, "
            "birth_date, address, city, country, home_lat, home_lon, segment) "
            "SELECT g, 'F', 'L', 'u' || g || '@x.org', '+49' || g, date '1970-01-01' + g, 'A', "
            "'Berlin', 'DE', 52.5, 13.4, 'retail' FROM generate_series(1, 100) g"
        )
        conn.execute(
            "INSERT INTO bank.account (account_id, customer_id, iban, kind, currency, balance, "
            "overdraft_limit) SELECT g, g, 'DE' || lpad(g::text, 20, '0'), 'checking', 'EUR', "
            "100.10, 50 FROM generate_series(1, 100) g"
        )
        conn.execute(
            "INSERT INTO bank.terminal (terminal_id, kind, merchant_name, mcc, city, country, "
            "lat, lon) SELECT g, 'pos', 'Shop ' || g, '5411', 'Berlin', 'DE', 52.1, 13.2 "
            "FROM generate_series(1, 10) g"
        )
        conn.execute(
            "INSERT INTO bank.transaction (txn_id, account_id, terminal_id, txn_type, status, "
            "amount, currency, balance_after, description, occurred_at) "
            "SELECT g, 1 + g %% 100, 1 + g %% 10, 'purchase', 'approved', (g %% 1000) / 100.0 + 0.01, "
            "'EUR', 99.99, 'txn ' || g, timestamptz '2024-03-01 00:00:00+00' + g * interval '1 s' "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.commit()


def run_isolated(env: dict[str, str]) -> tuple[float, float]:
    """`bankde cdc sync` through a throwaway Python parent (RUSAGE_CHILDREN's peak only grows, so
    each capture gets a parent of its own): (seconds, the capture's peak RSS in MiB)."""
    code = (
        "import resource, subprocess, sys, time, json, os\n"
        "t = time.perf_counter()\n"
        f"p = subprocess.run([{BANKDE!r}, 'cdc', 'sync', '--json', '--no-progress'], "
        "capture_output=True, text=True)\n"
        "took = time.perf_counter() - t\n"
        "if p.returncode: sys.exit(p.stderr.strip().splitlines()[-1] if p.stderr else 'failed')\n"
        "print(json.dumps([took, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,"
        " json.loads(p.stdout).get('changes', 0)]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"bankde cdc sync failed: {proc.stderr.strip()[-500:]}")
    took, peak, changes = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  ({changes:,} changes applied)")
    return float(took), float(peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=5_000_000, help="Rows the one UPDATE changes.")
    ap.add_argument(
        "--baseline-rows",
        type=int,
        default=500_000,
        help="Rows of the baseline's UPDATE, captured whole (no parts): its memory grows with it.",
    )
    ap.add_argument(
        "--part-rows", type=int, default=None, help="BANKDE_CDC_TXN_PART_ROWS (default 100,000)."
    )
    args = ap.parse_args()

    home, settings, cluster = start_cluster("bankde-bench-hugetx-")
    wh_home = Path(tempfile.mkdtemp(prefix="bankde-bench-hugetx-wh-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_"))}
    env.update(
        {
            "BANKDE_HOME": str(settings.home),
            "BANKDE_PG_PORT": str(settings.pg_port),
            "BANKDE_WH_DIR": str(wh_home / "warehouse"),
        }
    )
    if args.part_rows:
        env["BANKDE_CDC_TXN_PART_ROWS"] = str(args.part_rows)
    part_rows = args.part_rows or settings.cdc_txn_part_rows
    try:
        init_source(settings)
        t0 = time.perf_counter()
        seed(settings, args.rows)
        print(f"seeded {args.rows:,} transactions in {time.perf_counter() - t0:.1f}s")
        took, peak = run_isolated(env)
        print(f"snapshot: {took:.1f}s, capture peak RSS {peak:,.0f} MiB")

        def one_update(limit: int) -> float:
            t = time.perf_counter()
            with connect(owner_info(settings)) as conn:
                conn.execute(
                    "UPDATE bank.transaction SET amount = amount + 1, description = 'bulk' "
                    "WHERE txn_id <= %s",
                    (limit,),
                )
                conn.commit()
            return time.perf_counter() - t

        pg = one_update(args.rows)
        took, peak = run_isolated(env)
        rate = args.rows / took
        print(
            f"one UPDATE of {args.rows:,} rows (Postgres {pg:.1f}s) in parts of "
            f"{part_rows:,}: captured in {took:.1f}s ({rate:,.0f} rows/s), "
            f"capture peak RSS {peak:,.0f} MiB (target <= {RSS_TARGET_MIB} MiB)"
        )
        pg = one_update(args.baseline_rows)
        whole = {**env, "BANKDE_CDC_TXN_PART_ROWS": str(10**9)}
        took, peak_whole = run_isolated(whole)
        print(
            f"baseline: one UPDATE of {args.baseline_rows:,} rows captured whole (no parts): "
            f"{took:.1f}s ({args.baseline_rows / took:,.0f} rows/s), capture peak RSS "
            f"{peak_whole:,.0f} MiB"
        )
    finally:
        stop_cluster(home, cluster)
        shutil.rmtree(wh_home, ignore_errors=True)


if __name__ == "__main__":
    main()
