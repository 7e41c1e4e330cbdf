"""The warehouse half of CDC on real chDB: DDL, sink apply/snapshot/offsets, added columns."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from bankde.cdc.envelope import ChangeEvent, Source, make_version
from bankde.contracts import Offset, SourceColumn
from bankde.errors import CaptureError
from bankde.settings import Settings
from bankde.warehouse.client import Warehouse
from bankde.warehouse.ddl import apply_schema, db_names, ensure_columns, landing_tables
from bankde.warehouse.session import WarehouseSession
from bankde.warehouse.sink import BATCH_LOG_SECONDS, ClickHouseSink

TS = 1_700_000_000_000


def account(i: int, balance: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "account_id": str(i),
        "customer_id": "7",
        "iban": f"DE00{i:012d}",
        "kind": "checking",
        "currency": "EUR",
        "balance": balance,
        "overdraft_limit": "100.00",
        "status": "active",
        "created_at": "2024-01-02 03:04:05.123456+00",
        "updated_at": "2024-01-02 05:04:05.5+02",
        "closed_at": None,
    }
    row.update(changes)
    return row


def ev(
    op: str,
    lsn: int,
    pos: int,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    table: str = "account",
    schema: str = "bank",
    unchanged: frozenset[str] = frozenset(),
) -> ChangeEvent:
    return ChangeEvent(
        op, before, after, Source(lsn, 900 + lsn, TS + lsn, schema, table), TS, pos, unchanged
    )  # type: ignore[arg-type]


def final(wh: Warehouse, table: str, cols: str) -> list[tuple[Any, ...]]:
    return wh.query(f"SELECT {cols} FROM {table} FINAL WHERE _is_deleted = 0 ORDER BY 1")


@pytest.fixture()
def wh(wh_settings: Settings, wh_session: WarehouseSession) -> Warehouse:
    return wh_session.warehouse(wh_settings)


def test_schema_applies_twice_under_a_prefix(wh: Warehouse, wh_settings: Settings) -> None:
    assert apply_schema(wh) == apply_schema(wh) >= 10
    names = db_names(wh_settings)
    tables = {f"{d}.{t}" for d, t in landing_tables(wh)}
    assert f"{names.raw}.transaction" in tables and f"{names.truth}.fraud_label" in tables
    assert "raw.transaction" not in tables or names.prefix == ""
    engine = wh.scalar(
        "SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'account'",
        {"d": names.raw},
    )
    assert "ReplacingMergeTree(_version, _is_deleted)" in engine


def test_apply_inserts_updates_deletes_and_key_changes_idempotently(
    wh: Warehouse, wh_settings: Settings
) -> None:
    sink = ClickHouseSink(wh)
    raw = db_names(wh_settings).landing_table("bank", "account")
    batch1 = [
        ev("c", 100, 1, after=account(1, "0.29")),
        ev("c", 100, 2, after=account(2, "12345678901234.99")),
        ev("c", 100, 3, after=account(3, "-50.10")),
    ]
    batch2 = [
        ev("u", 200, 1, after=account(1, "1.01", status="frozen")),
        ev("d", 200, 2, before={"account_id": "2"}),
        # Primary-key change 3 -> 30: delete of the old key, insert of the new one.
        ev("d", 300, 1, before={"account_id": "3"}),
        ev("c", 300, 2, after=account(30, "-50.10")),
        ev(
            "u",
            400,
            1,
            after=account(30, "-49.99", closed_at="2024-02-03 04:05:06.000001+00", status="closed"),
        ),
    ]
    sink.apply(batch1, Offset("s1", 101, True))
    sink.apply(batch2, Offset("s1", 401, True))
    expected = [
        (1, Decimal("1.01"), "frozen", None),
        (30, Decimal("-49.99"), "closed", datetime(2024, 2, 3, 4, 5, 6, 1)),
    ]
    cols = "account_id, balance, status, closed_at"
    assert final(wh, raw, cols) == expected
    # Re-delivery after a crash (both batches again, even out of order) changes nothing visible.
    sink.apply(batch2, Offset("s1", 401, True))
    sink.apply(batch1, Offset("s1", 101, True))
    sink.apply(batch2, Offset("s1", 401, True))
    assert final(wh, raw, cols) == expected
    assert final(wh, raw, "account_id, _version, _op, _lsn, _tx_id") == [
        (1, make_version(200, 1), "u", 200, 1100),
        (30, make_version(400, 1), "u", 400, 1300),
    ]
    ts = wh.query(
        f"SELECT created_at, updated_at, _source_ts FROM {raw} FINAL WHERE account_id = 1"
    )[0]
    assert ts[0] == datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert ts[1] == datetime(2024, 1, 2, 3, 4, 5, 500000)  # +02 normalised to UTC
    assert ts[2] == datetime.fromtimestamp((TS + 200) / 1000, UTC).replace(tzinfo=None)
    assert sink.load_offset("s1") == Offset("s1", 401, True)
    assert sink.load_offset("other") is None


def test_money_is_exact(wh: Warehouse, wh_settings: Settings) -> None:
    sink = ClickHouseSink(wh)
    amounts = ["0.29", "12345678901234.99", "-0.01", "0.10", "99999999999999.99", "1.005"]
    sink.apply(
        [ev("c", 10, i + 1, after=account(i + 1, a)) for i, a in enumerate(amounts[:5])],
        Offset("m", 11, True),
    )
    raw = db_names(wh_settings).landing_table("bank", "account")
    got = [v for (_, v) in final(wh, raw, "account_id, balance")]
    assert got == [Decimal(a) for a in amounts[:5]]
    total = sum(Decimal(a) for a in amounts[:5])
    assert wh.scalar(f"SELECT toString(sum(balance)) FROM {raw} FINAL") == str(total)


def test_offsets_and_batch_metrics_follow_each_apply(wh: Warehouse, wh_settings: Settings) -> None:
    sink = ClickHouseSink(wh)
    names = db_names(wh_settings)
    assert sink.load_offset("m1") is None
    sink.apply([ev("c", 10, 1, after=account(1, "1.00"))], Offset("m1", 11, False))
    sink.apply([], Offset("m1", 20, True))
    sink.apply(
        [ev("u", 30, 1, after=account(1, "2.00")), ev("d", 30, 2, before={"account_id": "1"})],
        Offset("m1", 31, True),
    )
    assert sink.load_offset("m1") == Offset("m1", 31, True)
    select = (
        f"SELECT kind, events, inserts, updates, deletes, tables, first_lsn, last_lsn, lag_ms >= 0 "
        f"FROM {names.batches} WHERE slot = 'm1' ORDER BY finished_at"
    )
    # Batch-log rows are held back (one INSERT for many batches) until a second has passed,
    # the stream idles or stops (flush_log); the offsets are written at once regardless.
    assert wh.query(select) == []
    sink.flush_log()
    expected = [
        ("stream", 1, 1, 0, 0, {"bank.account": 1}, 10, 11, True),
        ("stream", 2, 0, 1, 1, {"bank.account": 2}, 30, 31, True),
    ]
    assert wh.query(select) == expected
    sink.flush_log()  # nothing held: writes nothing
    assert wh.query(select) == expected
    # Times land as written (microsecond text), not read as seconds or shifted by a zone.
    assert wh.query(
        "SELECT min(finished_at >= started_at), "
        "max(abs(dateDiff('second', finished_at, now64(6, 'UTC')))) < 60 "
        f"FROM {names.batches} WHERE slot = 'm1'"
    ) == [(1, 1)]
    # Rows held for a second or more go out with the next batch.
    sink.apply([ev("u", 40, 1, after=account(1, "3.00"))], Offset("m1", 41, True))
    time.sleep(BATCH_LOG_SECONDS)
    sink.apply([ev("u", 50, 1, after=account(1, "4.00"))], Offset("m1", 51, True))
    assert [r[6] for r in wh.query(select)] == [10, 30, 40, 50]


def test_queries_take_the_engine_mutex_like_inserts(wh: Warehouse) -> None:
    """chDB handles run one statement at a time: a query on another thread (the sink's writer,
    a capture engine, dbt) waits while a statement holds the engine."""
    engine = wh.session._embedded
    assert engine is not None
    done: list[str] = []
    readers = [
        threading.Thread(target=lambda: done.append(str(wh.scalar("SELECT 1")))),
        threading.Thread(target=lambda: done.append(str(wh.query_arrow("SELECT 2 AS x")["x"][0]))),
        threading.Thread(target=lambda: done.append(str(wh.query_with_names("SELECT 3")[1][0][0]))),
    ]
    with engine.mutex:
        for t in readers:
            t.start()
        time.sleep(0.5)
        assert done == []
    for t in readers:
        t.join(timeout=30)
    assert sorted(done) == ["1", "2", "3"]


def test_offset_with_the_highest_lsn_of_the_slots_incarnation_wins(
    wh: Warehouse, wh_settings: Settings
) -> None:
    sink = ClickHouseSink(wh)
    offsets = db_names(wh_settings).offsets
    sink.apply([], Offset("w", 300, True))
    # The next capture process runs with its clock an hour behind and goes on from there.
    wh.command(
        f"INSERT INTO {offsets} (slot, lsn, snapshot_done, written_at) "
        "VALUES ('w', 500, 1, now64(6) - INTERVAL 1 HOUR)"
    )
    assert sink.load_offset("w") == Offset("w", 500, True)
    wh.command(f"OPTIMIZE TABLE {offsets} FINAL")
    assert sink.load_offset("w") == Offset("w", 500, True)
    # A new incarnation of the slot (here on a re-created source) starts below the old LSNs.
    sink.reset_for_snapshot("w", [])
    assert sink.load_offset("w") is None
    sink.apply([], Offset("w", 40, True))
    assert sink.load_offset("w") == Offset("w", 40, True)


def test_offsets_of_an_older_schema_are_carried_over(wh: Warehouse, wh_settings: Settings) -> None:
    names = db_names(wh_settings)
    apply_schema(wh)
    wh.command(f"DROP TABLE {names.offsets} SYNC")
    wh.command(
        f"CREATE TABLE {names.offsets} (slot String, lsn UInt64, snapshot_done UInt8, "
        "written_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
        "ENGINE = ReplacingMergeTree(written_at) ORDER BY slot"
    )
    wh.command(
        f"INSERT INTO {names.offsets} (slot, lsn, snapshot_done, written_at) VALUES "
        "('a', 70, 1, '2024-01-01 00:00:01'), ('a', 90, 1, '2024-01-01 00:00:02')"
    )
    apply_schema(wh)
    engine = wh.scalar(
        "SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'cdc_offsets'",
        {"d": names.meta},
    )
    assert "ReplacingMergeTree(lsn)" in engine
    assert ClickHouseSink(wh).load_offset("a") == Offset("a", 90, True)


def test_unchanged_toast_values_come_from_the_batch_or_the_warehouse(
    wh: Warehouse, wh_settings: Settings
) -> None:
    sink = ClickHouseSink(wh)
    raw = db_names(wh_settings).landing_table("bank", "transaction")
    big = "x" * 10_000

    def txn(i: int, status: str, description: str | None) -> dict[str, Any]:
        return {
            "txn_id": str(i),
            "txn_ref": f"550e8400-e29b-41d4-a716-{i:012d}",
            "account_id": "1",
            "card_id": None,
            "terminal_id": "5",
            "txn_type": "purchase",
            "status": status,
            "decline_reason": None,
            "amount": "10.00",
            "currency": "EUR",
            "balance_after": None,
            "description": description,
            "occurred_at": "2024-01-01 00:00:00+00",
            "created_at": "2024-01-01 00:00:00+00",
            "updated_at": "2024-01-01 00:00:00+00",
        }

    toast = frozenset({"description"})
    sink.apply(
        [
            ev("c", 10, 1, after=txn(1, "pending", big), table="transaction"),
            ev("c", 10, 2, after=txn(2, "pending", big + "2"), table="transaction"),
        ],
        Offset("t", 11, True),
    )
    # Key 1: previous value only in the warehouse. Key 3: inserted and updated in one batch.
    batch = [
        ev("u", 20, 1, after=txn(1, "approved", None), table="transaction", unchanged=toast),
        ev("c", 20, 2, after=txn(3, "pending", big + "3"), table="transaction"),
        ev("u", 20, 3, after=txn(3, "approved", None), table="transaction", unchanged=toast),
        ev("u", 20, 4, after=txn(3, "reversed", None), table="transaction", unchanged=toast),
        # Delete of a row with a TOAST column: key only.
        ev("d", 20, 5, before={"txn_id": "2"}, table="transaction"),
    ]
    sink.apply(batch, Offset("t", 21, True))
    sink.apply(batch, Offset("t", 21, True))
    assert final(wh, raw, "txn_id, status, description") == [
        (1, "approved", big),
        (3, "reversed", big + "3"),
    ]
    # A value that exists nowhere is an error naming table and column, never a silent NULL.
    with pytest.raises(CaptureError, match=r"bank\.transaction\.description"):
        sink.apply(
            [ev("u", 30, 1, after=txn(99, "approved", None), table="transaction", unchanged=toast)],
            Offset("t", 31, True),
        )


def test_added_column_lands_and_type_changes_stop_with_one_line(
    wh: Warehouse, wh_settings: Settings
) -> None:
    sink = ClickHouseSink(wh)
    names = db_names(wh_settings)
    raw = names.landing_table("bank", "card")
    card = {
        "card_id": "1",
        "account_id": "2",
        "customer_id": "3",
        "pan_enc": "\\x" + "00" * 48,
        "pan_hash": "a" * 64,
        "pan_last4": "1111",
        "network": "visa",
        "expires_on": "2029-12-31",
        "daily_limit": "500.00",
        "status": "active",
        "created_at": "2024-01-01 00:00:00+00",
        "updated_at": "2024-01-01 00:00:00+00",
        "closed_at": None,
    }
    sink.apply([ev("c", 10, 1, after=card, table="card")], Offset("a", 11, True))
    new_row = {**card, "card_id": "2", "nickname": "travel", "cashback": "0.015", "is_virtual": "t"}
    with pytest.raises(CaptureError, match=r"bank\.card\.nickname"):
        sink.apply([ev("c", 20, 1, after=new_row, table="card")], Offset("a", 21, True))
    sink.ensure_columns(
        "bank",
        "card",
        [
            SourceColumn("card_id", 20, key=True),
            SourceColumn("nickname", "text"),
            SourceColumn("cashback", 1700, ((10 << 16) | 4) + 4),
            SourceColumn("is_virtual", "boolean", not_null=True),
        ],
    )
    sink.ensure_columns("bank", "card", [SourceColumn("nickname", "text")])  # idempotent
    sink.apply([ev("c", 20, 1, after=new_row, table="card")], Offset("a", 21, True))
    types = dict(
        wh.query(
            "SELECT name, type FROM system.columns WHERE database = {d:String} AND table = 'card'",
            {"d": names.raw},
        )
    )
    assert types["nickname"] == "Nullable(String)"
    assert types["cashback"] == "Nullable(Decimal(10, 4))"
    assert types["is_virtual"] == "Bool"
    assert final(wh, raw, "card_id, nickname, cashback, is_virtual, expires_on") == [
        (1, None, None, False, datetime(2029, 12, 31).date()),
        (2, "travel", Decimal("0.0150"), True, datetime(2029, 12, 31).date()),
    ]
    with pytest.raises(CaptureError, match=r"bank\.card\.daily_limit changed type") as err:
        ensure_columns(wh, "bank", "card", [SourceColumn("daily_limit", "text", not_null=True)])
    assert "\n" not in str(err.value)
    # A table the schema file does not know is created from its Relation, keyed by its PK.
    sink.ensure_columns(
        "bank",
        "branch",
        [
            SourceColumn("branch_id", "int8", not_null=True, key=True),
            SourceColumn("opened", "date"),
        ],
    )
    sink.apply(
        [ev("c", 30, 1, after={"branch_id": "5", "opened": "2020-05-06"}, table="branch")],
        Offset("a", 31, True),
    )
    assert final(wh, names.landing_table("bank", "branch"), "branch_id, opened") == [
        (5, datetime(2020, 5, 6).date())
    ]


def test_null_into_not_null_column_makes_it_nullable_but_never_a_key(wh: Warehouse) -> None:
    """Postgres sends NULL only where the column allows it now (DROP NOT NULL, or a dropped
    column): the warehouse column takes NULL from then on, old rows as they were."""
    sink = ClickHouseSink(wh)
    sink.apply([ev("c", 8, 1, after=account(2, "2.00"))], Offset("n", 9, True))
    sink.apply([ev("c", 10, 1, after=account(1, "1.00", iban=None))], Offset("n", 11, True))
    table = db_names(wh.settings).landing_table("bank", "account")
    assert wh.scalar(f"SELECT toTypeName(iban) FROM {table} LIMIT 1") == "Nullable(String)"
    got = wh.query(f"SELECT account_id, iban FROM {table} FINAL ORDER BY account_id")
    assert got == [(1, None), (2, "DE00000000000002")]
    with pytest.raises(CaptureError, match=r"bank\.account\.account_id: NULL arrived for key"):
        sink.apply(
            [ev("c", 12, 1, after=account(3, "1.00", account_id=None))], Offset("n", 13, True)
        )
    assert sink.load_offset("n") == Offset("n", 11, True)


def snapshot_batch(ids: list[int], amount_type: pa.DataType) -> pa.RecordBatch:
    n = len(ids)
    amounts = [Decimal(i) / 100 + Decimal("0.29") for i in ids]
    return pa.RecordBatch.from_pydict(
        {
            "account_id": pa.array(ids, pa.int64()),
            "customer_id": pa.array([7] * n, pa.int64()),
            "iban": pa.array([f"DE{i}" for i in ids]),
            "kind": pa.array(["savings"] * n),
            "currency": pa.array(["EUR"] * n),
            "balance": pa.array(amounts, amount_type)
            if amount_type != pa.string()
            else pa.array([str(a) for a in amounts]),
            "overdraft_limit": pa.array(["0.00"] * n),
            "status": pa.array(["active"] * n),
            "created_at": pa.array(
                [datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)] * n, pa.timestamp("us", "UTC")
            ),
            "updated_at": pa.array(["2024-01-02 03:04:05.000006+00"] * n),
            "closed_at": pa.array([None] * n, pa.timestamp("us", "UTC")),
        }
    )


def test_snapshot_is_staged_until_done_then_stream_goes_on_top(
    wh: Warehouse, wh_settings: Settings
) -> None:
    sink = ClickHouseSink(wh)
    raw = db_names(wh_settings).landing_table("bank", "account")
    # An older, interrupted attempt left rows behind; the redo replaces them entirely.
    sink.load_snapshot("bank", "account", snapshot_batch([1, 2, 999], pa.decimal128(18, 2)), 50)
    lsn = 1000
    sink.reset_for_snapshot("snap", [("bank", "account"), ("bank", "card")])
    assert (
        sink.load_snapshot("bank", "account", snapshot_batch([1, 2], pa.decimal128(18, 2)), lsn)
        == 2
    )
    assert sink.load_snapshot("bank", "account", snapshot_batch([3], pa.string()), lsn) == 1
    # Not visible before the snapshot is declared done.
    assert [r[0] for r in final(wh, raw, "account_id")] == [1, 2, 999]
    sink.apply([], Offset("snap", lsn, True))
    rows = final(wh, raw, "account_id, balance, created_at, updated_at, closed_at, _version, _op")
    assert rows == [
        (
            i,
            Decimal(i) / 100 + Decimal("0.29"),
            datetime(2024, 1, 2, 3, 4, 5, 6),
            datetime(2024, 1, 2, 3, 4, 5, 6),
            None,
            make_version(lsn, 0),
            "r",
        )
        for i in (1, 2, 3)
    ]
    # Streamed changes sort above the snapshot; a repeated snapshot load replaces nothing newer.
    sink.apply([ev("u", lsn + 8, 1, after=account(2, "7.00"))], Offset("snap", lsn + 9, True))
    sink.load_snapshot("bank", "account", snapshot_batch([2], pa.decimal128(18, 2)), lsn)
    assert final(wh, raw, "account_id, balance") == [
        (1, Decimal("0.30")),
        (2, Decimal("7.00")),
        (3, Decimal("0.32")),
    ]


def test_truncate_hides_older_rows_only(wh: Warehouse, wh_settings: Settings) -> None:
    sink = ClickHouseSink(wh)
    raw = db_names(wh_settings).landing_table("bank", "account")
    sink.apply(
        [ev("c", 10, i, after=account(i, "1.00")) for i in (1, 2, 3)], Offset("tr", 11, True)
    )
    # One transaction: truncate at position 1, then a new row at position 2.
    sink.apply(
        [ev("c", 20, 2, after=account(4, "4.00"))],
        Offset("tr", 21, True),
        truncates=[("bank", "account", make_version(20, 1))],
    )
    assert final(wh, raw, "account_id") == [(4,)]
    # Re-delivery of older changes stays hidden; replaying the truncate is harmless.
    sink.apply(
        [ev("c", 10, i, after=account(i, "1.00")) for i in (1, 2, 3)], Offset("tr", 11, True)
    )
    sink.apply([], Offset("tr", 21, True), truncates=[("bank", "account", make_version(20, 1))])
    assert final(wh, raw, "account_id") == [(4,)]


def test_reset_forgets_the_offset_and_keeps_the_tables_readable(
    wh: Warehouse, wh_settings: Settings
) -> None:
    """cdc resync (issue 9, point 7): the landing tables are never emptied before the new
    snapshot replaces them (reset_for_snapshot stages it, snapshot_done swaps it in)."""
    sink = ClickHouseSink(wh)
    names = db_names(wh_settings)
    sink.ensure_columns(
        "bank", "branch", [SourceColumn("branch_id", "int8", not_null=True, key=True)]
    )
    sink.apply([ev("c", 10, 1, after=account(1, "1.00"))], Offset("r", 11, True))
    sink.apply([ev("c", 10, 1, after=account(1, "1.00"))], Offset("other", 11, True))
    sink.reset("r")
    assert sink.load_offset("r") is None
    assert sink.load_offset("other") == Offset("other", 11, True)
    assert wh.scalar(f"SELECT count() FROM {names.landing_table('bank', 'account')} FINAL") == 1
    tables = {t for _, t in landing_tables(wh)}
    assert {"branch", "account"} <= tables


def test_snapshot_accepts_arrow_typed_columns(wh: Warehouse, wh_settings: Settings) -> None:
    import uuid

    sink = ClickHouseSink(wh)
    names = db_names(wh_settings)
    refs = [uuid.UUID(int=(7 << 64) + i) for i in (1, 2)]
    ts = pa.array([datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)] * 2, pa.timestamp("us", "UTC"))
    batch = pa.RecordBatch.from_pydict(
        {
            "txn_id": pa.array([1, 2], pa.int64()),
            "txn_ref": pa.array([r.bytes for r in refs], pa.binary(16)),
            "account_id": pa.array([3, 3], pa.int32()),
            "card_id": pa.array([None, 9], pa.int64()),
            "terminal_id": pa.array([None, None], pa.int64()),
            "txn_type": pa.array([b"purchase", b"refund"], pa.binary()),  # opaque enum bytes
            "status": pa.array(["approved", "declined"], pa.large_string()),
            "decline_reason": pa.array([None, "card_closed"]),
            "amount": pa.array(
                [Decimal("0.29"), Decimal("12345678901234.99")], pa.decimal128(18, 2)
            ),
            "currency": pa.array(["EUR", "EUR"]),
            "balance_after": pa.array([Decimal("-1.50"), None], pa.decimal128(38, 2)),
            "description": pa.array([None, "x"]),
            "occurred_at": ts,
            "created_at": ts,
            "updated_at": ts,
        }
    )
    assert sink.load_snapshot("bank", "transaction", batch, 77) == 2
    rows = final(
        wh,
        names.landing_table("bank", "transaction"),
        "txn_id, txn_ref, account_id, card_id, txn_type, status, amount, balance_after, occurred_at",
    )
    assert rows == [
        (
            1,
            refs[0],
            3,
            None,
            "purchase",
            "approved",
            Decimal("0.29"),
            Decimal("-1.50"),
            datetime(2024, 5, 1, 12, 0, 0, 1),
        ),
        (
            2,
            refs[1],
            3,
            9,
            "refund",
            "declined",
            Decimal("12345678901234.99"),
            None,
            datetime(2024, 5, 1, 12, 0, 0, 1),
        ),
    ]
    card = pa.RecordBatch.from_pydict(
        {
            "card_id": pa.array([5], pa.int64()),
            "account_id": pa.array([3], pa.int64()),
            "customer_id": pa.array([1], pa.int64()),
            "pan_enc": pa.array(["\\x" + "00" * 48]),
            "pan_hash": pa.array(["a" * 64]),
            "pan_last4": pa.array(["4000"]),
            "network": pa.array(["visa"]),
            "expires_on": pa.array([datetime(2030, 1, 31).date()], pa.date32()),
            "daily_limit": pa.array([Decimal("250.00")], pa.decimal128(18, 2)),
            "status": pa.array(["active"]),
            "created_at": ts.slice(0, 1),
            "updated_at": ts.slice(0, 1),
            "closed_at": pa.array([None], pa.timestamp("us", "UTC")),
        }
    )
    sink.load_snapshot("bank", "card", card, 77)
    assert final(wh, names.landing_table("bank", "card"), "card_id, expires_on, daily_limit") == [
        (5, datetime(2030, 1, 31).date(), Decimal("250.00"))
    ]
    # NULL in a NOT NULL column is refused with the table and column named.
    bad = card.set_column(4, "pan_hash", pa.array([None], pa.string()))
    with pytest.raises(CaptureError, match=r"bank\.card\.pan_hash: NULL"):
        sink.load_snapshot("bank", "card", bad, 77)


def test_screen_rejects_carry_their_kafka_record(wh: Warehouse, wh_settings: Settings) -> None:
    """A value the warehouse type cannot hold, read from Kafka, is recorded in meta.cdc_rejects
    with the topic, partition and offset it came from: through the columnar path (the kafka
    engine's bulk conversion) and through the per-event path alike; rows without a Kafka
    record (another engine) keep them empty."""
    import numpy as np

    from bankde.cdc.columnar import ChangeBatch
    from bankde.cdc.engines.kafka import KafkaBatch
    from bankde.cdc.envelope import ChangeColumns, Origins

    sink = ClickHouseSink(wh)
    rows = [account(1, "1.00"), account(2, "a lot"), account(3, "NaN")]
    names = tuple(rows[0])
    n = len(rows)
    cols = ChangeColumns(
        "bank",
        "account",
        names,
        [pa.array([r[c] for r in rows], pa.string()) for c in names],
        pa.array(["c"] * n, pa.string()),
        np.zeros(n, bool),
        np.full(n, 500, np.uint64),
        np.arange(1, n + 1, dtype=np.uint32),
        np.full(n, 77, np.uint64),
        np.full(n, TS, np.int64),
        Origins(
            np.array(["bankde.bank.account"] * n, object),
            np.array([0, 2, 1], np.int32),
            np.array([10, 41, 7], np.int64),
        ),
    )
    batch = ChangeBatch()
    batch.add(KafkaBatch(0, 500, 500, TS, columns=[cols]))
    sink.apply(batch, Offset("k", 501, True))
    located = ev("c", 600, 1, after=account(4, "Infinity"))
    located.origin = ("bankde.bank.account", 1, 99)
    plain = ev("c", 600, 2, after=account(5, "-Infinity"))
    sink.apply([located, plain], Offset("k", 601, True))
    got = wh.query(
        "SELECT key, column, source_text, topic, partition, offset FROM "
        + db_names(wh_settings).meta_table("cdc_rejects")
        + " FINAL ORDER BY key"
    )
    assert got == [
        ('{"account_id":"2"}', "balance", "a lot", "bankde.bank.account", 2, 41),
        ('{"account_id":"3"}', "balance", "NaN", "bankde.bank.account", 1, 7),
        ('{"account_id":"4"}', "balance", "Infinity", "bankde.bank.account", 1, 99),
        ('{"account_id":"5"}', "balance", "-Infinity", None, None, None),
    ]
    raw = db_names(wh_settings).landing_table("bank", "account")
    assert final(wh, raw, "account_id") == [(1,)]
