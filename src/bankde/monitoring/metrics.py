"""Live Prometheus metrics of `bankde run` / `bankde cdc run`, served on loopback (--metrics-port)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from bankde.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from bankde.settings import Settings

# Loopback only: the metrics name tables and rules, nothing for the network at large.
METRICS_HOST = "127.0.0.1"
# How often the slot's lag and retained WAL are read from the source.
SLOT_POLL_SECONDS = 2.0
# Batch write latency: a few ms (idle stream) to tens of seconds (a large catch-up batch).
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Source commit to live alert visible: sub-second to the dbt interval when detection is off.
ALERT_LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)
DBT_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class AppliedBatch(Protocol):
    """What the capture reports per applied batch (cdc.capture.BatchStats has these)."""

    events: int
    last_lsn: int
    seconds: float
    tables: dict[str, int]
    lag_ms: int


class PipelineMetrics:
    """The pipeline's metrics in a registry of their own (several pipelines may share a
    process in tests). Every update is thread-safe (prometheus-client locks per metric)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        r = self.registry
        self.changes = Counter(
            "bankde_cdc_changes_applied",
            "Changes (inserts, updates, deletes) written to the warehouse, per source table.",
            ["table"],
            registry=r,
        )
        self.batches = Counter(
            "bankde_cdc_batches", "CDC batches written to the warehouse.", registry=r
        )
        self.batch_seconds = Histogram(
            "bankde_cdc_batch_duration_seconds",
            "Time to write one batch (rows and offset) to the warehouse.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.lag_seconds = Gauge(
            "bankde_cdc_lag_seconds",
            "Source commit to warehouse write of the newest change in the last batch.",
            registry=r,
        )
        self.lag_bytes = Gauge(
            "bankde_cdc_lag_bytes",
            "Current WAL position minus the slot's confirmed flush LSN (bytes not yet applied).",
            registry=r,
        )
        self.wal_retained = Gauge(
            "bankde_cdc_wal_retained_bytes",
            "WAL the source keeps for the slot (current position minus restart_lsn).",
            registry=r,
        )
        self.last_lsn = Gauge(
            "bankde_cdc_last_applied_lsn",
            "End LSN of the last batch written, as a number (exact below 2^53 bytes of WAL).",
            registry=r,
        )
        self.slot_errors = Counter(
            "bankde_cdc_slot_poll_errors",
            "Failed reads of the slot's state from the source (lag gauges are stale then).",
            registry=r,
        )
        self.dbt_seconds = Histogram(
            "bankde_dbt_run_duration_seconds",
            "Wall time of one dbt build.",
            buckets=DBT_BUCKETS,
            registry=r,
        )
        self.dbt_runs = Counter(
            "bankde_dbt_runs", "dbt builds, by outcome (success, failure).", ["outcome"], registry=r
        )
        self.dbt_failures = Counter("bankde_dbt_failures", "Failed dbt builds.", registry=r)
        self.alerts = Gauge(
            "bankde_fraud_alerts",
            "Alerts in marts.fct_fraud_alerts per rule after the last dbt build.",
            ["rule"],
            registry=r,
        )

        self.live_alerts = Gauge(
            "bankde_fraud_live_alerts",
            "Live alerts (marts.fraud_alerts_live, re-evaluated after CDC batches) per rule.",
            ["rule"],
            registry=r,
        )
        self.live_new = Counter(
            "bankde_fraud_live_alerts_raised",
            "Live alerts that became visible, per rule.",
            ["rule"],
            registry=r,
        )
        self.alert_latency = Histogram(
            "bankde_fraud_alert_latency_seconds",
            "Source commit of the change that decided a live alert to the alert being visible.",
            buckets=ALERT_LATENCY_BUCKETS,
            registry=r,
        )
        self.live_seconds = Histogram(
            "bankde_fraud_live_evaluation_seconds",
            "Wall time of one live evaluation (the rules on the cards the batches touched).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def on_live(
        self, seconds: float, new_alerts: Iterable[tuple[str, int]], counts: Mapping[str, int]
    ) -> None:
        """One live evaluation: its duration, the alerts it raised (rule, latency ms), the
        alerts per rule now."""
        self.live_seconds.observe(seconds)
        for rule, ms in new_alerts:
            self.live_new.labels(rule=rule).inc()
            self.alert_latency.observe(max(ms, 0) / 1000)
        for rule, n in counts.items():
            self.live_alerts.labels(rule=rule).set(n)

    def on_batch(self, batch: AppliedBatch) -> None:
        for table, n in batch.tables.items():
            self.changes.labels(table=table).inc(n)
        self.batches.inc()
        self.batch_seconds.observe(batch.seconds)
        self.lag_seconds.set(max(batch.lag_ms, 0) / 1000)
        self.last_lsn.set(batch.last_lsn)

    def on_slot(self, lag_bytes: int | None, retained_bytes: int | None) -> None:
        if lag_bytes is not None:
            self.lag_bytes.set(lag_bytes)
        if retained_bytes is not None:
            self.wal_retained.set(retained_bytes)

    def on_dbt(self, seconds: float, ok: bool, alerts: Mapping[str, int]) -> None:
        self.dbt_seconds.observe(seconds)
        self.dbt_runs.labels(outcome="success" if ok else "failure").inc()
        if not ok:
            self.dbt_failures.inc()
        for rule, n in alerts.items():
            self.alerts.labels(rule=rule).set(n)

    def text(self) -> str:
        """The exposition text, as a scrape returns it."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


def watch_slot(settings: Settings, metrics: PipelineMetrics, stop: threading.Event) -> None:
    """Until `stop`: the slot's lag and retained WAL from the source every SLOT_POLL_SECONDS."""
    from bankde.cdc.slot import slot_state

    while True:
        try:
            st = slot_state(settings)
            metrics.on_slot(st.lag_bytes, st.retained_bytes)
        except Exception:
            # The source may be down for a while; the stream reconnects, the gauges wait.
            metrics.slot_errors.inc()
        if stop.wait(SLOT_POLL_SECONDS):
            return


@contextmanager
def serving(port: int | None, settings: Settings | None = None) -> Iterator[PipelineMetrics | None]:
    """Serve a fresh PipelineMetrics on 127.0.0.1:`port` (and poll the slot when `settings` are
    given) for the duration; None, serving nothing, when `port` is None."""
    if port is None:
        yield None
        return
    from prometheus_client import start_http_server

    metrics = PipelineMetrics()
    try:
        server, thread = start_http_server(port, addr=METRICS_HOST, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {port}: cannot listen on {METRICS_HOST}:{port} ({exc.strerror}); "
            "choose a free port"
        ) from None
    stop = threading.Event()
    watcher: threading.Thread | None = None
    if settings is not None:
        watcher = threading.Thread(
            target=watch_slot,
            args=(settings, metrics, stop),
            name="bankde-metrics-slot",
            daemon=True,
        )
        watcher.start()
    try:
        yield metrics
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        server.shutdown()
        server.server_close()
        thread.join()


def metrics_url(port: int) -> str:
    return f"http://{METRICS_HOST}:{port}/metrics"
