"""Every benchmark still runs end to end (tiny sizes): a refactor must not leave bench/ broken."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

CASES = {
    "fill": ["--txns", "20000", "--repeat", "1", "--customers", "200", "--terminals", "80"],
    "cdc": ["--txns", "5000", "--changes", "2000", "--rate", "500", "--seconds", "2"],
    "cdc_latency": [
        *("--txns", "2000", "--latency-runs", "2", "--rate", "500", "--seconds", "2"),
        *("--table-setting", "old_parts_lifetime = 480"),
    ],
    "sink": ["--events", "5000", "--batch", "1000", "--snapshot-rows", "5000", "--passes", "1"],
    "dbt": ["--txns", "20000", "--changes", "2000"],
    "hugetx": ["--rows", "3000", "--baseline-rows", "1000", "--part-rows", "1000"],
    "table_check": ["--runs", "3"],
    "freshness": [
        *("--txns", "3000", "--customers", "300", "--terminals", "100", "--rate", "200"),
        # Counted: commits after both paths are up (first build after 10 s) and a warm-up.
        *("--duration", "100", "--dbt-every", "10", "--warmup", "5", "--tail", "5"),
        *("--changes", "2000", "--rounds", "2"),
    ],
    "kafka": [
        *("--events", "5000", "--snapshot-rows", "2000"),
        *("--rate", "500", "--seconds", "3", "--burst", "2000"),
    ],
    "served": [
        "--rows",
        "20000",
        "--repeat",
        "1",
        "--txns",
        "2000",
        "--changes",
        "2000",
        "--rounds",
        "2",
    ],
}
# The script of a case that runs another case's script with other options.
SCRIPT = {"cdc_latency": "cdc"}
# What each prints when it got to the end: the figure and its same-run baseline.
EXPECT = {
    "fill": ["txns/s", "ceiling", "ratio"],
    "cdc": ["snapshot:", "stream:", "latency", "peak RSS"],
    "cdc_latency": ["latency run 2/2", "table setting: old_parts_lifetime = 480"],
    "sink": ["events/s", "baseline", "rows/s"],
    "dbt": ["full dbt build", "incremental dbt build", "target < 60s", "selected dbt build"],
    "freshness": ["live detection:", "baseline dbt every", "CDC throughput", "load average"],
    "served": ["as Arrow: HTTP", "insert_arrow", "CDC stream", "baseline"],
    "kafka": ["consumer alone:", "baseline", "Debezium initial snapshot", "end to end", "RSS"],
    "hugetx": ["in parts of 1,000", "captured whole", "peak RSS"],
    "table_check": ["before (baseline)", "after"],
}

# Every figure each prints, as a pattern whose group is the number: each must appear and be a
# positive number. (The "vs the ...k/s target: 0.4x" lines are a checked figure over a constant,
# printed with one decimal: at tiny sizes they may round to 0.0, so they are not listed.)
_N = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
FIGURES = {
    "fill": [
        rf"= {_N} txns/s",
        rf"pre-built rows into bank\.transaction, same session settings as the filler = {_N} rows/s",
        rf"default session \(FK triggers fire\) = {_N} rows/s",
        rf"ratio:\s+{_N} x ceiling",
        rf"best against best {_N}",
        rf"{_N} x the default-session COPY",
        rf"speed:\s+{_N} txns/s",
        rf"filler process {_N} s",
        rf"peak RSS of the filler process {_N} MiB",
    ],
    "cdc": [
        rf"snapshot: {_N} rows in {_N}s = {_N} rows/s",
        rf"COPY out to Arrow {_N} rows/s \| ratio {_N}",
        rf"applied in {_N}s = {_N} changes/s",
        rf"streaming phase alone {_N}/s",
        rf"\(pg_recvlogical\) {_N} changes/s, ratio {_N}",
        rf"read\+decode without warehouse {_N} changes/s, ratio {_N}",
        rf"fsync cost \({_N} alternating rounds, medians\): every insert fsynced {_N} changes/s "
        rf"\| baseline without fsync {_N} changes/s \| ratio {_N}",
        rf"cold JVM\): {_N} changes at {_N} changes/s \({_N}s with connector start; process CPU {_N} us/change",
        rf"warm JVM\): {_N} changes at {_N} changes/s \({_N}s with connector start; process CPU {_N} us/change",
        rf"stream: native {_N} changes/s \| debezium engine {_N} changes/s \| ratio native/debezium {_N}",
        rf"p50 {_N} ms, p99 {_N} ms over {_N} transactions",
        rf"peak RSS: {_N} MiB",
    ],
    "cdc_latency": [
        rf"latency run {_N}/{_N} at {_N} changes/s: p50 {_N} ms, p99 {_N} ms over {_N} transactions",
        rf"slowest write {_N} ms",
        rf"median p99 {_N} ms",
    ],
    "sink": [
        rf"in batches of {_N}: {_N} events/s \(best of {_N}; median {_N}\)",
        rf"no parsing: {_N} rows/s; ratio {_N}",
        rf"swapped in\): {_N} rows/s",
        rf"visible after swap: {_N}",
    ],
    "dbt": [
        rf"terminals in {_N}s",
        rf"full dbt build: {_N}s wall, {_N}s CPU",
        rf"incremental dbt build after .*: {_N}s wall, {_N}s CPU",
        rf"fct_transactions rows: {_N}",
        rf"fct_transactions rows: {_N} \(raw live rows {_N}\)",
        rf"full build {_N}s \(target < 60s, ratio {_N}\)",
        rf"incremental build {_N}s \(target < 10s, ratio {_N}\)",
        rf"full/incremental = {_N}x",
        rf"selected dbt build after .*: {_N}s wall, {_N}s CPU",
        rf"selected build {_N}s \(target < 5s, ratio {_N}\)",
    ],
    "freshness": [
        rf"live detection: p50 [0-9.]+s p95 [0-9.]+s p99 [0-9.]+s \(n={_N}\)",
        rf"live detection on {_N} changes/s \| baseline off {_N} changes/s \| ratio {_N}",
    ],
    "hugetx": [
        rf"captured in {_N}s \({_N} rows/s\), capture peak RSS {_N} MiB",
        rf"captured whole \(no parts\): {_N}s \({_N} rows/s\), capture peak RSS {_N} MiB",
    ],
    "kafka": [
        rf"applied in {_N} s = {_N} events/s",
        rf"orjson\.loads only, same topic\): {_N} events/s \| ratio {_N}",
        rf"RSS: broker {_N} MiB, worker {_N} MiB, consumer \(peak\) {_N} MiB",
        rf"same topic: {_N} events/s \| bulk/per-event {_N}",
        rf"in {_N} s = {_N} rows/s \(registration to warehouse\) \| native snapshot {_N} rows/s",
        rf"steady {_N} changes/s for {_N} s: commit to warehouse p50 {_N} ms, p99 {_N} ms",
        rf"\| native p50 {_N} ms, p99 {_N} ms",
        rf"kafka {_N} changes/s \(commit of the first to the last in the warehouse\) \| native {_N} changes/s",
        rf"peak RSS end to end: broker {_N} MiB, worker {_N} MiB, consumers .* {_N} MiB",
    ],
    "table_check": [rf"median +{_N} ms"],
    "served": [
        rf"as Arrow: HTTP {_N} rows/s \([0-9.]+s\) \| baseline in-process {_N} rows/s \([0-9.]+s\) \| ratio {_N}",
        rf"insert_arrow {_N} rows: HTTP {_N} rows/s \([0-9.]+s\) \| baseline in-process {_N} rows/s",
        rf"sink on the served URL {_N} changes/s \| baseline sink in-process {_N} changes/s \| ratio {_N}",
    ],
}


def figures(name: str, out: str) -> list[tuple[str, float]]:
    """(pattern, value) of every figure FIGURES[name] names; fails on a line that is missing."""
    found = []
    for pattern in FIGURES[name]:
        matches = list(re.finditer(pattern, out))
        assert matches, f"{name}: no figure matching {pattern!r} in\n{out[-4000:]}"
        for m in matches:
            found += [(pattern, float(g.replace(",", ""))) for g in m.groups()]
    return found


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_at_tiny_size(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{SCRIPT.get(name, name)}.py"), *CASES[name]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for needle in EXPECT[name]:
        assert needle in out, f"{name}: {needle!r} missing from\n{out[-4000:]}"
    for pattern, value in figures(name, out):
        assert value > 0, f"{name}: {pattern!r} printed {value}, not a positive number"
