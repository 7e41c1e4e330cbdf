"""The bulk (Arrow) conversion of Debezium envelopes gives exactly what the per-event one gives."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bankde.cdc.engines.debezium.columns import (
    Irregular,
    plan_for,
    table_columns,
    transaction_ends,
)
from bankde.cdc.engines.debezium.convert import (
    UNCHANGED_TOAST,
    TableInfo,
    change_event,
    parse_txn_id,
)
from bankde.cdc.envelope import Source

COLUMNS = [
    ("id", 20, -1, "bigint"),
    ("name", 25, -1, "text"),
    ("amount", 1700, -1, "numeric(18,2)"),
    ("flag", 16, -1, "boolean"),
    ("born", 1082, -1, "date"),
    ("at", 1114, -1, "timestamp without time zone"),
    ("at3", 1114, 3, "timestamp(3) without time zone"),
    ("seen", 1184, -1, "timestamp with time zone"),
    ("blob", 17, -1, "bytea"),
    ("clock", 1083, -1, "time without time zone"),
    ("span", 1186, -1, "interval"),
    ("small", 21, -1, "smallint"),
]
INFO = TableInfo.build(1, "bank", "t", COLUMNS, ("id",))

ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "name": 'Müller "x"\n',
        "amount": "12.30",
        "flag": True,
        "born": 19753,
        "at": 1_706_702_400_500_000,
        "at3": 1_706_702_400_123,
        "seen": "2024-01-31T12:00:00.500000Z",
        "blob": "00ff",
        "clock": 45_296_500_000,
        "span": "P1Y2M3DT4H5M6.789S",
        "small": -3,
    },
    {
        "id": 2,
        "name": None,
        "amount": None,
        "flag": False,
        "born": -719_162,
        "at": 0,
        "at3": -1,
        "seen": "2024-01-31T12:00:10Z",
        "blob": None,
        "clock": 0,
        "span": None,
        "small": None,
    },
    {
        "id": 3,
        "name": "",
        "amount": "-0.01",
        "flag": None,
        "born": None,
        "at": 1_706_702_410_000_000,
        "at3": None,
        "seen": "2024-01-31T12:00:10.050000Z",
        "blob": "",
        "clock": None,
        "span": "P0Y0M0DT0H0M0S",
        "small": 0,
    },
    {  # far dates and specials: the per-value converters' own text
        "id": 4,
        "name": "x",
        "amount": "NaN",
        "flag": True,
        "born": -800_000,
        "at": -70_000_000_000_000_000,
        "at3": 260_000_000_000_000,
        "seen": "infinity",
        "blob": "ab",
        "clock": 1,
        "span": None,
        "small": 1,
    },
]


def envelope(op: str, row: dict[str, Any], i: int, before: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps(
        {
            "before": row if op == "d" else before,
            "after": None if op == "d" else row,
            "source": {
                "version": "3.6.1.Final",
                "schema": "bank",
                "table": "t",
                "lsn": 1000 + i,
                "ts_ms": 1_700_000_000_000 + i,
                "txId": 77,
                "snapshot": "true" if op == "r" else "false",
            },
            "transaction": None if op == "r" else {"id": f"{500 + i}:{900 + i}", "total_order": i},
            "op": op,
            "ts_ms": 1,
        }
    )


def per_event(values: list[bytes]) -> list[tuple[Any, ...]]:
    out = []
    for raw in values:
        v = orjson.loads(raw)
        op = v["op"]
        src = v["source"]
        if op == "r":
            lsn, pos, xid = src["lsn"], 0, 0
        else:
            lsn, pos, xid = (
                src["lsn"],
                v["transaction"]["total_order"],
                int(v["transaction"]["id"].split(":")[0]),
            )
        ev = change_event(
            INFO, op, v["before"], v["after"], Source(lsn, xid, src["ts_ms"], "bank", "t"), pos
        )
        row = ev.before if op == "d" else ev.after
        assert row is not None
        out.append((op, lsn, pos, xid, src["ts_ms"], *(row.get(n) for n in INFO.relation.names)))
    return out


def bulk(values: list[bytes]) -> list[tuple[Any, ...]]:
    plan = plan_for(INFO)
    assert plan is not None
    cols, ts = table_columns(plan, values)
    assert ts == max(orjson.loads(v)["source"]["ts_ms"] for v in values)
    texts = [v.to_pylist() for v in cols.values]
    ops = cols.op.to_pylist()
    assert list(cols.deleted) == [o == "d" for o in ops]
    return [
        (
            ops[i],
            int(cols.lsn[i]),
            int(cols.pos[i]),
            int(cols.tx_id[i]),
            int(cols.ts_ms[i]),
            *(t[i] for t in texts),
        )
        for i in range(len(cols))
    ]


def test_bulk_equals_per_event() -> None:
    ops = ["r", "c", "u", "d"]
    values = [envelope(ops[i % 4], dict(row), i + 1) for i, row in enumerate(ROWS * 3)]
    assert bulk(values) == per_event(values)


@pytest.mark.parametrize(
    "values",
    [
        [envelope("t", ROWS[0], 1)],  # a truncate
        [envelope("c", {**ROWS[0], "name": UNCHANGED_TOAST}, 1)],
        [envelope("c", {**ROWS[0], "new_col": 1}, 1)],  # a column the catalog lacks
        [envelope("c", {**ROWS[0], "id": "1"}, 1)],  # another JSON type
        # Values the catalog's type cannot hold: the source's type changed (issue 9).
        [envelope("c", {**ROWS[0], "amount": "2.3456"}, 1)],
        [envelope("c", {**ROWS[0], "amount": "12345678901234567"}, 1)],
        [envelope("d", {**ROWS[0], "small": 40000}, 1)],
        [envelope("c", {**ROWS[0], "name": 5}, 1)],
        [b"not json"],
        [envelope("d", ROWS[0], 1).replace(b'"before":{', b'"before":null,"x":{')],
    ],
)
def test_irregular_events_go_event_by_event(values: list[bytes]) -> None:
    plan = plan_for(INFO)
    assert plan is not None
    with pytest.raises(Irregular):
        table_columns(plan, values)


def test_floats_and_arrays_stay_per_event() -> None:
    for col in (("r", 701, -1, "double precision"), ("a", 1007, -1, "integer[]")):
        assert plan_for(TableInfo.build(1, "bank", "t", [COLUMNS[0], col], ("id",))) is None


def test_commit_lsns_version_changes_and_a_missing_end_is_irregular() -> None:
    """With the END records' commit LSNs, a change is versioned by its transaction's commit (a
    snapshot read keeps its own LSN); a change whose END is not read yet is left to the
    per-event path, which holds it."""
    plan = plan_for(INFO)
    assert plan is not None
    ops = ["r", "c", "u", "d"]
    values = [envelope(ops[i % 4], dict(row), i + 1) for i, row in enumerate(ROWS * 2)]
    xids = [500 + i + 1 for i in range(len(values))]
    commits = {x: 10_000 + x for x in xids}
    cols, _ = table_columns(plan, values, commits)
    for i, op in enumerate(cols.op.to_pylist()):
        want = 1000 + i + 1 if op == "r" else commits[xids[i]]
        assert int(cols.lsn[i]) == want, (i, op)
    missing = {x: lsn for x, lsn in commits.items() if x != xids[1]}
    with pytest.raises(Irregular, match="END"):
        table_columns(plan, values, missing)


@pytest.mark.parametrize(
    "texts",
    [
        ["2024-03-01T12:00:00.5Z", "2024-03-01T12:00:00Z", None, "2024-03-01T12:00:10.120Z"],
        ["0001-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999999Z", "1969-12-31T23:59:59.9Z"],
        ["2024-03-01T12:00:00Z", "infinity"],
        ["2024-03-01T12:00:00+01:00"],
        ["+10000-01-01T00:00:00Z", "0000-12-31T00:00:00Z", "-0001-03-01T00:00:00Z"],
        ["2024-03-01T12:00:00.1234567Z", "2024-03-01Z"],
    ],
)
def test_zoned_timestamps_in_bulk_print_as_the_per_value_converter(texts: list[Any]) -> None:
    """The cast-and-trim conversion of ZonedTimestamps, or its fallback, gives exactly the text
    the per-event converter gives, for regular values and for every shape it must not take."""
    import pyarrow as pa

    from bankde.cdc.engines.debezium.columns import _Col, _text
    from bankde.cdc.engines.debezium.convert import _zoned_timestamp_text

    got = _text(_Col("seen", "tstz", None), pa.array(texts, pa.string())).to_pylist()
    assert got == [None if t is None else _zoned_timestamp_text(t) for t in texts]


# Every type the bulk plan takes (the rest stay per event: test_floats_and_arrays_stay_per_event).
EVERY_TYPE = [
    ("id", 20, -1, "bigint"),
    ("i4", 23, -1, "integer"),
    ("i2", 21, -1, "smallint"),
    ("o", 26, -1, "oid"),
    ("txt", 25, -1, "text"),
    ("vc", 1043, 36, "character varying(32)"),
    ("ch", 1042, 7, "character(3)"),
    ("u", 2950, -1, "uuid"),
    ("js", 114, -1, "json"),
    ("jb", 3802, -1, "jsonb"),
    ("en", 90001, -1, "bank.txn_type"),
    ("n", 1700, -1, "numeric"),
    ("n18", 1700, 1179654, "numeric(18,2)"),
    ("b", 16, -1, "boolean"),
    ("d", 1082, -1, "date"),
    ("ts", 1114, -1, "timestamp without time zone"),
    ("ts3", 1114, 3, "timestamp(3) without time zone"),
    ("tz", 1184, -1, "timestamp with time zone"),
    ("by", 17, -1, "bytea"),
    ("tm", 1083, -1, "time without time zone"),
    ("ttz", 1266, -1, "time with time zone"),
    ("iv", 1186, -1, "interval"),
]
EVERY_INFO = TableInfo.build(2, "bank", "every", EVERY_TYPE, ("id",))


def _random_value(rng: Any, name: str) -> Any:
    """A Debezium JSON value of column `name`: regular, at its type's edges, NULL or empty."""
    if rng.random() < 0.15:
        return None
    day, us = rng.randrange(-800_000, 3_000_000), rng.randrange(-(2**62), 2**62)
    text = rng.choice(["", " ", "Müller", 'a"b\\c\n', "NULL", "\\x00", "x" * 40])
    return {
        "id": rng.randrange(-(2**63), 2**63),
        "i4": rng.randrange(-(2**31), 2**31),
        "i2": rng.randrange(-(2**15), 2**15),
        "o": rng.randrange(0, 2**32),
        "txt": text,
        "vc": text[:32],
        "ch": rng.choice(["EUR", "a  ", "   "]),
        "u": f"{rng.getrandbits(128):032x}",
        "js": rng.choice(['{"a": [1, 2.5, null]}', "null", '"x"', "[]"]),
        "jb": rng.choice(['{"a": 1}', "{}", "3"]),
        "en": rng.choice(["purchase", "refund", ""]),
        "n": rng.choice(["0", "-0.000001", "123456789012345678901234567890.5", "NaN", "1e5"]),
        "n18": rng.choice(["0.00", "-9999999999999999.99", "12.3", "7", "-0.01", "Infinity"]),
        "b": rng.random() < 0.5,
        "d": rng.choice([day, 0, -719_162, 2_932_896, -719_163, 2_932_897]),
        "ts": rng.choice([us // 1000, 0, -1, 1_706_702_400_000_000, us]),
        "ts3": rng.choice([us // 1_000_000, 0, -1, 1_706_702_400_123]),
        "tz": rng.choice(
            [
                "2024-03-01T12:00:00.5Z",
                "2024-03-01T12:00:00Z",
                f"20{rng.randrange(10, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}"
                f"T0{rng.randrange(0, 9)}:59:5{rng.randrange(0, 9)}.{rng.randrange(0, 999999):06d}Z",
                "0001-01-01T00:00:00Z",
                "infinity",
            ]
        ),
        "by": rng.choice(["", "00ff", f"{rng.getrandbits(64):016x}"]),
        "tm": rng.choice([0, 86_400_000_000, rng.randrange(0, 86_400_000_000)]),
        "ttz": rng.choice(["12:00:00.5Z", "00:00:00Z", "23:59:59.999999Z"]),
        "iv": rng.choice(["P0Y0M0DT0H0M0S", "P1Y2M3DT4H5M6.789S", "P-1Y0M-3DT0H0M-0.5S"]),
    }[name]


@pytest.mark.parametrize("seed", range(5))
def test_a_random_batch_of_every_type_converts_in_bulk_as_event_by_event(seed: int) -> None:
    """Random rows of every type the bulk plan takes, as snapshot reads, inserts, updates
    (with the old row) and deletes: the bulk conversion gives each value, op and version
    exactly as change_event does."""
    import random

    rng = random.Random(seed)
    plan = plan_for(EVERY_INFO)
    assert plan is not None
    names = EVERY_INFO.relation.names
    values, want = [], []
    for i in range(1, 301):
        row = {n: _random_value(rng, n) for n in names}
        op = rng.choice("rcud")
        old = {**row, "txt": "old"} if op == "u" and rng.random() < 0.5 else None
        raw = orjson.dumps(
            {
                "before": row if op == "d" else old,
                "after": None if op == "d" else row,
                "source": {"schema": "bank", "table": "every", "lsn": 1000 + i, "ts_ms": i},
                "transaction": None if op == "r" else {"id": f"{7 + i}:{90 + i}", "total_order": i},
                "op": op,
            }
        )
        values.append(raw)
        v = orjson.loads(raw)
        lsn, pos, xid = (1000 + i, 0, 0) if op == "r" else (1000 + i, i, 7 + i)
        ev = change_event(
            EVERY_INFO, op, v["before"], v["after"], Source(lsn, xid, i, "bank", "every"), pos
        )
        key_row = ev.before if op == "d" else ev.after
        assert key_row is not None
        want.append((op, lsn, pos, xid, i, *(key_row.get(n) for n in names)))
    cols, ts = table_columns(plan, values)
    assert ts == 300
    texts = [v.to_pylist() for v in cols.values]
    ops = cols.op.to_pylist()
    assert list(cols.deleted) == [o == "d" for o in ops]
    got = [
        (
            ops[r],
            int(cols.lsn[r]),
            int(cols.pos[r]),
            int(cols.tx_id[r]),
            int(cols.ts_ms[r]),
            *(t[r] for t in texts),
        )
        for r in range(len(cols))
    ]
    assert got == want


def _ends_per_record(values: list[bytes]) -> tuple[list[int], list[int], list[int]] | str:
    at, xids, lsns = [], [], []
    for i, raw in enumerate(values):
        try:
            value = orjson.loads(raw)
            if value.get("status") != "END":
                continue
            xid, lsn = parse_txn_id(value["id"])
        except Exception:
            return "not a transaction record"
        at.append(i)
        xids.append(xid)
        lsns.append(lsn)
    return at, xids, lsns


@pytest.mark.parametrize(
    "values",
    [
        [],
        [b'{"status":"BEGIN","id":"5:1","event_count":null}'],
        [
            b'{"status":"BEGIN","id":"5:100","event_count":null,"ts_ms":1}',
            b'{"status":"END","id":"5:100","event_count":2,"data_collections":[{"a":1}]}',
            b'{"status":"END","id":"0:18446744073709551615"}',
            b'{"id":"6:7"}',
            b'{"status":null,"id":"x"}',
            b'{"status":"END","id":"0007:0042"}',
        ],
        # Not plainly END records: read one by one, which keeps what int() makes of them or
        # names the faulty record.
        [b'{"status":"END","id":"-5:10"}', b'{"status":"END","id":"+5:1_0"}'],
        [b'{"status":"END","id":"0x10:1"}'],
        [b'{"status":"END","id":"5:18446744073709551616"}'],
        [b'{"status":"END","id":"5"}'],
        [b'{"status":"END","id":"5:1:2"}'],
        [b'{"status":"END"}'],
        [b'{"status":"END","id":51}'],
        [b'{"status":"END",\n"id":"5:1"}'],
        [b'{"status":"END","id":"5:1"}{"status":"END","id":"6:1"}'],
        [b"[1]"],
        [b'{"status":5,"id":"5:1"}'],
        [b"not json", b'{"status":"END","id":"5:1"}'],
    ],
)
def test_transaction_ends_in_bulk_read_as_record_by_record(values: list[bytes]) -> None:
    """The END records' xids and commit LSNs in one Arrow parse are parse_txn_id's; anything
    else is left to the record-by-record reading (None), never read differently."""
    got = transaction_ends(values)
    want = _ends_per_record(values)
    if got is not None:
        assert got == want
    else:
        assert values


def test_transaction_ends_take_the_plain_ones_in_bulk() -> None:
    values = [
        orjson.dumps({"status": s, "id": f"{700 + i}:{2**40 + i}", "event_count": 3})
        for i, s in enumerate(["BEGIN", "END"] * 500)
    ]
    assert transaction_ends(values) == _ends_per_record(values)
