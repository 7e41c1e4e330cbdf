"""`make pytest`'s two workers: the Kafka fixture's users and a module fixture's tests each run in one worker, the rest in both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CONFTEST = """
import pytest
pytest_plugins = ["tests.xdist_groups"]

@pytest.fixture(scope="session")
def kafka_cluster():
    return "broker"
"""

KAFKA_TESTS = """
import time
import pytest

@pytest.mark.parametrize("i", range(4))
def test_uses_the_broker(kafka_cluster, i):
    time.sleep(0.2)
"""

MODULE_FIXTURE = """
import time
import pytest

@pytest.fixture(scope="module")
def pipeline():
    return 1

@pytest.mark.parametrize("i", range(4))
def test_uses_the_pipeline(pipeline, i):
    time.sleep(0.2)

def test_alone():
    time.sleep(0.2)
"""

FREE = """
import time
import pytest

@pytest.mark.parametrize("i", range(8))
def test_free(i):
    time.sleep(0.3)
"""


def test_groups_stay_in_one_worker_and_the_rest_spreads(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_kafka_a.py").write_text(KAFKA_TESTS)
    (tmp_path / "test_kafka_b.py").write_text(KAFKA_TESTS)
    (tmp_path / "test_pipeline.py").write_text(MODULE_FIXTURE)
    (tmp_path / "test_free.py").write_text(FREE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    workers: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\[(gw\d)\] \[\s*\d+%\] PASSED (\S+)", line)
        if m:
            workers.setdefault(m[2], set()).add(m[1])
    assert len(workers) == 8 + 5 + 8, proc.stdout[-3000:]

    def where(part: str) -> set[str]:
        return set().union(*(w for node, w in workers.items() if part in node))

    assert len(where("::test_uses_the_broker")) == 1, workers
    assert len(where("::test_uses_the_pipeline")) == 1, workers
    # Nothing else is held together: the free tests use both workers.
    assert where("test_free.py") == {"gw0", "gw1"}, workers
