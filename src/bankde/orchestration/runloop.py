"""`bankde run`: live filler, CDC streaming and periodic dbt builds in one process, until Ctrl-C."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from bankde.console import err
from bankde.errors import BankdeError
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.contracts import Sink
    from bankde.monitoring.metrics import PipelineMetrics
    from bankde.transform.live import Evaluation
    from bankde.warehouse.session import WarehouseSession


@dataclass
class RunState:
    """Shared between the loop's threads and the status line; counters only grow."""

    started: float = field(default_factory=time.monotonic)
    changes: int = 0
    batches: int = 0
    lag_ms: int = 0
    lag_bytes: int | None = None
    recent: list[tuple[float, int]] = field(default_factory=list)  # (when, events) per batch
    dbt_runs: int = 0
    # Landing tables' highest version when the last successful build chose its nodes: the next
    # build selects only what changed above it (None: build everything).
    built_version: int | None = None
    dbt_skipped: int = 0
    dbt_failures: int = 0
    last_dbt_at: float | None = None
    last_dbt_seconds: float | None = None
    alerts: dict[str, int] = field(default_factory=dict)
    # Live detection (bankde.transform.live): alerts per rule, evaluations, and the
    # commit-to-visible latency (ms) of the alerts raised, newest last.
    live_alerts: dict[str, int] = field(default_factory=dict)
    live_evaluations: int = 0
    alert_latency_ms: list[int] = field(default_factory=list)
    # Set by each applied batch: wakes the live detection (batches coalesce while it runs).
    live_wake: threading.Event = field(default_factory=threading.Event)
    phase: str = "starting"
    errors: list[str] = field(default_factory=list)
    mutex: threading.Lock = field(default_factory=threading.Lock)
    # [report hook] issue 11: live Prometheus metrics (--metrics-port), fed as the state is.
    metrics: PipelineMetrics | None = None

    def on_batch(self, stats: Any) -> None:
        if self.metrics is not None:  # [report hook] issue 11
            self.metrics.on_batch(stats)
        now = time.monotonic()
        with self.mutex:
            self.changes += int(stats.events)
            self.batches += 1
            self.lag_ms = int(stats.lag_ms)
            self.recent.append((now, int(stats.events)))
            self.recent = [(t, n) for t, n in self.recent if now - t <= 10.0]
        self.live_wake.set()

    def on_live(self, evaluation: Evaluation, counts: dict[str, int]) -> None:
        if self.metrics is not None:
            raised = evaluation.new_alerts if evaluation.low > 0 else ()
            self.metrics.on_live(evaluation.seconds, raised, counts)
        with self.mutex:
            self.live_evaluations += 1
            self.live_alerts = counts
            if evaluation.low > 0:  # the first evaluation takes in history: no latency there
                self.alert_latency_ms.extend(ms for _, ms in evaluation.new_alerts)
            del self.alert_latency_ms[:-10_000]

    def changes_per_s(self) -> float:
        now = time.monotonic()
        with self.mutex:
            window = [n for t, n in self.recent if now - t <= 10.0]
        span = min(10.0, max(now - self.started, 1e-3))
        return sum(window) / span

    def line(self) -> str:
        dbt = "never"
        if self.last_dbt_at is not None:
            ago = time.monotonic() - self.last_dbt_at
            dbt = f"{ago:.0f}s ago ({self.last_dbt_seconds:.1f}s)"
        alerts = f"alerts {sum(self.alerts.values()):,}"
        if self.live_evaluations:
            # Per rule, as they appear: rapid_withdrawals -> rw, account_takeover -> at, ...
            per_rule = " ".join(
                f"{''.join(w[0] for w in r.removeprefix('fraud_').split('_'))} {n:,}"
                for r, n in sorted(self.live_alerts.items())
            )
            recent = self.alert_latency_ms[-200:]
            p95 = sorted(recent)[math.ceil(0.95 * len(recent)) - 1] / 1000 if recent else 0.0
            alerts = f"live alerts {per_rule or '0'} (p95 {p95:.1f}s)"
        lag_b = "-" if self.lag_bytes is None else f"{self.lag_bytes:,} B"
        return (
            f"{self.phase:<8} | {self.changes_per_s():8.0f} changes/s | {self.changes:,} applied | "
            f"lag {self.lag_ms / 1000:.2f}s / {lag_b} | dbt {dbt}, {self.dbt_runs} runs | "
            f"{alerts}"
        )


