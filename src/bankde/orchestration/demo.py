"""`bankde demo`: source up, fill, CDC into the warehouse, dbt build, summary — rerunnable."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bankde.console import err
from bankde.errors import ConfigError
from bankde.orchestration.summary import PipelineSummary, collect
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.session import WarehouseSession

Size = Literal["small", "medium", "large"]
SUMMARY_FILE = "demo-summary.json"
# The first run is reproducible; later runs add new, different events.
DEMO_SEED = 20240607
# A rerun adds one day of activity after the newest event in the source.
RERUN_WINDOW_HOURS = 24.0

# Entities and transactions per size. The first run backfills several days; a rerun adds a
# day's worth of current activity (plus some new customers) on top of what is there.
SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "customers": 600,
        "terminals": 250,
        "n_new_txns": 20_000,
        "backfill_days": 5,
        "backfill_txns_per_day": 12_000,
    },
    "medium": {
        "customers": 5_000,
        "terminals": 1_500,
        "n_new_txns": 200_000,
        "backfill_days": 7,
        "backfill_txns_per_day": 100_000,
    },
    "large": {
        "customers": 50_000,
        "terminals": 10_000,
        "n_new_txns": 1_000_000,
        "backfill_days": 14,
        "backfill_txns_per_day": 500_000,
    },
}

T = TypeVar("T")


def fill_config(size: str, newest: datetime | None = None) -> Any:
    """The filler's config for a demo run of `size` (FillConfig). `newest` is the latest event
    already in the source: a rerun generates the next day after it (no second backfill, no window
    overlapping events and closes that exist; a day, so volumes and fraud keep their density,
    even if that day ends in the future)."""
    from bankde.generator.config import FillConfig, resolve

    if size not in SIZES:
        raise ConfigError(f"--size {size!r}: must be one of {', '.join(SIZES)}")
    spec = dict(SIZES[size])
    if newest is None:
        return resolve(replace(FillConfig(), seed=DEMO_SEED, **spec))
    spec.update(
        backfill_days=0,
        customers=max(1, spec["customers"] // 10),
        terminals=max(1, spec["terminals"] // 10),
        window_hours=RERUN_WINDOW_HOURS,
        as_of=max(datetime.now(UTC), newest + timedelta(hours=RERUN_WINDOW_HOURS, seconds=1)),
    )
    return resolve(replace(FillConfig(), seed=None, **spec))


class Steps:
    """Timed, announced steps on stderr (the summary goes to stdout)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        if not self.quiet:
            err.print(f"[bold cyan]▶ {what}[/bold cyan]")
        started = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - started, 2)
        if not self.quiet:
            err.print(f"  done in {self.seconds[name]:.1f}s")

    def run(self, name: str, what: str, fn: Callable[[], T]) -> T:
        with self.step(name, what):
            return fn()


def start_source(settings: Settings) -> None:
    """Managed cluster up (created the first time) and the schema applied; idempotent."""
    from bankde.source.schema import init_source

    if not settings.external_source:
        from bankde.source.cluster import ManagedCluster

        cluster = ManagedCluster(settings)
        cluster.init()
        cluster.start()
    init_source(settings)


def newest_event(settings: Settings) -> datetime | None:
    """The latest transaction or close in the source; None when it holds no transactions yet."""
    from bankde.source.connection import connect, source_info

    with connect(source_info(settings)) as conn:
        row = conn.execute(
            "SELECT greatest((SELECT max(occurred_at) FROM bank.transaction),"
            " (SELECT max(closed_at) FROM bank.card), (SELECT max(closed_at) FROM bank.account),"
            " (SELECT max(closed_at) FROM bank.customer), (SELECT max(closed_at) FROM bank.terminal))"
            " WHERE EXISTS (SELECT 1 FROM bank.transaction)"
        ).fetchone()
    return row[0] if row else None


def run_demo(
    settings: Settings,
    session: WarehouseSession,
    size: Size = "small",
    *,
    quiet: bool = False,
    engine: str = "native",
) -> PipelineSummary:
    """The whole pipeline once, on the caller's warehouse session: CDC, dbt and the summary all
    use it. On existing data it adds new events and everything downstream updates
    incrementally (CDC from the stored offset, incremental dbt models). `engine` kafka also
    brings up the managed Kafka and registers the repo's connectors before the fill, and the
    CDC step waits until they have delivered every change of it."""
    from bankde.cdc.api import open_sink, sync
    from bankde.generator import fill
    from bankde.orchestration.kafka import start_kafka, sync_kafka, uses_kafka
    from bankde.transform.runner import run_dbt

    steps = Steps(quiet)
    steps.run(
        "source", "source Postgres: start and apply the schema", lambda: start_source(settings)
    )
    kafka = uses_kafka(engine)
    if kafka:
        steps.run(
            "kafka",
            "Kafka: broker and Connect worker up, debezium/*.json registered",
            lambda: start_kafka(settings),
        )
    newest = newest_event(settings)
    rerun = newest is not None
    config = fill_config(size, newest)
    verb = "add new events to" if rerun else "fill"
    fill_summary = steps.run(
        "fill",
        f"filler: {verb} the source ({config.total_txns:,} transactions, size {size})",
        lambda: fill(settings, config),
    )
    sink = open_sink(settings, session)
    synced = steps.run(
        "cdc",
        f"CDC ({engine}): snapshot (first run) and stream the changes into the warehouse",
        lambda: (
            sync_kafka(settings, sink, show_progress=not quiet)
            if kafka
            else sync(settings, sink=sink, engine=engine, show_progress=not quiet)
        ),
    )
    with contextlib.redirect_stdout(sys.stderr):
        # dbt reports on stdout; keep stdout for the summary (--json reads it).
        dbt = steps.run(
            "dbt",
            "dbt build: staging, ods, marts and tests",
            lambda: run_dbt(["build"], settings, session, quiet=quiet),
        )
    with steps.step("summary", "summary: reconcile source and warehouse, evaluate fraud rules"):
        summary = collect(settings, session.warehouse(settings))
    summary.steps = steps.seconds
    summary.fill = _plain(fill_summary)
    summary.fill["rerun"] = rerun
    summary.cdc["run"] = synced.to_dict()
    summary.cdc["engine"] = engine
    summary.dbt = {
        "success": dbt.success,
        "nodes": len(dbt.nodes),
        "failed": dbt.failed,
    }
    # [report hook] issue 11: the HTML report, its path among the locations printed.
    from bankde.monitoring.report import write_report

    report = steps.run(
        "report",
        "report: charts of the pipeline (HTML)",
        lambda: write_report(settings, session.warehouse(settings)),
    )
    summary.locations["report"] = str(report.path)
    path = settings.home_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary.as_dict(), indent=2, default=str), encoding="utf-8")
    summary.locations["summary_json"] = str(path)
    return summary


def _plain(obj: Any) -> dict[str, Any]:
    """A filler summary as plain data, whatever its shape."""
    if obj is None:
        return {}
    for attr in ("as_dict", "to_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            return dict(fn())
    if isinstance(obj, dict):
        return dict(obj)
    return dict(vars(obj))
