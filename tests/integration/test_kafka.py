"""`bankde kafka up|down|status|connect` against the session's real broker, Connect worker and Postgres."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bankde.settings import Settings
from tests.conftest import cli_env, fresh_source_db, make_home
from tests.kafka import free_ports

BANKDE = str(Path(sys.executable).with_name("bankde"))


def run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BANKDE, "kafka", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def status_json(env: dict[str, str]) -> dict:
    proc = run(env, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_up_is_idempotent_and_status_shows_both(kafka_cluster) -> None:
    env = cli_env(kafka_cluster.settings)
    proc = run(env, "up")
    assert proc.returncode == 0, proc.stderr
    assert f"broker already running on {kafka_cluster.bootstrap}" in proc.stdout
    assert f"worker already running on {kafka_cluster.connect_url}" in proc.stdout
    report = status_json(env)
    assert report["broker"]["running"] and report["worker"]["running"]
    assert report["broker"]["address"] == kafka_cluster.bootstrap
    assert {"bankde-connect-configs", "bankde-connect-offsets"} <= {
        t["topic"] for t in report["topics"]
    }
    assert report["errors"] == []
    # Private like the rest of $BANKDE_HOME: configs, logs, pid and state files, their dirs.
    kafka = kafka_cluster.home / "kafka"
    files = [*kafka.glob("config/*"), *kafka.glob("logs/*"), *kafka.glob("*.pid")]
    assert len(files) >= 8
    for path in [kafka, kafka / "config", kafka / "logs", kafka / "state.json", *files]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:.0f} s")


def _connector(report: dict, name: str) -> dict:
    return next(c for c in report["connectors"] if c["name"] == name)


def test_connect_runs_the_repo_files_unchanged(kafka_cluster, cluster_settings: Settings) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from bankde.kafka.cluster import rest_get
    from bankde.kafka.connect import connector_files
    from bankde.source.connection import admin_info, connect, owner_info

    with fresh_source_db(cluster_settings) as settings:
        env = cli_env(settings)
        try:
            proc = run(env, "connect", "--wait", "300")
            assert proc.returncode == 0, proc.stderr + proc.stdout
            files = connector_files()
            assert proc.stdout.count("RUNNING, 1 task(s) running") == len(files)
            # What runs is exactly what the repo's files say (Connect adds only the name).
            for f in files:
                on_worker = rest_get(kafka_cluster.connect_url, f"/connectors/{f.name}/config")
                assert on_worker == {**f.config, "name": f.name}
                assert json.loads(f.path.read_text())["config"] == f.config
            secret = settings.home_dir / "secrets" / "bankde-source.properties"
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
            props = dict(ln.split("=", 1) for ln in secret.read_text().splitlines())
            assert props["dbname"] == settings.db_name and props["user"] == settings.cdc_user
            assert props["sslmode"] == "disable" and props["port"] == str(settings.pg_port)
            # The password reached the worker only through the file: not in its logs.
            logs = kafka_cluster.home / "kafka" / "logs"
            assert all(props["password"] not in p.read_text() for p in logs.glob("*.log"))

            # Changes flow through Debezium into the topics, committed (exactly-once source).
            fill = subprocess.run(
                [BANKDE, "fill", "--n-new-txns", "300", "--backfill-days", "0", "--seed", "3"],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert fill.returncode == 0, fill.stderr
            with connect(owner_info(settings)) as conn:
                row = conn.execute("SELECT count(*) FROM bank.transaction").fetchone()
            n_txn = int(row[0]) if row else 0
            assert n_txn >= 300

            # End offsets also count each Connect transaction's commit marker: >= the rows.
            def topic_end() -> int:
                report = status_json(env)
                # `topics` is null while the broker does not answer (busy machine): not yet.
                ends = {t["topic"]: t["end_offset"] for t in report["topics"] or []}
                return ends.get("bankde.bank.transaction", 0) >= n_txn and ends

            ends = _wait(topic_end, 300, "all transactions in bankde.bank.transaction")
            assert ends.get("bankde.message", 0) > 0, "heartbeat messages advance idle slots"

            # A consumer group's committed offsets show as lag in `kafka status`.
            group = "bankde-status-test"
            consumer = Consumer({
                "bootstrap.servers": kafka_cluster.bootstrap, "group.id": group,
                "isolation.level": "read_committed", "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            })  # fmt: skip
            try:
                consumer.assign([TopicPartition("bankde.bank.transaction", p) for p in range(3)])
                seen: dict[str, int] = {}
                msg = None
                while sum(seen.values()) < n_txn:
                    got = consumer.poll(10.0)
                    assert got is not None, f"only {seen} of {n_txn} records committed"
                    assert got.error() is None, got.error()
                    value = json.loads(got.value())
                    assert value["source"]["lsn"] > 0 and "id" in value["transaction"]
                    seen[value["op"]] = seen.get(value["op"], 0) + 1
                    msg = msg or got
                assert seen == {"c": n_txn}, "every row once: exactly-once, nothing duplicated"
                assert msg is not None
                consumer.commit(message=msg, asynchronous=False)
            finally:
                consumer.close()
            lag = [g for g in status_json(env)["groups"] if g["group"] == group]
            assert len(lag) == 1 and lag[0]["committed"] == msg.offset() + 1
            assert lag[0]["lag"] == lag[0]["end_offset"] - lag[0]["committed"] > 0
            text = run(env, "status")
            assert group in text.stdout and "bankde.bank.transaction" in text.stdout

            # A failed task: its publication gone and its walsender cut, Debezium fails it;
            # `kafka status` shows the error line, `kafka connect` brings it back.
            with connect(owner_info(settings), autocommit=True) as conn:
                conn.execute("DROP PUBLICATION bankde_kc_card")
            with connect(admin_info(settings), autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE slot_name = 'bankde_kc_card' AND active_pid IS NOT NULL"
                )
            card = "bankde-postgres-card"
            failed = _wait(
                lambda: (
                    (c := _connector(status_json(env), card))["tasks"][0]["state"] == "FAILED" and c
                ),
                300,
                "the card connector's task FAILED",
            )
            assert "Publication autocreation is disabled" in failed["tasks"][0]["error"]
            text = run(env, "status").stdout
            assert f"{card} task 0: ConnectException: Publication autocreation is disabled" in text
            proc = run(env, "connect", "--wait", "300")
            assert proc.returncode == 0, proc.stderr + proc.stdout
            assert f"{card}: had failed, restarted" in proc.stdout
            assert _connector(status_json(env), card)["tasks"][0]["state"] == "RUNNING"
        finally:
            kafka_cluster.reset(settings)
        report = status_json(env)
        assert report["connectors"] == []
        assert not [t for t in report["topics"] if t["topic"].startswith("bankde.")]
        with connect(admin_info(settings), autocommit=True) as conn:
            slots = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bankde_kc_%'"
            ).fetchone()
        assert slots == (0,)


def test_down_leaves_a_foreign_pid_alone() -> None:
    home = make_home("bankde-kafka-")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (home / "kafka").mkdir()
        (home / "kafka" / "broker.pid").write_text(f"{sleeper.pid}\n")
        env = cli_env(Settings(home=home))
        proc = run(env, "down")
        assert proc.returncode == 0, proc.stderr
        assert "broker was not running" in proc.stdout and "worker was not running" in proc.stdout
        assert sleeper.poll() is None, "down killed a process it did not start"
    finally:
        sleeper.kill()
        sleeper.wait()
        shutil.rmtree(home, ignore_errors=True)


def test_port_taken_exits_2_naming_it() -> None:
    home = make_home("bankde-kafka-")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            env = cli_env(Settings(home=home), BANKDE_KAFKA_PORT=str(port))
            proc = run(env, "up")
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.strip() == (
                f"error: port {port} on 127.0.0.1 is taken by another program: set "
                "BANKDE_KAFKA_PORT to a free port"
            )
            assert not list((home / "kafka").glob("*.pid"))
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("missing", ["java", "mvn"])
def test_java_or_maven_missing_exits_2_naming_it(missing: str, tmp_path: Path) -> None:
    home = make_home("bankde-kafka-")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if missing == "mvn":  # java alone on PATH: the first `up` needs Maven for the jars
        java = shutil.which("java")
        assert java, "the tests need java"
        (bindir / "java").symlink_to(Path(java).resolve())
    try:
        env = {k: v for k, v in cli_env(Settings(home=home)).items() if k != "JAVA_HOME"}
        env["PATH"] = str(bindir)
        # An empty jar cache (the shared one may already hold the jars), ports nobody holds.
        env["BANKDE_KAFKA_JARS_DIR"] = str(tmp_path / "jars")
        ports = free_ports(3)
        env.update(
            BANKDE_KAFKA_PORT=str(ports[0]),
            BANKDE_KAFKA_CONTROLLER_PORT=str(ports[1]),
            BANKDE_CONNECT_PORT=str(ports[2]),
        )
        proc = run(env, "up")
        assert proc.returncode == 2, proc.stderr
        want = "Java not found" if missing == "java" else "Maven not found"
        assert proc.stderr.startswith(f"error: {want}"), proc.stderr
        assert "apt-get install" in proc.stderr and proc.stderr.count("\n") == 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_down_then_up_again(kafka_cluster) -> None:
    """Last in this module: stops and restarts the session's cluster on the same ports."""
    env = {**cli_env(kafka_cluster.settings), **kafka_cluster.env()}
    proc = run(env, "down")
    assert proc.returncode == 0, proc.stderr
    assert "worker stopped" in proc.stdout and "broker stopped" in proc.stdout
    report = status_json(env)
    assert not report["broker"]["running"] and not report["worker"]["running"]
    assert report["connectors"] is None and report["topics"] is None
    again = run(env, "down")
    assert "broker was not running" in again.stdout
    proc = run(env, "up")
    assert proc.returncode == 0, proc.stderr
    assert f"broker started on {kafka_cluster.bootstrap}" in proc.stdout
    assert f"worker started on {kafka_cluster.connect_url}" in proc.stdout
    report = status_json(env)
    assert report["broker"]["running"] and report["worker"]["running"]
    assert os.path.exists(kafka_cluster.home / "kafka" / "data" / "meta.properties")
