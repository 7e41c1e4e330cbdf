"""Debezium Postgres change events (JSON, no schemas) -> bankde transactions in Postgres text form."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from bankde.cdc.envelope import ChangeEvent, Column, EventTransaction, Relation, Source
from bankde.errors import CaptureError

if TYPE_CHECKING:
    from bankde.settings import Settings

# Debezium's stand-in for an unchanged TOAST value it was not sent (configured to this string).
UNCHANGED_TOAST = "__bankde_unchanged_toast"

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_EPOCH = dt.datetime(1970, 1, 1)

ValueFn = Callable[[Any], str]


# Debezium hands ±infinity over as values at the ends of int64 microseconds: beyond Postgres'
# 4713 BC below, and (Postgres going up to 294276 AD) within a few decades of it above.
_PG_MIN_US = -210_866_803_200_000_000
_PG_MAX_US = 9_223_000_000_000_000_000


def _far_text(micros: int, with_time: bool) -> str:
    """A date or timestamp outside Python's years 1..9999, as Postgres prints it ('infinity',
    '0044-03-15 12:00:00 BC', '10000-01-01 00:00:00'): the sink then quarantines it rather
    than the conversion stopping the stream."""
    if micros >= _PG_MAX_US:
        return "infinity"
    if micros < _PG_MIN_US:
        return "-infinity"
    text = str(np.datetime64(micros, "us"))  # astronomical years: year 0 is 1 BC, '-0043' is 44 BC
    bc = text.startswith("-") or text.startswith("0000")
    date_part, _, time_part = text.lstrip("-").partition("T")
    year, rest = date_part.split("-", 1)
    y = int(year)
    if bc:
        y = (y if text.startswith("-") else 0) + 1
    out = f"{y:04d}-{rest}"
    if with_time:
        out += " " + _strip_fraction(time_part)
    return out + (" BC" if bc else "")


def _date_text(days: int) -> str:
    """io.debezium.time.Date (days since epoch) -> '2024-01-31'."""
    try:
        return dt.date.fromordinal(_EPOCH_ORDINAL + int(days)).isoformat()
    except (ValueError, OverflowError):
        return _far_text(int(days) * 86_400_000_000, with_time=False)


def _strip_fraction(text: str) -> str:
    """'12:00:00.500000' -> '12:00:00.5', '12:00:00.000000' -> '12:00:00' (as Postgres prints)."""
    if "." not in text:
        return text
    text = text.rstrip("0")
    return text[:-1] if text.endswith(".") else text


def _zoned_timestamp_text(value: str) -> str:
    """io.debezium.time.ZonedTimestamp ('2024-01-31T12:00:00.500000Z', always UTC) -> the text
    Postgres prints for timestamptz with TimeZone=UTC ('2024-01-31 12:00:00.5+00')."""
    if value[-1:] != "Z":
        return value.replace("T", " ", 1)  # infinity and other specials pass through
    text = value[:-1].replace("T", " ", 1)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "+00"


def _micro_timestamp_text(micros: int) -> str:
    """io.debezium.time.MicroTimestamp (timestamp without time zone) -> '2024-01-31 12:00:00.5'."""
    try:
        stamp = _EPOCH + dt.timedelta(microseconds=int(micros))
    except OverflowError:
        return _far_text(int(micros), with_time=True)
    return _strip_fraction(stamp.isoformat(sep=" "))


def _milli_timestamp_text(millis: int) -> str:
    return _micro_timestamp_text(int(millis) * 1000)


def _micro_time_text(micros: int) -> str:
    """io.debezium.time.MicroTime -> '12:00:00.5'."""
    seconds, us = divmod(int(micros), 1_000_000)
    hours, rest = divmod(seconds, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}.{us:06d}"
    return _strip_fraction(text)


_ISO_INTERVAL = re.compile(r"^P(-?\d+)Y(-?\d+)M(-?\d+)DT(-?\d+)H(-?\d+)M(-?\d+(?:\.\d+)?)S$")


def _interval_text(value: str) -> str:
    """interval.handling.mode=string ('P1Y2M3DT4H5M6.789S') -> what Postgres prints with
    IntervalStyle postgres ('1 year 2 mons 3 days 04:05:06.789'), as EncodeInterval does it.
    Anything else (a format this does not know) is a CaptureError, never a guess."""
    m = _ISO_INTERVAL.match(value)
    if m is None:
        raise CaptureError(f"Debezium interval {value!r}: not the ISO 8601 form expected")
    years, months, days, hours, minutes = (int(g) for g in m.groups()[:5])
    micros = (hours * 3600 + minutes * 60) * 1_000_000 + int(Decimal(m.group(6)) * 1_000_000)
    parts: list[str] = []
    before_negative = False
    for n, unit in ((years, "year"), (months, "mon"), (days, "day")):
        if n:
            plus = "+" if before_negative and n > 0 else ""
            parts.append(f"{plus}{n} {unit}{'' if n == 1 else 's'}")
            before_negative = n < 0
    if not parts or micros:
        sign = "-" if micros < 0 else ("+" if before_negative else "")
        secs, us = divmod(abs(micros), 1_000_000)
        text = f"{sign}{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
        if us:
            text += f".{us:06d}".rstrip("0")
        parts.append(text)
    return " ".join(parts)


def _timetz_text(value: str) -> str:
    """io.debezium.time.ZonedTime ('07:44:15Z'): Debezium normalises the time to UTC, so the
    source's own offset is gone (documented in docs/cdc.md); Postgres prints UTC as '+00'."""
    text = value[:-1] if value.endswith("Z") else value
    return _strip_fraction(text) + "+00" if value.endswith("Z") else value


