"""CDC end to end: real Postgres, real chDB; snapshot, stream, crashes, restarts, DDL, TOAST."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bankde.cdc import api as capture
from bankde.cdc.slot import drop_publication, drop_slot, slot_state
from bankde.contracts import Sink
from bankde.settings import Settings
from bankde.source.connection import admin_info, connect, owner_info
from bankde.warehouse.session import WarehouseSession
from tests.conftest import cli_env, free_port, make_home, wait_slot_taken

# Every test again with the warehouse served by `bankde wh serve` in another process.
pytestmark = pytest.mark.served_too

REPO = Path(__file__).resolve().parents[2]
BANKDE = str(REPO / ".venv" / "bin" / "bankde")
TABLES = [
    ("bank", "customer"),
    ("bank", "account"),
    ("bank", "card"),
    ("bank", "terminal"),
    ("bank", "transaction"),
    ("truth", "fraud_episode"),
    ("truth", "fraud_label"),
]


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture()
def cdc_settings(cdc_empty: Settings) -> Settings:
    """cdc_empty with a small seeded bank."""
    seed(cdc_empty)
    return cdc_empty


@pytest.fixture()
def cdc_empty(source_settings: Settings) -> Iterator[Settings]:
    """This test's own source database, slot, publication and warehouse database prefix."""
    tag = source_settings.db_name
    settings = source_settings.model_copy(
        update={
            "cdc_slot": f"slot_{tag}",
            "cdc_publication": f"pub_{tag}",
            "wh_prefix": f"{tag}_",
            "cdc_batch_seconds": 0.2,
        }
    )
    try:
        yield settings
    finally:
        from bankde.warehouse.ddl import drop_databases
        from bankde.warehouse.session import open_session

        # An undropped slot retains WAL and blocks DROP DATABASE.
        drop_slot(settings, wait=30)
        drop_publication(settings)
        # The session warehouse (wh_dir) is shared by every test: drop this test's databases.
        with open_session(settings) as session:
            drop_databases(session.warehouse())


@pytest.fixture()
def cdc_session(cdc_empty: Settings) -> Iterator[WarehouseSession]:
    """The test's warehouse session, as a command's: capture, diffs and status are handed it."""
    from bankde.warehouse.session import open_session

    with open_session(cdc_empty) as session:
        yield session


@pytest.fixture()
def cli_home(cdc_settings: Settings) -> Iterator[tuple[Path, dict[str, str]]]:
    """A home of its own for `bankde` subprocesses on this test's source, slot and publication
    (chDB allows one process per warehouse directory), removed afterwards."""
    home = make_home("bankde-cdc-cli-")
    env = cli_env(
        cdc_settings,
        BANKDE_CDC_SLOT=cdc_settings.cdc_slot,
        BANKDE_CDC_PUBLICATION=cdc_settings.cdc_publication,
        BANKDE_WH_DIR=str(home / "warehouse"),
    )
    try:
        yield home, env
    finally:
        shutil.rmtree(home, ignore_errors=True)


def bankde(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BANKDE, *args], env=env, capture_output=True, text=True, timeout=timeout)


# -- workload ------------------------------------------------------------------------------
def sql(settings: Settings, *statements: str, params: Any = None) -> None:
    """Run statements in ONE source transaction."""
    with connect(owner_info(settings)) as conn:  # the owner: tests also run DDL
        for stmt in statements:
            conn.execute(stmt, params)  # type: ignore[arg-type]
        conn.commit()


def seed(settings: Settings, customers: int = 40, txns: int = 400) -> None:
    sql(
        settings,
        f"""INSERT INTO bank.customer (customer_id, first_name, last_name, email, phone, birth_date,
            address, city, country, home_lat, home_lon, segment)
        SELECT g, 'F' || g, 'L' || g, 'u' || g || '@x.org', '+49' || g, date '1970-01-01' + g,
            g || ' Hauptstr.', 'Berlin', 'DE', 52.520008, 13.404954, 'retail'
        FROM generate_series(1, {customers}) g""",
        f"""INSERT INTO bank.account (account_id, customer_id, iban, kind, currency, balance,
            overdraft_limit)
        SELECT g, g, 'DE' || lpad(g::text, 20, '0'), 'checking', 'EUR', 100.10, 50
        FROM generate_series(1, {customers}) g""",
        f"""INSERT INTO bank.card (card_id, account_id, customer_id, pan_enc, pan_hash, pan_last4, network,
            expires_on, daily_limit)
        SELECT g, g, g, gen_random_bytes(48), encode(sha256(g::text::bytea), 'hex'),
            right(lpad(g::text, 15, '0'), 4), 'visa',
            date '2030-01-31', 500
        FROM generate_series(1, {customers}) g""",
        """INSERT INTO bank.terminal (terminal_id, kind, merchant_name, mcc, city, country, lat, lon)
        SELECT g, 'pos', 'Shop ' || g, '5411', 'Berlin', 'DE', 52.1, 13.2
        FROM generate_series(1, 10) g""",
        f"""INSERT INTO bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type, status,
            amount, currency, balance_after, description, occurred_at)
        SELECT g, 1 + g % {customers}, 1 + g % {customers}, 1 + g % 10, 'purchase', 'approved',
            (g % 1000) / 100.0 + 0.01, 'EUR', 99.99, CASE WHEN g % 3 = 0 THEN NULL ELSE 'txn ' || g END,
            timestamptz '2024-03-01 12:00:00+00' + g * interval '1 minute'
        FROM generate_series(1, {txns}) g""",
        """INSERT INTO truth.fraud_episode (episode_id, scenario, customer_id, started_at, ended_at, params)
        VALUES (1, 'card_testing', 3, '2024-03-01', '2024-03-02', '{"n": 5, "note": "é"}')""",
        "INSERT INTO truth.fraud_label (txn_id, scenario, episode_id) VALUES (5, 'card_testing', 1)",
    )


