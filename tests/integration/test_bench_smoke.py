"""Every benchmark still runs end to end (tiny sizes): a refactor must not leave bench/ broken."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

CASES = {
    "fill": ["--txns", "20000", "--repeat", "1", "--customers", "200", "--terminals", "80"],
    "cdc": ["--txns", "5000", "--changes", "2000", "--rate", "500", "--seconds", "2"],
    "sink": ["--events", "5000", "--batch", "1000", "--snapshot-rows", "5000", "--passes", "1"],
    "dbt": ["--txns", "20000", "--changes", "2000"],
    "served": ["--rows", "20000", "--repeat", "1", "--txns", "2000", "--changes", "2000"],
}
# What each prints when it got to the end: the figure and its same-run baseline.
EXPECT = {
    "fill": ["txns/s", "ceiling", "ratio"],
    "cdc": ["snapshot:", "stream:", "latency", "peak RSS"],
    "sink": ["events/s", "baseline", "rows/s"],
    "dbt": ["full dbt build", "incremental dbt build", "target < 60s"],
    "served": ["as Arrow: HTTP", "insert_arrow", "CDC stream", "baseline"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_at_tiny_size(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), *CASES[name]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for needle in EXPECT[name]:
        assert needle in out, f"{name}: {needle!r} missing from\n{out[-4000:]}"
