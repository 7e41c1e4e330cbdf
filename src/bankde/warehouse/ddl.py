"""Warehouse DDL: database names, the schema file applied idempotently, columns added as the source grows."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources

from bankde.contracts import SourceColumn
from bankde.errors import CaptureError, IncompatibleTypeChange
from bankde.settings import Settings, get_settings
from bankde.warehouse.client import Warehouse
from bankde.warehouse.types import (
    ch_column_type,
    ident,
    parse_pg_type,
    pg_type_from_oid,
    same_family,
    sql_str,
    strip_wrappers,
    widens,
)

# Metadata columns every raw table carries after the source columns, in this order.
META_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_version", "UInt128"),
    ("_is_deleted", "UInt8"),
    ("_op", "LowCardinality(String)"),
    ("_lsn", "UInt64"),
    ("_tx_id", "UInt64"),
    ("_source_ts", "DateTime64(3, 'UTC')"),
    ("_ingested_at", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
)
META_NAMES = frozenset(name for name, _ in META_COLUMNS)

# Source schema -> logical warehouse database.
_SOURCE_TO_DB = {"bank": "raw", "truth": "truth"}
_LOGICAL_DBS = ("raw", "truth", "meta")
SNAPSHOT_PREFIX = "snapshot__"
# Rows of a transaction too large for one batch, held until its commit (sink.apply_part).
TXN_PREFIX = "txn__"
# Changes of a table stopped by a type change the warehouse cannot take, until its resync.
HOLD_PREFIX = "hold__"


@dataclass(frozen=True)
class DbNames:
    """Real names of the warehouse databases under the configured prefix (BANKDE_WH_PREFIX)."""

    prefix: str

    @property
    def raw(self) -> str:
        return f"{self.prefix}raw"

    @property
    def truth(self) -> str:
        return f"{self.prefix}truth"

    @property
    def meta(self) -> str:
        return f"{self.prefix}meta"

    def real(self, logical: str) -> str:
        """'raw' -> 't1_raw'."""
        return f"{self.prefix}{logical}"

    def landing_db(self, source_schema: str) -> str:
        """Database landing a source schema: bank -> raw, truth -> truth."""
        try:
            return self.real(_SOURCE_TO_DB[source_schema])
        except KeyError:
            raise CaptureError(
                f"source schema {source_schema!r} has no warehouse database (captured: bank, truth)"
            ) from None

    def landing_table(self, source_schema: str, table: str) -> str:
        """Quoted `db`.`table` of a captured source table (bank.card -> `raw`.`card`)."""
        return f"{ident(self.landing_db(source_schema))}.{ident(table)}"

    def snapshot_table(self, source_schema: str, table: str) -> str:
        """Where a snapshot of the table is staged before it is swapped in."""
        return f"{ident(self.meta)}.{ident(f'{SNAPSHOT_PREFIX}{source_schema}__{table}')}"

    def txn_table(self, source_schema: str, table: str) -> str:
        """Where the parts of a transaction too large for one batch wait for its last part."""
        return f"{ident(self.meta)}.{ident(f'{TXN_PREFIX}{source_schema}__{table}')}"

    def hold_table(self, source_schema: str, table: str) -> str:
        """Where the changes of a stopped table wait for `cdc resync --table` (sink.stop_table)."""
        return f"{ident(self.meta)}.{ident(f'{HOLD_PREFIX}{source_schema}__{table}')}"

    @property
    def offsets(self) -> str:
        return f"{ident(self.meta)}.cdc_offsets"

    def meta_table(self, name: str) -> str:
        """Quoted `meta`.`name` under the prefix."""
        return f"{ident(self.meta)}.{ident(name)}"

    @property
    def batches(self) -> str:
        return f"{ident(self.meta)}.cdc_batches"

    def landing_dbs(self) -> tuple[str, str]:
        return self.raw, self.truth


def db_names(settings: Settings | None = None) -> DbNames:
    return DbNames((settings or get_settings()).wh_prefix)


def schema_sql() -> str:
    """clickhouse_init/01_schema_dwh.sql (the package holds a symlink to it; wheels copy the target)."""
    return (
        resources.files("bankde.warehouse").joinpath("schema_dwh.sql").read_text(encoding="utf-8")
    )


_CREATE_RE = re.compile(
    r"(CREATE\s+(?:DATABASE|TABLE)\s+IF\s+NOT\s+EXISTS\s+)(raw|truth|meta)\b", re.IGNORECASE
)


def schema_statements(prefix: str = "") -> list[str]:
    """The schema file's statements with database names prefixed (only where objects are created)."""
    text = "\n".join(
        line for line in schema_sql().splitlines() if not line.lstrip().startswith("--")
    )
    # Statements end with ';' at the end of a line (a ';' inside a COMMENT string does not).
    stmts = [s.strip() for s in re.split(r";[ \t]*$", text, flags=re.MULTILINE) if s.strip()]
    return [_CREATE_RE.sub(lambda m: m.group(1) + prefix + m.group(2), s) for s in stmts]


