"""Initial snapshot: binary COPY of each table inside the slot's exported snapshot, as Arrow."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from bankde.contracts import ProgressFn, Sink
from bankde.errors import CaptureError
from bankde.source.catalog import CatalogTable, catalog_tables, row_estimates
from bankde.source.connection import SourceInfo, capture_session_sql
from bankde.warehouse.types import parse_pg_type

# Rows handed to the sink per call: big enough to amortise an insert, small enough for memory.
CHUNK_ROWS = 250_000


def adbc_uri(info: SourceInfo) -> str:
    """A libpq URI for the ADBC driver (it speaks binary COPY and builds Arrow in C++).

    bankde-security: every parameter of the DSN (sslrootcert, sslcert, sslkey, channel_binding,
    hostaddr, ...) goes into the query string, which libpq reads like a keyword DSN, so the
    snapshot connection checks the server exactly as every other connection does.
    """
    params = {"application_name": "bankde_snapshot", **info.params}
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    return f"postgresql:///?{query}"


def copy_snapshot(
    info: SourceInfo,
    snapshot_name: str,
    tables: Sequence[tuple[str, str]],
    sink: Sink,
    snapshot_lsn: int,
    progress: ProgressFn | None = None,
) -> dict[str, int]:
    """Copy every table as of the exported snapshot into the sink; rows per table.

    The reads run in one REPEATABLE READ transaction that adopts the slot's exported snapshot
    (SET TRANSACTION SNAPSHOT), so the copy is exactly the state the stream continues from. The
    ADBC PostgreSQL driver reads with `COPY ... TO STDOUT (FORMAT binary)` and decodes into Arrow
    in C++; numeric arrives as its exact text form, never as a float.
    """
    import adbc_driver_postgresql.dbapi as adbc

    try:
        conn = adbc.connect(adbc_uri(info), autocommit=True)
    except Exception as exc:
        raise CaptureError(f"snapshot connection failed: {str(exc).splitlines()[0]}") from None
    counts: dict[str, int] = {}
    catalog = catalog_tables(info, tables)
    estimates = row_estimates(info, tables) if progress else {}
    try:
        cur = conn.cursor()
        # Text forms (columns read as text, client encoding) exactly as the stream prints them.
        for stmt in capture_session_sql():
            cur.execute(stmt)
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute(f"SET TRANSACTION SNAPSHOT '{_quote_literal(snapshot_name)}'")
        for schema, table in tables:
            name = f"{schema}.{table}"
            estimate = estimates.get(name)
            done = 0
            if progress:
                progress(name, 0, estimate)
            cur.execute(
                f"SELECT {select_list(catalog.get((schema, table)))} "
                f"FROM {_ident(schema)}.{_ident(table)}"
            )
            reader = cur.fetch_record_batch()
            for chunk in _rechunk(reader, CHUNK_ROWS):
                done += sink.load_snapshot(schema, table, chunk, snapshot_lsn)
                if progress:
                    progress(name, done, estimate)
            counts[name] = done
            if progress:
                progress(name, done, done)
        cur.execute("COMMIT")
        cur.close()
    finally:
        conn.close()
    return counts


# Types whose binary COPY form the driver turns into Arrow that lands exactly as the stream's
# text does (bytea and uuid are turned into text by plain_batch; enums arrive as their label).
# Every other type (numeric: the driver turns NaN into NULL; interval, time, timetz, json,
# jsonb, arrays, ...) is read as Postgres prints it, in the pinned session: the very text
# pgoutput streams.
_BINARY_EXACT = frozenset(
    {
        "int2", "int4", "int8", "oid", "bool", "float4", "float8", "date", "timestamp",
        "timestamptz", "uuid", "text", "varchar", "bpchar", "name", "bytea", "enum",
    }
)  # fmt: skip


def select_list(table: CatalogTable | None) -> str:
    """The snapshot's SELECT list: binary where exact, `::text` elsewhere (`*` if unknown)."""
    if table is None:
        return "*"
    parts = []
    for col in table.columns:
        name = _ident(col.name)
        exact = parse_pg_type(col.type_name).name in _BINARY_EXACT
        parts.append(name if exact else f"{name}::text AS {name}")
    return ", ".join(parts)


