"""Debezium JSON -> bankde transactions: text forms, positions, versions, TOAST, truncates."""

from __future__ import annotations

import pytest

from bankde.cdc.engines.debezium.convert import (
    UNCHANGED_TOAST,
    Assembler,
    TableCatalog,
    TableInfo,
    parse_txn_id,
    value_fn,
)
from bankde.cdc.envelope import make_version
from bankde.errors import CaptureError

COLS = [
    ("id", 20, -1, "bigint"),
    ("amount", 1700, 1310726, "numeric(18,2)"),
    ("day", 1082, -1, "date"),
    ("at", 1184, -1, "timestamp with time zone"),
    ("local", 1114, -1, "timestamp without time zone"),
    ("ref", 2950, -1, "uuid"),
    ("kind", 16400, -1, "bank.txn_type"),
    ("note", 25, -1, "text"),
    ("ok", 16, -1, "boolean"),
]


def _info() -> TableInfo:
    return TableInfo.build(1234, "bank", "t", COLS, ("id",))


def _catalog(*reads: TableInfo) -> TableCatalog:
    """A catalog holding _info() whose reads return `reads` in turn (none expected if empty)."""
    left = list(reads)

    def read(only: object) -> dict[tuple[str, str], TableInfo]:
        if not left:
            pytest.fail("no catalog read expected")
        return {("bank", "t"): left.pop(0)}

    catalog = TableCatalog("debezium", read)
    catalog.tables[("bank", "t")] = _info()
    return catalog


@pytest.mark.parametrize(
    ("pg_type", "value", "text"),
    [
        ("date", 0, "1970-01-01"),
        ("date", 19753, "2024-01-31"),
        ("date", -29094, "1890-05-06"),
        ("timestamp with time zone", "2024-01-31T12:00:00.500000Z", "2024-01-31 12:00:00.5+00"),
        ("timestamp with time zone", "2024-01-31T12:00:00.000000Z", "2024-01-31 12:00:00+00"),
        (
            "timestamp with time zone",
            "2024-01-31T12:00:00.123456Z",
            "2024-01-31 12:00:00.123456+00",
        ),
        ("timestamp without time zone", 1706702400500000, "2024-01-31 12:00:00.5"),
        ("timestamp(3) without time zone", 1706702400500, "2024-01-31 12:00:00.5"),
        ("time without time zone", 45_296_000_001, "12:34:56.000001"),
        ("bigint", 9007199254740993, "9007199254740993"),
        ("boolean", True, "t"),
        ("bytea", "deadbeef", "\\xdeadbeef"),
    ],
)
def test_value_text_forms(pg_type: str, value: object, text: str) -> None:
    fn = value_fn(pg_type)
    assert fn is not None
    assert fn(value) == text


@pytest.mark.parametrize("pg_type", ["numeric(18,2)", "uuid", "text", "bank.txn_type", "jsonb"])
def test_text_types_pass_through(pg_type: str) -> None:
    assert value_fn(pg_type) is None


def _row(i: int, **kw: object) -> dict:
    row = {
        "id": i,
        "amount": "-12.30",
        "day": 19753,
        "at": "2024-01-31T12:00:00.000000Z",
        "local": None,
        "ref": "c73dca4d-bf51-48c8-92da-5752f4334d32",
        "kind": "purchase",
        "note": None,
        "ok": False,
    }
    row.update(kw)
    return row


def _event(op: str, before: dict | None, after: dict | None, table: str = "t") -> dict:
    return {
        "op": op,
        "before": before,
        "after": after,
        "source": {"schema": "bank", "table": table, "lsn": 1, "txId": 7, "snapshot": "false"},
    }


def test_transaction_positions_versions_and_values() -> None:
    asm = Assembler(_catalog())
    asm.begin(7)
    asm.change(_event("c", None, _row(1)))
    asm.change(_event("u", _row(1), _row(1, amount="0.01", note="x")))
    # A primary-key change arrives from Debezium as delete + create, like the native decoder.
    asm.change(_event("d", _row(1, amount="0.01", note="x"), None))
    asm.change(_event("c", None, _row(2)))
    txn = asm.end(7, 0x1_0000_0100, 1700000000123)
    assert not asm.in_transaction
    assert [e.op for e in txn.events] == ["c", "u", "d", "c"]
    assert [e.pos for e in txn.events] == [1, 2, 3, 4]
    assert txn.end_lsn == txn.commit_lsn == 0x1_0000_0100
    assert txn.events[1].version == make_version(0x1_0000_0100, 2)
    first = txn.events[0]
    assert first.after == {
        "id": "1",
        "amount": "-12.30",
        "day": "2024-01-31",
        "at": "2024-01-31 12:00:00+00",
        "local": None,
        "ref": "c73dca4d-bf51-48c8-92da-5752f4334d32",
        "kind": "purchase",
        "note": None,
        "ok": "f",
    }
    assert first.source.tx_id == 7 and first.source.ts_ms == 1700000000123
    assert txn.events[2].before is not None and txn.events[2].before["id"] == "1"
    # The table is described (for the sink's ensure_columns) once per connection.
    assert [(r.schema, r.table) for r in txn.relations] == [("bank", "t")]
    asm.begin(8)
    asm.change(_event("c", None, _row(3)))
    assert asm.end(8, 0x1_0000_0200, 0).relations == []


