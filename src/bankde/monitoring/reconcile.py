"""Reconcile source and warehouse: per table, row count and an order-independent checksum of every column."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from queue import Queue
from typing import Any

from psycopg import sql

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
    # Rows of the table quarantined in meta.cdc_rejects (any slot): informational, since a
    # later change of the key may have landed since; a held-back row shows as a difference.
    quarantined: int = 0
    quarantine_note: str | None = None

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
    integer: bool = False  # a Postgres integer (Int16/32/64 in the warehouse)


def _canonical(name: str, pg_type: str, ch_type: str) -> _Column:
    """Expressions giving identical text for one value on both sides despite type differences."""
    q = _pg_ident(name)
    c = ident(name)
    base, _ = strip_wrappers(ch_type)
    pg = parse_pg_type(pg_type)
    if base.startswith("Decimal("):
        scale = int(base.rstrip(")").split(",")[1])
        # numeric(p, s) prints exactly s decimals already; only another scale needs round().
        pg_text = f"{q}::text" if pg.scale == scale else f"round({q}, {scale})::text"
        return _Column(name, pg_text, f"toDecimalString({c}, {scale})")
    if base.startswith("DateTime") and pg.name in ("timestamptz", "timestamp"):
        # The stored value itself: Postgres's binary form is the big-endian int64 of
        # microseconds since 2000-01-01 UTC (a timestamp without zone lands as if UTC), in hex;
        # no zone or formatting to agree on, and about 2x cheaper than numeric extract(epoch).
        return _Column(
            name,
            f"encode({pg.name}_send({q}), 'hex')",
            f"lower(hex(reverse(reinterpretAsFixedString("
            f"toUnixTimestamp64Micro({c}) - {_PG_EPOCH_US}))))",
        )
    if base.startswith("DateTime"):
        # Microseconds since the epoch: no zone or formatting to agree on.
        return _Column(
            name,
            f"(extract(epoch from {q}) * 1000000)::bigint::text",
            f"toString(toUnixTimestamp64Micro({c}))",
        )
    if pg.name == "bpchar":
        # char(n) pads with blanks; Postgres drops them when casting to text.
        return _Column(name, f"{q}::text", f"trimRight(toString({c}))")
    return _Column(name, f"{q}::text", f"toString({c})", pg.name in _INTEGERS)


_INTEGERS = frozenset({"int2", "int4", "int8"})
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 00:00:00 UTC in Unix microseconds


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


def _buckets(key_cols: list[_Column]) -> tuple[str, str]:
    """The bucket of a row from its key, in Postgres and in ClickHouse (the same function).

    A single integer key buckets by its low bits (two's complement on both sides, so negative
    keys agree too): no hashing per row. Any other key by the first 4 bytes of MD5 of its text.
    Buckets only localise differences; equality rests on the counts and row checksums.
    """
    if len(key_cols) == 1 and key_cols[0].integer:
        col = key_cols[0]
        return (
            f"({_pg_ident(col.name)} & {BUCKETS - 1})",
            f"bitAnd({ident(col.name)}, {BUCKETS - 1})",
        )
    pg_key, ch_key = _row_text_pg(key_cols), _row_text_ch(key_cols)
    return (
        f"((('x' || substr(md5({pg_key}), 1, 8))::bit(32)::int) & {BUCKETS - 1})",
        f"bitAnd(reinterpretAsUInt32(reverse(substring(MD5({ch_key}), 1, 4))), {BUCKETS - 1})",
    )


@dataclass
class _Plan:
    """One table's check and the queries computing its bucket sums on either side."""

    check: TableCheck
    key: list[str]
    pg_from: str
    pg_count: bool = False  # only the source's row count (no warehouse table to compare)
    ch_from: str = ""
    pg_row: str = ""
    ch_row: str = ""
    pg_key: str = ""
    ch_key: str = ""
    pg_bucket: str = ""
    ch_bucket: str = ""

    @property
    def compared(self) -> bool:
        return bool(self.pg_row)

    def source_sql(self) -> str:
        if self.pg_count:
            return f"SELECT count(*) FROM {self.pg_from}"
        return (
            # GROUP BY position: a source column named like the alias would win over it.
            f"SELECT {self.pg_bucket} AS bankde_bucket, count(*), "
            f"coalesce(sum({_pg_hash(self.pg_row)}), 0) FROM {self.pg_from} GROUP BY 1"
        )

    def warehouse_sql(self) -> str:
        return (
            f"SELECT {self.ch_bucket} AS bankde_bucket, count(), "
            f"sum(toInt128({_ch_hash(self.ch_row)})) FROM {self.ch_from} GROUP BY bankde_bucket"
        )


