"""The bulk (Arrow) conversion of Debezium envelopes gives exactly what the per-event one gives."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bankde.cdc.engines.debezium.columns import Irregular, plan_for, table_columns
from bankde.cdc.engines.debezium.convert import UNCHANGED_TOAST, TableInfo, change_event
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
