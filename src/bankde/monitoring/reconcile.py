"""Reconcile source and warehouse: per table, row count and an order-independent checksum of every column."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bankde.settings import Settings
from bankde.source.catalog import CatalogTable, captured_tables_in, catalog_tables_in
from bankde.source.connection import connect, source_info
from bankde.warehouse.client import Warehouse
from bankde.warehouse.ddl import DbNames, table_info
from bankde.warehouse.types import ident, parse_pg_type, strip_wrappers

# Rows are spread over this many buckets by a hash of their key; comparing per-bucket sums
# finds where two tables differ without pulling rows, and bounds the rows fetched for samples.
BUCKETS = 1024
SAMPLE_BUCKETS = 8
# Control characters that no column text carries: the separator between column texts and the
# NULL marker (a literal like '\N' would read differently in the two SQL dialects).
_SEP = 31
_NULL = 30


@dataclass(frozen=True)
class KeyDiff:
    """One key whose row differs: missing in the warehouse, extra there, or other values."""

    key: str
    problem: str


@dataclass
class TableCheck:
    table: str  # source name, e.g. bank.account
    warehouse_table: str  # e.g. raw.account
    source_rows: int = 0
    warehouse_rows: int = 0
    source_checksum: int = 0
    warehouse_checksum: int = 0
    problems: list[str] = field(default_factory=list)
    sample: list[KeyDiff] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return (
            not self.problems
            and self.source_rows == self.warehouse_rows
            and self.source_checksum == self.warehouse_checksum
        )


@dataclass
class ReconcileResult:
    tables: list[TableCheck]
    seconds: float

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)

    @property
    def differing(self) -> list[TableCheck]:
        return [t for t in self.tables if not t.equal]

    def to_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "seconds": round(self.seconds, 3),
            "tables": [
                {
                    **{k: v for k, v in asdict(t).items() if k not in ("sample",)},
                    "source_checksum": f"{t.source_checksum % (1 << 64):016x}",
                    "warehouse_checksum": f"{t.warehouse_checksum % (1 << 64):016x}",
                    "equal": t.equal,
                    "sample": [asdict(d) for d in t.sample],
                }
                for t in self.tables
            ],
        }


@dataclass(frozen=True)
class _Column:
    name: str
    pg_expr: str  # canonical text of the value in Postgres (NULL stays NULL)
    ch_expr: str  # the same text computed in ClickHouse


def _canonical(name: str, pg_type: str, ch_type: str) -> _Column:
    """Expressions giving identical text for one value on both sides despite type differences."""
    q = _pg_ident(name)
    c = ident(name)
    base, _ = strip_wrappers(ch_type)
    pg = parse_pg_type(pg_type)
    if base.startswith("Decimal("):
        scale = int(base.rstrip(")").split(",")[1])
        return _Column(name, f"round({q}, {scale})::text", f"toDecimalString({c}, {scale})")
    if base.startswith("DateTime"):
        # Microseconds since the epoch: no zone or formatting to agree on. A timestamp without
        # zone lands as if UTC, which is what extract(epoch) assumes for it too.
        return _Column(
            name,
            f"(extract(epoch from {q}) * 1000000)::bigint::text",
            f"toString(toUnixTimestamp64Micro({c}))",
        )
    if pg.name == "bpchar":
        # char(n) pads with blanks; Postgres drops them when casting to text.
        return _Column(name, f"{q}::text", f"trimRight(toString({c}))")
    return _Column(name, f"{q}::text", f"toString({c})")


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _row_text_pg(cols: list[_Column]) -> str:
    parts = [f"coalesce({col.pg_expr}, chr({_NULL}))" for col in cols]
    return f"concat_ws(chr({_SEP}), {', '.join(parts)})"


def _row_text_ch(cols: list[_Column]) -> str:
    parts = [f"ifNull({col.ch_expr}, char({_NULL}))" for col in cols]
    if len(parts) == 1:
        return parts[0]
    return f"concatWithSeparator(char({_SEP}), {', '.join(parts)})"


def _pg_hash(text: str) -> str:
    """Signed 64-bit integer from the first 8 bytes of md5 (big-endian), as in _ch_hash."""
    return f"('x' || substr(md5({text}), 1, 16))::bit(64)::bigint"


def _ch_hash(text: str) -> str:
    return f"reinterpretAsInt64(reverse(substring(MD5({text}), 1, 8)))"


def _pg_bucket(text: str) -> str:
    return f"((('x' || substr(md5({text}), 1, 8))::bit(32)::int) & {BUCKETS - 1})"


def _ch_bucket(text: str) -> str:
    return f"bitAnd(reinterpretAsUInt32(reverse(substring(MD5({text}), 1, 4))), {BUCKETS - 1})"


def reconcile(
    settings: Settings,
    warehouse: Warehouse,
    sample_size: int = 10,
) -> ReconcileResult:
    """Compare every captured table (bank.*, truth.*) with its landing table (FINAL, not deleted).

    Both databases compute, per row, a canonical text of the key and every column (decimals at
    fixed scale, timestamps as epoch microseconds, NULL marked), hash it with MD5, and sum the
    64-bit hashes per key bucket; only the bucket sums leave each database. Differing buckets are
    then read key by key to name a sample of differing keys.
    """
    wh = warehouse
    names = DbNames(settings.wh_prefix)
    started = time.monotonic()
    checks: list[TableCheck] = []
    with connect(source_info(settings)) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute("SET LOCAL extra_float_digits = 1")
        catalog = catalog_tables_in(conn)
        for schema, table in captured_tables_in(conn):
            source = catalog.get((schema, table))
            checks.append(_check_table(conn, wh, names, source, schema, table, sample_size))
        conn.rollback()
    return ReconcileResult(checks, time.monotonic() - started)


def _check_table(
    conn: Any,
    wh: Warehouse,
    names: DbNames,
    source: CatalogTable | None,
    schema: str,
    table: str,
    sample_size: int,
) -> TableCheck:
    database = names.landing_db(schema)
    check = TableCheck(f"{schema}.{table}", f"{database}.{table}")
    src_cols = [(c.name, c.type_name) for c in source.columns] if source else []
    key = list(source.key) if source else []
    info = table_info(wh, database, table)
    if info is None:
        check.problems.append(f"warehouse table {database}.{table} does not exist")
        row = conn.execute(
            f"SELECT count(*) FROM {_pg_ident(schema)}.{_pg_ident(table)}"
        ).fetchone()
        check.source_rows = int(row[0]) if row else 0
        return check
    if not key:
        check.problems.append("source table has no primary key")
        key = list(info.key)
    wh_types = info.column_types
    cols = []
    for name, pg_type in src_cols:
        if name not in wh_types:
            check.problems.append(f"column {name} missing in the warehouse")
            continue
        cols.append(_canonical(name, pg_type, wh_types[name]))
    src_names = {n for n, _ in src_cols}
    check.problems += [f"column {n} only in the warehouse" for n in wh_types if n not in src_names]
    by_name = {c.name: c for c in cols}
    key_cols = [by_name[k] for k in key if k in by_name]
    if len(key_cols) != len(key):
        return check

    pg_row, ch_row = _row_text_pg(cols), _row_text_ch(cols)
    pg_key, ch_key = _row_text_pg(key_cols), _row_text_ch(key_cols)
    pg_from = f"{_pg_ident(schema)}.{_pg_ident(table)}"
    ch_from = f"{ident(database)}.{ident(table)} FINAL WHERE _is_deleted = 0"

    src_buckets = {
        int(b): (int(n), int(s))
        for b, n, s in conn.execute(
            f"SELECT {_pg_bucket(pg_key)} AS b, count(*), coalesce(sum({_pg_hash(pg_row)}), 0) "
            f"FROM {pg_from} GROUP BY b"
        ).fetchall()
    }
    wh_buckets = {
        int(b): (int(n), int(s))
        for b, n, s in wh.query(
            f"SELECT {_ch_bucket(ch_key)} AS b, count(), sum(toInt128({_ch_hash(ch_row)})) "
            f"FROM {ch_from} GROUP BY b"
        )
    }
    check.source_rows = sum(n for n, _ in src_buckets.values())
    check.source_checksum = sum(s for _, s in src_buckets.values())
    check.warehouse_rows = sum(n for n, _ in wh_buckets.values())
    check.warehouse_checksum = sum(s for _, s in wh_buckets.values())
    if check.equal:
        return check

    differing = sorted(
        b for b in set(src_buckets) | set(wh_buckets) if src_buckets.get(b) != wh_buckets.get(b)
    )
    picked = differing[:SAMPLE_BUCKETS]
    if not picked:
        return check
    in_list = ", ".join(str(b) for b in picked)
    src_rows = dict(
        conn.execute(
            f"SELECT {pg_key}, {_pg_hash(pg_row)} FROM {pg_from} WHERE {_pg_bucket(pg_key)} IN ({in_list})"
        ).fetchall()
    )
    wh_rows = dict(
        wh.query(
            f"SELECT {ch_key}, {_ch_hash(ch_row)} FROM {ch_from} AND {_ch_bucket(ch_key)} IN ({in_list})"
        )
    )
    for k in sorted(set(src_rows) | set(wh_rows), key=_natural)[: max(sample_size * 4, 50)]:
        shown = _show_key(key, k)
        if k not in wh_rows:
            check.sample.append(KeyDiff(shown, "missing in the warehouse"))
        elif k not in src_rows:
            check.sample.append(KeyDiff(shown, "in the warehouse but not in the source"))
        elif src_rows[k] != wh_rows[k]:
            check.sample.append(KeyDiff(shown, "values differ"))
        if len(check.sample) >= sample_size:
            break
    return check


def _natural(text: str) -> tuple[int, str]:
    """Sort numeric keys by value, others as text."""
    try:
        return (int(text), "")
    except ValueError:
        return (0, text)


def _show_key(key: list[str], text: str) -> str:
    values = text.split(chr(_SEP))
    return ", ".join(f"{k}={v}" for k, v in zip(key, values, strict=False))