@dataclass(frozen=True)
class RunOptions:
    rate: float = 200.0
    dbt_every: float = 60.0
    fill: bool = True
    status: bool = True
    # Stop by itself after this many seconds (tests, scripted demos); None: until Ctrl-C.
    duration: float | None = None
    # [report hook] issue 11: Prometheus metrics on 127.0.0.1:PORT (None: off); the HTML
    # report ($BANKDE_HOME/report.html) rewritten after each dbt build.
    metrics_port: int | None = None
    report: bool = True
    # Serve the warehouse over ClickHouse's HTTP interface while the run owns it; the port is
    # BANKDE_WH_HTTP_PORT, or any free one when that is taken (the lock file names it).
    serve: bool = True
    # Live fraud alerts: the rules re-evaluated after CDC batches on their own thread and chDB
    # handle (bankde.transform.live), besides the dbt builds.
    live: bool = True
    # The capture engine of the registry; kafka also brings the managed Kafka up and registers
    # the repo's connectors (orchestration/kafka.py).
    engine: str = "native"


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: stop cleanly after the work in flight. Second Ctrl-C: interrupt."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        err.print("\n[yellow]stopping: finishing the current batch/build…[/yellow]")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def run_pipeline(
    settings: Settings,
    session: WarehouseSession,
    options: RunOptions,
    stop: threading.Event | None = None,
) -> RunState:
    """Run until `stop` (or a signal, or `options.duration`). The filler writes only to Postgres;
    CDC, dbt and the status share the caller's warehouse `session` (held for the whole run,
    other processes reach it through the server). CDC streams for the whole run on its own
    thread and dbt builds every `dbt_every` seconds meanwhile, on its own chDB handle: a build
    reads the landing tables only up to the CDC version it pins at its start
    (macros/incremental_changes.sql), so batches landing during it wait for the next build. On
    stop the current build finishes, CDC writes and acknowledges the complete transactions it
    holds, the filler returns between two transactions, then a last sync applies its final
    commits: raw equals the source when this returns."""
    from bankde.cdc.api import open_sink
    from bankde.cdc.api import run as cdc_run
    from bankde.cdc.api import sync as cdc_sync
    from bankde.monitoring.metrics import serving  # [report hook] issue 11
    from bankde.orchestration.demo import start_source
    from bankde.orchestration.kafka import start_kafka, sync_kafka, uses_kafka

    stop = stop or threading.Event()
    state = RunState()
    engine = options.engine
    kafka = uses_kafka(engine)
    if not settings.external_source or options.fill:
        start_source(settings)
    if kafka:
        start_kafka(settings)

    def catch_up() -> int:
        # Through Kafka, "caught up" also waits for the connectors to deliver the newest commits.
        if kafka:
            return sync_kafka(settings, sink).changes
        return cdc_sync(settings, sink, engine=engine, show_progress=False).changes

    sink = open_sink(settings, session)
    server = _serve(settings, session) if options.serve and session.embedded else None

    threads: list[threading.Thread] = []
    if options.fill:
        threads.append(_start(_filler, "filler", settings, options.rate, stop, state))
    # The native slot's lag; the kafka engine's lag is its consumer group's (`kafka status`).
    watcher = _start(_watch_lag, "lag", settings, stop, state, not kafka)
    deadline: float | None = None

    cdc: threading.Thread | None = None
    with (
        _stop_on_signals(stop),
        _status_line(state, options.status, stop),
        serving(options.metrics_port, settings) as state.metrics,  # [report hook] issue 11
    ):
        try:
            # Snapshot (first run) and catch up first: a build never sees a half-landed
            # snapshot, whose rows carry no offset to cap the build's pin.
            state.phase = "sync"
            state.changes += catch_up()
            state.phase = "cdc"
            # `--duration` counts streaming time: the first catch-up (a snapshot through the
            # connectors can take most of a short run on a busy machine) never eats into it.
            if options.duration is not None:
                deadline = time.monotonic() + options.duration
            # One stream for the whole run: a build never pauses capture, so readers and the
            # lag see CDC keep up while dbt works (it ends with the run, cleanly, on `stop`).
            cdc = _start(_cdc_stream, "cdc", cdc_run, settings, sink, stop, state, engine)
            if options.live:
                threads.append(_start(_live, "live", settings, session, stop, state))
                # Its views now (seconds), not at the first build (`dbt_every` + a full build
                # later: 54 s of a 1k txns/s bench went there); before any build, so no two dbt
                # invocations overlap.
                _live_views(settings, session)
                state.live_wake.set()
            built_at, build_started = 0, time.monotonic()
            while not stop.is_set():
                # Every `dbt_every` seconds from one build's start to the next's (back to back
                # when a build takes longer).
                _wait(stop, build_started + options.dbt_every - time.monotonic(), deadline, cdc)
                if not cdc.is_alive():
                    stop.set()  # its error, if any, is in state.errors
                if deadline is not None and time.monotonic() >= deadline:
                    stop.set()
                # Stopping never starts a build: what landed is complete in raw, and the next
                # run (or `bankde dbt build`) picks it up incrementally.
                if not stop.is_set() and (state.changes > built_at or state.dbt_runs == 0):
                    built_at, build_started = state.changes, time.monotonic()
                    state.phase = "cdc+dbt"
                    _build(settings, session, state)
                    if options.report:  # [report hook] issue 11
                        state.phase = "cdc+rep"
                        _report(settings, session, state)
                    state.phase = "cdc"
                if state.errors:
                    stop.set()
        finally:
            stop.set()
            state.phase = "stopping"
            for t in threads:
                t.join()  # the filler returns between two transactions
            if cdc is not None:
                cdc.join()  # complete transactions written and acknowledged
            watcher.join()
        try:
            if not state.errors:
                # The filler has stopped: apply its last commits so raw equals the source.
                state.phase = "catch-up"
                state.changes += catch_up()
                if options.live and state.live_evaluations:
                    _live_once(settings, session, state)
        finally:
            if server is not None:
                server.stop()
    if state.errors:
        raise BankdeError(state.errors[0])
    return state


