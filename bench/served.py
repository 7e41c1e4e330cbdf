"""Benchmark the served warehouse against in-process chDB: Arrow SELECT, Arrow insert, CDC stream."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from _cluster import free_port, start_cluster, stop_cluster

from bankde.settings import Settings
from bankde.warehouse.session import WarehouseSession, open_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.served import start_served

SELECT = (
    "SELECT number AS id, toDecimal64(number % 100000, 2) AS amount, "
    "concat('txn ', toString(number)) AS note, toDateTime64(number, 6, 'UTC') AS at "
    "FROM numbers({rows})"
)
DDL = (
    "CREATE TABLE IF NOT EXISTS {db}.ins (id UInt64, amount Decimal(18, 2), note String, "
    "at DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY id"
)
TARGET = 0.7


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def arrow_rows(rows: int) -> pa.Table:
    ids = pa.array(range(rows), pa.uint64())
    return pa.table(
        {
            "id": ids,
            "amount": pa.array([Decimal("12.34")] * rows, pa.decimal128(18, 2)),
            "note": pa.array([f"txn {i}" for i in range(rows)]),
            "at": pa.array(range(rows), pa.timestamp("us", "UTC")),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="Rows selected and inserted.")
    ap.add_argument("--repeat", type=int, default=3, help="Best of this many runs.")
    ap.add_argument("--txns", type=int, default=50_000, help="Source transactions (CDC part).")
    ap.add_argument("--changes", type=int, default=400_000, help="Changes streamed (CDC part).")
    ap.add_argument(
        "--rounds", type=int, default=4, help="CDC rounds, the sinks' order alternating."
    )
    args = ap.parse_args()

    import clickhouse_connect

    local_home = Path(tempfile.mkdtemp(prefix="bankde-bench-local-", dir="/tmp"))
    served_home = Path(tempfile.mkdtemp(prefix="bankde-bench-served-", dir="/tmp"))
    served_home.chmod(0o755)
    served = start_served(served_home, free_port())
    # This process's two sessions: its own embedded engine (the in-process baseline) and a
    # client of the served one; only the first is bound by chDB's one engine per process.
    local_session = open_session(Settings(home=local_home))
    remote_session = open_session(Settings(home=local_home, clickhouse_url=served.client_url()))
    try:
        local = local_session.warehouse()
        http = clickhouse_connect.get_client(
            host="127.0.0.1",
            port=served.port,
            username="bankde",
            password=served.password(),
            autogenerate_session_id=False,
        )
        remote = remote_session.warehouse()
        sql = SELECT.format(rows=args.rows)

        t_local = best(lambda: local.query_arrow(sql), args.repeat)
        t_http = best(lambda: http.query_arrow(sql), args.repeat)
        print(
            f"select {args.rows:,} rows as Arrow: HTTP {args.rows / t_http:,.0f} rows/s "
            f"({t_http:.2f}s) | baseline in-process {args.rows / t_local:,.0f} rows/s "
            f"({t_local:.2f}s) | ratio {t_local / t_http:.2f} (target >= {TARGET})"
        )

        data = arrow_rows(args.rows)
        cols = ["id", "amount", "note", "at"]
        for wh in (local, remote):
            wh.command(DDL.format(db="default"))

        def insert_local() -> None:
            local.command("TRUNCATE TABLE default.ins")
            local.insert_select("default.ins", cols, cols, data)

        def insert_http() -> None:
            http.command("TRUNCATE TABLE default.ins")
            http.insert_arrow("default.ins", data)

        t_ins_local = best(insert_local, args.repeat)
        t_ins_http = best(insert_http, args.repeat)
        assert http.command("SELECT count() FROM default.ins") == args.rows
        print(
            f"insert_arrow {args.rows:,} rows: HTTP {args.rows / t_ins_http:,.0f} rows/s "
            f"({t_ins_http:.2f}s) | baseline in-process {args.rows / t_ins_local:,.0f} rows/s "
            f"({t_ins_local:.2f}s) | ratio {t_ins_local / t_ins_http:.2f} (target >= {TARGET})"
        )
        cdc(args, local_session, remote_session)
    finally:
        remote_session.close()
        local_session.close()
        served.stop()
        shutil.rmtree(local_home, ignore_errors=True)
        shutil.rmtree(served_home, ignore_errors=True)


def cdc(
    args: argparse.Namespace, local_session: WarehouseSession, remote_session: WarehouseSession
) -> None:
    """The same changes streamed by two slots: sink in-process vs sink on the served URL."""
    from cdc import mixed_load  # bench/cdc.py: the same mixed load as the CDC benchmark

    from bankde.cdc import api as capture
    from bankde.cdc.slot import drop_slot, ensure_publication
    from bankde.generator import load_fill_config
    from bankde.generator.runner import fill
    from bankde.source.schema import init_source

    home, settings, cluster = start_cluster("bankde-bench-served-cdc-")
    # Each on its session: the process's own chDB directory, and the served URL.
    local = settings.model_copy(update={"cdc_slot": "bench_local", "wh_prefix": "l_"})
    remote = settings.model_copy(update={"cdc_slot": "bench_http", "wh_prefix": "h_"})
    sessions = {local.cdc_slot: local_session, remote.cdc_slot: remote_session}
    try:
        init_source(settings)
        fill(settings, load_fill_config({"n_new_txns": args.txns, "seed": 1}))
        ensure_publication(settings)
        for s in (local, remote):
            sink = capture.open_sink(s, sessions[s.cdc_slot])
            capture.sync(s, sink, show_progress=False)  # snapshot; both slots then see the same WAL
        # Rounds, the order alternating: a machine's load drifts over a run, and whichever
        # sink reads a round's WAL second finds it in the page cache; both biases cancel.
        spent = {"in-process": 0.0, "HTTP": 0.0}
        changes = {"in-process": 0, "HTTP": 0}
        ratios = []
        per_round = max(1, args.changes // args.rounds)
        for r in range(args.rounds):
            mixed_load(settings, per_round)
            order = [("in-process", local), ("HTTP", remote)]
            rates = {}
            for name, s in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                res = capture.sync(
                    s, capture.open_sink(s, sessions[s.cdc_slot]), show_progress=False
                )
                took = time.perf_counter() - t0
                spent[name] += took
                changes[name] += res.changes
                rates[name] = res.changes / took
            ratios.append(rates["HTTP"] / rates["in-process"])
        rate = {k: changes[k] / spent[k] for k in spent}
        print(
            f"CDC stream {changes['HTTP']:,} changes in {args.rounds} rounds: sink on the served "
            f"URL {rate['HTTP']:,.0f} changes/s | baseline sink in-process "
            f"{rate['in-process']:,.0f} changes/s | ratio {rate['HTTP'] / rate['in-process']:.2f} "
            f"(rounds {' '.join(f'{x:.2f}' for x in ratios)}; target >= {TARGET})"
        )
    finally:
        for s in (local, remote):
            try:
                drop_slot(s)
            except Exception as exc:
                print(f"could not drop slot {s.cdc_slot}: {exc}")
        stop_cluster(home, cluster)


if __name__ == "__main__":
    main()
