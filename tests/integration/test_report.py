"""The report, the live metrics and the dbt docs site, for real: a demo, a stream, headless chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.browser import (
    ARTIFACTS,
    charts,
    chromium,
    console_errors,
    full_page_screenshot,
    serve_directory,
)
from tests.conftest import REPO, free_port, make_home

BANKDE = Path(sys.executable).parent / "bankde"

# Every chart the report draws once the pipeline has snapshotted, streamed and built.
EXPECTED_CHARTS = (
    "Transactions per hour by type",
    "Transactions per hour by status",
    "Daily rhythm",
    "Declines per day by reason",
    "Fraud episodes over time per scenario",
    "Amount distribution: fraud vs legitimate",
    "Hour-of-day distribution: fraud vs legitimate",
    "Precision, recall and F1 per rule",
    "Applied changes per second",
    "Lag and batch duration per streamed batch",
    "Freshness per table",
    "Opened and closed per day",
)


@dataclass
class Pipeline:
    home: Path
    port: int
    env: dict[str, str]
    demo: dict
    streamed: int

    def bankde(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BANKDE), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-4000:])
        return proc


def _env(home: Path, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_", "VIRTUAL_ENV"))
    }
    env.update({"BANKDE_HOME": str(home), "BANKDE_PG_PORT": str(port)})
    return env


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    """`bankde demo` (snapshot, dbt build, report), then more events streamed by `cdc sync`."""
    home, port = make_home("bankde-report-"), free_port()
    p = Pipeline(home, port, _env(home, port), {}, 0)
    try:
        p.demo = json.loads(p.bankde("demo", "--json").stdout)
        p.bankde("fill", "--n-new-txns", "3000", "--backfill-days", "0")
        p.streamed = json.loads(p.bankde("cdc", "sync", "--json").stdout)["changes"]
        yield p
    finally:
        subprocess.run([str(BANKDE), "db", "down"], env=p.env, cwd=REPO, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _artifact(tmp_path: Path, name: str) -> Path:
    """A screenshot path under .bankde-artifacts/ (kept for people), falling back to tmp_path."""
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        return ARTIFACTS / name
    except OSError:
        return tmp_path / name


def test_demo_writes_the_report_and_prints_its_path(pipeline: Pipeline) -> None:
    path = Path(pipeline.demo["locations"]["report"])
    assert path == pipeline.home / "report.html"
    assert path.is_file() and path.stat().st_size > 1_000_000, "plotly.js is inlined"
    assert "report" in pipeline.demo["steps"]


def test_every_stream_batch_is_recorded_in_the_warehouse(pipeline: Pipeline) -> None:
    """meta.cdc_batches: one row per applied batch with time, size, LSN range, lag, duration
    and changes per table; the streamed rows add up to what `cdc sync` applied."""
    assert pipeline.streamed > 0
    rows = json.loads(
        pipeline.bankde(
            "wh",
            "sql",
            "SELECT count() AS n, sum(events) AS events, min(first_lsn) > 0 AS lsn, "
            "min(last_lsn >= first_lsn) AS ordered, min(finished_at >= started_at) AS timed, "
            "sum(arraySum(mapValues(tables))) AS per_table, max(lag_ms) >= 0 AS lag "
            "FROM meta.cdc_batches WHERE kind = 'stream'",
            "--format",
            "json",
        ).stdout
    )
    (row,) = rows
    assert int(row["n"]) >= 1
    assert int(row["events"]) == pipeline.streamed
    assert int(row["per_table"]) == pipeline.streamed
    assert row["lsn"] and row["ordered"] and row["timed"] and row["lag"], row


def test_report_renders_every_chart_in_chromium(pipeline: Pipeline, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = pipeline.bankde("report")
    seconds = time.monotonic() - started
    path = Path(proc.stdout.strip())
    assert path == pipeline.home / "report.html", proc.stdout
    print(f"bankde report (small demo + stream): {seconds:.1f}s")
    page = path.read_text(encoding="utf-8")
    # Opens with no network: no script, style or image from anywhere.
    assert 'src="http' not in page and "<link" not in page
    with chromium() as driver:
        driver.get(path.as_uri())
        driver.execute_script("return document.readyState")
        drawn = charts(driver)
        errors = console_errors(driver)
        shot = full_page_screenshot(driver, _artifact(tmp_path, "report.png"))
    assert not errors, errors
    titles = [c.title for c in drawn]
    for want in EXPECTED_CHARTS:
        assert any(t.startswith(want) for t in titles), (want, titles)
    for c in drawn:
        assert c.marks > 0, f"chart {c.title!r} drew nothing"
        assert c.width >= 1000 and c.height >= 400, c
    # Reconciliation table present and equal (the stream caught up).
    assert "Reconciliation per table: equal" in page
    assert shot.stat().st_size > 100_000
    print(f"screenshot: {shot}")


def test_dbt_docs_site_loads_without_console_errors(pipeline: Pipeline, tmp_path: Path) -> None:
    proc = pipeline.bankde("dbt", "docs")
    static_index = Path(proc.stdout.strip().splitlines()[-1])
    assert static_index.name == "static_index.html" and static_index.is_file()
    target = static_index.parent
    for name in ("index.html", "manifest.json", "catalog.json"):
        assert (target / name).is_file(), name
    catalog = json.loads((target / "catalog.json").read_text())
    assert any(k.endswith(".fct_transactions") for k in catalog["nodes"]), "catalog read tables"
    with chromium() as driver, serve_directory(target) as url:
        # index.html fetches manifest.json and catalog.json: served over HTTP on loopback.
        driver.get(f"{url}/index.html#!/model/model.bankde.fct_transactions")
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = driver.execute_script("return document.body.innerText")
            if "txn_id" in text and "ods.fct_transactions" in text:
                break
            time.sleep(0.5)
        assert "ods.fct_transactions" in text, text[:1000]
        errors = console_errors(driver)
        full_page_screenshot(driver, _artifact(tmp_path, "dbt-docs.png"))
        # The self-contained page, straight from the file.
        driver.get(static_index.as_uri() + "#!/model/model.bankde.fct_fraud_alerts")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = driver.execute_script("return document.body.innerText")
            if "marts.fct_fraud_alerts" in text:
                break
            time.sleep(0.5)
        assert "marts.fct_fraud_alerts" in text, text[:1000]
        errors += console_errors(driver)
    assert not errors, errors


def _scrape(port: int) -> dict[str, float]:
    """Samples of a scrape as {name{labels}: value}, parsed by prometheus-client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name)