def reconcile(
    settings: Settings,
    warehouse: Warehouse,
    sample_size: int = 10,
    reading: threading.Event | None = None,
    snapshot: str | None = None,
) -> ReconcileResult:
    """Compare every captured table (bank.*, truth.*) with its landing table (FINAL, not deleted).

    Both databases compute, per row, a canonical text of the key and every column (decimals at
    fixed scale, timestamps as their stored microseconds, NULL marked), hash it with MD5, and sum the
    64-bit hashes per key bucket; only the bucket sums leave each database. Differing buckets are
    then read key by key to name a sample of differing keys.

    The two sides run at the same time: the warehouse's queries on one thread, the source's on
    up to SOURCE_CONNECTIONS connections that share one snapshot (pg_export_snapshot), so every
    table is read as of the same instant, as on a single connection. `reading` is set once every
    query is under way (a caller sharing the warehouse can hold its own queries until then).
    `snapshot`: an exported snapshot to read the source in (reconcile_at_one_lsn), instead of
    a new one.
    """
    wh = warehouse
    names = DbNames(settings.wh_prefix)
    started = time.monotonic()
    info = source_info(settings)
    with ExitStack() as stack:
        conn = stack.enter_context(connect(info))
        _begin(conn, snapshot)
        if snapshot is None:
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            snapshot = str(row[0])
        catalog = catalog_tables_in(conn)
        plans = [
            _plan(wh, names, catalog.get((schema, table)), schema, table)
            for schema, table in captured_tables_in(conn)
        ]
        queued = [p for p in plans if p.compared or p.pg_count]
        # Largest first, so the big table's scan starts at once on its own connection.
        sizes = _sizes(conn, [p.pg_from for p in queued])
        queued.sort(key=lambda p: -sizes.get(p.pg_from, 0))
        n_conns = max(1, min(SOURCE_CONNECTIONS, len(queued)))
        conns: Queue[Any] = Queue()
        conns.put(conn)
        for _ in range(n_conns - 1):
            extra = stack.enter_context(connect(info))
            _begin(extra, snapshot)
            conns.put(extra)

        def source_side(plan: _Plan) -> list[Any]:
            c = conns.get()
            try:
                return list(c.execute(plan.source_sql()).fetchall())
            finally:
                conns.put(c)

        def warehouse_side() -> dict[str, list[Any]]:
            return {p.check.table: list(wh.query(p.warehouse_sql())) for p in queued if p.compared}

        pool = stack.enter_context(
            ThreadPoolExecutor(max_workers=n_conns + 1, thread_name_prefix="bankde-reconcile")
        )
        wh_future = pool.submit(warehouse_side)
        src_futures = {p.check.table: pool.submit(source_side, p) for p in queued}
        if reading is not None:
            reading.set()
        src_results = {t: f.result() for t, f in src_futures.items()}
        wh_results = wh_future.result()
        for plan in plans:
            table = plan.check.table
            if plan.pg_count:
                plan.check.source_rows = int(src_results[table][0][0])
            elif plan.compared:
                _compare(conn, wh, plan, src_results[table], wh_results[table], sample_size)
        conn.rollback()
    checks = [p.check for p in plans]
    _add_quarantined(wh, checks)
    return ReconcileResult(checks, time.monotonic() - started)


def _add_quarantined(wh: Warehouse, checks: list[TableCheck]) -> None:
    """Name, per table, the rows the capture held back in meta.cdc_rejects."""
    from bankde.cdc.rejects import reject_summary
    from bankde.warehouse.sink import stopped_tables

    found = reject_summary(wh)
    stopped = stopped_tables(wh)
    for check in checks:
        if check.table in stopped:
            check.problems.append(f"stopped: {stopped[check.table]}")
        summary = found.get(check.table)
        if summary is not None:
            check.quarantined = summary.rows
            check.quarantine_note = summary.line()


