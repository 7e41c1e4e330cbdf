"""Debezium change events (JSON, no schemas) of one table -> ChangeColumns in bulk, with Arrow."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from bankde.cdc.engines.debezium.convert import (
    _INT_RANGES,
    _NUMERIC_TYPMOD,
    UNCHANGED_TOAST,
    TableInfo,
    _bool_text,
    _bytea_text,
    _date_text,
    _interval_text,
    _micro_time_text,
    _micro_timestamp_text,
    _milli_timestamp_text,
    _timetz_text,
    _zoned_timestamp_text,
    value_fn,
)
from bankde.cdc.envelope import ChangeColumns

# Python's dates and datetimes (what the per-event conversion prints with) cover years 1..9999;
# values outside go through that conversion's own text for far dates, value by value.
_MIN_DAY, _MAX_DAY = -719_162, 2_932_896
_MIN_US, _MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
_OPS = pa.array(["c", "u", "d", "r"], pa.string())


class Irregular(Exception):
    """Events the bulk conversion leaves to the per-event one (change_event): a truncate, an
    unchanged-TOAST placeholder, a column the catalog does not show, a value of another JSON
    type, text that is not one JSON envelope per message. Never a guess: the per-event path
    then converts, refreshes the catalog, or quarantines exactly as before."""


@dataclass(frozen=True)
class _Col:
    name: str
    kind: str  # text int bool date ts_us ts_ms tstz bytea py
    fn: Callable[[Any], str] | None  # kind py: the per-event converter, value by value
    # What a value of the catalog's type must satisfy (else the source's type changed and the
    # per-event path reads the catalog again): (low, high) of a smallint/integer, or the regex
    # of a numeric(p,s) string (specials such as NaN pass).
    bounds: tuple[int, int] | None = None
    pattern: str | None = None


# The per-event converter -> (kind, the JSON value's Arrow type). Anything else (arrays, floats,
# whose JSON spelling Arrow would not keep) makes the table go event by event.
_KINDS: dict[Any, tuple[str, pa.DataType]] = {
    None: ("text", pa.string()),
    str: ("int", pa.int64()),
    _bool_text: ("bool", pa.bool_()),
    _date_text: ("date", pa.int64()),
    _micro_timestamp_text: ("ts_us", pa.int64()),
    _milli_timestamp_text: ("ts_ms", pa.int64()),
    _zoned_timestamp_text: ("tstz", pa.string()),
    _bytea_text: ("bytea", pa.string()),
    _micro_time_text: ("py", pa.int64()),
    _interval_text: ("py", pa.string()),
    _timetz_text: ("py", pa.string()),
}


class TablePlan:
    """How one table's envelopes are parsed (an explicit Arrow schema from the catalog's types)
    and each column turned into Postgres text."""

    def __init__(self, info: TableInfo) -> None:
        rel = info.relation
        if len(info.types) != len(rel.columns):
            raise Irregular(f"{rel.schema}.{rel.table}: no column types")
        self.info = info
        cols: list[_Col] = []
        fields = []
        for column, type_text in zip(rel.columns, info.types, strict=True):
            fn = value_fn(type_text)
            if fn is str and type_text.lower() in ("real", "double precision"):
                raise Irregular(f"{rel.schema}.{rel.table}.{column.name}: floating point")
            entry = _KINDS.get(fn)
            if entry is None:
                raise Irregular(f"{rel.schema}.{rel.table}.{column.name}: {type_text}")
            kind, arrow = entry
            t = type_text.lower()
            limit = _INT_RANGES.get(t)
            typmod = _NUMERIC_TYPMOD.match(t)
            cols.append(
                _Col(
                    column.name,
                    kind,
                    fn if kind == "py" else None,
                    (-limit, limit - 1) if limit is not None else None,
                    _numeric_pattern(int(typmod.group(1)), int(typmod.group(2)))
                    if typmod is not None
                    else None,
                )
            )
            fields.append(pa.field(column.name, arrow))
        self.cols = cols
        row = pa.struct(fields)
        self.row_type = row
        # Fields not listed (Debezium's other source fields, a column new to the source) are
        # inferred; a new column then shows in the row struct and sends the batch event by event.
        self.parse = pj.ParseOptions(
            explicit_schema=pa.schema(
                [
                    ("before", row),
                    ("after", row),
                    (
                        "source",
                        pa.struct(
                            [
                                ("schema", pa.string()),
                                ("table", pa.string()),
                                ("lsn", pa.int64()),
                                ("ts_ms", pa.int64()),
                            ]
                        ),
                    ),
                    ("transaction", pa.struct([("id", pa.string()), ("total_order", pa.int64())])),
                    ("op", pa.string()),
                ]
            ),
            unexpected_field_behavior="infer",
        )


def _numeric_pattern(precision: int, scale: int) -> str:
    """Decimal strings that fit numeric(precision, scale), or are not plain numbers at all."""
    frac = rf"(\.[0-9]{{0,{scale}}})?" if scale else r"\.?"
    return rf"^(-?0*[0-9]{{0,{precision - scale}}}{frac}|.*[^-.0-9].*|)$"


def plan_for(info: TableInfo) -> TablePlan | None:
    """The table's plan, or None when its column types keep it on the per-event path."""
    try:
        return TablePlan(info)
    except Irregular:
        return None


