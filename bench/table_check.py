"""Benchmark: the source side of the stream's 30-second table check, before and after (issue 9)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from _cluster import start_cluster, stop_cluster

from bankde.cdc.slot import drop_publication, ensure_publication, published_tables_in
from bankde.settings import Settings
from bankde.source.catalog import catalog_tables, catalog_tables_in
from bankde.source.connection import cdc_info, connect
from bankde.source.schema import init_source


def before(settings: Settings) -> None:
    """The check as it was: ensure_publication every time, then the catalog again."""
    tables = ensure_publication(settings)
    catalog_tables(cdc_info(settings), tables)


def after(settings: Settings) -> None:
    """The check now when nothing changed: one connection, the catalog and the publication."""
    with connect(cdc_info(settings)) as conn:
        catalog = catalog_tables_in(conn)
        published = published_tables_in(conn, settings.cdc_publication)
    assert {k for k, t in catalog.items() if t.key} == published


def timed(fn: Callable[[Settings], None], settings: Settings, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(settings)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    home, settings, cluster = start_cluster("bankde-bench-tablecheck-")
    try:
        init_source(settings)
        ensure_publication(settings)
        # Interleaved, so that load from elsewhere on the machine hits both alike.
        old, new = [], []
        for _ in range(args.runs):
            old += timed(before, settings, 1)
            new += timed(after, settings, 1)
        for name, ms in (("before (baseline)", old), ("after", new)):
            print(
                f"{name:>18}: median {statistics.median(ms):7.1f} ms  "
                f"p90 {sorted(ms)[int(len(ms) * 0.9)]:7.1f} ms  ({len(ms)} checks)"
            )
        drop_publication(settings)
    finally:
        stop_cluster(home, cluster)


if __name__ == "__main__":
    main()