class Workload:
    """Random small transactions: inserts, updates, deletes, primary-key changes, closes."""

    def __init__(self, settings: Settings, seed_: int, next_id: int = 100_000) -> None:
        self.settings = settings
        self.rng = random.Random(seed_)
        self.next_id = next_id
        self.done = 0

    def run_one(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.45:
                n = rng.randint(1, 20)
                conn.execute(
                    """INSERT INTO bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type,
                        status, amount, currency, balance_after, description, occurred_at)
                    SELECT g, 1 + g %% 40, 1 + g %% 40, 1 + g %% 10, 'deposit', 'approved', 12.34, 'EUR',
                        -5.50, 'live ' || g, now() FROM generate_series(%s::bigint, %s::bigint) g""",
                    (self.next_id, self.next_id + n - 1),
                )
                self.next_id += n
            elif kind < 0.75:
                conn.execute(
                    """UPDATE bank.transaction SET amount = amount + 0.01, status = 'reversed',
                        updated_at = now() WHERE txn_id IN (SELECT txn_id FROM bank.transaction
                        WHERE txn_id %% 7 = %s LIMIT 5)""",
                    (rng.randint(0, 6),),
                )
            elif kind < 0.9:
                conn.execute(
                    """DELETE FROM bank.transaction WHERE txn_id IN (SELECT txn_id FROM bank.transaction
                        WHERE txn_id %% 11 = %s ORDER BY txn_id DESC LIMIT 2)""",
                    (rng.randint(0, 10),),
                )
            else:
                conn.execute(
                    """UPDATE bank.transaction SET txn_id = %s WHERE txn_id = (SELECT max(txn_id)
                        FROM bank.transaction WHERE txn_id NOT IN (SELECT txn_id FROM truth.fraud_label))""",
                    (self.next_id,),
                )
                self.next_id += 1
        conn.commit()
        self.done += 1

    def run(self, stop: threading.Event, pause: float = 0.005) -> None:
        with connect(owner_info(self.settings)) as conn:
            while not stop.is_set():
                self.run_one(conn)
                time.sleep(pause)


# -- equality ------------------------------------------------------------------------------
def _norm(v: Any) -> Any:
    if isinstance(v, datetime):
        return (v.astimezone(UTC) if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, Decimal):
        return str(v.normalize())
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, bytes):  # bytea (bank.card.pan_enc): the warehouse keeps its text form
        return "\\x" + v.hex()
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.dumps(json.loads(v), sort_keys=True)
        except ValueError:
            return v
    return v


def source_state(settings: Settings) -> dict[str, dict[Any, tuple[Any, ...]]]:
    out: dict[str, dict[Any, tuple[Any, ...]]] = {}
    with connect(owner_info(settings)) as conn:
        for schema, table in TABLES:
            cur = conn.execute(f"SELECT * FROM {schema}.{table}")
            names = [d.name for d in cur.description or []]
            out[f"{schema}.{table}"] = {
                r[0]: tuple(_norm(v) for v in r) for r in cur.fetchall()
            } | {"__cols__": tuple(names)}  # type: ignore[dict-item]
    return out