def _bool_text(value: Any) -> str:
    return "t" if value else "f"


def _bytea_text(value: str) -> str:
    """binary.handling.mode=hex gives bare hex; Postgres prints bytea as '\\x' + hex."""
    return "\\x" + value


_ARRAY_PLAIN = re.compile(r'^[^{}",\\\s]+$')


def _array_text(value: Any) -> str:
    """A Debezium array (a JSON list, nested for more dimensions) -> Postgres' array text
    ('{1,NULL,-3}', '{"a,b","c\\"d",""}'): elements quoted where Postgres quotes them."""
    if not isinstance(value, list):
        return str(value)
    parts = []
    for v in value:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, list):
            parts.append(_array_text(v))
        elif isinstance(v, bool):
            parts.append("t" if v else "f")
        else:
            text = str(v)
            if _ARRAY_PLAIN.match(text) and text.upper() != "NULL":
                parts.append(text)
            else:
                parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def value_fn(pg_type: str) -> ValueFn | None:
    """How to turn Debezium's JSON value of a column of `pg_type` (format_type spelling) into
    Postgres' text form; None when the JSON value already is that text (strings of text,
    numeric with decimal.handling.mode=string, uuid, enums, json)."""
    t = pg_type.lower()
    if t.endswith("[]"):
        return _array_text
    if t == "date":
        return _date_text
    if t.startswith("timestamp") and t.endswith("with time zone"):
        return _zoned_timestamp_text
    if t.startswith("timestamp"):
        # adaptive_time_microseconds: precision 0-3 in ms, 4-6 in µs.
        if "(" in t and int(t.split("(")[1].split(")")[0]) <= 3:
            return _milli_timestamp_text
        return _micro_timestamp_text
    if (t.startswith("time") and t.endswith("without time zone")) or t == "time":
        return _micro_time_text
    if t.startswith("interval"):
        return _interval_text
    if t.startswith("time") and t.endswith("with time zone"):
        return _timetz_text
    if t in ("bigint", "integer", "smallint", "oid", "real", "double precision"):
        return str
    if t == "boolean":
        return _bool_text
    if t == "bytea":
        return _bytea_text
    return None


_INT_RANGES = {"smallint": 1 << 15, "integer": 1 << 31}
_NUMERIC_TYPMOD = re.compile(r"^numeric\((\d+),(\d+)\)$")
_NUMBER = re.compile(r"^-?(\d*)(?:\.(\d*))?$")
# Types whose Debezium JSON value is a string (decimal/binary/interval handling modes).
_STRING_TYPES = (
    "text",
    "character varying",
    "character",
    "uuid",
    "json",
    "jsonb",
    "bytea",
    "numeric",
    "interval",
)


def _numeric_fits(value: Any, precision: int, scale: int) -> bool:
    """Whether Debezium's decimal string fits numeric(precision, scale) as the catalog has it:
    a column widened at the source sends more fraction digits (Postgres pads to the scale) or
    more integer digits. NaN and other specials say nothing about the type: they fit."""
    if type(value) is not str:
        return value == UNCHANGED_TOAST
    whole, _, frac = value.partition(".")
    if len(frac) <= scale and len(whole) <= precision - scale:
        return True  # the common case, without the regex (a sign only makes it take that)
    m = _NUMBER.match(value)
    if m is None:
        return True
    whole, frac = m.group(1).lstrip("0"), m.group(2) or ""
    return len(frac) <= scale and len(whole) <= precision - scale