def apply_schema(wh: Warehouse) -> int:
    """Create every database and table that is missing; existing ones are left as they are,
    except where an older schema file created them in a form that is no longer correct, and
    their fsync settings, which follow BANKDE_WH_FSYNC."""
    stmts = schema_statements(wh.settings.wh_prefix)
    for stmt in stmts:
        wh.command(stmt)
    _migrate_offsets(wh, DbNames(wh.settings.wh_prefix))
    set_durable(wh, wh.settings.wh_fsync)
    return len(stmts)


# MergeTree settings under which an INSERT returns only once its part's files and directory are
# fsynced: Sink.apply() is "durable on return", and the slot is acknowledged after it.
_FSYNC = ("fsync_after_insert", "fsync_part_directory")
DURABLE_META = "('cdc_offsets', 'cdc_rejects', 'cdc_kafka_offsets', 'cdc_connector_lsn')"


def durable_tables(wh: Warehouse) -> list[str]:
    """Quoted names of the tables whose inserts the acknowledgement relies on: landing tables,
    staged snapshots, meta.cdc_offsets, meta.cdc_rejects, and the kafka engine's topic positions
    and per-connector LSNs (its resume point and cut)."""
    names = DbNames(wh.settings.wh_prefix)
    rows = wh.query(
        "SELECT database, name FROM system.tables WHERE engine LIKE '%MergeTree' AND ("
        "database IN ({r:String}, {t:String}) OR (database = {m:String} AND (name IN "
        f"{DURABLE_META} OR startsWith(name, {{p:String}})))) ORDER BY 1, 2",
        {"r": names.raw, "t": names.truth, "m": names.meta, "p": SNAPSHOT_PREFIX},
    )
    return [f"{ident(str(d))}.{ident(str(n))}" for d, n in rows]


# Parts smaller than this are written packed: one file instead of ten or so. The stream writes
# a small part per table per batch and merges delete them soon after; on a disk where each
# deleted file costs a synchronous discard (ext4 mounted with `discard`), ten files per part
# were what stalled a steady stream's writes (docs/cdc.md, "Latency"). Merged parts past the
# size are written in full, as ClickHouse does by default.
PACKED_BELOW_BYTES = 10 * 1024 * 1024
_PACKED = "min_bytes_for_full_part_storage"


def _supports_packed(wh: Warehouse) -> bool:
    """Whether the engine knows packed parts (chDB 26.9 does; older servers lack the setting)."""
    return bool(
        wh.scalar(
            "SELECT count() FROM system.merge_tree_settings WHERE name = {n:String}", {"n": _PACKED}
        )
    )


def set_durable(wh: Warehouse, on: bool, tables: Sequence[str] | None = None) -> int:
    """fsync inserts (files and part directory) of `tables` (default: durable_tables()) or
    stop doing so, and write their small parts packed (either way); returns how many tables
    changed. Idempotent and cheap (metadata only)."""
    want = 1 if on else 0
    wanted = {s: want for s in _FSYNC}
    if _supports_packed(wh):
        wanted[_PACKED] = PACKED_BELOW_BYTES
    changed = 0
    for name in durable_tables(wh) if tables is None else tables:
        db, table = (part.strip("`") for part in name.split(".", 1))
        engine = str(
            wh.scalar(
                "SELECT engine_full FROM system.tables WHERE database = {d:String} "
                "AND name = {t:String}",
                {"d": db, "t": table},
            )
            or ""
        )
        if all(f"{s} = {v}" in engine for s, v in wanted.items()):
            continue
        setting = ", ".join(f"{s} = {v}" for s, v in wanted.items())
        wh.command(f"ALTER TABLE {name} MODIFY SETTING {setting}")
        changed += 1
    return changed


