"""Two chDB handles on one engine in one process: do inserts on one wait for a query on the other?"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

# A query of about a second on two cores: it only reads numbers(), it writes nothing.
SLOW = "SELECT count() FROM numbers({n}) WHERE sipHash64(number) % 7 = 3"


def inserts(conn: object, table: str, count: int) -> float:
    """Seconds for `count` small INSERTs on `conn`."""
    started = time.perf_counter()
    for i in range(count):
        conn.query(f"INSERT INTO {table} SELECT {i}, now64(3)")  # type: ignore[attr-defined]
    return time.perf_counter() - started


def main() -> None:
    import chdb

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=30_000_000, help="numbers() the slow query scans")
    ap.add_argument("--inserts", type=int, default=20, help="small inserts on the other handle")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bankde-bench-handles-", dir="/tmp"))
    path = os.path.realpath(home / "warehouse")
    try:
        a = chdb.connect(path)
        b = chdb.connect(path)
        b.query("CREATE TABLE default.t (i UInt64, at DateTime64(3)) ENGINE = MergeTree ORDER BY i")
        alone = inserts(b, "default.t", args.inserts)  # the same-run baseline: nothing else runs
        query_alone = time.perf_counter()
        a.query(SLOW.format(n=args.rows))
        query_alone = time.perf_counter() - query_alone

        done: dict[str, float] = {}

        def slow() -> None:
            started = time.perf_counter()
            a.query(SLOW.format(n=args.rows))
            done["query"] = time.perf_counter() - started

        t = threading.Thread(target=slow)
        started = time.perf_counter()
        t.start()
        time.sleep(0.05)  # the query is running on handle a
        during = inserts(b, "default.t", args.inserts)
        inserts_at = time.perf_counter() - started
        t.join()
        print(
            f"{args.inserts} inserts on handle b while a {done['query']:.2f}s query ran on handle a: "
            f"done at {inserts_at:.2f}s after the query started ({during:.2f}s of inserting) | "
            f"baseline alone {alone:.2f}s (query alone {query_alone:.2f}s) | "
            f"serialised would finish after {done['query']:.2f}s; "
            f"{'concurrent' if inserts_at < done['query'] else 'SERIALISED'}"
        )
        b.close()
        a.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