def warehouse_state(
    settings: Settings, session: WarehouseSession, columns: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    """Rows visible through FINAL (not deleted), plus a duplicate count per table."""
    from bankde.warehouse.ddl import db_names

    wh = session.warehouse(settings)
    names = db_names(settings)
    out: dict[str, Any] = {}
    for schema, table in TABLES:
        cols = columns[f"{schema}.{table}"]
        target = names.landing_table(schema, table)
        rows = wh.query(
            f"SELECT {', '.join('`' + c + '`' for c in cols)} FROM {target} FINAL WHERE _is_deleted = 0"
        )
        dup = wh.scalar(
            f"SELECT count() - uniqExact(`{cols[0]}`) FROM {target} FINAL WHERE _is_deleted = 0"
        )
        out[f"{schema}.{table}"] = {r[0]: tuple(_norm(v) for v in r) for r in rows}
        out[f"{schema}.{table}:dups"] = int(dup)
    return out


def diff(
    settings: Settings, session: WarehouseSession | None, wh_state: dict[str, Any] | None = None
) -> list[str]:
    src = source_state(settings)
    cols = {k: v.pop("__cols__") for k, v in src.items()}
    if wh_state is None:
        assert session is not None
    got = wh_state if wh_state is not None else warehouse_state(settings, session, cols)
    problems = []
    for name, rows in src.items():
        have = got[name]
        if got.get(f"{name}:dups"):
            problems.append(f"{name}: {got[name + ':dups']} duplicate keys through FINAL")
        if have != rows:
            missing = sorted(set(rows) - set(have))[:5]
            extra = sorted(set(have) - set(rows))[:5]
            changed = [k for k in rows if k in have and have[k] != rows[k]][:3]
            detail = [f"{k}: src={rows[k]} wh={have[k]}" for k in changed]
            problems.append(f"{name}: missing {missing} extra {extra} changed {detail}")
    return problems


def wait_equal(settings: Settings, session: WarehouseSession, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while time.monotonic() < deadline:
        problems = diff(settings, session)
        if not problems:
            return
        time.sleep(0.5)
    raise AssertionError("warehouse differs from source:\n" + "\n".join(problems))


def sink(settings: Settings, session: WarehouseSession) -> Sink:
    return capture.open_sink(settings, session)


def sync(settings: Settings, session: WarehouseSession) -> capture.SyncResult:
    return capture.sync(settings, sink(settings, session), show_progress=False)


# -- tests ---------------------------------------------------------------------------------
def test_snapshot_then_inserts_updates_deletes_pk_changes_and_closes(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    s = cdc_settings
    res = sync(s, cdc_session)
    assert res.snapshot_rows["bank.transaction"] == 400
    assert res.snapshot_rows["bank.customer"] == 40
    assert diff(s, cdc_session) == []
    st = slot_state(s)
    assert st.exists and not st.active and st.confirmed_flush_lsn == res.lsn

    sql(
        s,
        "UPDATE bank.account SET balance = balance - 10.05, updated_at = now() WHERE account_id = 2",
    )
    sql(
        s,
        "INSERT INTO bank.transaction (txn_id, account_id, txn_type, status, decline_reason, amount, "
        "currency, occurred_at) VALUES (1001, 1, 'withdrawal', 'declined', 'insufficient_funds', "
        "1234567.89, 'EUR', '2024-05-01 10:00:00.123456+02')",
    )
    sql(s, "DELETE FROM bank.transaction WHERE txn_id IN (10, 11, 12)")
    sql(s, "UPDATE bank.transaction SET txn_id = 5000 WHERE txn_id = 20")  # primary-key change
    # Lifecycle closes: the filler closes entities by UPDATE, never DELETE.
    sql(s, "UPDATE bank.card SET status = 'closed', closed_at = now() WHERE card_id = 7")
    sql(s, "UPDATE bank.customer SET status = 'closed', closed_at = now() WHERE customer_id = 9")
    # One multi-statement transaction touching several tables, with a key moved twice.
    sql(
        s,
        "INSERT INTO bank.terminal (terminal_id, kind, merchant_name, mcc, city, country, lat, lon) "
        "VALUES (99, 'atm', 'ATM Mitte', '6011', 'Berlin', 'DE', 52.5, 13.4)",
        "UPDATE bank.transaction SET terminal_id = 99, amount = 0.01 WHERE txn_id BETWEEN 30 AND 40",
        "DELETE FROM bank.transaction WHERE txn_id = 41",
        "UPDATE bank.transaction SET txn_id = 6000 WHERE txn_id = 42",
        "UPDATE bank.transaction SET txn_id = 6001 WHERE txn_id = 6000",
        "INSERT INTO bank.transaction (txn_id, account_id, txn_type, status, amount, currency, "
        "occurred_at) VALUES (42, 3, 'fee', 'approved', 0.50, 'EUR', now())",
    )
    res2 = sync(s, cdc_session)
    assert not res2.snapshot_rows  # resumed, no second snapshot
    assert res2.changes >= 20
    assert diff(s, cdc_session) == []
    # Nothing new: a sync is a no-op that still exits.
    assert sync(s, cdc_session).changes == 0


def test_with_the_filler_running_live(cdc_empty: Settings, cdc_session: WarehouseSession) -> None:
    from bankde.generator import load_fill_config, run_live
    from bankde.generator.runner import fill

    s = cdc_empty
    config = load_fill_config({"n_new_txns": 2000, "customers": 100, "terminals": 20, "seed": 5})
    fill(s, config)
    res = sync(s, cdc_session)
    assert sum(res.snapshot_rows.values()) > 2000
    assert diff(s, cdc_session) == []
    stop_fill, stop_cdc = threading.Event(), threading.Event()
    filler = threading.Thread(target=run_live, args=(s, config, 400.0, stop_fill), daemon=True)
    results: list[capture.SyncResult] = []
    runner = threading.Thread(
        target=lambda: results.append(
            capture.run(s, stop_cdc, sink(s, cdc_session), show_progress=False)
        ),
        daemon=True,
    )
    runner.start()
    filler.start()
    try:
        time.sleep(4)
        stop_fill.set()
        filler.join(timeout=30)
        wait_equal(s, cdc_session, timeout=60)
    finally:
        stop_fill.set()
        stop_cdc.set()
        runner.join(timeout=60)
    assert results and results[0].changes > 200


def test_kill_dash_nine_at_random_points(
    cdc_settings: Settings, cli_home: tuple[Path, dict[str, str]]
) -> None:
    """`bankde cdc run` killed with SIGKILL 10 times during a mixed workload, restarted each time."""
    s = cdc_settings
    env = {
        **cli_home[1],
        "BANKDE_WH_PREFIX": s.wh_prefix + "k_",
        "BANKDE_CDC_BATCH_SECONDS": "0.1",
        "BANKDE_CDC_BATCH_ROWS": "200",
    }
    stop = threading.Event()
    work = Workload(s, seed_=7)
    writer = threading.Thread(target=work.run, args=(stop,), daemon=True)
    writer.start()
    rng = random.Random(11)
    kills = 0
    confirmed: list[int | None] = []
    try:
        for round_ in range(10):
            spawned = time.time()
            proc = subprocess.Popen(
                [BANKDE, "cdc", "run", "--no-progress"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if round_ % 2 == 0:
                # Anywhere in start-up: connect, slot creation, snapshot, first batches.
                time.sleep(rng.uniform(0.5, 4.0))
            else:
                # While streaming: this process's walsender is up, then a random point later.
                # Timed from there, not from the spawn, so a loaded machine's slow start-up
                # (seen: 5-6 s at load 9) cannot turn every kill into a start-up kill.
                wait_slot_taken(s, s.cdc_slot, proc, since=spawned, timeout=120)
                time.sleep(rng.uniform(0.3, 2.5))
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
            confirmed.append(slot_state(s).confirmed_flush_lsn)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert kills == 10 and work.done > 50
    # The capture made progress between kills (it was killed while working, not while idle),
    # and the slot never went backwards. On a loaded machine some kills land during start-up or
    # the first snapshot (no slot confirmed yet): those are kill points too.
    seen = [lsn for lsn in confirmed if lsn is not None]
    assert len(set(seen)) >= 3, confirmed
    assert seen == sorted(seen), confirmed
    # Catch up after the last kill, then compare in a process that owns that warehouse.
    done = bankde(env, "cdc", "sync", "--json", "--no-progress", timeout=180)
    assert done.returncode == 0, done.stderr
    problems = diff_in_subprocess(s, env)
    assert problems == [], problems


def diff_in_subprocess(settings: Settings, env: dict[str, str]) -> list[str]:
    """diff() against the warehouse of `env`, read by a process of its own (an embedded
    warehouse opens in one process only)."""
    cols = {k: list(v.pop("__cols__")) for k, v in source_state(settings).items()}
    dump = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json; from tests.integration.test_cdc import _dump_main; _dump_main()",
        ],
        input=json.dumps(cols),
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dump.returncode == 0, dump.stderr
    got: dict[str, Any] = {}
    for name, value in json.loads(dump.stdout).items():
        got[name] = value if name.endswith(":dups") else {r[0]: tuple(r) for r in value}
    return diff(settings, None, got)


def _dump_main() -> None:
    """Subprocess side of the kill test: print the warehouse rows (normalised) as JSON."""
    from bankde.settings import load_settings
    from bankde.warehouse.session import open_session

    settings = load_settings()
    cols = {k: tuple(v) for k, v in json.loads(sys.stdin.read()).items()}
    with open_session(settings) as session:
        state = warehouse_state(settings, session, cols)
    out = {k: (v if k.endswith(":dups") else list(v.values())) for k, v in state.items()}
    print(json.dumps(out, default=str))


def test_postgres_restart_mid_stream_reconnects(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    from bankde.source.cluster import ManagedCluster

    s = cdc_settings
    sync(s, cdc_session)
    stop = threading.Event()
    results: list[capture.SyncResult] = []
    runner = threading.Thread(
        target=lambda: results.append(
            capture.run(s, stop, sink(s, cdc_session), show_progress=False)
        ),
        daemon=True,
    )
    runner.start()
    work = Workload(s, seed_=3)
    cluster = ManagedCluster(s)
    try:
        with connect(owner_info(s)) as conn:
            for _ in range(30):
                work.run_one(conn)
        cluster.stop()
        time.sleep(1.5)
        cluster.start()
        with connect(owner_info(s)) as conn:
            for _ in range(30):
                work.run_one(conn)
        wait_equal(s, cdc_session, timeout=60)
    finally:
        stop.set()
        runner.join(timeout=60)
    assert results and results[0].reconnects >= 1


def test_sync_fails_at_once_when_the_source_cannot_be_opened(
    cdc_settings: Settings, monkeypatch: pytest.MonkeyPatch, cdc_session: WarehouseSession
) -> None:
    """`cdc sync` (a scheduler's micro-batch) gives up in one line; `cdc run` keeps retrying."""
    from bankde.cdc.native import NativeEngine
    from bankde.errors import SourceUnavailable

    s = cdc_settings
    # The source answers the start position, then cannot be reached by the capture engine.
    unreachable = s.model_copy(update={"pg_port": free_port()})
    monkeypatch.setattr(capture, "make_engine", lambda _s, _e="native": NativeEngine(unreachable))
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="cannot connect to source") as info:
        sync(s, cdc_session)
    assert time.monotonic() - started < 15
    assert len(str(info.value).splitlines()) == 1
    stop = threading.Event()
    threading.Timer(2.0, stop.set).start()
    res = capture.run(s, stop, sink(s, cdc_session), show_progress=False)
    assert res.reconnects >= 2 and res.changes == 0


def test_toast_added_column_and_truncate(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    s = cdc_settings
    sync(s, cdc_session)
    # ~40 kB of incompressible text: stored out of line (TOAST).
    big = "string_agg(md5(i::text || 'x'), '') FROM generate_series(1, 1300) i"
    sql(s, f"UPDATE bank.transaction SET description = (SELECT {big}) WHERE txn_id IN (50, 51)")
    # An update that leaves the TOASTed column alone: pgoutput does not resend it.
    sql(s, "UPDATE bank.transaction SET amount = 77.70 WHERE txn_id = 50")
    sql(s, "DELETE FROM bank.transaction WHERE txn_id = 51")
    sql(s, "ALTER TABLE bank.customer ADD COLUMN nickname text")
    sql(s, "UPDATE bank.customer SET nickname = 'Kiki' WHERE customer_id = 4")
    sql(
        s,
        "INSERT INTO bank.customer (customer_id, first_name, last_name, email, phone, birth_date, "
        "address, city, country, home_lat, home_lon, segment, nickname) VALUES (500, 'A', 'B', "
        "'a@b.c', '+1', '1990-01-01', 'x', 'Berlin', 'DE', 1.5, 2.5, 'student', NULL)",
    )
    # TRUNCATE, then new rows in the same transaction: the old rows go, the new ones stay.
    sql(
        s,
        "TRUNCATE truth.fraud_label",
        "INSERT INTO truth.fraud_label (txn_id, scenario, episode_id) VALUES (7, 'card_testing', 1)",
    )
    res = sync(s, cdc_session)
    assert res.changes > 0
    problems = diff(s, cdc_session)
    assert problems == [], problems
    from bankde.warehouse.ddl import db_names

    wh = cdc_session.warehouse(s)
    tbl = db_names(s).landing_table("bank", "transaction")
    length = wh.scalar(f"SELECT length(description) FROM {tbl} FINAL WHERE txn_id = 50")
    assert length == 1300 * 32
    nick = wh.scalar(
        f"SELECT nickname FROM {db_names(s).landing_table('bank', 'customer')} FINAL WHERE customer_id = 4"
    )
    assert nick == "Kiki"


def test_lost_slot_is_reported_and_resync_recovers(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    s = cdc_settings
    sync(s, cdc_session)
    admin = admin_info(s)  # ALTER SYSTEM, pg_switch_wal: the superuser's
    with connect(admin, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        with connect(admin, autocommit=True) as conn:
            for _ in range(4):
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS pad (x text)")
                conn.execute("INSERT INTO pad SELECT md5(i::text) FROM generate_series(1, 20000) i")
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
        deadline = time.monotonic() + 30
        while slot_state(s).wal_status != "lost" and time.monotonic() < deadline:
            with connect(admin, autocommit=True) as conn:
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
            time.sleep(0.5)
        assert slot_state(s).wal_status == "lost"
    finally:
        with connect(admin, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    from bankde.errors import CaptureError

    with pytest.raises(CaptureError, match="cdc resync"):
        sync(s, cdc_session)
    sql(s, "DELETE FROM bank.transaction WHERE txn_id = 60")
    res = capture.resync(s, sink(s, cdc_session), show_progress=False)
    assert res.snapshot_rows["bank.transaction"] == 399
    assert diff(s, cdc_session) == []


def test_cli_sync_and_status_json(
    cdc_settings: Settings, cli_home: tuple[Path, dict[str, str]]
) -> None:
    s = cdc_settings
    env = cli_home[1]
    first = bankde(env, "cdc", "sync")
    assert first.returncode == 0, first.stderr
    assert "bank.transaction" in first.stdout and "rows/s" in first.stdout
    assert "snapshot" in first.stderr  # progress bars go to stderr
    sql(s, "UPDATE bank.account SET balance = 1.00 WHERE account_id < 5")
    second = bankde(env, "cdc", "sync", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["tables"] == {"bank.account": 4}
    status = bankde(env, "cdc", "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["slot"] == s.cdc_slot and data["exists"] and data["snapshot_done"]
    assert data["tables"]["bank.account"] == {"source": 40, "warehouse": 40}
    assert data["last_batch_at"] is not None
    bad = bankde(env, "cdc", "run", "--engine", "nope", timeout=60)
    assert bad.returncode == 2 and "unknown capture engine" in bad.stderr


def test_status_lag_seconds_counts_only_captured_changes(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    """WAL of tables outside the publication is lag in bytes, not in time; a captured change
    waiting in the idle slot is lag of its age; peeking at it consumes nothing."""
    from bankde.cdc.slot import walsender_lag
    from bankde.cdc.status import status
    from bankde.orchestration.tasks import pending_changes

    s = cdc_settings
    sync(s, cdc_session)
    sql(
        s,
        "CREATE TABLE public.not_captured (x int)",
        "INSERT INTO public.not_captured SELECT generate_series(1, 500)",
    )
    time.sleep(1.5)
    idle = status(s, warehouse=cdc_session.warehouse(s), counts=False)
    assert idle["lag_bytes"] > 0 and not idle["active"]
    assert idle["lag_seconds"] == 0.0
    assert pending_changes(s) is False

    sql(s, "UPDATE bank.account SET balance = balance + 1 WHERE account_id = 1")
    time.sleep(1.5)
    waiting = status(s, warehouse=cdc_session.warehouse(s), counts=False)
    assert 1.0 <= waiting["lag_seconds"] < 60
    assert pending_changes(s) is True
    assert (
        status(s, warehouse=cdc_session.warehouse(s), counts=False)["lag_seconds"]
        >= waiting["lag_seconds"]
    )  # not consumed

    # While streaming: the walsender's own figure, small once the change is applied.
    stop = threading.Event()
    results: list[capture.SyncResult] = []
    runner = threading.Thread(
        target=lambda: results.append(
            capture.run(s, stop, sink(s, cdc_session), show_progress=False)
        ),
        daemon=True,
    )
    runner.start()
    try:
        wait_equal(s, cdc_session, timeout=60)
        deadline = time.monotonic() + 30
        while (
            not (live := status(s, warehouse=cdc_session.warehouse(s), counts=False))["active"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert live["active"]
        # The owner role sees the walsender's figures, so the lag is the server's own.
        assert walsender_lag(s, live["active_pid"]) is not None
        assert live["lag_seconds"] is not None and 0.0 <= live["lag_seconds"] < 10.0
    finally:
        stop.set()
        runner.join(timeout=60)
    assert results and results[0].changes >= 1


@pytest.mark.embedded_only  # nine CLI runs; the resync under a stream: test_cdc_schema
def test_column_type_change_stops_only_that_table_with_one_line(
    cdc_settings: Settings, cli_home: tuple[Path, dict[str, str]]
) -> None:
    """numeric(18,2) -> numeric(17,2) (precision down) as a user meets it: `cdc sync` goes on with
    one line naming it, `cdc status` shows the table stopped, the advised `cdc resync --table`
    reloads it with the new type, and it streams again."""
    s = cdc_settings
    env = cli_home[1]
    first = bankde(env, "cdc", "sync", "--no-progress")
    assert first.returncode == 0, first.stderr
    sql(s, "UPDATE bank.transaction SET amount = 1.11 WHERE txn_id = 1")
    sql(s, "ALTER TABLE bank.transaction ALTER COLUMN amount TYPE numeric(17,2)")
    sql(
        s,
        "UPDATE bank.transaction SET amount = 1.2 WHERE txn_id = 2",
        "UPDATE bank.account SET balance = 9 WHERE account_id = 4",
    )
    res = bankde(env, "cdc", "sync", "--no-progress", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["tables"]["bank.account"] == 1
    lines = [line for line in res.stderr.splitlines() if "changed type" in line]
    assert len(lines) == 1, res.stderr
    assert "bank.transaction.amount changed type" in lines[0], lines[0]
    assert "numeric(17,2)" in lines[0] and "cdc resync --table bank.transaction" in lines[0]
    status = bankde(env, "cdc", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert list(json.loads(status.stdout)["stopped"]) == ["bank.transaction"]
    raw = env.get("BANKDE_WH_PREFIX", "") + "raw"  # server mode: this test's databases
    query = (
        f"SELECT txn_id, toString(amount) FROM {raw}.transaction FINAL WHERE txn_id <= 2 ORDER BY 1"
    )
    got = bankde(env, "wh", "sql", query, "--format", "json")
    assert got.returncode == 0, got.stderr
    assert [r["toString(amount)"] for r in json.loads(got.stdout)] == ["1.11", "0.03"]
    fixed = bankde(env, "cdc", "resync", "--table", "bank.transaction", "--no-progress")
    assert fixed.returncode == 0, fixed.stderr
    sql(s, "UPDATE bank.transaction SET amount = 3.3 WHERE txn_id = 1")
    again = bankde(env, "cdc", "sync", "--no-progress")
    assert again.returncode == 0, again.stderr
    got = bankde(env, "wh", "sql", query, "--format", "json")
    assert [r["toString(amount)"] for r in json.loads(got.stdout)] == ["3.3", "1.2"]
    status = bankde(env, "cdc", "status", "--json")
    assert json.loads(status.stdout)["stopped"] == {}
    assert diff_in_subprocess(s, env) == []


# -- transactions larger than a part ---------------------------------------------------------
BULK = (
    "UPDATE bank.transaction SET description = 'bulk', amount = amount + 1",
    "DELETE FROM bank.transaction WHERE txn_id % 97 = 0",
    # Primary-key changes: a delete and an insert each, two positions.
    "UPDATE bank.transaction SET txn_id = txn_id + 1000000 WHERE txn_id % 89 = 0",
    "UPDATE bank.account SET balance = balance + 1 WHERE account_id = 2",
    "UPDATE bank.transaction SET amount = amount + 2 WHERE txn_id % 5 = 1",
)


def _txn_tables(settings: Settings, session: WarehouseSession) -> list[Any]:
    from bankde.warehouse.ddl import TXN_PREFIX, db_names

    return session.warehouse(settings).query(
        "SELECT name FROM system.tables WHERE database = {d:String} AND startsWith(name, {p:String})",
        {"d": db_names(settings).meta, "p": TXN_PREFIX},
    )


def test_a_transaction_larger_than_a_part_lands_whole(
    cdc_empty: Settings, cdc_session: WarehouseSession
) -> None:
    """One transaction of ~6,300 row changes with parts of 1,000: written part by part, none of
    it visible until its last part, then all of it; interrupted after a few parts, the rerun
    discards what the first delivery held and lands it once."""
    from bankde.warehouse.ddl import db_names

    s = cdc_empty.model_copy(update={"cdc_txn_part_rows": 1000})
    seed(s, txns=6000)
    sync(s, cdc_session)
    sql(s, "UPDATE bank.account SET balance = 7 WHERE account_id = 1")  # before it
    sql(s, *BULK)
    sql(s, "UPDATE bank.account SET balance = 8 WHERE account_id = 3")  # after it
    wh = cdc_session.warehouse(s)
    landing = db_names(s).landing_table("bank", "transaction")

    class Crash(Exception):
        pass

    def watched(crash_after: int | None) -> tuple[Sink, list[tuple[int, int]]]:
        sk = sink(s, cdc_session)
        parts: list[tuple[int, int]] = []
        apply_part = sk.apply_part

        def apply(events: Any, part: int, truncates: Any = ()) -> None:
            apply_part(events, part, truncates)
            bulk = wh.scalar(f"SELECT count() FROM {landing} WHERE description = 'bulk'")
            parts.append((part, int(bulk)))
            if crash_after is not None and part == crash_after:
                raise Crash()

        sk.apply_part = apply  # type: ignore[method-assign]
        return sk, parts

    first, parts = watched(crash_after=2)
    with pytest.raises(Crash):
        capture.sync(s, first, show_progress=False)
    assert parts == [(0, 0), (1, 0), (2, 0)], parts
    assert _txn_tables(s, cdc_session) == [("txn__bank__transaction",)]  # held, not landed

    again, parts = watched(crash_after=None)
    result = capture.sync(s, again, show_progress=False)
    assert len(parts) >= 6 and [p for p, _ in parts] == list(range(len(parts))), parts
    assert all(bulk == 0 for _, bulk in parts), parts  # nothing visible before the last part
    assert result.changes > 6000
    assert _txn_tables(s, cdc_session) == []
    assert diff(s, cdc_session) == []


# Served: the test watches the warehouse while `cdc run` in another process writes the parts,
# and kills it at a random moment while they are held.
@pytest.mark.served_only
def test_kill_dash_nine_inside_a_large_transaction(
    cdc_settings: Settings, cli_home: tuple[Path, dict[str, str]]
) -> None:
    """`bankde cdc run` killed with SIGKILL while it holds the parts of one large transaction:
    the slot was not acknowledged past it, and the rerun lands it once, equal to the source."""
    from bankde.warehouse.session import open_session

    s = cdc_settings
    prefix = s.wh_prefix + "k_"
    env = {**cli_home[1], "BANKDE_WH_PREFIX": prefix, "BANKDE_CDC_TXN_PART_ROWS": "500"}
    sql(
        s,
        """INSERT INTO bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type,
            status, amount, currency, balance_after, description, occurred_at)
        SELECT g, 1 + g % 40, 1 + g % 40, 1 + g % 10, 'purchase', 'approved', 1.25, 'EUR',
            99.99, 'seed', timestamptz '2024-03-02 12:00:00+00' + g * interval '1 second'
        FROM generate_series(1000, 25000) g""",
    )
    done = bankde(env, "cdc", "sync", "--no-progress", timeout=300)
    assert done.returncode == 0, done.stderr
    rng = random.Random(5)
    held_at_kill = []
    with open_session(s.model_copy(update={"wh_prefix": prefix})) as session:
        for _ in range(2):
            sql(s, BULK[0])
            proc = subprocess.Popen(
                [BANKDE, "cdc", "run", "--no-progress"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 180
            while not _txn_tables(s.model_copy(update={"wh_prefix": prefix}), session):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "no part of the transaction was ever held"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            held_at_kill.append(
                len(_txn_tables(s.model_copy(update={"wh_prefix": prefix}), session))
            )
            done = bankde(env, "cdc", "sync", "--no-progress", timeout=300)
            assert done.returncode == 0, done.stderr
            assert _txn_tables(s.model_copy(update={"wh_prefix": prefix}), session) == []
    # Killed while parts were held (not after they were attached, which drops their tables).
    assert all(held_at_kill), held_at_kill
    assert diff_in_subprocess(s, env) == []


# -- tables copied again while streaming -------------------------------------------------------
def test_added_columns_get_the_values_postgres_filled_in(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    """ADD COLUMN with a constant, a volatile and a NOT NULL default, and none: Postgres fills
    existing rows without WAL; the warehouse gets the same values, and later changes win."""
    s = cdc_settings
    sync(s, cdc_session)
    sql(
        s,
        "ALTER TABLE bank.card ADD COLUMN tier text NOT NULL DEFAULT 'std'",
        "ALTER TABLE bank.card ADD COLUMN token uuid DEFAULT gen_random_uuid()",
        "ALTER TABLE bank.card ADD COLUMN seen int",
        "ALTER TABLE bank.account ADD COLUMN grade numeric(6,2) DEFAULT 1.50",
    )
    sql(s, "UPDATE bank.card SET tier = 'gold', seen = 3 WHERE card_id = 1")
    result = sync(s, cdc_session)
    assert result.changes >= 1
    assert diff(s, cdc_session) == []
    # A column added while nothing of the table changes since: found in the catalog.
    sql(s, "ALTER TABLE bank.terminal ADD COLUMN region text NOT NULL DEFAULT 'eu'")
    sync(s, cdc_session)
    assert diff(s, cdc_session) == []


def test_new_table_is_copied_and_streamed_and_a_keyless_one_is_skipped(
    cdc_settings: Settings, cdc_session: WarehouseSession, caplog: pytest.LogCaptureFixture
) -> None:
    from bankde.warehouse.ddl import db_names

    s = cdc_settings
    sync(s, cdc_session)
    sql(
        s,
        "CREATE TABLE bank.m (id int PRIMARY KEY, v text NOT NULL, n numeric(10,2))",
        "INSERT INTO bank.m SELECT g, 'v' || g, g / 4.0 FROM generate_series(1, 1000) g",
        "CREATE TABLE bank.loose (v text)",
        "INSERT INTO bank.loose VALUES ('a')",
    )
    sql(s, "UPDATE bank.account SET balance = 9 WHERE account_id = 4")
    sync(s, cdc_session)
    sql(s, "INSERT INTO bank.m VALUES (1001, 'late', 1.25)", "DELETE FROM bank.m WHERE id = 7")
    sync(s, cdc_session)
    wh = cdc_session.warehouse(s)
    raw = db_names(s).raw
    rows = wh.query(
        f"SELECT count(), sum(n), countIf(id = 7) FROM `{raw}`.m FINAL WHERE _is_deleted = 0"
    )
    assert rows[0][0] == 1000 and rows[0][2] == 0, rows
    with connect(owner_info(s)) as conn:
        src = conn.execute("SELECT sum(n) FROM bank.m").fetchone()
    assert src is not None and rows[0][1] == src[0]
    assert wh.scalar(f"EXISTS TABLE `{raw}`.loose") == 0
    assert "bank.loose has no primary key" in caplog.text
    assert diff(s, cdc_session) == []


def test_resync_one_table_while_the_others_stream(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    """A landing table gone wrong (rows lost, a row that should not be there) is copied again
    with `resync --table` while `cdc run` streams a live workload; nothing else is touched."""
    from bankde.cdc.tablesnap import snapshot_tables_live
    from bankde.warehouse.ddl import db_names

    s = cdc_settings
    sync(s, cdc_session)
    wh = cdc_session.warehouse(s)
    card = db_names(s).landing_table("bank", "card")
    wh.command(f"ALTER TABLE {card} DELETE WHERE card_id % 3 = 0 SETTINGS mutations_sync = 2")
    wh.command(
        f"INSERT INTO {card} SELECT * REPLACE (toInt64(999999) AS card_id) FROM {card} LIMIT 1"
    )
    stop = threading.Event()
    work = Workload(s, seed_=3)
    writer = threading.Thread(target=work.run, args=(stop,), daemon=True)
    runner = threading.Thread(
        target=capture.run,
        args=(s, stop, sink(s, cdc_session)),
        kwargs={"show_progress": False},
        daemon=True,
    )
    writer.start()
    runner.start()
    try:
        time.sleep(2)
        done = snapshot_tables_live(s, sink(s, cdc_session), [("bank", "card")])
        assert done.rows["bank.card"] > 0
        time.sleep(1)
    finally:
        stop.set()
        writer.join(timeout=30)
        runner.join(timeout=60)
    assert work.done > 10
    sync(s, cdc_session)
    assert diff(s, cdc_session) == []