def _wait_for(port: int, check, timeout: float, proc: subprocess.Popen[str]) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            last = _scrape(port)
        except OSError:
            last = {}
        if last and check(last):
            return last
        time.sleep(1)
    raise AssertionError(f"metrics never satisfied the check: {sorted(last.items())[:60]}")


def test_run_serves_live_metrics_and_rewrites_the_report(pipeline: Pipeline) -> None:
    """`bankde run --metrics-port`: a scrape parses, the counters move while it runs, dbt runs
    and alerts by rule appear after a build, and report.html is rewritten after the build."""
    report = pipeline.home / "report.html"
    before = report.stat().st_mtime
    port = free_port()
    proc = subprocess.Popen(
        [
            *(str(BANKDE), "run", "--rate", "300", "--dbt-every", "5", "--quiet"),
            *("--metrics-port", str(port)),
        ],
        env=pipeline.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = _wait_for(
            port, lambda s: _total(s, "bankde_cdc_changes_applied_total") > 0, 120, proc
        )
        second = _wait_for(
            port,
            lambda s: (
                _total(s, "bankde_cdc_changes_applied_total")
                > _total(first, "bankde_cdc_changes_applied_total")
                and _total(s, "bankde_dbt_runs_total") >= 1
                and _total(s, "bankde_cdc_lag_bytes") > 0
                # Live alerts: evaluated after batches once the first build made the views.
                and s.get("bankde_fraud_live_evaluation_seconds_count{}", 0) >= 2
            ),
            240,
            proc,
        )
        assert _total(second, "bankde_cdc_batches_total") > _total(
            first, "bankde_cdc_batches_total"
        )
        assert second["bankde_cdc_batch_duration_seconds_count{}"] >= 1
        assert "bankde_cdc_changes_applied_total{table=bank.transaction}" in second
        assert second["bankde_cdc_last_applied_lsn{}"] > 0
        assert second["bankde_cdc_wal_retained_bytes{}"] > 0
        assert "bankde_cdc_lag_seconds{}" in second
        assert second["bankde_dbt_run_duration_seconds_count{}"] >= 1
        assert "bankde_dbt_failures_total{}" in second
        alerts = {k: v for k, v in second.items() if k.startswith("bankde_fraud_alerts{")}
        assert len(alerts) >= 5 and sum(alerts.values()) > 0, alerts
        live = {k: v for k, v in second.items() if k.startswith("bankde_fraud_live_alerts{")}
        assert len(live) >= 5 and sum(live.values()) > 0, live
        assert "bankde_fraud_alert_latency_seconds_count{}" in second
        # The report is rewritten right after the build the metrics counted.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and report.stat().st_mtime <= before:
            time.sleep(1)
        assert report.stat().st_mtime > before, "bankde run did not rewrite report.html"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped cleanly" in out
    # The server is gone with the run.
    with pytest.raises(OSError):
        _scrape(port)


def test_cdc_run_serves_live_metrics(pipeline: Pipeline) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(BANKDE), "cdc", "run", "--no-progress", "--metrics-port", str(port)],
        env=pipeline.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        idle = _wait_for(port, lambda s: "bankde_cdc_batches_total{}" in s, 60, proc)
        pipeline.bankde("fill", "--n-new-txns", "500", "--backfill-days", "0")
        moved = _wait_for(
            port,
            lambda s: (
                _total(s, "bankde_cdc_changes_applied_total")
                >= _total(idle, "bankde_cdc_changes_applied_total") + 500
            ),
            120,
            proc,
        )
        assert moved["bankde_cdc_batches_total{}"] > idle["bankde_cdc_batches_total{}"]
        assert moved["bankde_cdc_last_applied_lsn{}"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


def test_metrics_port_in_use_is_a_one_line_usage_error(pipeline: Pipeline) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [str(BANKDE), "cdc", "run", "--no-progress", "--metrics-port", str(port)],
            env=pipeline.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --metrics-port {port}")


def test_report_on_an_empty_warehouse_says_what_is_missing(
    wh_settings, wh_session, tmp_path: Path
) -> None:
    """Before any dbt build or stream: the page is written, each part names what to run."""
    from bankde.monitoring.report import write_report
    from bankde.warehouse.ddl import ensure_schema

    wh = wh_session.warehouse(wh_settings)
    ensure_schema(wh)
    res = write_report(wh_settings, wh, tmp_path / "r.html", with_source=False)
    assert res.path.is_file() and res.charts == 0
    notes = " | ".join(res.notes)
    assert "run `bankde dbt build`" in notes
    assert "no streamed batches yet" in notes
    page = res.path.read_text(encoding="utf-8")
    assert "Plotly" in page and "bankde pipeline report" in page
