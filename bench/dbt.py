"""Benchmark: full dbt build on N transactions, then an incremental build after 100k changes (chDB)."""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# This file is named like the dbt package; keep its directory off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
AS_OF = "2025-06-01 00:00:00"
DAYS = 90
# Versions of generated rows: the bulk load sits below every later change, like a CDC snapshot.
CHANGE_VERSION_BASE = 1 << 64


def apply_warehouse_ddl(client: Any, prefix: str) -> None:
    """The raw/truth/meta tables of clickhouse_init/01_schema_dwh.sql under `prefix`."""
    text = (REPO / "clickhouse_init" / "01_schema_dwh.sql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    for stmt in re.split(r";\s*\n", text):
        if stmt.strip():
            stmt = re.sub(r"\b(raw|truth|meta)\.", rf"{prefix}\1.", stmt)
            stmt = re.sub(
                r"DATABASE IF NOT EXISTS (raw|truth|meta)",
                rf"DATABASE IF NOT EXISTS {prefix}\1",
                stmt,
            )
            client.command(stmt)


def _h(seed: int, k: int) -> str:
    """A deterministic 64-bit pseudo-random value per generated row (ClickHouse expression)."""
    return f"cityHash64({seed}, {k}, number)"


def populate(client: Any, prefix: str, n_txns: int, seed: int) -> dict[str, int]:
    """Generate raw.* rows inside the engine (deterministic in seed), as a CDC snapshot would land them."""
    raw = f"{prefix}raw"
    n_cust = max(100, n_txns // 200)
    n_term = max(50, n_txns // 500)
    meta = "number + 1 as _version, 0 as _is_deleted, 'r' as _op, 0 as _lsn, 0 as _tx_id, toDateTime64('{as_of}', 3, 'UTC') as _source_ts"
    meta = meta.format(as_of=AS_OF)
    created = f"toDateTime64('{AS_OF}', 6, 'UTC') - toIntervalDay({DAYS + 30})"
    closed_card = f"{_h(seed, 9)} % 100 < 3"
    client.command(
        f"""insert into {raw}.customer (* except (_ingested_at))
        select number + 1, 'First' || toString(number), 'Last' || toString(number),
               'c' || toString(number) || '@example.org', '+3361' || toString(number),
               toDate32('1970-01-01') + {_h(seed, 1)} % 15000, toString(number) || ' Main St',
               'City' || toString({_h(seed, 2)} % 50), 'FR',
               toDecimal32(43 + ({_h(seed, 3)} % 600) / 100, 6), toDecimal32(1 + ({_h(seed, 4)} % 600) / 100, 6),
               'retail', 'active', {created}, {created}, null, {meta}
        from numbers({n_cust})"""
    )
    client.command(
        f"""insert into {raw}.account (* except (_ingested_at))
        select number + 1, number + 1, 'FR76' || leftPad(toString(number), 20, '0'), 'checking', 'EUR',
               toDecimal64(1000, 2), toDecimal64(500, 2), 'active', {created}, {created}, null, {meta}
        from numbers({n_cust})"""
    )
    client.command(
        f"""insert into {raw}.card (* except (_ingested_at))
        select number + 1, number + 1, number + 1,
               concat('\\\\x', lower(hex(SHA256(toString(number)))), lower(hex(MD5(toString(number))))),
               lower(hex(SHA256(concat('pan', toString(number))))),
               right(leftPad(toString(number), 12, '0'), 4), 'visa', toDate32('2028-01-31'),
               toDecimal64(2000, 2), if({closed_card}, 'closed', 'active'), {created},
               {created}, if({closed_card}, toDateTime64('{AS_OF}', 6, 'UTC') - toIntervalDay(10), null), {meta}
        from numbers({n_cust})"""
    )
    client.command(
        f"""insert into {raw}.terminal (* except (_ingested_at))
        select number + 1, ['atm', 'pos', 'online'][1 + {_h(seed, 5)} % 3], 'Merchant ' || toString(number),
               ['5411', '5812', '6011', '5999', '4111'][1 + {_h(seed, 6)} % 5], 'City' || toString(number % 50), 'FR',
               toDecimal32(43 + ({_h(seed, 7)} % 600) / 100, 6), toDecimal32(1 + ({_h(seed, 8)} % 600) / 100, 6),
               'active', {created}, {created}, null, {meta}
        from numbers({n_term})"""
    )
    insert_transactions(
        client, raw, seed, 1, n_txns, n_cust, n_term, version_base=0, card_seed=seed
    )
    return {
        "customers": n_cust,
        "accounts": n_cust,
        "cards": n_cust,
        "terminals": n_term,
        "transactions": n_txns,
    }


def insert_transactions(
    client: Any,
    raw: str,
    seed: int,
    first_id: int,
    count: int,
    n_cust: int,
    n_term: int,
    version_base: int,
    card_seed: int,
    after_as_of: bool = False,
) -> None:
    """Insert `count` transactions with ids from `first_id`; ~4% declined, and every attempt on a
    card after its close declined with reason card_closed (the lifecycle invariant holds)."""
    # Ids grow with time, as a sequence assigned at insert does (a few minutes of jitter).
    span_us = (1 if after_as_of else DAYS) * 86400 * 10**6
    start = f"toDateTime64('{AS_OF}', 6, 'UTC')" + (
        "" if after_as_of else f" - toIntervalDay({DAYS})"
    )
    step = f"intDiv({span_us}, {max(count, 1)})"
    occurred = f"{start} + toIntervalMicrosecond(number * {step} + {_h(seed, 15)} % {300 * 10**6})"
    closed = (
        f"(cityHash64({card_seed}, 9, acc - 1) % 100 < 3 "
        f"and occ > toDateTime64('{AS_OF}', 6, 'UTC') - toIntervalDay(10))"
    )
    declined = f"{_h(seed, 13)} % 100 < 4"
    client.command(
        f"""insert into {raw}.transaction (* except (_ingested_at))
        select {first_id} + number as txn_id, generateUUIDv4(number), 1 + {_h(seed, 11)} % {n_cust} as acc,
               acc, 1 + {_h(seed, 12)} % {n_term},
               ['purchase', 'purchase', 'purchase', 'withdrawal', 'transfer', 'refund', 'deposit'][1 + {_h(seed, 14)} % 7],
               if({closed} or {declined}, 'declined', 'approved'),
               if({closed}, 'card_closed',
                  if({declined}, ['insufficient_funds', 'limit_exceeded', 'incorrect_pin'][1 + {_h(seed, 16)} % 3], null)),
               toDecimal64(1 + {_h(seed, 17)} % 20000, 2) / 100, 'EUR', null, null,
               {occurred} as occ, occ, occ,
               toUInt128({version_base}) + number + 1, 0, 'c', 0, 0, now64(3)
        from numbers({count})"""
    )


def apply_changes(
    client: Any,
    prefix: str,
    n_changes: int,
    seed: int,
    n_txns: int,
    n_cust: int,
    n_term: int,
    base: int = CHANGE_VERSION_BASE,
    card_seed: int | None = None,
) -> dict[str, int]:
    """Land n_changes CDC changes as a day of a bank's activity would: 70% inserts of new
    transactions (the day after the bulk), 25% updates (reversals) and 5% deletes of
    transactions of the last 3 days."""
    raw = f"{prefix}raw"
    inserts, updates = n_changes * 70 // 100, n_changes * 25 // 100
    deletes = n_changes - inserts - updates
    insert_transactions(
        client,
        raw,
        seed + 1,
        n_txns + 1,
        inserts,
        n_cust,
        n_term,
        base,
        # The cards (and their closes) are the bulk load's: a later round keeps its seed.
        card_seed=seed if card_seed is None else card_seed,
        after_as_of=True,
    )
    for kind, count, offset in (("u", updates, inserts), ("d", deletes, inserts + updates)):
        client.command(
            f"""insert into {raw}.transaction
            select * replace (
                if('{kind}' = 'u' and status = 'approved', 'reversed', status) as status,
                toUInt128({base + offset}) + rowNumberInAllBlocks() + 1 as _version,
                {1 if kind == "d" else 0} as _is_deleted, '{kind}' as _op)
            from {raw}.transaction final
            where txn_id in (
                select txn_id from {raw}.transaction final
                where occurred_at >= toDateTime64('{AS_OF}', 6, 'UTC') - toIntervalDay(3) and txn_id <= {n_txns}
                order by cityHash64({seed}, {offset}, txn_id) limit {count})"""
        )
    return {"inserts": inserts, "updates": updates, "deletes": deletes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--txns", type=int, default=10_000_000)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--threads", type=int, default=1, help="dbt threads (1 is fastest on 2 cores)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary BANKDE_HOME")
    opts = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bankde-bench-dbt-", dir="/tmp"))
    os.environ["BANKDE_HOME"] = str(home)
    from bankde.settings import Settings
    from bankde.transform.runner import run_dbt
    from bankde.warehouse.session import open_session

    settings = Settings(home=home)
    session = open_session(settings)
    client = session.warehouse()
    try:
        t0 = time.perf_counter()
        apply_warehouse_ddl(client, "")
        counts = populate(client, "", opts.txns, opts.seed)
        client.command("optimize table raw.transaction final")
        load_s = time.perf_counter() - t0
        print(
            f"data: generated in-engine from seed {opts.seed} straight into raw.* (not filler+CDC), "
            f"{counts['transactions']:,} transactions, {counts['cards']:,} cards, "
            f"{counts['terminals']:,} terminals in {load_s:.1f}s"
        )

        def cpu() -> float:
            use = resource.getrusage(resource.RUSAGE_SELF)
            return use.ru_utime + use.ru_stime

        def build(label: str, args: list[str]) -> float:
            t, c = time.perf_counter(), cpu()
            # Unit tests check rule logic on hand-made rows; they cost the same at any data size.
            res = run_dbt(
                [*args, "--exclude-resource-type", "unit_test"],
                settings,
                session,
                threads=opts.threads,
                quiet=True,
                # As `bankde run`: the project parsed once per process, no JSON artifacts.
                keep_manifest=True,
            )
            dt, dc = time.perf_counter() - t, cpu() - c
            if not res.success:
                print(f"{label}: FAILED {res.failed}")
                raise SystemExit(1)
            slow = sorted(res.nodes, key=lambda n: -n[2])[:5]
            # CPU seconds show the work done; wall time also shows how busy the shared machine was.
            print(
                f"{label}: {dt:.1f}s wall, {dc:.1f}s CPU, load {os.getloadavg()[0]:.1f} "
                f"({len(res.nodes)} nodes; slowest "
                + ", ".join(f"{n} {s:.1f}s" for n, _, s in slow)
                + ")"
            )
            return dt

        full_s = build("full dbt build", ["build"])
        fct = client.scalar("select count() from ods.fct_transactions")
        print(f"  fct_transactions rows: {int(fct):,}")
        changes = apply_changes(
            client, "", opts.changes, opts.seed, opts.txns, counts["customers"], counts["terminals"]
        )
        inc_s = build(f"incremental dbt build after {opts.changes:,} changes {changes}", ["build"])
        fct2 = client.scalar("select count() from ods.fct_transactions")
        expected = client.scalar("select count() from raw.transaction final where _is_deleted = 0")
        print(f"  fct_transactions rows: {int(fct2):,} (raw live rows {int(expected):,})")
        print(
            f"full build {full_s:.1f}s (target < 60s, ratio {full_s / 60:.2f}); "
            f"incremental build {inc_s:.1f}s (target < 10s, ratio {inc_s / 10:.2f}); "
            f"baseline: full/incremental = {full_s / max(inc_s, 1e-9):.1f}x"
        )

        # Issue 12: only the nodes downstream of the landing tables that changed (what
        # `bankde run` builds), after as many changes again; then a build with no change.
        from bankde.transform.changed import build_selection, landed_version

        since = landed_version(client)
        changes2 = apply_changes(
            client,
            "",
            opts.changes,
            opts.seed + 1,
            opts.txns + changes["inserts"],
            counts["customers"],
            counts["terminals"],
            base=CHANGE_VERSION_BASE + 2 * (opts.txns + opts.changes),
            card_seed=opts.seed,
        )
        t = time.perf_counter()
        selection = build_selection(client, since)
        pick_s = time.perf_counter() - t
        assert selection, "the changes selected nothing"
        sel_s = pick_s + build(
            f"selected dbt build after {opts.changes:,} changes {changes2} "
            f"({' '.join(selection)}, chosen in {pick_s:.2f}s)",
            ["build", *selection],
        )
        fct3 = client.scalar("select count() from ods.fct_transactions")
        expected3 = client.scalar("select count() from raw.transaction final where _is_deleted = 0")
        print(f"  fct_transactions rows: {int(fct3):,} (raw live rows {int(expected3):,})")
        since = landed_version(client)
        t = time.perf_counter()
        nothing = build_selection(client, since)
        none_s = time.perf_counter() - t
        print(f"no-change build: {none_s:.2f}s (selection {nothing}: dbt not started; target < 2s)")
        print(
            f"selected build {sel_s:.1f}s (target < 5s, ratio {sel_s / 5:.2f}) | baseline "
            f"same-size incremental build of every node {inc_s:.1f}s | ratio "
            f"{inc_s / max(sel_s, 1e-9):.1f}x faster"
        )
        return 0 if fct2 == expected and fct3 == expected3 and nothing == [] else 1
    finally:
        session.close()
        if not opts.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
