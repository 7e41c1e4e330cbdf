"""Type mapping Postgres -> ClickHouse, and the SQL casts that parse Postgres text form in bulk."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

# Built-in type OIDs (pg_type.oid is stable across versions for these).
_OID_NAMES = {
    16: "bool",
    17: "bytea",
    18: "char",
    19: "name",
    20: "int8",
    21: "int2",
    23: "int4",
    25: "text",
    26: "oid",
    114: "json",
    700: "float4",
    701: "float8",
    1042: "bpchar",
    1043: "varchar",
    1082: "date",
    1083: "time",
    1114: "timestamp",
    1184: "timestamptz",
    1186: "interval",
    1700: "numeric",
    2950: "uuid",
    3802: "jsonb",
}
# OIDs from here on belong to user-defined objects; for a column type that is an enum
# (or a domain/composite, which also arrive in text form).
FIRST_USER_OID = 16384

_ALIASES = {
    "bigint": "int8",
    "integer": "int4",
    "int": "int4",
    "smallint": "int2",
    "boolean": "bool",
    "character varying": "varchar",
    "character": "bpchar",
    "char": "bpchar",
    "double precision": "float8",
    "real": "float4",
    "decimal": "numeric",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time without time zone": "time",
    "time with time zone": "timetz",
    "bigserial": "int8",
    "serial": "int4",
    "smallserial": "int2",
}

_SIMPLE = {
    "int2": "Int16",
    "int4": "Int32",
    "int8": "Int64",
    "oid": "UInt32",
    "bool": "Bool",
    "date": "Date32",
    "timestamptz": "DateTime64(6, 'UTC')",
    # Wall time without zone, stored as if UTC so its text survives any server time zone.
    "timestamp": "DateTime64(6, 'UTC')",
    "uuid": "UUID",
    "float4": "Float32",
    "float8": "Float64",
}
_STRINGS = {
    "text",
    "varchar",
    "bpchar",
    "name",
    "json",
    "jsonb",
    "bytea",
    "time",
    "timetz",
    "interval",
}


@dataclass(frozen=True)
class PgType:
    """A Postgres column type reduced to what the mapping needs."""

    name: str  # canonical short name (int8, numeric, timestamptz...) or 'enum' for user types
    precision: int | None = None
    scale: int | None = None


def pg_type_from_oid(oid: int, typmod: int = -1) -> PgType:
    """From a pgoutput Relation message's type OID and atttypmod."""
    if oid >= FIRST_USER_OID:
        return PgType("enum")
    name = _OID_NAMES.get(oid, "unknown")
    if name == "numeric" and typmod >= 4:
        mod = typmod - 4
        return PgType("numeric", (mod >> 16) & 0xFFFF, mod & 0xFFFF)
    return PgType(name)


_ARGS_RE = re.compile(r"\(([^)]*)\)")


def parse_pg_type(text: str) -> PgType:
    """From a type name as format_type() or information_schema spells it ('numeric(18,2)',
    'timestamp with time zone', 'bank.txn_type', 'int8'...)."""
    raw = text.strip().lower()
    if raw.endswith("[]"):
        return PgType("array")
    # 'timestamp(3) with time zone' puts the arguments in the middle: cut them out.
    args = None
    m = _ARGS_RE.search(raw)
    if m:
        args = m.group(1)
        raw = f"{raw[: m.start()]} {raw[m.end() :]}"
    base = " ".join(raw.split())
    base = _ALIASES.get(base, base)
    if "." in base:
        return PgType("enum")  # schema-qualified: a user-defined type such as bank.txn_type
    if base == "numeric" and args:
        parts = [p.strip() for p in args.split(",")]
        precision = int(parts[0])
        scale = int(parts[1]) if len(parts) > 1 else 0
        return PgType("numeric", precision, scale)
    if base in _SIMPLE or base in _STRINGS or base == "numeric":
        return PgType(base)
    return PgType("unknown")


def ch_base_type(t: PgType) -> tuple[str, bool]:
    """(ClickHouse type without Nullable, whether LowCardinality suits it)."""
    if t.name == "numeric":
        if t.precision is None or t.precision > 76:
            # Unconstrained numeric has no fixed scale: keep its exact text rather than guess one.
            return "String", False
        return f"Decimal({t.precision}, {t.scale or 0})", False
    if t.name == "enum":
        return "String", True
    if t.name in _SIMPLE:
        return _SIMPLE[t.name], False
    return "String", False


def ch_column_type(t: PgType, not_null: bool | None) -> str:
    """The raw-table column type; nullable unless the source column is NOT NULL."""
    base, low_card = ch_base_type(t)
    inner = base if not_null else f"Nullable({base})"
    return f"LowCardinality({inner})" if low_card else inner


def strip_wrappers(ch_type: str) -> tuple[str, bool]:
    """'LowCardinality(Nullable(String))' -> ('String', True): base type and nullability."""
    t = ch_type.strip()
    nullable = False
    changed = True
    while changed:
        changed = False
        for wrapper in ("LowCardinality(", "Nullable("):
            if t.startswith(wrapper) and t.endswith(")"):
                nullable = nullable or wrapper == "Nullable("
                t = t[len(wrapper) : -1].strip()
                changed = True
    return t, nullable