def _rechunk(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.RecordBatch]:
    pending: list[pa.RecordBatch] = []
    have = 0
    for batch in reader:
        if batch.num_rows == 0:
            continue
        pending.append(plain_batch(batch))
        have += batch.num_rows
        if have >= rows:
            yield _concat(pending)
            pending, have = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def plain_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Plain Arrow types only: numeric and other opaque types as their text, uuid as text."""
    arrays = []
    fields = []
    for f, col in zip(batch.schema, batch.columns, strict=True):
        typ = f.type
        if isinstance(typ, pa.ExtensionType):
            col = uuid_text(col.storage) if typ.extension_name == "arrow.uuid" else col.storage
        elif (f.metadata or {}).get(b"POSTGRESQL:type") == b"bytea" and pa.types.is_binary(typ):
            col = bytea_text(col)  # bankde-security: bank.card.pan_enc is the first bytea column
        arrays.append(col)
        fields.append(pa.field(f.name, col.type, nullable=True, metadata=f.metadata))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def uuid_text(arr: pa.Array) -> pa.Array:
    """16-byte UUIDs -> canonical 36-char strings, vectorised."""
    n = len(arr)
    if n == 0:
        return pa.array([], pa.string())
    raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=16 * (arr.offset + n))
    raw = raw[16 * arr.offset :].reshape(n, 16)
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[raw >> 4]
    hexed[:, 1::2] = _HEX[raw & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = {0: 8, 24: 12}.get(dst, 4)
        out[:, dst : dst + width] = hexed[:, src : src + width]
    offsets = pa.array(np.arange(0, 36 * (n + 1), 36, dtype=np.int32))
    values = pa.py_buffer(out.tobytes())
    text = pa.StringArray.from_buffers(n, offsets.buffers()[1], values)
    if arr.null_count:
        text = pa.compute.if_else(arr.is_null(), pa.scalar(None, pa.string()), text)
    return text


def bytea_text(arr: pa.Array) -> pa.Array:
    """Raw bytea values -> Postgres' text form '\\x<hex>', what pgoutput streams, vectorised."""
    n = len(arr)
    if n == 0:
        return pa.array([], pa.string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=arr.offset + n + 1)
    offsets = offsets[arr.offset :]
    base, end = int(offsets[0]), int(offsets[-1])
    data = (
        np.frombuffer(arr.buffers()[2], dtype=np.uint8, count=end)[base:end]
        if end > base
        else np.empty(0, np.uint8)
    )
    lengths = np.diff(offsets).astype(np.int64)
    new_offsets = 2 * (offsets.astype(np.int64) - base) + 2 * np.arange(n + 1)
    out = np.empty(int(new_offsets[-1]), dtype=np.uint8)
    out[new_offsets[:-1]] = ord("\\")
    out[new_offsets[:-1] + 1] = ord("x")
    row = np.repeat(np.arange(n), 2 * lengths)
    hex_at = np.arange(2 * len(data)) + 2 * (row + 1)
    hexed = np.empty(2 * len(data), dtype=np.uint8)
    hexed[0::2] = _HEX[data >> 4]
    hexed[1::2] = _HEX[data & 0x0F]
    out[hex_at] = hexed
    text = pa.StringArray.from_buffers(
        n, pa.py_buffer(new_offsets.astype(np.int32).tobytes()), pa.py_buffer(out.tobytes())
    )
    if arr.null_count:
        text = pa.compute.if_else(arr.is_null(), pa.scalar(None, pa.string()), text)
    return text


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return text.replace("'", "''")
