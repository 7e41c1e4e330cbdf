"""The kafka engine under failures: a consumer group losing a member, the Connect worker and the
broker killed mid-stream, a failed connector, an event the sink cannot convert (real broker, real
Connect, real Debezium connectors, real Postgres, chDB); `bankde reconcile` equal after each."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bankde.settings import Settings
from bankde.source.connection import admin_info, connect, owner_info
from tests.conftest import cli_env
from tests.integration import test_kafka_engine
from tests.integration.test_debezium_engine import _seed
from tests.integration.test_kafka_engine import (
    BANKDE,
    _cli,
    _current_lsn,
    _env,
    _group_offsets,
    _kafka_lsn,
    _reconcile,
    _sync_until,
)
from tests.kafka import free_ports
from tests.kafka_stack import Connectors, Stack, connectors
from tests.workload import writer

pytest.importorskip("confluent_kafka", reason="the [kafka] extra is not installed")

# The session's broker and worker (`workspace`, the test's source database and warehouse home,
# is tests/workload.py's).
kafka_stack = test_kafka_engine.kafka_stack

# `bankde cdc run --engine kafka` with the engine's INFO lines on stderr (the CLI configures no
# logging): each partition assignment and the offset it resumes from.
CONSUMER = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
logging.getLogger("bankde.cdc.engines.kafka").setLevel(logging.INFO)
from bankde.cli import main
sys.argv = ["bankde", "cdc", "run", "--engine", "kafka", "--no-progress"]
main()
"""
ASSIGNED = re.compile(r"kafka: (\S+)\[(\d+)\] assigned, from (?:stored offset (\d+)|the beginning)")


EVENT = re.compile(r"kafka: (\S+)\[(\d+)\] (assigned|revoked)")


def _owned(text: str) -> set[tuple[str, int]]:
    """The partitions a consumer holds now, by its log of assignments and revocations."""
    held: set[tuple[str, int]] = set()
    for m in EVENT.finditer(text):
        (held.add if m[3] == "assigned" else held.discard)((m[1], int(m[2])))
    return held


def _assignments(text: str) -> list[tuple[str, int, int | None]]:
    return [(m[1], int(m[2]), None if m[3] is None else int(m[3])) for m in ASSIGNED.finditer(text)]


# Few events per second however long a restart makes the test write: two-row updates, small
# inserts, at most 50 transactions a second.
LIGHT: dict[str, Any] = {"rate": 50, "rows": 4, "wide_updates": False}


def _consumer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-c", CONSUMER],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _members(regs: Connectors) -> dict[str, set[tuple[str, int]]]:
    """The consumer group's members (client host/id) and their partitions, from the broker."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": regs.stack.bootstrap})
    group = regs.settings.kafka_group
    desc = admin.describe_consumer_groups([group])[group].result()
    if desc.state != ConsumerGroupState.STABLE:
        return {}
    return {
        m.member_id: {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions}
        for m in desc.members
    }


STORED = """
import json, sys
from bankde.settings import Settings
from bankde.cdc.registry import get_engine
from bankde.warehouse.session import open_session
from bankde.warehouse.sink import ClickHouseSink
s = get_engine("kafka").settings_for(Settings())
with open_session(s) as session:
    pos = ClickHouseSink(session.warehouse()).load_positions(s.cdc_slot)