_READ = pj.ReadOptions(use_threads=True, block_size=4 << 20)


def table_columns(
    plan: TablePlan,
    values: list[bytes],
    commits: Mapping[int, int] | None = None,
    hold: bool = False,
) -> tuple[ChangeColumns, int]:
    """The envelopes `values` (JSON, one table's data events, in offset order) as ChangeColumns,
    and the newest source ts_ms among them. Raises Irregular for anything the per-event
    conversion must see: then nothing of these values is used.

    With `commits` (xid -> commit LSN, from the transaction topic's END records) a change is
    versioned by its transaction's commit LSN, as the kafka engine's per-event path does; a
    change whose END is not read yet is Irregular (that path holds it back), or with `hold` it
    comes back with LSN 0, for the caller to hold back (no streamed change has LSN 0)."""
    rel = plan.info.relation
    n = len(values)
    try:
        table = pj.read_json(
            pa.py_buffer(b"\n".join(values)), read_options=_READ, parse_options=plan.parse
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise Irregular(f"{rel.schema}.{rel.table}: {exc}") from None
    if table.num_rows != n:
        raise Irregular(f"{rel.schema}.{rel.table}: {table.num_rows} rows for {n} messages")
    after = table.column("after").combine_chunks()
    before = table.column("before").combine_chunks()
    if after.type != plan.row_type or before.type != plan.row_type:
        raise Irregular(f"{rel.schema}.{rel.table}: columns the catalog does not show")
    op = table.column("op").combine_chunks()
    if op.null_count or not pc.all(pc.is_in(op, value_set=_OPS)).as_py():
        raise Irregular(f"{rel.schema}.{rel.table}: an op other than c/u/d/r")
    source = table.column("source").combine_chunks()
    if source.null_count:
        raise Irregular(f"{rel.schema}.{rel.table}: an event without its source block")
    schema, tname = source.field("schema"), source.field("table")
    if not (
        pc.all(pc.equal(schema, rel.schema)).as_py()
        and pc.all(pc.equal(tname, rel.table)).as_py()
        and schema.null_count == 0
        and tname.null_count == 0
    ):
        raise Irregular(f"{rel.schema}.{rel.table}: events of another table on its topic")
    lsn, ts = source.field("lsn"), source.field("ts_ms")
    if lsn.null_count or ts.null_count:
        raise Irregular(f"{rel.schema}.{rel.table}: an event without its LSN or ts_ms")
    is_d = pc.equal(op, "d")
    is_r = pc.equal(op, "r")
    deleted = is_d.to_numpy(zero_copy_only=False)
    # The key row: `before` for a delete, `after` otherwise; never absent.
    row_ok = pc.if_else(is_d, before.is_valid(), after.is_valid())
    if not pc.all(row_ok).as_py():
        raise Irregular(f"{rel.schema}.{rel.table}: an event without its row")
    any_d = bool(deleted.any())
    values_out = []
    for j, col in enumerate(plan.cols):
        v = after.field(j)
        if any_d:
            v = pc.if_else(is_d, before.field(j), v)
        values_out.append(_text(col, v))
    txn = table.column("transaction").combine_chunks()
    streamed = pc.invert(is_r)
    if pc.any(streamed).as_py():
        ok = pc.and_(
            txn.is_valid(), pc.and_(txn.field("id").is_valid(), txn.field("total_order").is_valid())
        )
        if not pc.all(pc.or_(is_r, ok)).as_py():
            raise Irregular(f"{rel.schema}.{rel.table}: a change without its transaction block")
    # A snapshot read ('r'): at the consistent point, of no transaction, position 0 (as
    # change_event's caller versions it); a change: its transaction's xid and total_order.
    # The xid is what precedes the id's first ':' (a split: a third of a regex's cost).
    xid_text = pc.list_element(pc.split_pattern(txn.field("id"), ":", max_splits=1), 0)
    try:
        xid = pc.cast(xid_text, pa.uint64())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise Irregular(f"{rel.schema}.{rel.table}: transaction id: {exc}") from None
    xid = pc.if_else(is_r, pa.scalar(0, pa.uint64()), xid)
    pos = pc.if_else(is_r, pa.scalar(0, pa.int64()), txn.field("total_order"))
    if pc.min(pos).as_py() < 0 or pc.max(pos).as_py() >= 2**32:
        raise Irregular(f"{rel.schema}.{rel.table}: transaction order out of range")
    ts_np = ts.to_numpy(zero_copy_only=False).astype(np.int64)
    lsn_np = lsn.to_numpy(zero_copy_only=False).astype(np.uint64)
    xid_np = pc.fill_null(xid, 0).to_numpy(zero_copy_only=False).astype(np.uint64)
    if commits is not None:
        # One lookup per transaction, not per change.
        uniq, inverse = np.unique(xid_np, return_inverse=True)
        found = np.fromiter((commits.get(int(x), 0) for x in uniq), np.uint64, len(uniq))
        committed = found[inverse.reshape(-1)]
        streamed_np = ~is_r.to_numpy(zero_copy_only=False)
        if not hold and (committed[streamed_np] == 0).any():
            raise Irregular(f"{rel.schema}.{rel.table}: a change whose END is not read yet")
        lsn_np = np.where(streamed_np, committed, lsn_np)
    cols = ChangeColumns(
        rel.schema,
        rel.table,
        rel.names,
        values_out,
        op,
        deleted,
        lsn_np,
        pos.to_numpy(zero_copy_only=False).astype(np.uint32),
        xid_np,
        ts_np,
    )
    return cols, int(ts_np.max()) if n else 0


def _text(col: _Col, v: pa.Array) -> pa.Array:
    """One column's JSON values -> Postgres text, as the per-event converter prints them."""
    kind = col.kind
    if col.bounds is not None and not _within(v, *col.bounds):
        raise Irregular(f"{col.name}: a value out of its type's range (a type change)")
    if (
        col.pattern is not None
        and not pc.all(pc.match_substring_regex(pc.fill_null(v, ""), col.pattern)).as_py()
    ):
        raise Irregular(f"{col.name}: a value with more digits than its type (a type change)")
    # Debezium's placeholder for an unchanged TOAST value: the per-event path fills it.
    if v.type == pa.string() and pc.any(pc.equal(v, UNCHANGED_TOAST)).as_py():
        raise Irregular(f"{col.name}: unchanged TOAST")
    if kind == "text":
        return v
    if kind == "int":
        return pc.cast(v, pa.string())
    if kind == "bool":
        return pc.if_else(v, "t", "f")
    if kind == "bytea":
        return pc.binary_join_element_wise("\\x", v, "")
    if kind == "date":
        if _within(v, _MIN_DAY, _MAX_DAY):
            return pc.cast(pc.cast(pc.cast(v, pa.int32()), pa.date32()), pa.string())
        return _each(_date_text, v)
    if kind in ("ts_us", "ts_ms"):
        us = v if kind == "ts_us" else None
        if us is None:
            lo, hi = _MIN_US // 1000, _MAX_US // 1000
            if not _within(v, lo, hi):
                return _each(_milli_timestamp_text, v)
            us = pc.multiply(v, 1000)
        elif not _within(v, _MIN_US, _MAX_US):
            return _each(_micro_timestamp_text, v)
        return _timestamp_text(pc.cast(us, pa.timestamp("us")))
    if kind == "tstz":
        # Debezium's ZonedTimestamp is UTC ('...T12:00:00.500000Z'); anything else (infinity,
        # a year past 9999) takes the per-value converter. Parsed by Arrow's ISO 8601 cast and
        # printed again: a regex with groups costs ~7 times as much per value.
        if v.null_count == len(v):
            return v
        if not _tstz_shaped(v):
            return _each(_zoned_timestamp_text, v)
        try:
            parsed = pc.cast(v, pa.timestamp("us", "UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _each(_zoned_timestamp_text, v)
        local = pc.cast(parsed, pa.timestamp("us"))
        if not _within(pc.cast(local, pa.int64()), _MIN_US, _MAX_US):
            return _each(_zoned_timestamp_text, v)
        return pc.binary_join_element_wise(_timestamp_text(local), "+00", "")
    assert col.fn is not None
    return _each(col.fn, v)


def _tstz_shaped(v: pa.Array) -> bool:
    """Every value in UTC, as Debezium's ZonedTimestamp writes them ('...T12:00:00.5Z'); the
    cast then checks the rest (a year past 9999, a seventh fraction digit, infinity fail it)."""
    return bool(pc.all(pc.fill_null(pc.ends_with(v, "Z"), True)).as_py())


def _timestamp_text(ts: pa.Array) -> pa.Array:
    """Timestamps as Postgres prints them: Arrow prints six fraction digits always, Postgres
    none when they are zero, else without trailing zeros (trims, not a regex: several times
    cheaper per value)."""
    return pc.utf8_rtrim(pc.utf8_rtrim(pc.cast(ts, pa.string()), "0"), ".")


def _within(v: pa.Array, lo: int, hi: int) -> bool:
    if v.null_count == len(v):
        return True
    mm = pc.min_max(v)
    return bool(mm["min"].as_py() >= lo and mm["max"].as_py() <= hi)


def _each(fn: Callable[[Any], str], v: pa.Array) -> pa.Array:
    return pa.array([None if x is None else fn(x) for x in v.to_pylist()], pa.string())


# A transaction topic's record: only its status and id are read; the rest is skipped unparsed.
_TXN_PARSE = pj.ParseOptions(
    explicit_schema=pa.schema([("status", pa.string()), ("id", pa.string())]),
    unexpected_field_behavior="ignore",
)


def transaction_ends(values: list[bytes]) -> tuple[list[int], list[int], list[int]] | None:
    """The END records among Debezium transaction records `values` (JSON, one per message), in
    one Arrow parse: their indexes, xids and commit LSNs (parse_txn_id of each `id`). None
    when any value is not plainly that (not one JSON object, an END without an id of two runs
    of digits): the caller then reads them one by one, which names the faulty record."""
    if not values:
        return [], [], []
    try:
        table = pj.read_json(
            pa.py_buffer(b"\n".join(values)), read_options=_READ, parse_options=_TXN_PARSE
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(values):
        return None
    status = table.column("status").combine_chunks()
    at = np.flatnonzero(pc.fill_null(pc.equal(status, "END"), False).to_numpy(zero_copy_only=False))
    if not len(at):
        return [], [], []
    ids = table.column("id").combine_chunks().take(pa.array(at, pa.int64()))
    # Digits only, as int() reads them the same (Arrow's cast would also take '0x..' and signs).
    if ids.null_count or not pc.all(pc.match_substring_regex(ids, r"^[0-9]+:[0-9]+$")).as_py():
        return None
    parts = pc.split_pattern(ids, ":", max_splits=1)
    try:
        xid = pc.cast(pc.list_element(parts, 0), pa.uint64())
        lsn = pc.cast(pc.list_element(parts, 1), pa.uint64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None  # past 2**64: int() still reads it
    return at.tolist(), xid.to_pylist(), lsn.to_pylist()