# Source connections reading the tables at once (one snapshot): the big table's scan overlaps
# the small ones', and each of them Postgres may parallelise further by itself.
SOURCE_CONNECTIONS = 3


def _begin(conn: Any, snapshot: str | None = None) -> None:
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if snapshot is not None:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    conn.execute("SET LOCAL extra_float_digits = 1")
    # Text forms as the capture session prints them, whatever ALTER ROLE/DATABASE SET says.
    conn.execute("SET LOCAL IntervalStyle = 'postgres'")
    conn.execute("SET LOCAL bytea_output = 'hex'")
    # The planner expects one group per row from a bucket expression (it cannot know there are
    # at most BUCKETS) and picks a sort spilling the whole table to disk; a hash aggregate holds
    # 1024 groups in memory (measured 7.0 s -> 5.8 s on 900,000 rows).
    conn.execute("SET LOCAL enable_sort = off")
    # The same misestimate makes partial aggregates look as large as the table, so a cheap
    # row expression loses the parallel plan (measured 6.0 s serial vs 4.2 s with 2 workers):
    # the gathered partials are 1,024 rows per worker, nearly free to pass.
    conn.execute("SET LOCAL parallel_setup_cost = 0")
    conn.execute("SET LOCAL parallel_tuple_cost = 0")


def _sizes(conn: Any, relations: list[str]) -> dict[str, int]:
    """Pages on disk per relation (the planner's own size figure), to order the scans."""
    if not relations:
        return {}
    rows = conn.execute(
        "SELECT r, pg_relation_size(r::regclass) FROM unnest(%s::text[]) AS r", (relations,)
    ).fetchall()
    return {str(r): int(n) for r, n in rows}


def _plan(
    wh: Warehouse,
    names: DbNames,
    source: CatalogTable | None,
    schema: str,
    table: str,
) -> _Plan:
    database = names.landing_db(schema)
    check = TableCheck(f"{schema}.{table}", f"{database}.{table}")
    src_cols = [(c.name, c.type_name) for c in source.columns] if source else []
    key = list(source.key) if source else []
    pg_from = f"{_pg_ident(schema)}.{_pg_ident(table)}"
    info = table_info(wh, database, table)
    if info is None:
        check.problems.append(f"warehouse table {database}.{table} does not exist")
        return _Plan(check, key, pg_from, pg_count=True)
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
    # A column only in the warehouse was dropped (or renamed) at the source: the landing table
    # keeps it for the rows written before (docs/cdc.md, schema changes), nothing to compare.
    by_name = {c.name: c for c in cols}
    key_cols = [by_name[k] for k in key if k in by_name]
    if len(key_cols) != len(key):
        return _Plan(check, key, pg_from)
    pg_bucket, ch_bucket = _buckets(key_cols)
    return _Plan(
        check,
        key,
        pg_from,
        ch_from=f"{ident(database)}.{ident(table)} FINAL WHERE _is_deleted = 0",
        pg_row=_row_text_pg(cols),
        ch_row=_row_text_ch(cols),
        pg_key=_row_text_pg(key_cols),
        ch_key=_row_text_ch(key_cols),
        pg_bucket=pg_bucket,
        ch_bucket=ch_bucket,
    )