print(json.dumps([[t, p, o] for (t, p), o in pos.items()]))
"""


def _stored(env: dict[str, str]) -> dict[tuple[str, int], int]:
    """The positions the warehouse holds (the served one, found through its lock file)."""
    out = subprocess.run(
        [sys.executable, "-c", STORED], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return {(t, int(p)): int(o) for t, p, o in json.loads(out.stdout)}


@contextmanager
def _served(env: dict[str, str], home: Path) -> Iterator[str]:
    """`bankde wh serve` owning the test's warehouse: every other process reaches it over HTTP."""
    from bankde.warehouse.lock import lock_path_for, read_holder

    (port,) = free_ports(1)
    log = home / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [BANKDE, "wh", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def published() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            holder = read_holder(lock_path_for((home / "warehouse").resolve()))
            return holder is not None and holder.url == url

        _wait(published, 90, "wh serve published its URL", 0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.slow
def test_two_consumers_share_the_partitions_and_one_takes_over(
    kafka_stack: Stack, workspace: tuple[Settings, Path]
) -> None:
    """Two `cdc run --engine kafka` in one group against the served warehouse; the one reading
    bank.transaction (the workload's table) killed -9 mid-stream, the other takes its partitions
    over from the positions the warehouse holds; nothing lost, nothing twice through FINAL."""
    settings, home = workspace
    _seed(settings)
    with connectors(kafka_stack, settings) as regs:
        env = _env(settings, home, "kafka", regs) | {
            "BANKDE_CDC_BATCH_SECONDS": "0.2",
            "BANKDE_CDC_BATCH_ROWS": "500",
        }
        regs.wait_running()
        _sync_until(env, _current_lsn(settings))  # Debezium's snapshot, applied in-process
        busy = f"{regs.prefix}.bank.transaction"
        assert {p for t, p in _stored(env) if t == busy} == {0, 1, 2}, "three partitions"
        logs = [home / "consumer-a.log", home / "consumer-b.log"]
        with _served(env, home):
            with writer(settings, 11, rate=100) as done:
                procs = [_consumer(env, log) for log in logs]
                try:
                    members = _wait(
                        lambda: (m := _members(regs)) and len(m) == 2 and all(m.values()) and m,
                        120,
                        "two members, each with partitions",
                    )
                    everything = set().union(*members.values())
                    # Both write: the group's committed offsets move past where they started.
                    before = _group_offsets(regs)
                    _wait(lambda: _group_offsets(regs) != before, 120, "the group moved on")
                    time.sleep(random.Random(5).uniform(1, 4))
                    owned = [_owned(log.read_text()) for log in logs]
                    assert not owned[0] & owned[1] and owned[0] | owned[1] == everything, owned
                    # The victim: whoever reads the workload's partitions (or most of them).
                    v = max((0, 1), key=lambda i: sum(t == busy for t, _ in owned[i]))
                    victim, survivor, slog = procs[v], procs[1 - v], logs[1 - v]
                    for proc, log in zip(procs, logs, strict=True):
                        assert proc.poll() is None, log.read_text()[-3000:]
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(timeout=30)
                    # What it left in the warehouse is where the survivor must resume: nobody
                    # writes those partitions before the group hands them over (10 s session).
                    time.sleep(1)
                    left = _stored(env)
                    mark = len(slog.read_text())
                    _wait(
                        lambda: (m := _members(regs)) and len(m) == 1 and m,
                        120,
                        "the group rebalanced onto the survivor",
                    )
                    taken = _wait(
                        lambda: (
                            (a := _assignments(slog.read_text()[mark:]))
                            and {(t, p) for t, p, _ in a} == owned[v]
                            and a
                        ),
                        60,
                        "the survivor took over every partition of the victim",
                    )
                    assert _owned(slog.read_text()) == everything
                    time.sleep(3)  # the writer goes on after the takeover
                    assert survivor.poll() is None, slog.read_text()[-3000:]
                except BaseException:
                    for proc in procs:
                        if proc.poll() is None:
                            proc.kill()
                            proc.wait()
                    raise
            # The writer stopped: the survivor alone applies everything up to the source's LSN.
            target = _current_lsn(settings)
            try:
                _wait(lambda: survivor.poll() is not None or _kafka_lsn(env) >= target, 240,
                      "the survivor applied everything", 2)  # fmt: skip
                assert survivor.poll() is None, slog.read_text()[-3000:]
                _reconcile(env)  # through the served warehouse
            finally:
                if survivor.poll() is None:
                    survivor.send_signal(signal.SIGTERM)
                rc = survivor.wait(timeout=60)
            assert rc == 0, slog.read_text()[-3000:]
        assert done and done[0] > 20
        assert any(t == busy for t, _ in owned[v]), "the victim was reading the workload"
        # Every assignment seeked to the warehouse's positions: at the takeover exactly what
        # the victim left there (not the group's committed offsets, committed only afterwards).
        for topic, part, at in taken:
            assert at == left.get((topic, part)), (topic, part, at, left.get((topic, part)))
        _reconcile(env)  # and again embedded, the owner gone


# --- the Connect worker and the broker killed mid-stream ---------------------------------------


def _kafka_up(kafka_cluster: Any, exactly_once: bool = True) -> str:
    """`bankde kafka up` on the session's home: starts whichever of broker and worker is gone."""
    env = cli_env(
        kafka_cluster.settings,
        **kafka_cluster.env(),
        BANKDE_KAFKA_EXACTLY_ONCE="true" if exactly_once else "false",
    )
    proc = subprocess.run(
        [BANKDE, "kafka", "up"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def _signal(kafka_cluster: Any, name: str, sig: int) -> None:
    """Send `sig` to the session's broker or worker and wait until it is gone."""
    from bankde.kafka.cluster import ManagedKafka

    kafka = ManagedKafka(kafka_cluster.settings)
    pid = kafka.state(name).pid
    assert pid is not None, f"the session's {name} is not running"
    os.kill(pid, sig)
    _wait(lambda: not kafka.state(name).running, 120, f"the {name} stopped", 0.2)


def _source_offset(regs: Connectors) -> Any:
    """The offset the worker stored for the transaction connector (KIP-875 REST)."""
    from tests.kafka_stack import rest

    name = next(n for n in regs.names if "-transaction-" in n)
    return rest(f"{regs.stack.connect_url}/connectors/{name}/offsets").get("offsets")


def _end(regs: Connectors, table: str) -> int:
    """The summed high watermarks of the test's topic of `table` (records and markers)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": regs.stack.bootstrap})
    topic = f"{regs.prefix}.{table}"
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(3)})
    return sum(f.result().offset for f in futures.values())


def _topic_events(regs: Connectors) -> tuple[int, int]:
    """Every committed data event of the test's topics as a read_committed reader sees them:
    (events, distinct events by topic, key, LSN, operation and position in its transaction)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": regs.stack.bootstrap,
            "group.id": f"{regs.prefix}-count",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        topics = [
            t
            for t in consumer.list_topics(timeout=30).topics
            if re.match(rf"^{re.escape(regs.prefix)}\.(bank|truth)\.", t)
        ]
        meta = consumer.list_topics(timeout=30).topics
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions]
        )
        seen: set[tuple[Any, ...]] = set()
        total, empty = 0, 0
        while empty < 3:
            msgs = consumer.consume(10_000, 1.0)
            empty = 0 if msgs else empty + 1
            for m in msgs:
                assert m.error() is None, m.error()
                v = json.loads(m.value())
                txn = v.get("transaction") or {}
                seen.add((m.topic(), m.key(), v["source"]["lsn"], v["op"], txn.get("total_order")))
                total += 1
        return total, len(seen)
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
def test_kill_dash_nine_of_the_connect_worker(
    kafka_cluster: Any,
    kafka_stack: Stack,
    workspace: tuple[Settings, Path],
    exactly_once: bool,
) -> None:
    """The worker killed -9 while the workload writes, restarted by `bankde kafka up`. Exactly-once
    (the repo's config): a read_committed reader sees every event once. Without it the events
    since the worker's last offset flush come again, and the versions absorb them."""
    settings, home = workspace
    _seed(settings)
    if not exactly_once:
        _signal(kafka_cluster, "worker", signal.SIGTERM)
        _kafka_up(kafka_cluster, exactly_once=False)
    try:
        with connectors(kafka_stack, settings, exactly_once=exactly_once) as regs:
            env = _env(settings, home, "kafka", regs)
            regs.wait_running()
            _sync_until(env, _current_lsn(settings))  # Debezium's snapshot, applied
            with writer(settings, 13, **LIGHT) as done:
                # Mid-stream: the workload's changes are reaching the topic.
                start = _end(regs, "bank.transaction")
                _wait(lambda: _end(regs, "bank.transaction") > start + 100, 120, "changes flow")
                # ... and the worker stored an offset among them (without exactly-once it does
                # so every 10 s; a connector killed before its first one snapshots again).
                flushed = _source_offset(regs)
                _wait(lambda: _source_offset(regs) != flushed, 60, "an offset flush")
                time.sleep(random.Random(17).uniform(0.5, 2))
                try:
                    _signal(kafka_cluster, "worker", signal.SIGKILL)
                    time.sleep(2)  # the workload goes on while no worker runs
                finally:
                    out = _kafka_up(kafka_cluster, exactly_once)
                assert "worker started" in out and "broker already running" in out, out
                regs.wait_running(180)
                time.sleep(3)
            assert done and done[0] > 20
            _sync_until(env, _current_lsn(settings))
            _reconcile(env)
            total, distinct = _topic_events(regs)
            if exactly_once:
                assert total == distinct, f"{total - distinct} events re-delivered"
            else:
                assert total > distinct, "a killed worker without exactly-once re-sends"
    finally:
        if not exactly_once:
            _signal(kafka_cluster, "worker", signal.SIGTERM)
            _kafka_up(kafka_cluster, exactly_once=True)


@pytest.mark.slow
def test_broker_killed_and_restarted_mid_stream(
    kafka_cluster: Any, kafka_stack: Stack, workspace: tuple[Settings, Path]
) -> None:
    """The broker killed -9 while the workload writes and a consumer runs, started again by
    `bankde kafka up`: the connectors and the running consumer carry on by themselves."""
    settings, home = workspace
    _seed(settings)
    with connectors(kafka_stack, settings) as regs:
        env = _env(settings, home, "kafka", regs) | {"BANKDE_CDC_BATCH_SECONDS": "0.2"}
        regs.wait_running()
        _sync_until(env, _current_lsn(settings))
        log = home / "consumer.log"
        with _served(env, home):
            _broker_restart(kafka_cluster, regs, settings, env, log)
        _reconcile(env)


def _broker_restart(
    kafka_cluster: Any, regs: Connectors, settings: Settings, env: dict[str, str], log: Path
) -> None:
    """The consumer running against the served warehouse while the broker is killed and back."""
    proc = _consumer(env, log)
    try:
        with writer(settings, 19, **LIGHT) as done:
            before = _group_offsets(regs)
            _wait(lambda: _group_offsets(regs) != before, 120, "the consumer wrote")
            time.sleep(random.Random(23).uniform(1, 3))
            try:
                _signal(kafka_cluster, "broker", signal.SIGKILL)
                time.sleep(3)  # the workload goes on while no broker runs
            finally:
                out = _kafka_up(kafka_cluster)
            assert "broker started" in out and "worker already running" in out, out
            # The tasks run on; the connectors' own status may stay UNASSIGNED (the worker
            # does not rewrite it after its group came back): the data flow is what counts.
            _wait(
                lambda: all(v.endswith("/RUNNING") for v in regs.states().values()),
                180,
                "the connectors' tasks running",
            )
            time.sleep(3)
        assert done and done[0] > 20
        target = _current_lsn(settings)
        _wait(lambda: proc.poll() is not None or _kafka_lsn(env) >= target, 240,
              "the consumer applied everything", 2)  # fmt: skip
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0, log.read_text()[-3000:]
    _reconcile(env)  # through the served warehouse


# --- bad input ---------------------------------------------------------------------------------


def test_failed_connector_and_unconvertible_events(
    kafka_stack: Stack, workspace: tuple[Settings, Path]
) -> None:
    """Events the sink cannot convert go to meta.cdc_rejects with their topic, partition and
    offset while the stream goes on; a failed connector's error line shows in `kafka status`
    and `cdc status --engine kafka`."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    settings, home = workspace
    _seed(settings)
    with connectors(kafka_stack, settings) as regs:
        env = _env(settings, home, "kafka", regs)
        regs.wait_running()
        _sync_until(env, _current_lsn(settings))
        topic = f"{regs.prefix}.bank.transaction"
        # A real event of the topic as the template of a well-formed one with a bad value.
        reader = Consumer(
            {
                "bootstrap.servers": regs.stack.bootstrap,
                "group.id": f"{regs.prefix}-peek",
                "isolation.level": "read_committed",
            }
        )
        try:
            reader.assign([TopicPartition(topic, 0, 0)])
            msg = _wait(lambda: reader.poll(1.0), 60, "an event in partition 0")
            template = json.loads(msg.value())
        finally:
            reader.close()
        bad = dict(template)
        bad["after"] = {**template["after"], "txn_id": 987_654_321, "amount": "a lot"}
        located: list[tuple[int, int]] = []

        def delivered(err: Any, m: Any) -> None:
            assert err is None, err
            located.append((m.partition(), m.offset()))

        producer = Producer({"bootstrap.servers": regs.stack.bootstrap})
        producer.produce(topic, b"{not json", partition=1, on_delivery=delivered)
        producer.produce(topic, json.dumps(bad).encode(), partition=2, on_delivery=delivered)
        producer.flush(30)
        assert len(located) == 2
        # The stream goes on: a change after them lands.
        with connect(owner_info(settings)) as conn:
            conn.execute("UPDATE bank.transaction SET amount = amount + 1 WHERE txn_id = 7")
            conn.commit()
        _sync_until(env, _current_lsn(settings))
        _reconcile(env)
        rejects = _rejects(env)
        assert len(rejects) == 2, rejects
        # Not even JSON: held back by the engine, located by topic, partition and offset.
        garbled = next(r for r in rejects if r["column"] != "amount")
        assert (garbled["topic"], garbled["partition"], garbled["offset"]) == (topic, *located[0])
        assert garbled["source_text"] == "{not json" and "JSON" in garbled["reason"], garbled
        # A value no Decimal holds: held back by the sink's screen (never landed as 0 or NULL),
        # located in Kafka as well.
        amount = next(r for r in rejects if r["column"] == "amount")
        assert amount["table"] == "bank.transaction" and amount["source_text"] == "a lot"
        assert amount["key"] == '{"txn_id":"987654321"}', amount
        assert (amount["topic"], amount["partition"], amount["offset"]) == (topic, *located[1])

        # A failed connector: its publication dropped and its walsender cut.
        with connect(owner_info(settings), autocommit=True) as conn:
            conn.execute(f'DROP PUBLICATION "{regs.publications[0]}"')
        with connect(admin_info(settings), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (regs.slots[0],),
            )
        name = regs.names[0]
        _wait(lambda: regs.states()[name].endswith("FAILED"), 300, f"{name} FAILED")
        line = "ConnectException: Publication autocreation is disabled"
        kafka = _cli(env, "kafka", "status")
        assert kafka.returncode == 0, kafka.stderr
        assert f"{name} task 0: {line}" in kafka.stdout, kafka.stdout
        cdc = _cli(env, "cdc", "status", "--engine", "kafka")
        assert cdc.returncode == 1, cdc.stdout + cdc.stderr
        assert cdc.stderr.count("\n") == 1, cdc.stderr
        assert cdc.stderr.startswith(f"connector {name} FAILED: {line}"), cdc.stderr


REJECTS = """
import json
from bankde.settings import Settings
from bankde.cdc.registry import get_engine
from bankde.warehouse.session import open_session
from bankde.warehouse.ddl import db_names
s = get_engine("kafka").settings_for(Settings())
with open_session(s) as session:
    rows = session.warehouse().query(
        "SELECT table, key, lsn, column, source_text, reason, topic, partition, offset FROM "
        + db_names(s).meta_table("cdc_rejects") + " FINAL"
    )
names = ("table", "key", "lsn", "column", "source_text", "reason", "topic", "partition", "offset")
print(json.dumps([dict(zip(names, r)) for r in rows], default=str))
"""


def _rejects(env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-c", REJECTS], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)  # type: ignore[no-any-return]
