"""Reconcile on real Postgres and real chDB: equal after landing the source, differences named by key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from bankde.cdc.envelope import ChangeEvent, Source
from bankde.contracts import Offset
from bankde.monitoring.reconcile import reconcile
from bankde.settings import Settings, get_settings
from bankde.source.connection import connect, owner_info
from bankde.warehouse.ddl import db_names
from bankde.warehouse.session import WarehouseSession, open_session
from bankde.warehouse.sink import ClickHouseSink

SEED_SQL = """
INSERT INTO bank.customer (customer_id, first_name, last_name, email, phone, birth_date, address,
    city, country, home_lat, home_lon, segment, status, created_at, updated_at, closed_at)
VALUES
 (1, 'Ada', 'Lovelace', 'ada@example.org', '+44 1', '1815-12-10', '1 St James''s Sq', 'London', 'GB',
  51.507400, -0.127800, 'affluent', 'active', '2024-01-01 10:00:00.123456+00', '2024-01-01 10:00:00.123456+00', NULL),
 (2, 'Émile', 'Zola', 'ez@example.org', '+33 2', '1840-04-02', '21bis rue de Bruxelles', 'Paris', 'FR',
  48.856600, 2.352200, 'retail', 'closed', '2024-01-02 11:00:00+00', '2024-03-02 11:00:00+01', '2024-03-02 10:00:00+00');
INSERT INTO bank.account (account_id, customer_id, iban, kind, currency, balance, overdraft_limit,
    status, created_at, updated_at, closed_at)
VALUES (10, 1, 'GB00BANK0000000010', 'checking', 'GBP', 12345678901234.99, 0.29, 'active', now(), now(), NULL),
       (11, 2, 'FR00BANK0000000011', 'savings', 'EUR', -0.29, 100.00, 'active', now(), now(), NULL);
INSERT INTO bank.terminal (terminal_id, kind, merchant_name, mcc, city, country, lat, lon, status)
VALUES (5, 'pos', 'Café "Zéro"; Ltd', '5812', 'Paris', 'FR', 48.85, 2.35, 'active');
INSERT INTO bank.card (card_id, account_id, customer_id, pan_enc, pan_hash, pan_last4, network, expires_on, daily_limit, status)
VALUES (20, 10, 1, gen_random_bytes(48), repeat('a', 64), '1111', 'visa', '2029-12-31', 500.00, 'active');
INSERT INTO bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type, status, decline_reason,
    amount, currency, balance_after, description, occurred_at)
SELECT 100 + g, 10, CASE WHEN g % 3 = 0 THEN NULL ELSE 20 END, 5,
       (ARRAY['purchase','refund','fee'])[1 + g % 3]::bank.txn_type,
       CASE WHEN g % 5 = 0 THEN 'declined' ELSE 'approved' END::bank.txn_status,
       CASE WHEN g % 5 = 0 THEN 'insufficient_funds' END,
       g + 0.01, 'GBP', CASE WHEN g % 2 = 0 THEN g * 10.5 END,
       CASE WHEN g % 4 = 0 THEN repeat('long text ', 50) END,
       timestamptz '2024-05-01 00:00:00+00' + g * interval '1 minute 0.000123 second'
