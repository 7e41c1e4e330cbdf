"""The Prometheus metrics: what a batch and a dbt build move, served over HTTP on loopback."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bankde.cdc.stream import BatchStats
from bankde.errors import ConfigError
from bankde.monitoring.metrics import PipelineMetrics, serving
from tests.conftest import free_port


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _batch(n: int, lsn: int) -> BatchStats:
    return BatchStats(
        events=n,
        transactions=1,
        first_lsn=lsn - 10,
        last_lsn=lsn,
        seconds=0.02,
        tables={"bank.transaction": n - 1, "bank.card": 1},
        lag_ms=1500,
    )


def test_batches_and_builds_move_the_metrics() -> None:
    m = PipelineMetrics()
    m.on_batch(_batch(10, 1000))
    m.on_batch(_batch(5, 2000))
    m.on_slot(4096, 8192)
    m.on_dbt(12.5, True, {"fraud_card_testing": 7})
    m.on_dbt(3.0, False, {"fraud_card_testing": 9})
    s = _samples(m.text())
    assert s[("bankde_cdc_changes_applied_total", (("table", "bank.transaction"),))] == 13
    assert s[("bankde_cdc_changes_applied_total", (("table", "bank.card"),))] == 2
    assert s[("bankde_cdc_batches_total", ())] == 2
    assert s[("bankde_cdc_batch_duration_seconds_count", ())] == 2
    assert s[("bankde_cdc_lag_seconds", ())] == 1.5
    assert s[("bankde_cdc_lag_bytes", ())] == 4096
    assert s[("bankde_cdc_wal_retained_bytes", ())] == 8192
    assert s[("bankde_cdc_last_applied_lsn", ())] == 2000
    assert s[("bankde_dbt_runs_total", (("outcome", "success"),))] == 1
    assert s[("bankde_dbt_runs_total", (("outcome", "failure"),))] == 1
    assert s[("bankde_dbt_failures_total", ())] == 1
    assert s[("bankde_dbt_run_duration_seconds_sum", ())] == 15.5
    assert s[("bankde_fraud_alerts", (("rule", "fraud_card_testing"),))] == 9


def test_served_on_loopback_then_gone() -> None:
    port = free_port()
    with serving(port) as m:
        assert m is not None
        m.on_batch(_batch(3, 42))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            s = _samples(resp.read().decode())
        assert s[("bankde_cdc_batches_total", ())] == 1
        # One port, one server: a second one is a usage error naming the flag.
        with pytest.raises(ConfigError, match=f"--metrics-port {port}"), serving(port):
            pass
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_off_by_default() -> None:
    with serving(None) as m:
        assert m is None


def test_live_evaluations_move_the_alert_metrics_and_the_status_line() -> None:
    from bankde.orchestration.runloop import RunState
    from bankde.transform.live import Evaluation

    m = PipelineMetrics()
    state = RunState(metrics=m)
    counts = {"fraud_card_testing": 5, "fraud_rapid_withdrawals": 4}
    # The first evaluation takes in history: its alerts count, their latency does not.
    state.on_live(Evaluation(0, 10, 0.5, (("fraud_card_testing", 86_400_000),)), counts)
    state.on_live(
        Evaluation(10, 20, 0.2, (("fraud_card_testing", 800), ("fraud_rapid_withdrawals", 1900))),
        counts,
    )
    s = _samples(m.text())
    assert s[("bankde_fraud_live_alerts", (("rule", "fraud_card_testing"),))] == 5
    assert s[("bankde_fraud_live_alerts_raised_total", (("rule", "fraud_card_testing"),))] == 1
    assert s[("bankde_fraud_alert_latency_seconds_count", ())] == 2
    assert s[("bankde_fraud_alert_latency_seconds_sum", ())] == pytest.approx(2.7)
    assert s[("bankde_fraud_live_evaluation_seconds_count", ())] == 2
    line = state.line()
    assert "live alerts ct 5 rw 4 (p95 1.9s)" in line, line