def _serve(settings: Settings, session: WarehouseSession) -> Any:
    """Other processes (bankde commands, dbt, BI tools) reach the warehouse through this."""
    from bankde.warehouse.server.serve import WarehouseServer

    server = WarehouseServer(settings, session, strict_port=False)
    url = server.start()
    err.print(f"warehouse served at {url} (ClickHouse HTTP; users and passwords in README)")
    return server


def _start(target: Any, name: str, *args: Any) -> threading.Thread:
    t = threading.Thread(target=target, args=args, name=f"bankde-{name}", daemon=True)
    t.start()
    return t


def _wait(
    stop: threading.Event, seconds: float, deadline: float | None, worker: threading.Thread
) -> None:
    until = time.monotonic() + seconds
    if deadline is not None:
        until = min(until, deadline)
    while not stop.is_set() and worker.is_alive():
        left = until - time.monotonic()
        if left <= 0:
            return
        stop.wait(min(left, 0.5))


def _filler(settings: Settings, rate: float, stop: threading.Event, state: RunState) -> None:
    from bankde.generator import load_fill_config, run_live

    try:
        run_live(settings, load_fill_config(), rate, stop)
    except Exception as exc:
        state.errors.append(f"filler stopped: {exc}")
        stop.set()


def _cdc_stream(
    cdc_run: Any,
    settings: Settings,
    sink: Sink,
    stop: threading.Event,
    state: RunState,
    engine: str = "native",
) -> None:
    try:
        cdc_run(settings, stop, sink, engine=engine, on_batch=state.on_batch, show_progress=False)
    except Exception as exc:
        state.errors.append(f"CDC stopped: {exc}")


def _live(
    settings: Settings, session: WarehouseSession, stop: threading.Event, state: RunState
) -> None:
    """Live fraud alerts after CDC batches, until `stop`; an error is shown, never fatal."""
    from bankde.transform.live import LiveAlerts, run_live_alerts

    detector = LiveAlerts(settings, session)
    last_error: list[str] = []

    def evaluated(evaluation: Evaluation) -> None:
        if evaluation.high > evaluation.low:
            state.on_live(evaluation, detector.counts())

    def failed(message: str) -> None:
        if not last_error or last_error[-1] != message:  # once per distinct error
            err.print(f"[yellow]{message}[/yellow]")
        last_error.append(message)

    try:
        run_live_alerts(detector, state.live_wake, stop, evaluated, failed)
    finally:
        detector.close()


