"""Every read of the source's catalog the capture needs: tables, columns, keys, row estimates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bankde.contracts import SourceColumn
from bankde.source.connection import SourceInfo, connect

# The captured schemas: the bank's tables and the filler's labels.
SCHEMAS = ("bank", "truth")


@dataclass(frozen=True)
class CatalogColumn:
    """One column as pg_attribute has it: type OID and typmod as pgoutput sends them, and the
    type as format_type() spells it ('numeric(18,2)')."""

    name: str
    type_oid: int
    typmod: int
    type_name: str
    not_null: bool


@dataclass(frozen=True)
class CatalogTable:
    """A captured table: its columns in attnum order and its primary key in key order."""

    oid: int
    schema: str
    table: str
    columns: tuple[CatalogColumn, ...]
    key: tuple[str, ...]

    def source_columns(self) -> list[SourceColumn]:
        """The columns in the sink's terms (what ensure_columns takes)."""
        return [
            SourceColumn(
                name=c.name,
                pg_type=c.type_oid,
                typmod=c.typmod,
                not_null=c.not_null,
                key=c.name in self.key,
            )
            for c in self.columns
        ]


def captured_tables(info: SourceInfo) -> list[tuple[str, str]]:
    """Every base table of the captured schemas (bank, truth), in a stable order."""
    with connect(info) as conn:
        return captured_tables_in(conn)


def captured_tables_in(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """captured_tables() on an open connection (inside the caller's transaction and snapshot)."""
    rows = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE' ORDER BY 1, 2",
        (list(SCHEMAS),),
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def catalog_tables(
    info: SourceInfo, only: Sequence[tuple[str, str]] | None = None
) -> dict[tuple[str, str], CatalogTable]:
    """Columns and primary key of every table of the captured schemas (or of `only`)."""
    with connect(info) as conn:
        return catalog_tables_in(conn, only)


def catalog_tables_in(
    conn: psycopg.Connection[Any], only: Sequence[tuple[str, str]] | None = None
) -> dict[tuple[str, str], CatalogTable]:
    """catalog_tables() on an open connection (inside the caller's transaction and snapshot)."""
    rows = conn.execute(
        """
        SELECT c.oid, n.nspname, c.relname, a.attname, a.atttypid::int8, a.atttypmod,
               format_type(a.atttypid, a.atttypmod), a.attnotnull,
               array_position(i.indkey::int2[], a.attnum)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
        WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY n.nspname, c.relname, a.attnum
        """,
        (list(SCHEMAS),),
    ).fetchall()
    wanted = None if only is None else set(only)
    grouped: dict[tuple[str, str], tuple[int, list[CatalogColumn], list[tuple[int, str]]]] = {}
    for oid, schema, table, col, typid, typmod, type_name, not_null, key_pos in rows:
        name = (str(schema), str(table))
        if wanted is not None and name not in wanted:
            continue
        _oid, cols, key = grouped.setdefault(name, (int(oid), [], []))
        cols.append(
            CatalogColumn(str(col), int(typid), int(typmod), str(type_name), bool(not_null))
        )
        if key_pos is not None:
            key.append((int(key_pos), str(col)))
    return {
        name: CatalogTable(oid, name[0], name[1], tuple(cols), tuple(c for _, c in sorted(key)))
        for name, (oid, cols, key) in grouped.items()
    }


def primary_keys(info: SourceInfo) -> dict[tuple[str, str], tuple[str, ...]]:
    """Primary-key columns per captured table, in key order (tables without one: absent)."""
    return {name: t.key for name, t in catalog_tables(info).items() if t.key}


def table_counts(info: SourceInfo) -> dict[str, int]:
    """Exact row counts of every bank.* and truth.* table."""
    with connect(info) as conn:
        out: dict[str, int] = {}
        for schema, table in captured_tables_in(conn):
            q = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            row = conn.execute(q).fetchone()
            out[f"{schema}.{table}"] = int(row[0]) if row else 0
        return out


def row_estimates(info: SourceInfo, tables: Sequence[tuple[str, str]]) -> dict[str, int]:
    """The planner's row count of each table ('schema.table'), where it has one (for progress)."""
    with connect(info) as conn:
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname, c.reltuples::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s)",
            (sorted({s for s, _ in tables}),),
        ).fetchall()
    return {str(name): int(n) for name, n in rows if n and n > 0}