def checks_value(pg_type: str) -> bool:
    """Whether fit_fn(pg_type) looks at the value (a range, a number of digits), not only at
    its JSON kind (which TableInfo.misfit checks once per combination of kinds)."""
    t = pg_type.lower()
    return t in _INT_RANGES or _NUMERIC_TYPMOD.match(t) is not None


def fit_fn(pg_type: str) -> Callable[[Any], bool] | None:
    """A test that a non-null Debezium JSON value can be a value of `pg_type` (format_type
    spelling) as the catalog described the column: False means the source's type changed since
    (a smallint/integer value out of range, a numeric with more digits, another JSON kind).
    None for types whose values tell nothing this way (floats, enums, other types)."""
    t = pg_type.lower()
    if t.endswith("[]"):
        return lambda v: type(v) is list or v == UNCHANGED_TOAST
    limit = _INT_RANGES.get(t)
    if limit is not None:
        return lambda v: type(v) is int and -limit <= v < limit
    if t in ("bigint", "oid", "date") or (
        t.startswith(("timestamp", "time")) and t.endswith("without time zone")
    ):
        return lambda v: type(v) is int
    if t == "boolean":
        return lambda v: type(v) is bool
    m = _NUMERIC_TYPMOD.match(t)
    if m is not None:
        precision, scale = int(m.group(1)), int(m.group(2))
        return lambda v: _numeric_fits(v, precision, scale)
    if t.startswith(_STRING_TYPES) or t.endswith("with time zone"):
        return lambda v: type(v) is str
    return None