def _migrate_offsets(wh: Warehouse, names: DbNames) -> None:
    """meta.cdc_offsets from before it was versioned by lsn (ReplacingMergeTree(written_at)):
    rebuilt with each slot's current row, i.e. the offset its capture resumes from today."""
    engine = wh.scalar(
        "SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'cdc_offsets'",
        {"d": names.meta},
    )
    if not engine or "ReplacingMergeTree(written_at)" not in str(engine):
        return
    rebuilt = f"{ident(names.meta)}.cdc_offsets__by_lsn"
    wh.command(f"DROP TABLE IF EXISTS {rebuilt} SYNC")
    wh.command(
        f"CREATE TABLE {rebuilt} AS {names.offsets} ENGINE = ReplacingMergeTree(lsn) ORDER BY slot"
    )
    wh.command(f"INSERT INTO {rebuilt} SELECT * FROM {names.offsets} FINAL")
    wh.command(f"EXCHANGE TABLES {names.offsets} AND {rebuilt}")
    wh.command(f"DROP TABLE {rebuilt} SYNC")


def ensure_schema(wh: Warehouse) -> None:
    """Apply the schema once per session and prefix (cheap to call before every use)."""
    prefix = wh.settings.wh_prefix
    if prefix not in wh.session.schema_applied:
        apply_schema(wh)
        wh.session.schema_applied.add(prefix)


def has_table(wh: Warehouse, database: str, table: str) -> bool:
    """Whether the table exists (a read: never creates anything)."""
    found = wh.scalar(
        "SELECT count() FROM system.tables WHERE database = {d:String} AND name = {t:String}",
        {"d": database, "t": table},
    )
    return bool(found)


@dataclass(frozen=True)
class TableInfo:
    """A landing table as the warehouse has it: source columns (name, type) and sort key."""

    name: str  # quoted db.table
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]

    @property
    def column_types(self) -> dict[str, str]:
        return dict(self.columns)


