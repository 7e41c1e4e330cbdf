"""The kafka engine orchestrated: `bankde run --engine kafka`, and the Airflow DAGs with engine=kafka."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bankde.settings import Settings
from tests.conftest import REPO, cli_env, make_home
from tests.integration.test_airflow_dags import (  # noqa: F401 (fixtures)
    _dags_test,
    _fill,
    _task_log,
    api_server,
)

pytest.importorskip("confluent_kafka", reason="the [kafka] extra is not installed")

BANKDE = str(Path(sys.executable).with_name("bankde"))
RUN_FLAGS = ("--dbt-every", "5", "--no-live", "--no-serve", "--quiet")


def _kafka_env(kafka_cluster: Any) -> dict[str, str]:
    """The session's broker and worker as the brokers of one's own (no `kafka up` of its own)."""
    return {
        "BANKDE_KAFKA_BOOTSTRAP": kafka_cluster.bootstrap,
        "BANKDE_CONNECT_PORT": str(kafka_cluster.settings.connect_port),
    }


@pytest.fixture()
def pipeline_settings(source_settings: Settings, kafka_cluster: Any) -> Iterator[Settings]:
    """The test's own database, home and warehouse, the session's Kafka; the repo's connectors
    (registered by the code under test) removed afterwards with their slots and topics."""
    from bankde.source.cluster import ManagedCluster

    cluster = ManagedCluster(source_settings)
    home = make_home("bankde-kafka-orch-")
    settings = source_settings.model_copy(
        update={
            "home": home,
            "db_password": cluster.app_password(),
            "cdc_password": cluster.cdc_password(),
            "owner_password": cluster.owner_password(),
            "cdc_slot": f"ko_{uuid.uuid4().hex[:8]}",
            "wh_dir": None,
            "kafka_bootstrap": kafka_cluster.bootstrap,
            "connect_port": kafka_cluster.settings.connect_port,
        }
    )
    kafka_cluster.reset(settings)  # nothing of another test's left on the worker
    try:
        yield settings
    finally:
        kafka_cluster.reset(settings)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def test_run_with_the_kafka_engine(
    pipeline_settings: Settings, source_settings: Settings, kafka_cluster: Any
) -> None:
    """`bankde run --engine kafka` registers the repo's connectors, snapshots through them,
    streams the live filler's changes, builds dbt, and stops with the warehouse equal to the
    source (its final catch-up waits for the connectors)."""
    settings = pipeline_settings
    _fill(settings, 1500, seed=21, backfill_days=1, as_of=datetime.now(UTC).replace(microsecond=0))
    # The session cluster's home (`run` starts the source there: already running), the test's
    # own warehouse.
    env = cli_env(source_settings, BANKDE_WH_DIR=str(settings.home_dir / "warehouse"))
    env |= _kafka_env(kafka_cluster)
    res = subprocess.run(
        [BANKDE, "run", "--engine", "kafka", "--duration", "45", "--rate", "20", *RUN_FLAGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    applied = re.search(
        r"stopped cleanly: ([\d,]+) changes applied .* (\d+) dbt builds \(0 failed", res.stdout
    )
    assert applied, res.stdout
    assert int(applied.group(1).replace(",", "")) > 1500 and int(applied.group(2)) >= 1
    rec = subprocess.run(
        [BANKDE, "reconcile", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert rec.returncode == 0, rec.stdout[-3000:] + rec.stderr[-2000:]
    assert json.loads(rec.stdout)["equal"] is True


def test_airflow_dags_with_the_kafka_engine(
    pipeline_settings: Settings,
    api_server: dict[str, str],  # noqa: F811
    kafka_cluster: Any,
) -> None:
    """cdc_to_dwh with engine=kafka applies what the connectors deliver (snapshot, then new
    changes); cdc_monitoring with engine=kafka reports every connector task RUNNING and the
    consumer group's lag, checks the connectors' slots and reconciles equal."""
    from bankde.orchestration.kafka import start_kafka

    settings, env = pipeline_settings, api_server
    t0 = datetime.now(UTC).replace(microsecond=0)
    _fill(settings, 1000, seed=31, backfill_days=1, as_of=t0)
    # As `bankde kafka connect` in the worker's home (the DAGs expect running connectors): the
    # connectors read the source's address from secrets/ under the worker's working directory.
    start_kafka(settings.model_copy(update={"home": kafka_cluster.home}))
    conf = ["-c", json.dumps({"engine": "kafka"})]
    _dags_test(env, "cdc_to_dwh", extra=conf)
    _fill(settings, 800, seed=32, backfill_days=0, as_of=t0 + timedelta(hours=25))
    _dags_test(env, "cdc_to_dwh", extra=conf)
    logs = _task_log(settings, "cdc_to_dwh", "sync")
    changes = [int(n) for n in re.findall(r"'changes': (\d+)", logs)]
    assert len(changes) == 2 and changes[1] > 0, logs[-3000:]

    _dags_test(env, "cdc_monitoring", extra=conf)
    connectors = _task_log(settings, "cdc_monitoring", "connectors")
    # Every data topic drained (the heartbeats' message topic grows between runs: no lag of data).
    for topic in ("bank.customer", "bank.account", "bank.card", "bank.transaction"):
        assert f"'bankde.{topic}': 0" in connectors, connectors[-3000:]
    for name in ("customer", "card", "terminal", "transaction", "truth"):
        assert f"'bankde-postgres-{name}': {{0: 'RUNNING'}}" in connectors, connectors[-3000:]
    assert "bankde_kc_transaction" in _task_log(settings, "cdc_monitoring", "slot_lag")
    assert "'equal': True" in _task_log(settings, "cdc_monitoring", "reconciliation")

    # A failed connector task fails the check with its error line.
    from bankde.source.connection import admin_info, connect, owner_info

    with connect(owner_info(settings), autocommit=True) as conn:
        conn.execute("DROP PUBLICATION bankde_kc_terminal")
    with connect(
        admin_info(settings.model_copy(update={"home": kafka_cluster.home})), autocommit=True
    ) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = 'bankde_kc_terminal' AND active_pid IS NOT NULL"
        )
    os_env = {k: v for k, v in env.items() if k.startswith(("BANKDE_", "DB_"))}
    probe = subprocess.run(
        [sys.executable, "-c", _CHECK_UNTIL_FAILED],
        env={**os.environ, **os_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-3000:]
    assert "bankde-postgres-terminal FAILED" in probe.stdout, probe.stdout


# check_connectors in its own process (as a task runs it) until the broken connector shows.
_CHECK_UNTIL_FAILED = """
import time
from bankde.orchestration.tasks import MonitoringFailed, check_connectors
deadline = time.monotonic() + 240
while True:
    try:
        check_connectors("kafka")
    except MonitoringFailed as exc:
        if "FAILED" in str(exc):
            print(exc)
            break
    assert time.monotonic() < deadline, "the connector never showed FAILED"
    time.sleep(1)
"""