@dataclass
class TableInfo:
    """One captured table: its relation (columns with type OIDs, as the sink wants them) and the
    converters of the columns whose Debezium JSON value is not already Postgres text."""

    relation: Relation
    converters: tuple[tuple[str, ValueFn], ...]
    names: frozenset[str]
    # format_type text of each column, in relation order (the bulk conversion's plan).
    types: tuple[str, ...] = ()
    # Per column, whether a value fits the type the catalog gave (fit_fn): a value that does not
    # means the source's type changed and the catalog is read again.
    guards: tuple[tuple[str, Callable[[Any], bool]], ...] = ()
    # The guards that look at the value itself (checks_value): run on every row; the others
    # only look at JSON kinds, checked once per combination of the row's kinds (_kinds_ok).
    value_guards: tuple[tuple[str, Callable[[Any], bool]], ...] = ()
    _kinds_ok: set[tuple[type, ...]] = field(
        default_factory=set, init=False, compare=False, repr=False
    )

    @classmethod
    def build(
        cls,
        relid: int,
        schema: str,
        table: str,
        columns: list[tuple[str, int, int, str]],
        key: tuple[str, ...],
    ) -> TableInfo:
        """From catalog rows (name, type OID, typmod, format_type text) in column order."""
        cols = tuple(Column(name, oid, typmod, name in key) for name, oid, typmod, _ in columns)
        convs = []
        for name, _oid, _typmod, type_text in columns:
            fn = value_fn(type_text)
            if fn is not None:
                convs.append((name, fn))
        rel = Relation(relid, schema, table, "f", cols, key)
        types = tuple(type_text for *_, type_text in columns)
        guards = []
        value_guards = []
        for name, *_, type_text in columns:
            fits = fit_fn(type_text)
            if fits is not None:
                guards.append((name, fits))
                if checks_value(type_text):
                    value_guards.append((name, fits))
        names = frozenset(c.name for c in cols)
        return cls(rel, tuple(convs), names, types, tuple(guards), tuple(value_guards))

    @property
    def shape(self) -> tuple[tuple[str, int, int], ...]:
        """(name, type OID, typmod) per column: what a type change alters."""
        return tuple((c.name, c.type_oid, c.typmod) for c in self.relation.columns)

    def misfit(self, row: dict[str, Any]) -> str | None:
        """The first column of `row` (Debezium JSON, before conversion) whose value the
        catalog's type cannot be the type of, or None."""
        # The JSON kinds of a row's values (in Debezium's fixed column order) take few
        # combinations (NULLs): each is checked whole once; after that only the values' ranges
        # and digits are. A placeholder for unchanged TOAST passes any kind: never learned.
        kinds = tuple(map(type, row.values()))
        guards = self.value_guards if kinds in self._kinds_ok else self.guards
        for name, fits in guards:
            v = row.get(name)
            if v is not None and not fits(v):
                return name
        if guards is self.guards and UNCHANGED_TOAST not in row.values():
            self._kinds_ok.add(kinds)
        return None

    def without_guard(self, column: str) -> TableInfo:
        """This table without the check of `column` (its values kept failing it against a fresh
        catalog read: not a type change, so it must not cost a catalog read per event)."""
        return replace(
            self,
            guards=tuple(g for g in self.guards if g[0] != column),
            value_guards=tuple(g for g in self.value_guards if g[0] != column),
        )

    def text_row(self, row: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
        """Convert in place; returns the row and the columns Debezium marked unchanged TOAST."""
        for name, fn in self.converters:
            v = row.get(name)
            if v is not None:
                row[name] = fn(v)
        # The scan inside `in` runs in C; the placeholder is rare.
        if UNCHANGED_TOAST not in row.values():
            return row, _NONE
        return row, frozenset(k for k, v in row.items() if v == UNCHANGED_TOAST)


_NONE: frozenset[str] = frozenset()


def parse_txn_id(text: str) -> tuple[int, int]:
    """Debezium's Postgres transaction id 'xid:lsn' -> (xid, lsn); on END the LSN is the commit's
    end LSN (what the slot is acknowledged up to)."""
    xid, _, lsn = text.partition(":")
    return int(xid), int(lsn)


@dataclass
class Assembler:
    """Groups Debezium's stream (BEGIN, data events, END from the transaction topic) into
    complete Transactions, numbering changes 1.. inside each like the native decoder does.

    Versions: Debezium does not pass on the commit record's start LSN that the native engine
    uses; each transaction is versioned by its commit end LSN instead (Source.lsn = end LSN).
    Both grow with commit order, so per-key ordering and re-delivery behave the same.
    """

    catalog: TableCatalog
    _xid: int | None = None
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _described: set[tuple[str, str]] = field(default_factory=set)

    @property
    def in_transaction(self) -> bool:
        return self._xid is not None

    def reset(self) -> None:
        """Forget a partly received transaction (the engine restarts from its committed offset)."""
        self._xid = None
        self._pending = []

    def forget_relations(self) -> None:
        """A new connection: describe every table again with its first change."""
        self._described.clear()

    def begin(self, xid: int) -> None:
        # A BEGIN while one is open means the connector restarted mid-transaction: start over.
        self._xid = xid
        self._pending = []

    def change(self, value: dict[str, Any]) -> None:
        if self._xid is None:
            raise CaptureError(
                "debezium change outside a transaction: provide.transaction.metadata must be on"
            )
        self._pending.append(value)

    def end(self, xid: int, end_lsn: int, ts_ms: int) -> EventTransaction:
        if self._xid != xid:
            raise CaptureError(
                f"debezium END of transaction {xid} while {self._xid} is open: stream out of step"
            )
        txn = EventTransaction(xid, end_lsn, end_lsn, ts_ms)
        events = txn.events
        # Per table of this transaction: its converters and the Source all its events share.
        seen: dict[tuple[str, str], tuple[TableInfo, Source]] = {}
        pos = 0
        for value in self._pending:
            src_block = value["source"]
            key = (src_block["schema"], src_block["table"])
            pos += 1
            before = value.get("before")
            after = value.get("after")
            entry = seen.get(key)
            row = after or before
            if (
                entry is None
                or not entry[0].names.issuperset(row or ())
                or (row and entry[0].guards and entry[0].misfit(row))
            ):
                entry = seen[key] = (
                    self._table(key, value),
                    Source(end_lsn, xid, ts_ms, key[0], key[1]),
                )
            info, src = entry
            op = value["op"]
            if op == "t":
                txn.truncates.append((key[0], key[1], pos))
                continue
            if op not in ("c", "u", "d"):
                raise CaptureError(f"debezium op {op!r} inside a transaction on {key[0]}.{key[1]}")
            events.append(change_event(info, op, before, after, src, pos))
        for key in seen:
            if key not in self._described:
                txn.relations.append(self.catalog.tables[key].relation)
                self._described.add(key)
        self._xid = None
        self._pending = []
        return txn

    def _table(self, key: tuple[str, str], value: dict[str, Any]) -> TableInfo:
        info, refreshed = self.catalog.for_event(key, value)
        if refreshed:
            self._described.discard(key)
        return info


class TableCatalog:
    """The captured tables as the source's catalog describes them, for the engines fed by
    Debezium (in-process and Kafka): read at start, and again for one table when an event shows
    what the description lacks: a table or column new to it, or a value its type cannot hold
    (the source's type changed: the sink then widens the column or stops the table)."""

    def __init__(
        self,
        engine: str,
        read: Callable[[Sequence[tuple[str, str]] | None], dict[tuple[str, str], TableInfo]],
    ) -> None:
        self.engine = engine
        self._read = read
        self.tables: dict[tuple[str, str], TableInfo] = {}

    @classmethod
    def of_source(cls, settings: Settings, engine: str) -> TableCatalog:
        """The catalog of the source `settings` captures, read as the capture role."""
        from bankde.source.catalog import catalog_tables
        from bankde.source.connection import cdc_info

        def read(
            only: Sequence[tuple[str, str]] | None,
        ) -> dict[tuple[str, str], TableInfo]:
            found = catalog_tables(cdc_info(settings), None if only is None else list(only))
            return {
                key: TableInfo.build(
                    table.oid,
                    key[0],
                    key[1],
                    [(c.name, c.type_oid, c.typmod, c.type_name) for c in table.columns],
                    table.key,
                )
                for key, table in found.items()
            }

        return cls(engine, read)

    def load(self) -> None:
        """Every captured table, read now."""
        self.tables.update(self._read(None))

    def refresh(self, schema: str, table: str) -> TableInfo:
        """One table read again; a CaptureError when the catalog does not have it."""
        self.tables.update(self._read([(schema, table)]))
        info = self.tables.get((schema, table))
        if info is None:
            raise CaptureError(
                f"{self.engine} sent changes of {schema}.{table}, unknown to the catalog"
            )
        return info

    def for_event(self, key: tuple[str, str], value: dict[str, Any]) -> tuple[TableInfo, bool]:
        """The table of a change event `value`, read again from the catalog when the table or
        one of the event's columns is new, or a value does not fit its column's type (True
        then: the sink must widen or retype the landing table, or stop it, first)."""
        info = self.tables.get(key)
        row = value.get("after") or value.get("before") or {}
        if info is not None and info.names.issuperset(row) and info.misfit(row) is None:
            return info, False
        old = info
        info = self.refresh(*key)
        if not info.names.issuperset(row):
            missing = sorted(set(row) - info.names)
            raise CaptureError(
                f"{self.engine} sent column(s) {', '.join(missing)} of {key[0]}.{key[1]} that "
                "the catalog does not show"
            )
        column = info.misfit(row)
        if column is not None:
            # Read again and still not fitting: the value tells nothing about the type (or the
            # catalog moved on again); the sink screens it like any value.
            info = self.tables[key] = info.without_guard(column)
            while (column := info.misfit(row)) is not None:
                info = self.tables[key] = info.without_guard(column)
        return info, old is None or old.shape != info.shape or old.names != info.names


def change_event(
    info: TableInfo,
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    src: Source,
    pos: int,
) -> ChangeEvent:
    """One Debezium data event (op c/u/d, or r for a snapshot read) as a ChangeEvent in
    Postgres text form: the conversion every Debezium-fed engine (embedded, Kafka) shares."""
    unchanged = _NONE
    if before is not None:
        before, _ = info.text_row(before)
    if after is not None:
        after, unchanged = info.text_row(after)
        if unchanged:
            after, unchanged = _fill_toast(after, before, unchanged)
    return ChangeEvent(op, before, after, src, src.ts_ms, pos, unchanged)  # type: ignore[arg-type]


def _fill_toast(
    after: dict[str, Any], before: dict[str, Any] | None, unchanged: frozenset[str]
) -> tuple[dict[str, Any], frozenset[str]]:
    """Columns Debezium did not get (unchanged TOAST): from the old row when REPLICA IDENTITY
    FULL sent it, else NULL and listed as unchanged so the sink keeps the stored value."""
    if before is not None:
        for col in unchanged:
            if before.get(col) != UNCHANGED_TOAST:
                after[col] = before[col]
        unchanged = frozenset(c for c in unchanged if after[c] == UNCHANGED_TOAST)
    for col in unchanged:
        after[col] = None
    return after, unchanged


def snapshot_row(info: TableInfo, value: dict[str, Any]) -> dict[str, Any]:
    """A snapshot read event ('r') as a row of Postgres text values."""
    row, _ = info.text_row(value["after"])
    return row