def same_family(a: str, b: str) -> bool:
    """Whether two base types hold the same values (String vs FixedString count as one)."""

    def norm(t: str) -> str:
        t = t.replace(" ", "")
        if t.startswith("FixedString") or t.startswith("Enum"):
            return "String"
        if t == "Date":
            return "Date32"
        return t

    return norm(a) == norm(b)


_INT_RANK = {"Int8": 1, "Int16": 2, "Int32": 3, "Int64": 4}
_DECIMAL_RE = re.compile(r"^Decimal\((\d+),(\d+)\)$")


def widens(old: str, new: str) -> bool:
    """Whether base type `new` holds every value of `old` exactly, so that the warehouse can
    convert a column in place (int -> bigint, numeric(18,2) -> numeric(20,4)); text types map
    to one String and never get here."""
    old, new = old.replace(" ", ""), new.replace(" ", "")
    if old in _INT_RANK and new in _INT_RANK:
        return _INT_RANK[new] > _INT_RANK[old]
    a, b = _DECIMAL_RE.match(old), _DECIMAL_RE.match(new)
    if a and b:
        p1, s1, p2, s2 = (int(x) for x in (*a.groups(), *b.groups()))
        # As many fraction digits at least, and as many integer digits at least.
        return s2 >= s1 and p2 - s2 >= p1 - s1
    return False


def sql_str(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    """A ClickHouse identifier, back-quoted."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


_DT64_RE = re.compile(r"^DateTime64\((\d+)(?:\s*,\s*'([^']*)')?\)$")
_DT_RE = re.compile(r"^DateTime(?:\('([^']*)'\))?$")


def _nullable_text_to(base: str, x: str) -> str:
    """Expression turning a Nullable(String) of Postgres text into Nullable(base)."""
    if base.startswith(("String", "FixedString", "Enum")):
        return x
    if base == "Bool":
        return (
            f"CAST(multiIf({x} IS NULL, NULL, {x} IN ('t', 'true', '1'), 1, 0) AS Nullable(Bool))"
        )
    m = _DT64_RE.match(base)
    if m:
        tz = f", {sql_str(m.group(2))}" if m.group(2) else ""
        # Parsers run on every row, NULL ones included: feed them a harmless value there.
        parsed = f"parseDateTime64BestEffort(ifNull({x}, '1970-01-01'), {m.group(1)}{tz})"
        return f"if({x} IS NULL, NULL, {parsed})"
    m = _DT_RE.match(base)
    if m:
        tz = f", {sql_str(m.group(1))}" if m.group(1) else ""
        parsed = f"parseDateTimeBestEffort(ifNull({x}, '1970-01-01'){tz})"
        return f"if({x} IS NULL, NULL, {parsed})"
    return f"CAST({x} AS Nullable({base}))"


def text_cast_expr(x: str, ch_type: str) -> str:
    """SQL converting column `x` (Postgres text form, NULL allowed) to `ch_type`.

    A NULL for a NOT NULL target becomes the type's default: a delete event carries only the key
    there. The sink rejects a NULL anywhere else before inserting (ClickHouseSink._check_not_null).
    """
    base, nullable = strip_wrappers(ch_type)
    expr = _nullable_text_to(base, x)
    if nullable:
        return expr
    return f"ifNull({expr}, defaultValueOfTypeName({sql_str(base)}))"


def is_textual(t: pa.DataType) -> bool:
    """Arrow types that carry Postgres text form (string, or binary from opaque types)."""
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def typed_cast_expr(x: str, arrow_type: pa.DataType, ch_type: str) -> str:
    """SQL converting an Arrow-typed column `x` (snapshot from binary COPY) to `ch_type`."""
    if is_textual(arrow_type):
        return text_cast_expr(x, ch_type)
    base, nullable = strip_wrappers(ch_type)
    if base == "UUID" and pa.types.is_fixed_size_binary(arrow_type):
        expr = f"if({x} IS NULL, NULL, toUUID(UUIDNumToString(ifNull({x}, toFixedString('', 16)))))"
    else:
        expr = f"CAST({x} AS Nullable({base}))"
    if nullable:
        return expr
    return f"ifNull({expr}, defaultValueOfTypeName({sql_str(base)}))"


def arrow_to_ch_type(t: pa.DataType) -> str:
    """ClickHouse type holding an Arrow type's values (for input() structures and new columns)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return "String"
    if pa.types.is_boolean(t):
        return "Bool"
    if pa.types.is_integer(t):
        width = t.bit_width
        return f"{'Int' if pa.types.is_signed_integer(t) else 'UInt'}{width}"
    if pa.types.is_decimal(t):
        return f"Decimal({t.precision}, {t.scale})"
    if pa.types.is_floating(t):
        return "Float32" if t.bit_width == 32 else "Float64"
    if pa.types.is_timestamp(t):
        digits = {"s": 0, "ms": 3, "us": 6, "ns": 9}[t.unit]
        return f"DateTime64({digits}, 'UTC')"
    if pa.types.is_date(t):
        return "Date32"
    if pa.types.is_fixed_size_binary(t):
        return f"FixedString({t.byte_width})"
    return "String"
