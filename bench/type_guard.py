"""The cost of the type-change test on the Debezium per-event path: Assembler.end with and without it."""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace

from bankde.cdc.engines.debezium.convert import Assembler, TableCatalog, TableInfo

# bank.transaction as the catalog describes it (format_type spelling).
COLUMNS = [
    ("txn_id", 20, -1, "bigint"),
    ("txn_ref", 2950, -1, "uuid"),
    ("account_id", 20, -1, "bigint"),
    ("card_id", 20, -1, "bigint"),
    ("terminal_id", 20, -1, "bigint"),
    ("txn_type", 16400, -1, "bank.txn_type"),
    ("status", 16401, -1, "bank.txn_status"),
    ("decline_reason", 25, -1, "text"),
    ("amount", 1700, 1179654, "numeric(18,2)"),
    ("currency", 1042, 7, "character(3)"),
    ("balance_after", 1700, 1179654, "numeric(18,2)"),
    ("description", 25, -1, "text"),
    ("occurred_at", 1184, -1, "timestamp with time zone"),
    ("created_at", 1184, -1, "timestamp with time zone"),
    ("updated_at", 1184, -1, "timestamp with time zone"),
]


def _event(i: int) -> dict[str, object]:
    row = {
        "txn_id": i,
        "txn_ref": "c73dca4d-bf51-48c8-92da-5752f4334d32",
        "account_id": i % 500,
        "card_id": i % 700,
        "terminal_id": i % 250,
        "txn_type": "purchase",
        "status": "approved",
        "decline_reason": None,
        "amount": f"{i % 997}.{i % 100:02d}",
        "currency": "EUR",
        "balance_after": f"{i % 99991}.50",
        "description": "coffee",
        "occurred_at": "2024-01-31T12:00:00.500000Z",
        "created_at": "2024-01-31T12:00:00.500000Z",
        "updated_at": "2024-01-31T12:00:00.500000Z",
    }
    src = {"schema": "bank", "table": "transaction", "lsn": i}
    return {"op": "u", "before": dict(row), "after": row, "source": src}


def _run(info: TableInfo, events: list[dict[str, object]], per_txn: int) -> float:
    catalog = TableCatalog("bench", lambda only: {("bank", "transaction"): info})
    catalog.tables[("bank", "transaction")] = info
    asm = Assembler(catalog)
    work = copy.deepcopy(events)  # conversion rewrites rows in place
    # CPU time of this process: on a machine shared with other work, waiting for a core
    # would count otherwise.
    started = time.process_time()
    for start in range(0, len(work), per_txn):
        asm.begin(start)
        for value in work[start : start + per_txn]:
            asm.change(value)
        asm.end(start, start + 1, 0)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--per-txn", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    guarded = TableInfo.build(1, "bank", "transaction", COLUMNS, ("txn_id",))
    unguarded = replace(guarded, guards=())
    events = [_event(i) for i in range(args.events)]
    times: dict[str, list[float]] = {"with the test": [], "without (baseline)": []}
    for _ in range(args.rounds):  # interleaved: the machine's load hits both alike
        times["with the test"].append(_run(guarded, events, args.per_txn))
        times["without (baseline)"].append(_run(unguarded, events, args.per_txn))
    for name, t in times.items():
        best = min(t)
        print(
            f"{name:>20}: {args.events / best:,.0f} events per CPU-second best, "
            f"{args.events / statistics.median(t):,.0f} median of {args.rounds}"
        )
    cost = min(times["with the test"]) / min(times["without (baseline)"]) - 1
    print(f"cost of the type-change test: {cost:+.1%} of Assembler.end (bank.transaction rows)")


if __name__ == "__main__":
    main()
