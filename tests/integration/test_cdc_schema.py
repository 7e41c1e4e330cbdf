"""Source schema changes while the stream runs (issue 9 point 1): widened types, stopped tables."""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal

import pytest

from bankde.cdc import api as capture
from bankde.cdc.slot import slot_state
from bankde.cdc.status import status
from bankde.monitoring.reconcile import reconcile
from bankde.settings import Settings
from bankde.source.connection import connect, owner_info
from bankde.warehouse.ddl import db_names
from bankde.warehouse.session import WarehouseSession
from tests.integration import test_cdc as base

# The CDC tests' fixtures: own source database, slot, publication and warehouse prefix.
cdc_empty = base.cdc_empty
cdc_settings = base.cdc_settings
cdc_session = base.cdc_session
sync = base.sync
sql = base.sql

WIDE_DDL = """CREATE TABLE bank.w (id int PRIMARY KEY, small smallint, n numeric(18,2) NOT NULL,
    v varchar(5), t text, u varchar(10))"""
WIDE_ROWS = """INSERT INTO bank.w SELECT g, g, g / 3.0, 'v' || g, 't' || g, 'u' || g
    FROM generate_series(1, 50) g"""


def _types(wh: object, settings: Settings, table: str) -> dict[str, str]:
    rows = wh.query(  # type: ignore[attr-defined]
        "SELECT name, type FROM system.columns WHERE database = {d:String} AND table = {t:String}",
        {"d": db_names(settings).raw, "t": table},
    )
    return {str(n): str(t) for n, t in rows}