FROM generate_series(1, 60) g;
INSERT INTO truth.fraud_episode (episode_id, scenario, card_id, started_at, ended_at, params)
VALUES (1, 'card_testing', 20, '2024-05-01 00:00:00+00', '2024-05-01 01:00:00+00', '{"n": 3, "mcc": ["5812"]}');
INSERT INTO truth.fraud_label (txn_id, scenario, episode_id) VALUES (101, 'card_testing', 1), (102, 'card_testing', 1);
"""

# Every test again with the warehouse served by `bankde wh serve` in another process.
pytestmark = pytest.mark.served_too


def land_source(settings: Settings, session: WarehouseSession) -> None:
    """Copy every bank.* and truth.* row into the warehouse through the sink, as text form."""
    sink = ClickHouseSink(session.warehouse(settings))
    events: list[ChangeEvent] = []
    with connect(owner_info(settings)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('bank', 'truth') AND table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, table in tables:
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                    "AND table_name = %s ORDER BY ordinal_position",
                    (schema, table),
                ).fetchall()
            ]
            select = ", ".join(f'"{c}"::text' for c in cols)
            for pos, row in enumerate(
                conn.execute(f'SELECT {select} FROM "{schema}"."{table}"').fetchall()
            ):
                after = dict(zip(cols, row, strict=True))
                events.append(
                    ChangeEvent("c", None, after, Source(1000, 1, 0, schema, table), 0, pos + 1)
                )
    sink.apply(events, Offset("rec", 1001, True))


def run_sql(settings: Settings, statement: str) -> None:
    with connect(owner_info(settings)) as conn:  # the owner: the test also runs DDL
        conn.execute(statement)
        conn.commit()


def test_equal_after_landing_then_differences_name_keys(
    source_wh_settings: Settings, source_wh_session: WarehouseSession
) -> None:
    settings = source_wh_settings
    wh = source_wh_session.warehouse(settings)
    run_sql(settings, SEED_SQL)
    land_source(settings, source_wh_session)
    result = reconcile(settings, wh)
    assert result.equal, [
        (t.table, t.problems, t.sample, t.source_rows, t.warehouse_rows) for t in result.differing
    ]
    counts = {t.table: t.source_rows for t in result.tables}
    assert counts["bank.transaction"] == 60 and counts["truth.fraud_label"] == 2
    assert all(t.source_checksum == t.warehouse_checksum for t in result.tables)
    assert {t.table for t in result.tables} >= {
        "bank.customer",
        "bank.account",
        "bank.card",
        "truth.fraud_episode",
    }

    # One cent on one transaction, one row gone from the source, one timestamp moved by 1 µs.
    run_sql(settings, "UPDATE bank.transaction SET amount = amount + 0.01 WHERE txn_id = 117")
    run_sql(settings, "DELETE FROM truth.fraud_label WHERE txn_id = 102")
    run_sql(
        settings,
        "UPDATE bank.customer SET created_at = created_at + interval '1 microsecond' WHERE customer_id = 2",
    )
    result = reconcile(settings, wh)
    assert not result.equal
    bad = {t.table: t for t in result.differing}
    assert set(bad) == {"bank.transaction", "bank.customer", "truth.fraud_label"}
    txn = bad["bank.transaction"]
    assert txn.source_rows == txn.warehouse_rows == 60
    assert [(d.key, d.problem) for d in txn.sample] == [("txn_id=117", "values differ")]
    label = bad["truth.fraud_label"]
    assert (label.source_rows, label.warehouse_rows) == (1, 2)
    assert [(d.key, d.problem) for d in label.sample] == [
        ("txn_id=102", "in the warehouse but not in the source")
    ]
    assert [d.key for d in bad["bank.customer"].sample] == ["customer_id=2"]


def test_missing_rows_and_columns_are_reported(
    source_wh_settings: Settings, source_wh_session: WarehouseSession
) -> None:
    settings = source_wh_settings
    run_sql(settings, SEED_SQL)
    land_source(settings, source_wh_session)
    wh = source_wh_session.warehouse(settings)
    raw = db_names(settings).landing_table("bank", "transaction")
    wh.command(f"ALTER TABLE {raw} DELETE WHERE txn_id IN (103, 140) SETTINGS mutations_sync = 2")
    run_sql(settings, "ALTER TABLE bank.terminal ADD COLUMN note text")
    result = reconcile(settings, wh)
    bad = {t.table: t for t in result.differing}
    assert set(bad) == {"bank.transaction", "bank.terminal"}
    assert [(d.key, d.problem) for d in bad["bank.transaction"].sample] == [
        ("txn_id=103", "missing in the warehouse"),
        ("txn_id=140", "missing in the warehouse"),
    ]
    assert bad["bank.terminal"].problems == ["column note missing in the warehouse"]


@pytest.fixture()
def cli_settings_env(source_wh_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in {
        "BANKDE_HOME": str(source_wh_settings.home),
        "BANKDE_PG_PORT": str(source_wh_settings.pg_port),
        "DB_NAME": source_wh_settings.db_name,
        "BANKDE_WH_DIR": str(source_wh_settings.warehouse_dir),
        "BANKDE_WH_PREFIX": source_wh_settings.wh_prefix,
        "BANKDE_CLICKHOUSE_URL": source_wh_settings.clickhouse_url or "",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield source_wh_settings
    get_settings.cache_clear()


def test_reconcile_command_exit_codes_and_json(cli_settings_env: Settings) -> None:
    from bankde.cli import app

    settings = cli_settings_env
    run_sql(settings, SEED_SQL)
    # Landed on a session of the test's, closed before the command opens its own.
    with open_session(settings) as session:
        land_source(settings, session)
    runner = CliRunner()
    res = runner.invoke(app, ["reconcile", "--json"])
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(res.output)
    assert data["equal"] is True and len(data["tables"]) == 7
    run_sql(settings, "UPDATE bank.account SET balance = balance - 0.01 WHERE account_id = 11")
    res = runner.invoke(app, ["reconcile"])
    assert res.exit_code == 1
    assert "bank.account: account_id=11: values differ" in res.output


def test_both_sides_bucket_and_hash_alike(
    source_wh_settings: Settings, source_wh_session: WarehouseSession
) -> None:
    """The bucket and row-hash expressions are one function computed twice: integer keys by
    their low bits (negative and extreme ones too), other keys by MD5 of their text."""
    from bankde.monitoring.reconcile import _buckets, _canonical, _ch_hash, _pg_hash

    keys = [0, 1, -1, -5, 1023, 1024, -1024, 2**62 + 7, -(2**63), 2**63 - 1]
    k = _canonical("k", "bigint", "Int64")
    t, n = _canonical("t", "text", "String"), _canonical("n", "integer", "Int32")
    (pg_int, ch_int), (pg_text, ch_text) = _buckets([k]), _buckets([t, n])
    assert "md5" not in pg_int and "md5" in pg_text
    pg_values = ", ".join(f"('{v}'::bigint, 'k{v}', {v % 1000})" for v in keys)
    with connect(owner_info(source_wh_settings)) as conn:
        pg = conn.execute(
            f"SELECT {pg_int}, {pg_text}, {_pg_hash(k.pg_expr)} "
            f"FROM (VALUES {pg_values}) AS v(k, t, n) ORDER BY k"
        ).fetchall()
    ch_values = ", ".join(f"(toInt64({v}), 'k{v}', toInt32({v % 1000}))" for v in keys)
    ch = source_wh_session.warehouse(source_wh_settings).query(
        f"SELECT {ch_int}, {ch_text}, {_ch_hash(k.ch_expr)} FROM (SELECT x.1 AS k, x.2 AS t, "
        f"x.3 AS n FROM (SELECT arrayJoin([{ch_values}]) AS x)) ORDER BY k"
    )
    assert [tuple(map(int, r)) for r in pg] == [tuple(map(int, r)) for r in ch]
    # Sorted keys: -2^63, -1024, -5, -1, 0, 1, 1023, 1024, 2^62 + 7, 2^63 - 1.
    assert [r[0] for r in pg] == [0, 0, 1019, 1023, 0, 1, 1023, 0, 7, 1023]
    assert len({r[1] for r in pg}) > 5 and all(0 <= r[1] < 1024 for r in pg)


def test_timestamps_compare_by_their_stored_microseconds(
    source_wh_settings: Settings, source_wh_session: WarehouseSession
) -> None:
    """timestamptz and timestamp are compared as the stored int64 (Postgres's binary form, in
    hex) on both sides: before 2000 and 1970, with and without microseconds."""
    from bankde.monitoring.reconcile import _canonical

    values = [
        "1900-03-01 12:00:00.5",
        "1969-12-31 23:59:59.999999",
        "1970-01-01 00:00:00",
        "1999-12-31 23:59:59.999999",
        "2000-01-01 00:00:00",
        "2024-05-01 00:01:00.000123",
        "2262-04-11 23:47:16.854775",
    ]
    tz = _canonical("ts", "timestamp with time zone", "DateTime64(6, 'UTC')")
    naive = _canonical("ts", "timestamp without time zone", "DateTime64(6, 'UTC')")
    with connect(owner_info(source_wh_settings)) as conn:
        conn.execute("SET TimeZone = 'Europe/Paris'")  # the binary form does not depend on it
        pg = [
            conn.execute(
                f"SELECT {tz.pg_expr}, (SELECT {naive.pg_expr} FROM (SELECT %s::timestamp AS ts) n) "
                "FROM (SELECT (%s || '+00')::timestamptz AS ts) t",
                (v, v),
            ).fetchone()
            for v in values
        ]
    wh = source_wh_session.warehouse(source_wh_settings)
    ch = [
        wh.query(
            f"SELECT {tz.ch_expr} FROM (SELECT toDateTime64({{v:String}}, 6, 'UTC') AS ts)",
            {"v": v},
        )[0][0]
        for v in values
    ]
    assert [p[0] for p in pg] == [p[1] for p in pg] == ch
    assert ch[4] == "0000000000000000" and ch[3] == "ffffffffffffffff"