def _compare(
    conn: Any,
    wh: Warehouse,
    plan: _Plan,
    src: list[Any],
    dst: list[Any],
    sample_size: int,
) -> None:
    """Fill the check from both sides' bucket sums; name a sample of differing keys."""
    check = plan.check
    src_buckets = {int(b): (int(n), int(s)) for b, n, s in src}
    wh_buckets = {int(b): (int(n), int(s)) for b, n, s in dst}
    check.source_rows = sum(n for n, _ in src_buckets.values())
    check.source_checksum = sum(s for _, s in src_buckets.values())
    check.warehouse_rows = sum(n for n, _ in wh_buckets.values())
    check.warehouse_checksum = sum(s for _, s in wh_buckets.values())
    if check.equal:
        return

    differing = sorted(
        b for b in set(src_buckets) | set(wh_buckets) if src_buckets.get(b) != wh_buckets.get(b)
    )
    picked = differing[:SAMPLE_BUCKETS]
    if not picked:
        return
    in_list = ", ".join(str(b) for b in picked)
    src_rows = dict(
        conn.execute(
            f"SELECT {plan.pg_key}, {_pg_hash(plan.pg_row)} FROM {plan.pg_from} "
            f"WHERE {plan.pg_bucket} IN ({in_list})"
        ).fetchall()
    )
    wh_rows = dict(
        wh.query(
            f"SELECT {plan.ch_key}, {_ch_hash(plan.ch_row)} FROM {plan.ch_from} "
            f"AND {plan.ch_bucket} IN ({in_list})"
        )
    )
    key = plan.key
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


def _natural(text: str) -> tuple[int, str]:
    """Sort numeric keys by value, others as text."""
    try:
        return (int(text), "")
    except ValueError:
        return (0, text)


def _show_key(key: list[str], text: str) -> str:
    values = text.split(chr(_SEP))
    return ", ".join(f"{k}={v}" for k, v in zip(key, values, strict=False))


# How long the check waits for a stream it does not drive to reach the compared LSN.
CATCH_UP_SECONDS = 300.0


def reconcile_at_one_lsn(
    settings: Settings, session: Any, timeout: float = CATCH_UP_SECONDS, engine: str = "native"
) -> tuple[ReconcileResult, dict[str, Any]]:
    """Compare source and warehouse as of one LSN, also while changes keep coming.

    A temporary slot gives a consistent point C and the source snapshot of exactly that
    instant. If no stream holds the capture slot, the check applies exactly the transactions
    committed before C itself (cdc sync_to) and compares: any difference is real. If a stream
    holds it, the check never touches the slot: it waits (up to `timeout`) for the stored
    offset to pass C and compares; a differing table whose warehouse rows all predate C is then
    a real difference, one with rows from after C is reported as not comparable at C.
    With the kafka engine (the connectors' slots are Kafka Connect's) the check syncs through
    Kafka until every connector is applied past C, then judges as for a running stream.
    Returns the result and {lsn, mode, not_comparable: [...]}.
    """
    from bankde.cdc import api as capture
    from bankde.cdc.envelope import format_lsn
    from bankde.cdc.slot import consistent_point, slot_state
    from bankde.errors import CaptureError
    from bankde.warehouse.sink import load_offset

    wh = session.warehouse(settings)
    names = DbNames(settings.wh_prefix)
    info: dict[str, Any] = {"not_comparable": []}
    with consistent_point(settings) as (lsn, snapshot):
        info["lsn"] = format_lsn(lsn)
        # Past C, not at it: rows from after C make a table not comparable (below).
        passed = True
        if engine == "kafka":
            from bankde.orchestration.kafka import sync_kafka

            info["mode"] = "caught up through kafka past it"
            sync_kafka(settings, capture.open_sink(settings, session), timeout=timeout)
        elif not slot_state(settings).active:
            passed = False
            info["mode"] = "caught up by the check"
            capture.sync_to(settings, capture.open_sink(settings, session), lsn)
        else:
            info["mode"] = "waited for the running stream"
            deadline = time.monotonic() + timeout
            while True:
                offset = load_offset(wh, settings.cdc_slot)
                if offset is not None and offset.lsn >= lsn:
                    break
                if time.monotonic() > deadline:
                    raise CaptureError(
                        f"the stream did not reach {format_lsn(lsn)} within {timeout:g} s "
                        f"(warehouse at {format_lsn(offset.lsn) if offset else 'nothing'}): "
                        "check `bankde cdc status`"
                    )
                time.sleep(0.5)
        result = reconcile(settings, wh, snapshot=snapshot)
    if passed:
        for check in result.differing:
            schema, table = check.table.split(".", 1)
            newest = wh.scalar(f"SELECT max(_lsn) FROM {names.landing_table(schema, table)}")
            if newest is not None and int(newest) >= lsn:
                info["not_comparable"].append(check.table)
    return result, info