def _live_views(settings: Settings, session: WarehouseSession) -> None:
    """The live views for detection to start; on failure it waits for the first build."""
    from bankde.transform.live import create_live_models

    try:
        with contextlib.redirect_stdout(sys.stderr):
            ok = create_live_models(settings, session)
        if not ok:
            err.print(
                "[yellow]live alerts: dbt run of the live views failed; they start after the first build[/yellow]"
            )
    except BankdeError as exc:
        err.print(f"[yellow]live alerts: {exc}; they start after the first build[/yellow]")


def _live_once(settings: Settings, session: WarehouseSession, state: RunState) -> None:
    """The final commits' live alerts, after the last sync."""
    from bankde.transform.live import LiveAlerts

    detector = LiveAlerts(settings, session)
    try:
        evaluation = detector.evaluate()
        if evaluation.high > evaluation.low:
            state.on_live(evaluation, detector.counts())
    except Exception as exc:
        err.print(f"[yellow]live alerts: {exc}[/yellow]")
    finally:
        detector.close()


def _watch_lag(
    settings: Settings, stop: threading.Event, state: RunState, enabled: bool = True
) -> None:
    """Slot lag in bytes from the source, every 2 s (Postgres only; never the warehouse)."""
    from bankde.cdc.slot import slot_state

    while not stop.wait(2.0):
        if not enabled:
            continue
        try:
            state.lag_bytes = slot_state(settings).lag_bytes
        except Exception:
            state.lag_bytes = None


def _build(settings: Settings, session: WarehouseSession, state: RunState) -> None:
    from bankde.orchestration.summary import alerts_by_rule
    from bankde.transform.changed import build_selection, landed_version
    from bankde.transform.runner import run_dbt

    started = time.monotonic()
    wh = session.warehouse(settings)
    # Only the nodes downstream of the landing tables that changed since the last good build
    # (their snapshots only when their source changed); nothing when nothing changed.
    seen = landed_version(wh)
    selection = build_selection(wh, state.built_version)
    if selection == []:
        state.dbt_skipped += 1
        return
    # A failed build is reported and retried at the next interval; capture keeps streaming.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            res = run_dbt(
                ["build", *(selection or [])], settings, session, quiet=True, keep_manifest=True
            )
        ok, failed = res.success, res.failed
    except BankdeError as exc:
        ok, failed = False, [str(exc)]
    state.dbt_runs += 1
    state.last_dbt_at = time.monotonic()
    state.last_dbt_seconds = state.last_dbt_at - started
    if ok:
        state.built_version = seen
    else:
        state.dbt_failures += 1
        err.print(f"[red]dbt build failed: {', '.join(failed) or 'see dbt logs'}[/red]")
    state.alerts = alerts_by_rule(settings, wh)
    if state.metrics is not None:  # [report hook] issue 11
        state.metrics.on_dbt(state.last_dbt_at - started, ok, state.alerts)


def _report(settings: Settings, session: WarehouseSession, state: RunState) -> None:
    """[report hook] issue 11: rewrite the HTML report from what the build left. Without the
    reconciliation: the filler keeps writing, so source and warehouse differ by design now."""
    from bankde.monitoring.report import write_report

    try:
        write_report(settings, session.warehouse(settings), with_reconcile=False)
    except Exception as exc:
        # A report is a view: it never stops the pipeline; the next build tries again.
        err.print(f"[yellow]report not written: {exc}[/yellow]")


@contextmanager
def _status_line(state: RunState, show: bool, stop: threading.Event) -> Iterator[None]:
    """A one-line status on stderr, refreshed twice a second (also while dbt builds)."""
    if not show:
        yield
        return
    from rich.live import Live
    from rich.text import Text

    class _Line:
        def __rich__(self) -> Text:
            return Text(state.line())

    with Live(_Line(), console=err, refresh_per_second=2, transient=False):
        yield
