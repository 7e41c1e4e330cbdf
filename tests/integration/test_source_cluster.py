"""The managed cluster: create, start, stop, restart with data intact, idempotent commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from bankde.settings import Settings
from bankde.source.cluster import ManagedCluster
from bankde.source.connection import admin_info, connect, owner_info, source_info
from tests.conftest import cli_env, free_port, make_home

BANKDE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "bankde")


def _bankde(
    *args: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    exe = BANKDE if os.path.exists(BANKDE) else shutil.which("bankde") or "bankde"
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bankde {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture()
def own_cluster():
    """A cluster of this test's own (so stopping it does not disturb the session cluster)."""
    home = make_home()
    settings = Settings(home=home, pg_port=free_port(), pg_dsn=None, db_host=None)
    try:
        yield settings
    finally:
        ManagedCluster(settings).destroy()
        shutil.rmtree(home, ignore_errors=True)


def test_lifecycle_through_cli_keeps_data(own_cluster: Settings) -> None:
    env = cli_env(own_cluster)
    up = _bankde("db", "up", env=env)
    assert "created and started" in up.stdout
    again = _bankde("db", "up", env=env)
    assert "already running" in again.stdout

    _bankde("db", "init", env=env)
    _bankde("db", "init", env=env)  # idempotent
    _bankde(
        "db",
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "INSERT INTO bank.customer (first_name, last_name, email, phone, birth_date, address, city,"
        " country, home_lat, home_lon, segment) VALUES ('Ada', 'L', 'a@x.test', '+1', '1990-01-01',"
        " '1 Road', 'Oslo', 'NO', 59.9, 10.7, 'retail')",
        env=env,
    )
    st = json.loads(_bankde("db", "status", "--json", env=env).stdout)
    assert st["state"] == "running" and st["port"] == own_cluster.pg_port
    assert "password" not in st["dsn"]

    assert "stopped" in _bankde("db", "down", env=env).stdout
    down = _bankde("db", "status", "--json", env=env, check=False)
    assert down.returncode == 1 and json.loads(down.stdout)["state"] == "stopped"
    assert "not running" in _bankde("db", "down", env=env).stdout

    _bankde("db", "up", env=env)
    out = _bankde("db", "psql", "-tAc", "select first_name from bank.customer", env=env)
    assert out.stdout.strip() == "Ada"


def test_password_is_private_and_never_printed(own_cluster: Settings) -> None:
    env = cli_env(own_cluster)
    up = _bankde("db", "up", env=env)
    pw_file = Path(own_cluster.home) / "secrets" / "pg_admin_password"  # made by db up
    assert oct(pw_file.stat().st_mode & 0o777) == "0o600"
    password = pw_file.read_text().strip()
    status = _bankde("db", "status", env=env)
    log = (Path(own_cluster.home) / "postgres" / "postgres.log").read_text()
    for text in (up.stdout, up.stderr, status.stdout, log):
        assert password not in text


def test_server_runs_unprivileged_listening_on_loopback_only(own_cluster: Settings) -> None:
    cluster = ManagedCluster(own_cluster)
    cluster.init()
    cluster.start()
    info = admin_info(own_cluster)
    with connect(info) as conn:
        rows = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (
                    [
                        "listen_addresses",
                        "wal_level",
                        "max_replication_slots",
                        "max_wal_senders",
                        "max_slot_wal_keep_size",
                    ],
                ),
            ).fetchall()
        )
    assert rows["listen_addresses"] == "127.0.0.1"
    assert rows["wal_level"] == "logical"
    assert int(rows["max_replication_slots"]) >= 10 and int(rows["max_wal_senders"]) >= 10
    assert int(rows["max_slot_wal_keep_size"]) > 0
    pid = cluster.status().pid
    assert pid is not None
    uid = os.stat(f"/proc/{pid}").st_uid
    if os.geteuid() == 0:
        assert uid != 0, "as root, the server must run as an unprivileged user"
    else:
        assert uid == os.geteuid()


def test_wrong_password_is_one_line_exit_1(own_cluster: Settings) -> None:
    cluster = ManagedCluster(own_cluster)
    cluster.init()
    cluster.start()
    _bankde("db", "init", env=cli_env(own_cluster))
    # (On the managed cluster `db init` sets the roles' passwords, DB_PASSWORD's included.)
    env = cli_env(own_cluster, DB_PASSWORD="definitely-wrong")
    proc = _bankde("fill", "--n-new-txns", "10", env=env, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong password" in lines[0], proc.stderr


def test_unreachable_server_is_one_line_exit_1(own_cluster: Settings) -> None:
    env = cli_env(own_cluster)  # cluster never started
    _bankde("db", "up", env=env)
    _bankde("db", "down", env=env)
    proc = _bankde("db", "init", env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "bankde db up" in proc.stderr


def test_schema_applies_twice_and_documents_tables(source_settings: Settings) -> None:
    from bankde.source.schema import apply_schema

    info = owner_info(source_settings)
    apply_schema(info)
    with connect(info) as conn:
        tables = conn.execute(
            "SELECT c.relname, obj_description(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'bank' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
        enums = conn.execute(
            "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = 'bank' AND t.typtype = 'e' ORDER BY 1"
        ).fetchall()
        ext = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pgcrypto'").fetchone()
    assert [t for t, _ in tables] == ["account", "card", "customer", "terminal", "transaction"]
    assert all(doc for _, doc in tables)
    assert [e for (e,) in enums] == ["txn_status", "txn_type"]
    assert ext is not None


def test_schema_rejects_broken_invariants(source_settings: Settings) -> None:
    info = source_info(source_settings)
    with connect(info) as conn:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO bank.account (customer_id, iban, kind, currency) "
                "VALUES (999, 'X1', 'checking', 'EUR')"
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO bank.terminal (kind, merchant_name, mcc, city, country, lat, lon, status)"
                " VALUES ('atm', 'm', '6011', 'c', 'NO', 0, 0, 'closed')"  # closed without closed_at
            )


def test_capture_role_has_only_replication_and_select(source_settings: Settings) -> None:
    from bankde.source.connection import cdc_info

    with connect(cdc_info(source_settings)) as conn:
        role = conn.execute(
            "SELECT rolreplication, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert role == (True, False, False)
        conn.execute("SELECT count(*) FROM bank.transaction")
        conn.execute("SELECT count(*) FROM truth.fraud_label")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM bank.customer")
