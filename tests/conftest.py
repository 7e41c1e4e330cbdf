"""Shared fixtures: one real managed Postgres cluster per test session, one database per test."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.session import WarehouseSession

REPO = Path(__file__).resolve().parents[1]

# The CDC engine tests' `workspace` fixture (tests/workload.py); how `make pytest`'s two
# pytest-xdist workers share the tests (tests/xdist_groups.py).
pytest_plugins = ["tests.workload", "tests.xdist_groups"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_home(prefix: str = "bankde-test-") -> Path:
    """A BANKDE_HOME under /tmp that an unprivileged server user can enter (tests may run as root)."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(home, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return home


@pytest.fixture(scope="session")
def cluster_settings(warehouse_dir: Path) -> Iterator[Settings]:
    """A started managed cluster for the whole session; its settings (db_name 'bank').

    In-process warehouse access goes to the session's one chDB directory (warehouse_dir); a CLI
    subprocess (cli_env) gets $BANKDE_HOME/warehouse instead, so it never waits on this process.
    """
    from bankde.source.cluster import ManagedCluster

    home = make_home()
    port = free_port()
    settings = Settings(home=home, pg_port=port, pg_dsn=None, db_host=None, wh_dir=warehouse_dir)
    cluster = ManagedCluster(settings)
    cluster.init()
    cluster.start()
    try:
        yield settings
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_cluster(cluster_settings: Settings) -> Iterator[Any]:
    """ONE managed Kafka broker + Connect worker for the whole session (tests/kafka.py,
    `KafkaCluster`: bootstrap, connect_url, settings, home, env(), connectors(source_settings)),
    under the session Postgres cluster's home; stopped at the end."""
    from tests.kafka import start_kafka

    yield from start_kafka(cluster_settings)


# --- server mode: modules marked `served_too` run every test a second time against a warehouse
# served by `bankde wh serve` in another process (BANKDE_CLICKHOUSE_URL), through real clients.
WAREHOUSE_MODES = ("embedded", "served")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "served_too: run again with the warehouse served by another process"
    )
    config.addinivalue_line(
        "markers", "embedded_only: in a served_too module, run once (its served path is covered)"
    )
    config.addinivalue_line(
        "markers",
        "served_only: run only against the served warehouse (the test looks into it "
        "while another process writes)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    if "warehouse_mode" not in metafunc.fixturenames:
        return
    if definition.get_closest_marker("served_only"):
        metafunc.parametrize("warehouse_mode", ("served",), indirect=True)
    elif definition.get_closest_marker("served_too") and not definition.get_closest_marker(
        "embedded_only"
    ):
        metafunc.parametrize("warehouse_mode", WAREHOUSE_MODES, indirect=True)


@pytest.fixture()
def warehouse_mode(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "embedded"))


@pytest.fixture(scope="session")
def served_warehouse() -> Iterator[Any]:
    """`bankde wh serve` on a home of its own for the whole session; stopped (SIGTERM) at the end."""
    from tests.served import start_served

    home = make_home("bankde-served-")
    served = start_served(home, free_port())
    try:
        yield served
    finally:
        served.stop()
        shutil.rmtree(home, ignore_errors=True)


def in_mode(settings: Settings, mode: str, request: pytest.FixtureRequest) -> Settings:
    """`settings` on the session's embedded warehouse, or on the served one (its URL)."""
    if mode != "served":
        return settings.model_copy(update={"clickhouse_url": None})
    served = request.getfixturevalue("served_warehouse")
    return settings.model_copy(update={"clickhouse_url": served.client_url()})