def test_unchanged_toast_taken_from_old_row() -> None:
    asm = Assembler(_catalog(_info()))
    asm.begin(1)
    asm.change(_event("u", _row(1, note="long"), _row(1, note=UNCHANGED_TOAST, amount="1.00")))
    asm.change(_event("u", None, _row(1, note=UNCHANGED_TOAST)))
    ev1, ev2 = asm.end(1, 100, 0).events
    assert ev1.after is not None and ev1.after["note"] == "long" and not ev1.unchanged
    assert ev2.after is not None and ev2.after["note"] is None and ev2.unchanged == {"note"}


def test_truncate_and_new_column() -> None:
    wider = TableInfo.build(1234, "bank", "t", [*COLS, ("extra", 25, -1, "text")], ("id",))
    asm = Assembler(_catalog(wider))
    asm.begin(1)
    asm.change(_event("c", None, _row(1)))
    asm.change(
        {"op": "t", "before": None, "after": None, "source": _event("c", None, None)["source"]}
    )
    asm.change(_event("c", None, _row(2, extra="x")))
    txn = asm.end(1, 100, 0)
    assert txn.truncates == [("bank", "t", 2)]
    assert [e.pos for e in txn.events] == [1, 3]
    assert txn.events[1].after is not None and txn.events[1].after["extra"] == "x"
    assert [r.names[-1] for r in txn.relations] == ["extra"]


def test_out_of_step_stream_is_refused() -> None:
    asm = Assembler(_catalog(_info()))
    with pytest.raises(CaptureError):
        asm.change(_event("c", None, _row(1)))
    asm.begin(1)
    with pytest.raises(CaptureError):
        asm.end(2, 100, 0)


def test_parse_txn_id() -> None:
    assert parse_txn_id("751:27585416") == (751, 27585416)


@pytest.mark.parametrize(
    ("pg_type", "fits", "misfits"),
    [
        ("smallint", [0, -32768, 32767], [32768, "1", True]),
        ("integer", [2147483647, -2147483648], [2147483648, -2147483649, "5"]),
        ("bigint", [2**62], ["5", 1.5]),
        (
            "numeric(18,2)",
            ["1.11", "-0.03", "1234567890123456.78", "NaN", "5"],
            ["2.3456", "1.1000"],
        ),
        ("numeric(18,2)", [UNCHANGED_TOAST], ["12345678901234567", 5]),
        ("text", ["x", UNCHANGED_TOAST], [5, True]),
        ("character varying(5)", ["abcdefgh"], [1]),
        ("integer[]", [[1, None]], ["{1}"]),
        ("boolean", [False], [0]),
    ],
)
def test_values_that_do_not_fit_the_catalog_type(
    pg_type: str, fits: list[object], misfits: list[object]
) -> None:
    """A value the catalog's type cannot hold says the source's type changed (issue 9)."""
    info = TableInfo.build(1, "bank", "t", [("id", 20, -1, "bigint"), ("c", 0, -1, pg_type)], ())
    for v in fits:
        assert info.misfit({"id": 1, "c": v}) is None, v
    for v in misfits:
        assert info.misfit({"id": 1, "c": v}) == "c", v


def test_a_type_change_reads_the_catalog_and_describes_the_table_again() -> None:
    """numeric(18,2) -> numeric(20,4): the first value with four decimals reads the table again
    and the transaction carries its new relation (what the streamer widens the warehouse by);
    a value that still does not fit after a fresh read costs no further reads."""
    wider = TableInfo.build(
        1234, "bank", "t", [COLS[0], ("amount", 1700, 1310728, "numeric(20,4)"), *COLS[2:]], ("id",)
    )
    asm = Assembler(_catalog(wider))
    asm.begin(1)
    asm.change(_event("c", None, _row(1)))
    asm.end(1, 100, 0)
    asm.begin(2)
    asm.change(_event("u", None, _row(1, amount="1.0000")))
    asm.change(_event("u", None, _row(1, amount="2.2345")))
    txn = asm.end(2, 200, 0)
    assert [r.columns[1].typmod for r in txn.relations] == [1310728]
    assert [e.after["amount"] for e in txn.events if e.after] == ["1.0000", "2.2345"]
    # Same shape after a read: not a type change, and the column is not checked again.
    same = _catalog(_info())
    info, refreshed = same.for_event(("bank", "t"), _event("c", None, _row(1, note=5)))
    assert not refreshed and info.misfit(_row(1, note=5)) is None
    assert same.for_event(("bank", "t"), _event("c", None, _row(1, note=6))) == (info, False)
