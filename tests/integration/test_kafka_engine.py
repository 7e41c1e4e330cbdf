"""The kafka engine (real broker, real Connect worker, real Debezium connectors) lands what native does."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from bankde.settings import Settings
from bankde.source.connection import connect, owner_info
from tests.conftest import cli_env
from tests.integration.test_debezium_engine import COMPARE, _changes, _seed
from tests.kafka_stack import Connectors, Stack, connectors
from tests.workload import writer

pytest.importorskip("confluent_kafka", reason="the [kafka] extra is not installed")

BANKDE = str(Path(sys.executable).with_name("bankde"))

# The kafka engine's offset, read the way `cdc status` would (its own process: chDB).
OFFSET = """
from bankde.settings import Settings
from bankde.cdc.registry import get_engine
from bankde.warehouse.session import open_session
from bankde.warehouse.sink import load_offset
s = get_engine("kafka").settings_for(Settings())
with open_session(s) as session:
    off = load_offset(session.warehouse(), s.cdc_slot)
print(off.lsn if off else 0)
"""


@pytest.fixture()
def kafka_stack(kafka_cluster: Any) -> Stack:
    """The session's managed broker and Connect worker (tests/kafka.py)."""
    return Stack(kafka_cluster.bootstrap, kafka_cluster.connect_url)


def _env(
    settings: Settings, home: Path, engine: str, regs: Connectors | None = None
) -> dict[str, str]:
    extra = {
        "BANKDE_CDC_SLOT": settings.cdc_slot,
        "BANKDE_CDC_PUBLICATION": settings.cdc_publication,
        "BANKDE_WH_DIR": str(home / "warehouse"),
        "BANKDE_WH_PREFIX": f"{engine[:3]}_",
    }
    if regs is not None:
        k = regs.settings
        extra.update(
            {
                "BANKDE_KAFKA_BOOTSTRAP": k.kafka_bootstrap or "",
                "BANKDE_KAFKA_TOPIC_PREFIX": k.kafka_topic_prefix,
                "BANKDE_KAFKA_GROUP": k.kafka_group,
            }
        )
    return cli_env(settings, **extra)


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BANKDE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _current_lsn(settings: Settings) -> int:
    from bankde.cdc.envelope import parse_lsn

    with connect(owner_info(settings), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def _kafka_lsn(env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", OFFSET], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip())


def _sync_until(env: dict[str, str], target: int, timeout: float = 240) -> dict[str, Any]:
    """`cdc sync --engine kafka` until every connector is applied past `target` (the cut)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with tempfile.TemporaryFile("w+") as err:
            try:
                res = subprocess.run(
                    [BANKDE, "cdc", "sync", "--engine", "kafka", "--json"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    timeout=120,
                )
            except subprocess.TimeoutExpired:
                err.seek(0)
                raise AssertionError(
                    f"cdc sync --engine kafka hung: {err.read()[-3000:]}"
                ) from None
            err.seek(0)
            assert res.returncode == 0, err.read()[-3000:]
        last = json.loads(res.stdout)
        if _kafka_lsn(env) >= target:
            return last
        time.sleep(1)
    raise AssertionError(f"kafka cut never reached {target:X}: {last}")


def _compare(env: dict[str, str], a: str, b: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", COMPARE, a, b], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _assert_same(diff: dict[str, Any]) -> None:
    for _table, d in diff.items():
        assert d["only_a"] == 0 and d["only_b"] == 0, diff


def test_kafka_and_native_land_the_same_state(
    kafka_stack: Stack, workspace: tuple[Settings, Path]
) -> None:
    settings, home = workspace
    _seed(settings)
    nat = _env(settings, home, "native")
    res = _cli(nat, "cdc", "sync", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    with connectors(kafka_stack, settings) as regs:
        kaf = _env(settings, home, "kafka", regs)
        regs.wait_running()
        # Debezium's initial snapshot of the seeded rows, then the same changes for both.
        _sync_until(kaf, _current_lsn(settings))
        _changes(settings)
        target = _current_lsn(settings)
        res = _cli(nat, "cdc", "sync", "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        _sync_until(kaf, target)
        diff = _compare(nat, "nat_", "kaf_")
        _assert_same(diff)
        assert diff["raw.transaction"]["rows"] == 900 - 41


_ADMIN: dict[str, Any] = {}


def _group_offsets(regs: Connectors) -> dict[tuple[str, int], int]:
    """What the engine committed to its consumer group (only after the warehouse held it)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = _ADMIN.get(regs.stack.bootstrap)
    if admin is None:
        admin = _ADMIN[regs.stack.bootstrap] = AdminClient(
            {"bootstrap.servers": regs.stack.bootstrap}
        )
    fut = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(regs.settings.kafka_group)]
    )[regs.settings.kafka_group]
    parts = fut.result().topic_partitions or []
    return {(tp.topic, tp.partition): tp.offset for tp in parts if tp.offset >= 0}


def _reconcile(env: dict[str, str]) -> None:
    rec = _cli(env, "reconcile", "--json")
    assert rec.returncode == 0, f"{rec.stdout[-2000:]}{rec.stderr[-2000:]}"


def test_kill_dash_nine_of_the_kafka_consumer(
    kafka_stack: Stack, workspace: tuple[Settings, Path]
) -> None:
    """`bankde cdc run --engine kafka` killed with SIGKILL at five random points of a mixed
    workload, restarted each time; then the warehouse equals the source, nothing twice."""
    settings, home = workspace
    _seed(settings)
    with connectors(kafka_stack, settings) as regs:
        env = _env(settings, home, "kafka", regs) | {
            "BANKDE_CDC_BATCH_SECONDS": "0.1",
            "BANKDE_CDC_BATCH_ROWS": "200",
        }
        regs.wait_running()
        _sync_until(env, _current_lsn(settings))  # Debezium's snapshot, applied
        rng = random.Random(7)
        committed: list[dict[tuple[str, int], int]] = []
        with writer(settings, 3, rate=100) as done:
            for i in range(5):
                before = _group_offsets(regs)
                proc = subprocess.Popen(
                    [BANKDE, "cdc", "run", "--engine", "kafka", "--no-progress"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                # This run's first write reached the warehouse (it commits to the group only
                # afterwards), then a random point of the stream.
                deadline = time.monotonic() + 120
                while _group_offsets(regs) == before:
                    assert time.monotonic() < deadline, f"kill {i}: nothing committed in 120 s"
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    time.sleep(0.2)
                time.sleep(rng.uniform(0.2, 2.5))
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                committed.append(_group_offsets(regs))
        assert done and done[0] > 50
        assert len({tuple(sorted(c.items())) for c in committed}) == 5, "each run moved on"
        _sync_until(env, _current_lsn(settings))
        _reconcile(env)