@pytest.fixture()
def source_settings(
    cluster_settings: Settings, warehouse_mode: str, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """Settings for a fresh database of this test's own, schema applied; dropped afterwards."""
    with fresh_source_db(in_mode(cluster_settings, warehouse_mode, request)) as settings:
        yield settings


@contextmanager
def fresh_source_db(cluster_settings: Settings) -> Iterator[Settings]:
    """A new database on the session cluster with the schema applied, dropped on exit."""
    from psycopg import sql

    from bankde.source.connection import admin_info, connect
    from bankde.source.schema import init_source

    name = "t_" + uuid.uuid4().hex[:12]
    settings = cluster_settings.model_copy(update={"db_name": name})
    init_source(settings)
    try:
        yield settings
    finally:
        with connect(admin_info(cluster_settings), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for running the `bankde` CLI in a subprocess against these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_"))}
    env.update(
        {
            "BANKDE_HOME": str(settings.home),
            "BANKDE_PG_PORT": str(settings.pg_port),
            "DB_NAME": settings.db_name,
        }
    )
    if settings.clickhouse_url:
        # Server mode: the subprocess reaches the same served warehouse and databases.
        env["BANKDE_CLICKHOUSE_URL"] = settings.clickhouse_url
        env["BANKDE_WH_PREFIX"] = settings.wh_prefix
    env.update(extra)
    return env


# --- warehouse: chDB opens one data directory per process, so the whole test session shares one
# embedded warehouse and each test gets databases of its own under a random prefix.


@pytest.fixture(scope="session")
def warehouse_dir() -> Iterator[Path]:
    """The session's embedded warehouse directory (under /tmp), closed and removed at the end."""
    home = make_home("bankde-wh-")
    try:
        yield home / "warehouse"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _with_warehouse(settings: Settings, warehouse_dir: Path) -> Settings:
    prefix = "t" + uuid.uuid4().hex[:10] + "_"
    return settings.model_copy(update={"wh_dir": warehouse_dir, "wh_prefix": prefix})


def _drop_warehouse_dbs(settings: Settings) -> None:
    from bankde.warehouse.ddl import drop_databases
    from bankde.warehouse.session import open_session

    with open_session(settings) as session:
        drop_databases(session.warehouse())


@pytest.fixture()
def wh_settings(
    warehouse_dir: Path, warehouse_mode: str, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """Settings on the session warehouse with this test's own databases (prefix); dropped after."""
    base = in_mode(Settings(home=warehouse_dir.parent), warehouse_mode, request)
    settings = _with_warehouse(base, warehouse_dir)
    try:
        yield settings
    finally:
        _drop_warehouse_dbs(settings)


@pytest.fixture()
def source_wh_settings(source_settings: Settings, warehouse_dir: Path) -> Iterator[Settings]:
    """A fresh source database (as source_settings) plus this test's own warehouse databases."""
    settings = _with_warehouse(source_settings, warehouse_dir)
    try:
        yield settings
    finally:
        _drop_warehouse_dbs(settings)


def wait_slot_taken(
    settings: Settings, slot: str, proc: subprocess.Popen[str], since: float, timeout: float
) -> None:
    """Until a walsender started after `since` (epoch seconds), i.e. `proc`'s own, holds `slot`.

    Kill tests time their random kill points from here, not from the spawn: on a loaded machine
    start-up alone can outlast a fixed delay, and every kill would then land before streaming."""
    from bankde.source.connection import admin_info, connect

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with connect(admin_info(settings), autocommit=True) as conn:
            row = conn.execute(
                "SELECT a.backend_start >= to_timestamp(%s) FROM pg_replication_slots r "
                "JOIN pg_stat_activity a ON a.pid = r.active_pid WHERE r.slot_name = %s",
                (since, slot),
            ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.1)
    raise AssertionError(f"no process took slot {slot} within {timeout:.0f} s")


@pytest.fixture()
def wh_session(wh_settings: Settings) -> Iterator[WarehouseSession]:
    """This test's session on the warehouse of wh_settings (the one this process may hold),
    closed after the test; code under test is handed it, as a command hands down its own."""
    from bankde.warehouse.session import open_session

    with open_session(wh_settings) as session:
        yield session


@pytest.fixture()
def source_wh_session(source_wh_settings: Settings) -> Iterator[WarehouseSession]:
    """As wh_session, on source_wh_settings."""
    from bankde.warehouse.session import open_session

    with open_session(source_wh_settings) as session:
        yield session