def table_info(wh: Warehouse, database: str, table: str) -> TableInfo | None:
    """Columns (metadata excluded) and ORDER BY columns of a table, or None if it does not exist."""
    rows = wh.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "ORDER BY position",
        {"db": database, "t": table},
    )
    if not rows:
        return None
    key_text = wh.scalar(
        "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    # `ORDER BY (id)` of a one-column key reads back as "(id)"; a longer one as "a, b".
    text = str(key_text or "").strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    key = tuple(k.strip().strip("`") for k in text.split(",") if k.strip())
    cols = tuple((str(n), str(t)) for n, t in rows if n not in META_NAMES)
    return TableInfo(f"{ident(database)}.{ident(table)}", cols, key)


def _pg_type(col: SourceColumn) -> str:
    t = (
        pg_type_from_oid(col.pg_type, col.typmod)
        if isinstance(col.pg_type, int)
        else parse_pg_type(col.pg_type)
    )
    return ch_column_type(t, col.not_null)


def create_table_sql(
    database: str, table: str, columns: Sequence[SourceColumn], source: str
) -> str:
    key = [c.name for c in columns if c.key]
    if not key:
        raise CaptureError(
            f"{source} has no primary key: add one (CDC lands rows by key) or drop it from the publication"
        )
    # A primary-key column is NOT NULL in Postgres even where the describing message does not
    # say so (pgoutput's Relation, Debezium's schema): the sort key must not be Nullable.
    typed = [(c.name, _pg_type(replace(c, not_null=True) if c.key else c)) for c in columns]
    return _table_sql(database, table, typed, key, source)


def _table_sql(
    database: str, table: str, columns: Sequence[tuple[str, str]], key: Sequence[str], source: str
) -> str:
    body = [f"    {ident(name)} {typ}" for name, typ in columns]
    body += [f"    {name} {typ}" for name, typ in META_COLUMNS]
    return (
        f"CREATE TABLE IF NOT EXISTS {ident(database)}.{ident(table)}\n(\n"
        + ",\n".join(body)
        + "\n)\nENGINE = ReplacingMergeTree(_version, _is_deleted)\n"
        + f"ORDER BY ({', '.join(ident(k) for k in key)})\n"
        + f"COMMENT {sql_str('CDC landing of ' + source)}"
    )


def ensure_columns(
    wh: Warehouse, schema: str, table: str, columns: Sequence[SourceColumn]
) -> list[str]:
    """Make the landing table of `schema.table` hold every source column; returns columns added.

    Missing table: created (ordered by the key columns). Missing column: ALTER TABLE ADD COLUMN
    with the mapped type. A column whose type changed incompatibly raises CaptureError naming
    table and column: the stream stops rather than skipping or mangling a change.
    """
    names = DbNames(wh.settings.wh_prefix)
    return ensure_columns_in(wh, names.landing_db(schema), table, columns, f"{schema}.{table}")


def ensure_columns_in(
    wh: Warehouse,
    database: str,
    table: str,
    columns: Sequence[SourceColumn],
    source: str,
    *,
    retype: bool = False,
) -> list[str]:
    """ensure_columns() against an explicit table (a landing table or its staged snapshot).

    With `retype` (an empty staged snapshot that will replace the landing table), a changed
    type re-creates the table with the source's type instead of raising.
    """
    info = table_info(wh, database, table)
    if info is None:
        wh.command(create_table_sql(database, table, columns, source))
        set_durable(wh, wh.settings.wh_fsync, [f"{ident(database)}.{ident(table)}"])
        return [c.name for c in columns]
    have = info.column_types
    added: list[str] = []
    retyped: dict[str, str] = {}
    widened: dict[str, str] = {}
    after = info.columns[-1][0] if info.columns else None
    for col in columns:
        want = _pg_type(col)
        if col.name in META_NAMES:
            raise CaptureError(f"{source}.{col.name}: column name collides with CDC metadata")
        if col.name not in have:
            position = f" AFTER {ident(after)}" if after else " FIRST"
            wh.command(
                f"ALTER TABLE {info.name} ADD COLUMN IF NOT EXISTS {ident(col.name)} {want}{position}"
            )
            added.append(col.name)
            after = col.name
            continue
        have_base, have_null = strip_wrappers(have[col.name])
        want_base, _ = strip_wrappers(want)
        if not same_family(have_base, want_base):
            if retype:
                retyped[col.name] = want
                continue
            if not widens(have_base, want_base):
                raise IncompatibleTypeChange(source, col.name, have[col.name], _pg_name(col))
            # Every old value fits the new type exactly: convert the column in place.
            widened[col.name] = wrap_like(have[col.name], want_base, col.not_null is False)
            continue
        if col.not_null is False and not have_null:
            # The source dropped NOT NULL: the landing column must accept NULL from now on.
            widened[col.name] = wrap_like(have[col.name], have_base, True)
    if widened:
        retype_columns(wh, database, table, widened, source)
    if retyped:
        _recreate_retyped(wh, database, table, retyped, source)
    return added


def wrap_like(have: str, base: str, nullable: bool) -> str:
    """`base` wrapped as the column `have` is (LowCardinality, Nullable), Nullable if asked."""
    _, was_null = strip_wrappers(have)
    inner = f"Nullable({base})" if was_null or nullable else base
    return f"LowCardinality({inner})" if have.startswith("LowCardinality(") else inner


def _pg_name(col: SourceColumn) -> str:
    """The source type as Postgres spells it, for messages."""
    if not isinstance(col.pg_type, int):
        return col.pg_type
    t = pg_type_from_oid(col.pg_type, col.typmod)
    return f"{t.name}({t.precision},{t.scale})" if t.precision is not None else t.name


def retype_columns(
    wh: Warehouse, database: str, table: str, types: dict[str, str], source: str
) -> None:
    """Give columns of a table new types whose values hold the old ones exactly (widening).

    Other columns: ALTER TABLE MODIFY COLUMN, a mutation that rewrites the parts; it is waited
    for (mutations_sync = 2), so the next batch lands on converted parts and readers never see
    two types. Sort-key columns cannot be altered by ClickHouse: the table is copied into one
    with the new types and swapped in with EXCHANGE TABLES (atomic for readers); callers hold
    the writes to it meanwhile (the sink's mutex).
    """
    info = table_info(wh, database, table)
    assert info is not None
    if set(types) & set(info.key):
        columns = [(name, types.get(name, typ)) for name, typ in info.columns]
        work = f"{table}__retype"
        wh.command(f"DROP TABLE IF EXISTS {ident(database)}.{ident(work)} SYNC")
        wh.command(_table_sql(database, work, columns, info.key, source))
        target = f"{ident(database)}.{ident(work)}"
        # Every version of every row, not only the current ones: history stays as it was.
        wh.command(f"INSERT INTO {target} SELECT * FROM {info.name}")
        wh.command(f"EXCHANGE TABLES {info.name} AND {target}")
        wh.command(f"DROP TABLE {target} SYNC")
        set_durable(wh, wh.settings.wh_fsync, [info.name])
        return
    for name, typ in types.items():
        wh.command(
            f"ALTER TABLE {info.name} MODIFY COLUMN {ident(name)} {typ} SETTINGS mutations_sync = 2"
        )


def _recreate_retyped(
    wh: Warehouse, database: str, table: str, retyped: dict[str, str], source: str
) -> None:
    """Re-create an empty table with some column types replaced (key columns included, which
    ALTER cannot change); everything else, column order and sort key, stays as it was."""
    info = table_info(wh, database, table)
    assert info is not None
    if wh.scalar(f"SELECT count() FROM {info.name}"):
        raise CaptureError(
            f"{source}: cannot change column types of non-empty {info.name} "
            f"({', '.join(sorted(retyped))}); run `bankde cdc resync`"
        )
    columns = [(name, retyped.get(name, typ)) for name, typ in info.columns]
    wh.command(f"DROP TABLE {info.name} SYNC")
    wh.command(_table_sql(database, table, columns, info.key, source))
    set_durable(wh, wh.settings.wh_fsync, [info.name])


def landing_tables(wh: Warehouse) -> list[tuple[str, str]]:
    """(database, table) of every landing table under the prefix (raw.* and truth.*)."""
    names = DbNames(wh.settings.wh_prefix)
    rows = wh.query(
        "SELECT database, name FROM system.tables WHERE database IN ({r:String}, {t:String}) "
        "ORDER BY database, name",
        {"r": names.raw, "t": names.truth},
    )
    return [(str(d), str(n)) for d, n in rows]


def recreate_tables(wh: Warehouse) -> list[str]:
    """Drop every landing table and staged snapshot, then re-create them from the schema file.

    The way back from an invalidated slot (`bankde cdc resync`): the caller snapshots again.
    Tables the schema file does not declare (created by ensure_columns) are dropped too; the
    capture re-creates them from the source catalog before their snapshot.
    """
    names = DbNames(wh.settings.wh_prefix)
    dropped = []
    for database, table in landing_tables(wh):
        wh.command(f"DROP TABLE IF EXISTS {ident(database)}.{ident(table)} SYNC")
        dropped.append(f"{database}.{table}")
    staged = wh.query(
        "SELECT name FROM system.tables WHERE database = {m:String} "
        "AND (startsWith(name, {p:String}) OR startsWith(name, {t:String}) "
        "OR startsWith(name, {h:String}))",
        {"m": names.meta, "p": SNAPSHOT_PREFIX, "t": TXN_PREFIX, "h": HOLD_PREFIX},
    )
    for (name,) in staged:
        wh.command(f"DROP TABLE IF EXISTS {ident(names.meta)}.{ident(str(name))} SYNC")
    apply_schema(wh)
    return dropped


def drop_databases(wh: Warehouse) -> None:
    """Drop the prefixed databases entirely (test teardown, or a clean start)."""
    names = DbNames(wh.settings.wh_prefix)
    for logical in _LOGICAL_DBS:
        wh.command(f"DROP DATABASE IF EXISTS {ident(names.real(logical))} SYNC")
    wh.session.schema_applied.discard(wh.settings.wh_prefix)
