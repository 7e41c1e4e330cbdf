"""CDC against what production does to it (issue 9): quarantine, pinned sessions, odd values, offsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from psycopg import sql as pg_sql

from bankde.cdc.rejects import Reject, key_text, recent_rejects, record_rejects, reject_summary
from bankde.cdc.status import status
from bankde.monitoring.reconcile import reconcile
from bankde.settings import Settings
from bankde.source.connection import admin_info, connect
from bankde.warehouse.session import WarehouseSession
from tests.integration import test_cdc as base

# The CDC tests' fixtures: own source database, slot, publication and warehouse prefix.
cdc_empty = base.cdc_empty
cdc_settings = base.cdc_settings
cdc_session = base.cdc_session
cli_home = base.cli_home
sync = base.sync


def test_rejects_are_recorded_once_and_reported_by_status_and_reconcile(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    s = cdc_settings
    sync(s, cdc_session)
    wh = cdc_session.warehouse(s)
    rejects = [
        Reject("bank.account", key_text({"account_id": 7}), 1234, "balance", "NaN", "NaN"),
        Reject(
            "bank.account",
            key_text({"account_id": 7}),
            1234,
            "overdraft_limit",
            "Infinity",
            "infinite",
            topic="t",
            partition=0,
            offset=42,
        ),
    ]
    assert record_rejects(wh, s.cdc_slot, rejects) == 2
    # A re-delivered batch records the same rejects again: still one each.
    record_rejects(wh, s.cdc_slot, rejects)
    summary = reject_summary(wh, s.cdc_slot)
    assert list(summary) == ["bank.account"]
    assert (summary["bank.account"].rows, summary["bank.account"].values) == (1, 2)
    assert reject_summary(wh, "another_slot") == {}
    got = sorted(recent_rejects(wh, s.cdc_slot), key=lambda r: r.column)
    assert got[0].key == '{"account_id":"7"}' and got[0].source_text == "NaN"
    assert (got[1].topic, got[1].partition, got[1].offset) == ("t", 0, 42)

    data = status(s, warehouse=wh, counts=False)
    assert data["rejects"]["bank.account"]["rows"] == 1
    res = reconcile(s, wh)
    account = next(t for t in res.tables if t.table == "bank.account")
    assert account.quarantined == 1 and "meta.cdc_rejects" in (account.quarantine_note or "")
    assert res.equal  # the rows themselves did land: quarantine is reported, not a difference


# -- point 2: the capture session is pinned ------------------------------------------------
KINDS_DDL = """CREATE TABLE bank.kinds (
    id int PRIMARY KEY, f float8, iv interval, tm time, tz timetz, b bytea, ts timestamp,
    tstz timestamptz, d date, t text)"""
KINDS_ROW = """INSERT INTO bank.kinds VALUES (%s, 0.1::float8 + 0.2::float8,
    '1 year 2 mons 3 days 04:05:06.789', '13:14:15.123456', %s, '\\x00ff10',
    '2024-03-05 10:11:12.345678', '2024-03-05 10:11:12.345678+00', '2024-03-05',
    'Émile ✓ 漢字 \U0001f600')"""
HOSTILE_ENV = {
    "PGDATESTYLE": "SQL, MDY",
    "PGTZ": "America/New_York",
    "PGCLIENTENCODING": "LATIN1",
    "PGOPTIONS": "-c IntervalStyle=sql_standard -c extra_float_digits=-10 -c bytea_output=escape",
}


@pytest.mark.parametrize("engine", ["native", "debezium"])
def test_capture_session_is_pinned_whatever_env_and_alter_role_say(
    cdc_settings: Settings, cli_home: tuple[Path, dict[str, str]], engine: str
) -> None:
    """PGDATESTYLE/PGTZ/PGCLIENTENCODING/PGOPTIONS and ALTER ROLE/DATABASE SET change nothing
    the capture lands, through the snapshot and through the stream (`bankde cdc sync` as a
    user runs it); reconcile (with a clean environment) finds both sides equal."""
    s = cdc_settings
    env = cli_home[1]
    # Debezium hands timetz over normalised to UTC (the offset is lost, docs/cdc.md): there the
    # source value is in UTC already.
    tz = "'13:14:15+05:30'" if engine == "native" else "'13:14:15+00'"
    base.sql(s, KINDS_DDL, KINDS_ROW % (1, tz))
    with connect(admin_info(s), autocommit=True) as conn:
        db, role = pg_sql.Identifier(s.db_name), pg_sql.Identifier(s.cdc_user)
        conn.execute(
            pg_sql.SQL(
                "ALTER ROLE {} IN DATABASE {} SET DateStyle = 'SQL, DMY'; "
                "ALTER ROLE {} IN DATABASE {} SET IntervalStyle = 'iso_8601'; "
                "ALTER ROLE {} IN DATABASE {} SET bytea_output = 'escape'"
            ).format(role, db, role, db, role, db)
        )
        conn.execute(pg_sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Kolkata'").format(db))
    hostile = {**env, **HOSTILE_ENV}
    first = base.bankde(hostile, "cdc", "sync", "--no-progress", "--engine", engine)
    assert first.returncode == 0, first.stderr
    base.sql(
        s,
        "UPDATE bank.transaction SET occurred_at = '2024-03-05 10:00:00+00' WHERE txn_id < 10",
        "UPDATE bank.customer SET first_name = 'Zoë ✓' WHERE customer_id = 1",
        KINDS_ROW % (2, tz),
    )
    second = base.bankde(hostile, "cdc", "sync", "--no-progress", "--json", "--engine", engine)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["tables"]["bank.kinds"] == 1
    # Snapshot row and streamed row hold identical text in the warehouse, column by column.
    query = (
        "SELECT id, f, iv, tm, tz, b, toString(ts), toString(tstz), toString(d), t "
        "FROM raw.kinds FINAL ORDER BY id"
    )
    got = base.bankde(env, "wh", "sql", "-f", "json", query)
    assert got.returncode == 0, got.stderr
    rows = [list(r.values()) for r in json.loads(got.stdout)]
    check = base.bankde(env, "reconcile", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert [r[1:] for r in rows] == [rows[0][1:]] * 2
    assert rows[0][1:] == [
        0.30000000000000004,
        "1 year 2 mons 3 days 04:05:06.789",
        "13:14:15.123456",
        tz.strip("'"),
        "\\x00ff10",
        "2024-03-05 10:11:12.345678",
        "2024-03-05 10:11:12.345678",
        "2024-03-05",
        "Émile ✓ 漢字 \U0001f600",
    ]