def test_widening_type_changes_apply_in_place_while_streaming(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    """int -> bigint (a key column), smallint -> int, numeric(18,2) -> numeric(20,4),
    varchar(5) -> varchar(50), text -> varchar, varchar -> text: converted in the warehouse as
    the stream meets them; old rows keep their values exactly, new ones land with the new
    types, source and warehouse stay equal, and the staging models still build."""
    from bankde.transform.runner import run_dbt

    s = cdc_settings
    sql(s, WIDE_DDL, WIDE_ROWS)
    sync(s, cdc_session)
    wh = cdc_session.warehouse(s)
    raw = db_names(s).raw
    old_rows = f"SELECT id, small, toString(n), v, t, u FROM `{raw}`.w FINAL WHERE id BETWEEN 3 AND 50 ORDER BY id"
    before = wh.query(old_rows)
    # A change with the old shape, then the new types, in one sync: the old row lands first.
    sql(s, "UPDATE bank.w SET n = 1.11 WHERE id = 1")
    sql(
        s,
        "ALTER TABLE bank.w ALTER COLUMN id TYPE bigint",
        "ALTER TABLE bank.w ALTER COLUMN small TYPE int",
        "ALTER TABLE bank.w ALTER COLUMN n TYPE numeric(20,4)",
        "ALTER TABLE bank.w ALTER COLUMN v TYPE varchar(50)",
        "ALTER TABLE bank.w ALTER COLUMN t TYPE varchar(100)",
        "ALTER TABLE bank.w ALTER COLUMN u TYPE text",
        "ALTER TABLE bank.transaction ALTER COLUMN amount TYPE numeric(20,4)",
        "ALTER TABLE bank.terminal ALTER COLUMN lat TYPE numeric(12,8)",
    )
    sql(
        s,
        "INSERT INTO bank.w VALUES (5000000000, 2000000000, 1234567890123456.7891, "
        "repeat('x', 40), 'tt', 'uu')",
        "UPDATE bank.w SET n = 2.3456 WHERE id = 2",
        "UPDATE bank.transaction SET amount = 1.2399 WHERE txn_id = 2",
        "UPDATE bank.terminal SET lat = 52.12345678 WHERE terminal_id = 1",
    )
    res = sync(s, cdc_session)
    assert res.tables.get("bank.w") == 3 and res.tables.get("bank.transaction") == 1, res.tables
    types = _types(wh, s, "w")
    assert (types["id"], types["small"], types["n"]) == (
        "Int64",
        "Nullable(Int32)",
        "Decimal(20, 4)",
    )
    assert _types(wh, s, "transaction")["amount"] == "Decimal(20, 4)"
    # No mutation left running: the next batch lands on converted parts.
    assert not wh.scalar(
        "SELECT count() FROM system.mutations WHERE database = {d:String} AND NOT is_done",
        {"d": raw},
    )
    assert wh.query(old_rows) == before
    got = wh.query(
        f"SELECT id, small, toString(n), length(v) FROM `{raw}`.w FINAL WHERE id IN (1, 2, 5000000000) "
        "ORDER BY id"
    )
    assert got == [
        (1, 1, "1.11", 2),
        (2, 2, "2.3456", 2),
        (5000000000, 2000000000, "1234567890123456.7891", 40),
    ]
    amount = wh.scalar(f"SELECT amount FROM `{raw}`.transaction FINAL WHERE txn_id = 2")
    assert amount == Decimal("1.2399")
    assert base.diff(s, cdc_session) == []
    assert reconcile(s, wh).equal
    # Downstream: the staging models over the widened tables still build on the new types.
    built = run_dbt(
        ["run", "--select", "stg_transactions stg_terminals"], s, cdc_session, quiet=True
    )
    assert built.success
    stg = wh.scalar(
        f"SELECT toString(amount) FROM `{s.wh_prefix}stg`.stg_transactions WHERE txn_id = 2"
    )
    assert stg == "1.2399"
    for layer in ("stg", "dbt"):
        wh.command(f"DROP DATABASE IF EXISTS `{s.wh_prefix}{layer}`")


def test_incompatible_type_change_stops_only_that_table_until_resync(
    cdc_settings: Settings, cdc_session: WarehouseSession, caplog: pytest.LogCaptureFixture
) -> None:
    """numeric(18,2) -> numeric(10,2) (narrowing): one line names table, column, both types and
    the remedy; the other tables stream on; the table's changes are held in the warehouse (the
    slot is confirmed past them); status and reconcile show it; `resync --table` while the
    stream runs reloads it with the new type and it streams again, nothing lost."""
    from bankde.cdc.tablesnap import snapshot_tables_live
    from bankde.warehouse.sink import stopped_tables

    s = cdc_settings
    sync(s, cdc_session)
    wh = cdc_session.warehouse(s)
    raw = db_names(s).raw
    sql(s, "UPDATE bank.transaction SET amount = 1.11 WHERE txn_id = 1")
    sql(s, "ALTER TABLE bank.transaction ALTER COLUMN amount TYPE numeric(10,2)")
    sql(
        s,
        "UPDATE bank.transaction SET amount = 2.22 WHERE txn_id = 2",
        "UPDATE bank.account SET balance = 9 WHERE account_id = 4",
    )
    with connect(owner_info(s), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    from bankde.cdc.envelope import parse_lsn

    written = parse_lsn(row[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # stopped, and stays stopped after a restart: nothing is skipped
            sync(s, cdc_session)
    lines = [r.getMessage() for r in caplog.records if "changed type" in r.getMessage()]
    assert len(lines) == 1 and len(lines[0].splitlines()) == 1, lines
    assert "bank.transaction.amount changed type: warehouse Decimal(18, 2), source now "
    "numeric(10,2)" in lines[0], lines[0]
    assert "bankde cdc resync --table bank.transaction" in lines[0], lines[0]
    # The others streamed; the stopped table kept what came before the change.
    assert wh.scalar(f"SELECT balance FROM `{raw}`.account FINAL WHERE account_id = 4") == 9
    amounts = (
        f"SELECT toString(amount) FROM `{raw}`.transaction FINAL WHERE txn_id <= 2 ORDER BY txn_id"
    )
    assert [r[0] for r in wh.query(amounts)] == ["1.11", "0.03"]
    # Held, durably, and so confirmed: the slot never passes what the warehouse lacks.
    held = db_names(s).hold_table("bank", "transaction")
    assert wh.query(f"SELECT txn_id, toString(amount) FROM {held}") == [(2, "2.22")]
    confirmed = slot_state(s).confirmed_flush_lsn
    assert confirmed is not None and confirmed >= written
    data = status(s, warehouse=wh, counts=False)
    assert list(data["stopped"]) == ["bank.transaction"]
    check = reconcile(s, wh)
    bad = [t.table for t in check.tables if not t.equal]
    assert bad == ["bank.transaction"], bad
    assert any("cdc resync --table" in p for t in check.tables for p in t.problems)

    # The remedy, while `cdc run` streams changes to it and to other tables.
    stop = threading.Event()
    runner = threading.Thread(
        target=capture.run,
        args=(s, stop, base.sink(s, cdc_session)),
        kwargs={"show_progress": False},
        daemon=True,
    )
    runner.start()
    try:
        sql(s, "UPDATE bank.transaction SET amount = 3.33 WHERE txn_id = 3")
        time.sleep(1)
        done = snapshot_tables_live(s, base.sink(s, cdc_session), [("bank", "transaction")])
        assert done.rows["bank.transaction"] > 0
        sql(
            s,
            "UPDATE bank.transaction SET amount = 4.44 WHERE txn_id = 4",
            "UPDATE bank.account SET balance = 10 WHERE account_id = 4",
        )
        time.sleep(1.5)
    finally:
        stop.set()
        runner.join(timeout=60)
    sync(s, cdc_session)
    assert stopped_tables(wh) == {}
    assert wh.scalar(f"EXISTS TABLE {held}") == 0
    assert _types(wh, s, "transaction")["amount"] == "Decimal(10, 2)"
    assert base.diff(s, cdc_session) == []
    assert reconcile(s, wh).equal


def test_drops_and_renames_keep_the_stream_going(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    """DROP COLUMN (of a NOT NULL one), DROP NOT NULL, RENAME COLUMN, RENAME TABLE, DROP TABLE
    while streaming: no stop, and the warehouse keeps what docs/cdc.md says it keeps."""
    s = cdc_settings
    sql(
        s,
        "CREATE TABLE bank.m (id int PRIMARY KEY, v text NOT NULL, gone text NOT NULL, "
        "opt int NOT NULL)",
        "INSERT INTO bank.m SELECT g, 'v' || g, 'g' || g, g FROM generate_series(1, 20) g",
        "CREATE TABLE bank.r (id int PRIMARY KEY, old_name text NOT NULL)",
        "INSERT INTO bank.r SELECT g, 'o' || g FROM generate_series(1, 20) g",
        "CREATE TABLE bank.doomed (id int PRIMARY KEY, v text)",
        "INSERT INTO bank.doomed VALUES (1, 'a')",
        "CREATE TABLE bank.bye (id int PRIMARY KEY)",
        "INSERT INTO bank.bye VALUES (1), (2)",
    )
    sync(s, cdc_session)
    sql(
        s,
        "ALTER TABLE bank.m DROP COLUMN gone",
        "ALTER TABLE bank.m ALTER COLUMN opt DROP NOT NULL",
        "ALTER TABLE bank.r RENAME COLUMN old_name TO new_name",
        "ALTER TABLE bank.doomed RENAME TO kept",
        "DROP TABLE bank.bye",
    )
    sql(
        s,
        "UPDATE bank.m SET opt = NULL, v = 'x' WHERE id = 1",
        "INSERT INTO bank.m (id, v, opt) VALUES (21, 'v21', NULL)",
        "DELETE FROM bank.m WHERE id = 2",
        "UPDATE bank.r SET new_name = 'n1' WHERE id = 1",
        "INSERT INTO bank.kept VALUES (2, 'b')",
        "UPDATE bank.account SET balance = 9 WHERE account_id = 4",
    )
    sync(s, cdc_session)
    sql(s, "UPDATE bank.m SET opt = 5 WHERE id = 21", "INSERT INTO bank.kept VALUES (3, 'c')")
    sync(s, cdc_session)
    wh = cdc_session.warehouse(s)
    raw = db_names(s).raw
    live = "FINAL WHERE _is_deleted = 0"
    # DROP COLUMN: kept, NULL in rows written since, old rows as they were; DROP NOT NULL.
    got = wh.query(
        f"SELECT id, v, gone, opt FROM `{raw}`.m {live} AND id IN (1, 3, 21) ORDER BY id"
    )
    assert got == [(1, "x", None, None), (3, "v3", "g3", 3), (21, "v21", None, 5)]
    assert wh.scalar(f"SELECT count() FROM `{raw}`.m {live}") == 20
    # RENAME COLUMN: a new column, filled for every row (the table is copied again); the old
    # one is NULL in every row copied or changed since.
    got = wh.query(f"SELECT id, new_name, old_name FROM `{raw}`.r {live} AND id <= 2 ORDER BY id")
    assert got == [(1, "n1", None), (2, "o2", None)]
    # RENAME TABLE: a new landing table, copied then streamed; the old one stays as it was.
    assert wh.query(f"SELECT id, v FROM `{raw}`.kept {live} ORDER BY id") == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]
    assert wh.query(f"SELECT id, v FROM `{raw}`.doomed {live}") == [(1, "a")]
    # DROP TABLE: its landing table stays as it was.
    assert wh.scalar(f"SELECT count() FROM `{raw}`.bye {live}") == 2
    assert wh.scalar(f"SELECT balance FROM `{raw}`.account FINAL WHERE account_id = 4") == 9
    assert base.diff(s, cdc_session) == []
    check = reconcile(s, wh)
    assert check.equal, [
        (t.table, t.problems, t.source_rows, t.warehouse_rows) for t in check.differing
    ]
