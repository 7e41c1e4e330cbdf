"""The CDC sink: change events and snapshot batches into the raw tables, offsets after the data."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bankde.cdc.envelope import Origins
from bankde.cdc.rejects import Reject, key_text, record_rejects
from bankde.cdc.version import make_version, sql_make_version, version_lsn
from bankde.contracts import Changes, ColumnarChanges, Offset, SourceColumn, Truncate
from bankde.errors import CaptureError
from bankde.warehouse import ddl, screen
from bankde.warehouse.client import Warehouse
from bankde.warehouse.ddl import DbNames, TableInfo
from bankde.warehouse.types import (
    arrow_to_ch_type,
    ident,
    sql_str,
    strip_wrappers,
    text_cast_expr,
    typed_cast_expr,
)

if TYPE_CHECKING:
    from bankde.cdc.envelope import ChangeColumns, ChangeEvent

log = logging.getLogger(__name__)

# Unchanged-TOAST lookups per statement: keeps the IN list of literal keys a sane size.
_LOOKUP_CHUNK = 1000
_META_INSERT = ("_version", "_is_deleted", "_op", "_lsn", "_tx_id", "_source_ts", "_ingested_at")
# Batch-log rows are held back and written together once the oldest is this old (or when the
# stream idles or stops): a one-row INSERT per batch cost 12 % of the stream at small batches.
BATCH_LOG_SECONDS = 1.0


class ClickHouseSink:
    """contracts.Sink on the warehouse's landing tables (raw.*, truth.*).

    Each table's events go in as one INSERT ... SELECT over Arrow columns of Postgres text; the
    engine parses every value (Decimal, DateTime64, UUID...) in bulk. The offset row is written
    only after all data rows of the call, so a crash in between re-delivers, never skips.
    """

    def __init__(self, warehouse: Warehouse, record_batches: bool = True) -> None:
        self.wh = warehouse
        # One row per applied batch in meta.cdc_batches (the report's CDC charts); off only to
        # measure what recording costs (bench/cdc.py --batch-log-cost).
        self.record_batches = record_batches
        self.names = DbNames(warehouse.settings.wh_prefix)
        self._tables: dict[tuple[str, str], TableInfo] = {}
        self._staged: dict[str, list[tuple[str, str]]] = {}
        self._mutex = threading.RLock()
        # meta.cdc_batches rows (SQL VALUES tuples) not written yet, and when the oldest came.
        self._log_rows: list[str] = []
        self._log_since = 0.0
        # A transaction arriving in parts: the tables its parts were written to (in their
        # meta.txn__ tables) and its truncates, until the apply() with its final part.
        self._txn_tables: set[tuple[str, str]] = set()
        self._txn_truncates: list[Truncate] = []
        self._to_txn_tables = False
        self._txn_open = False
        # Values held back by this call of apply(), written to meta.cdc_rejects before its offset.
        self._rejects: list[Reject] = []
        # The slot of the snapshot or stream in progress (snapshot rejects name it).
        self._slot = warehouse.settings.cdc_slot
        ddl.ensure_schema(warehouse)
        # Tables stopped by a type change the warehouse cannot take: their changes go to their
        # meta.hold__ table until a resync swaps in a reloaded table (contracts.StopsTables).
        self._stopped = self._load_stopped()
        self._release_held()
        self._streaming = False  # whether apply() was called: this sink is the stream's

    # --- contract ------------------------------------------------------------------------
    def apply(
        self,
        events: Changes,
        offset: Offset,
        truncates: Sequence[Truncate] = (),
        record_offset: bool = True,
    ) -> None:
        with self._mutex, _gc_paused():
            started_us = time.time_ns() // 1000
            self._slot = offset.slot
            self._streaming = True
            if self._stopped:
                self._release_held()
            if self._txn_open:
                # The final part of a transaction that came in parts: it joins the others, and
                # then all of them land, each table in one step (its parts' rejects are held).
                groups, rest = self._write_changes(events, to_txn_tables=True)
                self._publish_txn()
                truncates = [*self._txn_truncates, *truncates]
                self._txn_truncates = []
                self._txn_open = False
            else:
                self._rejects = []
                groups, rest = self._write_changes(events)
            for schema, table, version in truncates:
                self.truncate(schema, table, version)
            if self._rejects:
                # Before the offset, like the data: a crash in between re-delivers the batch.
                record_rejects(self.wh, offset.slot, self._rejects)
                self._rejects = []
            if offset.snapshot_done and self._staged.get(offset.slot):
                self._publish_snapshot(offset.slot)
                record_offset = True  # the switch and the offset that says it happened
            if record_offset:
                self._write_offset(offset)
            if self.record_batches and (groups or rest):
                self._write_metrics(offset, groups, rest, started_us)
            # After the offset: the batch log is informational, never part of durability.
            if self._log_rows and time.monotonic() - self._log_since >= BATCH_LOG_SECONDS:
                self._write_log()

    def apply_part(self, events: Changes, part: int, truncates: Sequence[Truncate] = ()) -> None:
        with self._mutex, _gc_paused():
            self._streaming = True
            if part == 0:
                self._discard_txn_tables()
                self._rejects = []
                if self._stopped:
                    self._release_held()
            self._txn_open = True
            self._write_changes(events, to_txn_tables=True)
            # Truncates hide older rows of the landing table, the parts' rows included: they
            # run once the parts have landed.
            self._txn_truncates.extend(truncates)

    def _write_changes(
        self, events: Changes, to_txn_tables: bool = False
    ) -> tuple[list[ChangeColumns], Sequence[ChangeEvent]]:
        """Write the events' rows, per table (to the landing tables, or to the meta.txn__
        tables that hold a transaction's parts); returns them as columnar groups and events."""
        # A batch that hands over its changes columnar skips the per-event pivot.
        groups: list[ChangeColumns] = []
        rest: Sequence[ChangeEvent]
        if isinstance(events, ColumnarChanges):
            groups, rest = events.columnar()
        else:
            rest = events
        self._to_txn_tables = to_txn_tables
        try:
            for cols in groups:
                self._write_columns(cols)
            by_table: dict[tuple[str, str], list[ChangeEvent]] = {}
            for ev in rest:
                src = ev.source
                group = by_table.get((src.schema, src.table))
                if group is None:
                    group = by_table[(src.schema, src.table)] = []
                group.append(ev)
            for (schema, table), group in by_table.items():
                self._write_events(schema, table, group)
        finally:
            self._to_txn_tables = False
        return groups, rest

    def _row_target(self, schema: str, table: str, info: TableInfo) -> str:
        """The table a row change is written to: the landing table, or while a transaction's
        parts are written, its meta.txn__ table (made like the landing table on first use)."""
        if not self._to_txn_tables:
            return info.name
        target = self.names.txn_table(schema, table)
        if (schema, table) not in self._txn_tables:
            self.wh.command(f"CREATE TABLE IF NOT EXISTS {target} AS {info.name}")
            self._txn_tables.add((schema, table))
        return target

    def _publish_txn(self) -> None:
        """Move every part of the transaction into the landing tables: ATTACH PARTITION FROM
        adds a table's parts in one step (readers see all of them or none), then drop."""
        for schema, table in sorted(self._txn_tables):
            target = self.names.txn_table(schema, table)
            landing = self._info(schema, table).name
            self.wh.command(f"ALTER TABLE {landing} ATTACH PARTITION tuple() FROM {target}")
            self.wh.command(f"DROP TABLE IF EXISTS {target} SYNC")
        self._txn_tables.clear()

    def _discard_txn_tables(self) -> None:
        """Forget the parts of an unfinished delivery (this process's, or a crashed one's)."""
        leftover = self.wh.query(
            "SELECT name FROM system.tables WHERE database = {m:String} "
            "AND startsWith(name, {p:String})",
            {"m": self.names.meta, "p": ddl.TXN_PREFIX},
        )
        for (name,) in leftover:
            self.wh.command(
                f"DROP TABLE IF EXISTS {ident(self.names.meta)}.{ident(str(name))} SYNC"
            )
        self._txn_tables.clear()
        self._txn_truncates = []
        self._txn_open = False

    # --- tables copied again while streaming (contracts.SnapshotsTables) -------------------
    def request_table_snapshots(self, tables: Sequence[tuple[str, str]], reason: str) -> None:
        if tables:
            self.wh.command(
                f"INSERT INTO {ident(self.names.meta)}.cdc_table_snapshots (source_table, state, "
                "reason, rows, lsn) VALUES "
                + ", ".join(
                    f"({sql_str(f'{s}.{t}')}, 'requested', {sql_str(reason)}, 0, 0)"
                    for s, t in tables
                )
            )

    def pending_table_snapshots(self) -> list[tuple[str, str]]:
        rows = self.wh.query(
            f"SELECT source_table FROM {ident(self.names.meta)}.cdc_table_snapshots FINAL "
            "WHERE state = 'requested' ORDER BY source_table"
        )
        return [tuple(str(r[0]).split(".", 1)) for r in rows]  # type: ignore[misc]

    def table_snapshot_done(self, schema: str, table: str, rows: int, lsn: int) -> None:
        self.wh.command(
            f"INSERT INTO {ident(self.names.meta)}.cdc_table_snapshots (source_table, state, "
            f"reason, rows, lsn) VALUES ({sql_str(f'{schema}.{table}')}, 'done', '', {rows}, {lsn})"
        )

    # --- a table stopped by a type change (contracts.StopsTables) ---------------------------
    def stopped_tables(self) -> dict[str, str]:
        return stopped_tables(self.wh)

    def stop_table(
        self, schema: str, table: str, columns: Sequence[SourceColumn], reason: str
    ) -> None:
        with self._mutex:
            if (schema, table) in self._stopped:
                return
            # Shaped like the source now is, so that it can hold every change from here on.
            ddl.ensure_columns_in(
                self.wh,
                self.names.meta,
                f"{ddl.HOLD_PREFIX}{schema}__{table}",
                columns,
                f"{schema}.{table}",
                retype=True,
            )
            self.wh.command(
                f"INSERT INTO {ident(self.names.meta)}.cdc_table_snapshots (source_table, state, "
                f"reason, rows, lsn) VALUES ({sql_str(f'{schema}.{table}')}, 'stopped', "
                f"{sql_str(reason)}, 0, 0)"
            )
            self._stopped.add((schema, table))
            self._tables.pop((schema, table), None)

    def stage_table(self, schema: str, table: str, columns: Sequence[SourceColumn]) -> None:
        """Make an empty meta.snapshot__ table shaped like `columns` the target of the table's
        snapshot rows (load_snapshot), to be swapped in by swap_in(): the way to reload a table
        whose types the landing table cannot take, the landing table readable meanwhile."""
        with self._mutex:
            staging = self.names.snapshot_table(schema, table)
            self.wh.command(f"DROP TABLE IF EXISTS {staging} SYNC")
            ddl.ensure_columns_in(
                self.wh,
                self.names.meta,
                self._staging_name(schema, table),
                columns,
                f"{schema}.{table}",
            )
            self._staged[_RETYPE + f"{schema}.{table}"] = [(schema, table)]

    def swap_in(self, schema: str, table: str, rows: int, lsn: int) -> None:
        """Swap the staged table (stage_table) in for the landing table, with the changes held
        for it, and resume the table: its changes land directly again."""
        with self._mutex:
            staging = self.names.snapshot_table(schema, table)
            hold = self.names.hold_table(schema, table)
            if ddl.has_table(self.wh, self.names.meta, f"{ddl.HOLD_PREFIX}{schema}__{table}"):
                # Held changes sort against the copy by version (LSN): later ones win.
                self._move_rows(hold, staging)
            landing = self.names.landing_table(schema, table)
            self.wh.command(f"EXCHANGE TABLES {landing} AND {staging}")
            self.wh.command(f"DROP TABLE IF EXISTS {staging} SYNC")
            ddl.set_durable(self.wh, self.wh.settings.wh_fsync, [landing])
            self._staged.pop(_RETYPE + f"{schema}.{table}", None)
            self.wh.command(
                f"INSERT INTO {ident(self.names.meta)}.cdc_table_snapshots (source_table, state, "
                f"reason, rows, lsn) VALUES ({sql_str(f'{schema}.{table}')}, 'done', "
                f"'reloaded with the source types', {rows}, {lsn})"
            )
            if self._streaming and (schema, table) in self._stopped:
                # This sink is the stream's and held them, under this mutex: nothing more can
                # arrive in the hold table. Another sink's stream may still write to it: it
                # moves them in itself once it sees the table resumed (_release_held).
                self.wh.command(f"DROP TABLE IF EXISTS {hold} SYNC")
            self._stopped.discard((schema, table))
            self._tables.pop((schema, table), None)

    def _mark_resumed(self, schema: str, table: str, reason: str) -> None:
        self.wh.command(
            f"INSERT INTO {ident(self.names.meta)}.cdc_table_snapshots (source_table, state, "
            f"reason, rows, lsn) VALUES ({sql_str(f'{schema}.{table}')}, 'done', "
            f"{sql_str(reason)}, 0, 0)"
        )
        self._stopped.discard((schema, table))
        self._tables.pop((schema, table), None)

    def _load_stopped(self) -> set[tuple[str, str]]:
        return {tuple(t.split(".", 1)) for t in self.stopped_tables()}  # type: ignore[misc]

    def _release_held(self) -> None:
        """Held changes of a table no longer stopped (another sink swapped in its reload):
        into the landing table, where their versions sort them against the reload's rows."""
        stopped = self._load_stopped()
        held = self.wh.query(
            "SELECT name FROM system.tables WHERE database = {m:String} "
            "AND startsWith(name, {p:String})",
            {"m": self.names.meta, "p": ddl.HOLD_PREFIX},
        )
        for (name,) in held:
            schema, _, table = str(name)[len(ddl.HOLD_PREFIX) :].partition("__")
            if (schema, table) in stopped:
                continue
            hold = self.names.hold_table(schema, table)
            self._move_rows(hold, self.names.landing_table(schema, table))
            self.wh.command(f"DROP TABLE IF EXISTS {hold} SYNC")
            log.info("%s.%s: resumed, its held changes written", schema, table)
        for key in self._stopped - stopped:
            self._tables.pop(key, None)
        self._stopped = stopped

    def _move_rows(self, source: str, target: str) -> None:
        """INSERT every row of `source` into `target`, by the columns they share."""
        cols = []
        for name in (source, target):
            db, tbl = (p.strip("`") for p in name.split(".", 1))
            info = ddl.table_info(self.wh, db, tbl)
            cols.append([c for c, _ in info.columns] if info else [])
        shared = [c for c in cols[1] if c in cols[0]] + [n for n, _ in ddl.META_COLUMNS]
        names = ", ".join(ident(c) for c in shared)
        self.wh.command(f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}")

    def missing_tables(self, tables: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(s, t) for s, t in tables if self._find_info(s, t) is None]

    def missing_columns(
        self, schema: str, table: str, columns: Sequence[SourceColumn]
    ) -> list[str]:
        info = self._find_info(schema, table)
        have = info.column_types if info is not None else {}
        return [c.name for c in columns if c.name not in have]

    def flush_log(self) -> None:
        with self._mutex:
            if self._log_rows:
                self._write_log()

    def ensure_columns(self, schema: str, table: str, columns: Sequence[SourceColumn]) -> list[str]:
        with self._mutex:
            if (schema, table) in self._staged_tables():
                # The staged snapshot replaces the landing table once done: only it must take
                # the source's shape, a changed type included (it is still empty here).
                added = ddl.ensure_columns_in(
                    self.wh,
                    self.names.meta,
                    self._staging_name(schema, table),
                    columns,
                    f"{schema}.{table}",
                    retype=True,
                )
            elif (schema, table) in self._stopped:
                added = ddl.ensure_columns_in(
                    self.wh,
                    self.names.meta,
                    f"{ddl.HOLD_PREFIX}{schema}__{table}",
                    columns,
                    f"{schema}.{table}",
                )
            else:
                added = ddl.ensure_columns(self.wh, schema, table, columns)
            if added:
                log.info("%s.%s: added warehouse columns %s", schema, table, ", ".join(added))
            self._tables.pop((schema, table), None)
            if (schema, table) in self._txn_tables:
                self._align_txn_table(schema, table)
            return added

    def _align_txn_table(self, schema: str, table: str) -> None:
        """A table altered while a transaction's parts wait in its meta.txn__ table: give that
        table the landing table's columns too (ATTACH PARTITION FROM needs the same ones)."""
        target = self.names.txn_table(schema, table)
        rows = self.wh.query(
            "SELECT name, type FROM system.columns WHERE database = {d:String} "
            "AND table = {t:String} ORDER BY position",
            {"d": self.names.meta, "t": f"{ddl.TXN_PREFIX}{schema}__{table}"},
        )
        have = {str(n): str(t) for n, t in rows}
        wanted = self.wh.query(
            "SELECT name, type FROM system.columns WHERE database = {d:String} "
            "AND table = {t:String} ORDER BY position",
            {"d": self.names.landing_db(schema), "t": table},
        )
        previous = None
        retyped: dict[str, str] = {}
        for name, ch_type in wanted:
            name, ch_type = str(name), str(ch_type)
            if name not in have:
                where = f" AFTER {ident(previous)}" if previous else " FIRST"
                self.wh.command(f"ALTER TABLE {target} ADD COLUMN {ident(name)} {ch_type}{where}")
            elif have[name] != ch_type:
                retyped[name] = ch_type
            previous = name
        if retyped:
            ddl.retype_columns(
                self.wh,
                self.names.meta,
                f"{ddl.TXN_PREFIX}{schema}__{table}",
                retyped,
                f"{schema}.{table}",
            )

    def reset_for_snapshot(self, slot: str, tables: Sequence[tuple[str, str]]) -> None:
        with self._mutex:
            # A new incarnation of the slot starts here: offsets are versioned by LSN, so the
            # old incarnation's rows must not outlive it (see meta.cdc_offsets in the schema).
            self._forget_offset(slot)
            self._slot = slot
            staged = []
            for schema, table in tables:
                if (schema, table) in self._stopped:
                    # The new snapshot reloads it with the source's types: no longer stopped.
                    self._mark_resumed(schema, table, "full resync")
                    self.wh.command(
                        f"DROP TABLE IF EXISTS {self.names.hold_table(schema, table)} SYNC"
                    )
                info = self._find_info(schema, table)
                staging = self.names.snapshot_table(schema, table)
                self.wh.command(f"DROP TABLE IF EXISTS {staging} SYNC")
                if info is None:
                    # Created by ensure_columns() later; its snapshot then lands directly.
                    continue
                self.wh.command(f"CREATE TABLE {staging} AS {info.name}")
                staged.append((schema, table))
            self._staged[slot] = staged

    def load_snapshot(
        self, schema: str, table: str, rows: pa.RecordBatch | pa.Table, snapshot_lsn: int
    ) -> int:
        with self._mutex:
            n = rows.num_rows
            if n == 0:
                return 0
            info = self._snapshot_columns(schema, table, rows.schema)
            gone = {
                name: ddl.wrap_like(t, strip_wrappers(t)[0], True)
                for name, t in info.columns
                if name not in rows.schema.names and not strip_wrappers(t)[1]
            }
            if gone:
                # Columns the source no longer has (dropped, renamed): NULL in the copied rows,
                # as in the streamed ones, rather than the type's default.
                db, tbl = (p.strip("`") for p in info.name.split(".", 1))
                ddl.retype_columns(self.wh, db, tbl, gone, f"{schema}.{table}")
                self._tables.pop((schema, table), None)
                info = self._snapshot_target(schema, table)
            rows = self._screen_snapshot(schema, table, info, rows, snapshot_lsn)
            n = rows.num_rows
            if n == 0:
                return 0
            target = info.name
            types = info.column_types
            arrays, columns, exprs = [], [], []
            for i, field in enumerate(rows.schema):
                col = rows.column(i)
                ch_type = types[field.name]
                if col.null_count and not strip_wrappers(ch_type)[1]:
                    raise CaptureError(
                        f"{schema}.{table}.{field.name}: NULL in the snapshot but the warehouse "
                        f"column is {ch_type} (NOT NULL); run `bankde cdc resync` after fixing the type"
                    )
                arrays.append(col)
                columns.append(field.name)
                exprs.append(typed_cast_expr(f"c{i}", field.type, ch_type))
            version = make_version(snapshot_lsn, 0)
            columns += list(_META_INSERT)
            exprs += [
                f"toUInt128('{version}')",
                "0",
                "'r'",
                f"toUInt64({snapshot_lsn})",
                "0",
                "now64(3)",
                "now64(3)",
            ]
            data = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
            self.wh.insert_select(target, columns, exprs, data)
            self._write_snapshot_metrics(schema, table, n, snapshot_lsn)
            return n

    def load_offset(self, slot: str) -> Offset | None:
        return load_offset(self.wh, slot)

    def reset(self, slot: str) -> None:
        with self._mutex:
            # The landing tables stay as they are, readable, until the new snapshot replaces
            # them all at once (reset_for_snapshot stages it, _publish_snapshot swaps it in).
            self._forget_offset(slot)
            self._tables.clear()
            self._staged.clear()
            self._discard_txn_tables()

    # --- beyond the contract ---------------------------------------------------------------
    def quarantine(self, slot: str, rejects: Sequence[Reject]) -> int:
        """Record rows held back from the landing tables in meta.cdc_rejects (idempotent).

        Engines whose records carry more than the envelope (Kafka topic, partition, offset) call
        it with those filled; call it before the offset covering the rows is written."""
        with self._mutex:
            return record_rejects(self.wh, slot, rejects)

    def truncate(self, schema: str, table: str, version: int) -> None:
        """Hide every row of the table older than `version` (a source TRUNCATE), by tombstones.

        Idempotent and order-safe: rows written later with a higher version stay visible, a
        re-delivered older change stays hidden.
        """
        with self._mutex:
            info = self._info(schema, table)
            keys = ", ".join(ident(k) for k in info.key)
            self.wh.command(
                f"INSERT INTO {info.name} ({keys}, _version, _is_deleted, _op, _lsn, _tx_id, "
                f"_source_ts, _ingested_at) SELECT {keys}, toUInt128('{version}'), 1, 'd', "
                f"toUInt64({version_lsn(version)}), 0, now64(3), now64(3) FROM {info.name} FINAL "
                f"WHERE _is_deleted = 0 AND _version < toUInt128('{version}')"
            )

    # --- internals -------------------------------------------------------------------------
    def _staged_tables(self) -> set[tuple[str, str]]:
        return {t for tables in self._staged.values() for t in tables}

    def _find_info(self, schema: str, table: str) -> TableInfo | None:
        info = self._tables.get((schema, table))
        if info is None and (schema, table) in self._stopped:
            info = ddl.table_info(self.wh, self.names.meta, f"{ddl.HOLD_PREFIX}{schema}__{table}")
            if info is not None:
                self._tables[(schema, table)] = info
        elif info is None:
            info = ddl.table_info(self.wh, self.names.landing_db(schema), table)
            if info is not None:
                self._tables[(schema, table)] = info
        return info

    def _info(self, schema: str, table: str) -> TableInfo:
        info = self._find_info(schema, table)
        if info is None:
            raise CaptureError(
                f"{schema}.{table} has no warehouse table {self.names.landing_db(schema)}.{table}: "
                "the capture must call ensure_columns() with its columns first"
            )
        return info

    def _staging_name(self, schema: str, table: str) -> str:
        return f"{ddl.SNAPSHOT_PREFIX}{schema}__{table}"

    def _snapshot_target(self, schema: str, table: str) -> TableInfo:
        """Where snapshot rows of the table go: its staged copy, else the landing table."""
        if (schema, table) not in self._staged_tables():
            return self._info(schema, table)
        info = ddl.table_info(self.wh, self.names.meta, self._staging_name(schema, table))
        if info is None:
            raise CaptureError(
                f"{schema}.{table}: its staged snapshot table is gone (dropped by another "
                "process?); run the capture again to redo the snapshot"
            )
        return info

    def _snapshot_columns(self, schema: str, table: str, arrow: pa.Schema) -> TableInfo:
        """The snapshot target's info, after adding columns the snapshot has and it lacks."""
        info = self._snapshot_target(schema, table)
        missing = [f for f in arrow if f.name not in info.column_types]
        if missing:
            cols = []
            for f in missing:
                ch = arrow_to_ch_type(f.type)
                cols.append(
                    SourceColumn(f.name, "uuid" if ch == "FixedString(16)" else _pg_name(ch))
                )
            self.ensure_columns(schema, table, cols)
            info = self._snapshot_target(schema, table)
        return info

    def _write_events(self, schema: str, table: str, events: list[ChangeEvent]) -> None:
        info = self._info(schema, table)
        names = [n for n, _ in info.columns]
        rows: list[dict[str, Any]] = [ev.before if ev.op == "d" else ev.after for ev in events]  # type: ignore[misc]
        if any(r is None for r in rows):
            ev = next(e for e, r in zip(events, rows, strict=True) if r is None)
            raise CaptureError(
                f"{schema}.{table}: {ev.op} event at LSN {ev.source.lsn} carries no row "
                "(set REPLICA IDENTITY DEFAULT or FULL on the table)"
            )
        self._check_columns(schema, table, info, rows)
        if any(ev.unchanged for ev in events):
            rows = self._fill_unchanged(schema, table, info, events, rows)

        # Row order inside one INSERT is irrelevant (versions decide), so full rows go first and
        # are transposed in C; delete rows (usually key only) follow through dict.get.
        full = [ev.op != "d" for ev in events]
        n_full = sum(full)
        if n_full < len(events):
            events = [ev for ev, f in zip(events, full, strict=True) if f] + [
                ev for ev, f in zip(events, full, strict=True) if not f
            ]
            rows = [r for r, f in zip(rows, full, strict=True) if f] + [
                r for r, f in zip(rows, full, strict=True) if not f
            ]
        arrays = self._text_columns(names, rows[:n_full], rows[n_full:])
        deleted = pa.array([False] * n_full + [True] * (len(events) - n_full), pa.bool_())
        info = self._check_not_null(schema, table, info, arrays, deleted)

        arrays += [
            pa.array(map(_LSN, events), pa.uint64(), size=len(events)),
            pa.array(map(_POS, events), pa.uint32(), size=len(events)),
            deleted.cast(pa.uint8()),
            pa.array(map(_OP, events), pa.string(), size=len(events)),
            pa.array([t or 0 for t in map(_TX, events)], pa.uint64()),
            pa.array(map(_TS, events), pa.int64(), size=len(events)),
        ]
        origins = None
        if any(ev.origin is not None for ev in events):
            where = [ev.origin or ("", -1, -1) for ev in events]
            origins = Origins(
                np.array([w[0] for w in where], object),
                np.array([w[1] for w in where], np.int32),
                np.array([w[2] for w in where], np.int64),
            )
        self._insert_text(schema, table, info, names, arrays, origins)

    def _write_columns(self, cols: ChangeColumns) -> None:
        """One table's changes already in Arrow text columns: one INSERT ... SELECT."""
        schema, table = cols.schema, cols.table
        info = self._info(schema, table)
        names = [n for n, _ in info.columns]
        for name in cols.names:
            if name not in info.column_types:
                raise _unknown_column(schema, table, name, info)
        n = len(cols)
        index = {name: i for i, name in enumerate(cols.names)}
        # A warehouse column the source no longer sends (dropped there) lands as NULL/default.
        arrays = [
            cols.values[index[name]] if name in index else pa.nulls(n, pa.string())
            for name in names
        ]
        deleted = pa.array(cols.deleted, pa.bool_())
        info = self._check_not_null(schema, table, info, arrays, deleted)
        arrays += [
            pa.array(cols.lsn, pa.uint64()),
            pa.array(cols.pos, pa.uint32()),
            deleted.cast(pa.uint8()),
            cols.op,
            pa.array(cols.tx_id, pa.uint64()),
            pa.array(cols.ts_ms, pa.int64()),
        ]
        self._insert_text(schema, table, info, names, arrays, cols.origins)

    def _insert_text(
        self,
        schema: str,
        table: str,
        info: TableInfo,
        names: list[str],
        arrays: list[pa.Array],
        origins: Origins | None = None,
    ) -> None:
        """INSERT text columns c0.. plus the metadata columns, cast by the engine; rows holding
        a value the warehouse cannot keep exactly are held back (self._rejects) instead, with
        their Kafka record when `origins` says where each row was read."""
        n = len(names)
        keep = self._screen_text(
            schema, table, info, names, arrays[:n], arrays[n], arrays[n + 2], origins
        )
        if keep is not None:
            arrays = [pc.filter(a, keep) for a in arrays]
            if not len(arrays[0]):
                return
        data = pa.Table.from_arrays(
            arrays,
            names=[f"c{i}" for i in range(len(names))]
            + ["m_lsn", "m_pos", "m_del", "m_op", "m_tx", "m_ts"],
        )
        types = info.column_types
        exprs = [text_cast_expr(f"c{i}", types[name]) for i, name in enumerate(names)]
        exprs += [
            sql_make_version("m_lsn", "m_pos"),
            "m_del",
            "m_op",
            "m_lsn",
            "m_tx",
            "fromUnixTimestamp64Milli(m_ts, 'UTC')",
            "now64(3)",
        ]
        target = self._row_target(schema, table, info)
        self.wh.insert_select(target, [*names, *_META_INSERT], exprs, data)

    def _screen_text(
        self,
        schema: str,
        table: str,
        info: TableInfo,
        names: list[str],
        values: list[pa.Array],
        lsn: pa.Array,
        deleted: pa.Array,
        origins: Origins | None = None,
    ) -> pa.Array | None:
        """Keep-mask of the rows whose every value fits its warehouse type (None: all do); the
        others become Rejects. Tombstones are not screened: only their key is ever read."""
        types = info.column_types
        unfits = []
        for i, name in enumerate(names):
            if screen.checked(types[name]):
                u = screen.unfit_text(name, values[i], types[name])
                if u is not None:
                    mask = pc.and_(u.mask, pc.equal(deleted, 0))
                    if pc.any(mask).as_py():
                        unfits.append((i, u, mask))
        if not unfits:
            return None
        key_at = [names.index(k) for k in info.key]
        bad = unfits[0][2]
        for i, u, mask in unfits:
            bad = pc.or_(bad, mask)
            for row in np.flatnonzero(mask.to_numpy(zero_copy_only=False)):
                r = int(row)
                key = {names[k]: values[k][r].as_py() for k in key_at}
                topic, partition, offset = None, None, None
                if origins is not None and origins.offset[r] >= 0:
                    topic, partition, offset = origins.at(r)
                self._rejects.append(
                    Reject(
                        f"{schema}.{table}",
                        key_text(key),
                        int(lsn[r].as_py()),
                        u.column,
                        values[i][r].as_py(),
                        u.reason,
                        topic,
                        partition,
                        offset,
                    )
                )
        log.warning(
            "%s.%s: %d row(s) held back in meta.cdc_rejects (values the warehouse cannot hold)",
            schema,
            table,
            int(pc.sum(bad.cast(pa.int64())).as_py() or 0),
        )
        return pc.invert(bad)

    def _screen_snapshot(
        self, schema: str, table: str, info: TableInfo, rows: pa.RecordBatch | pa.Table, lsn: int
    ) -> pa.RecordBatch | pa.Table:
        """Snapshot rows whose every value fits (the others recorded in meta.cdc_rejects now:
        the snapshot's offset comes only after every table, and a redo records them again)."""
        types = info.column_types
        unfits = []
        for i, field in enumerate(rows.schema):
            ch = types.get(field.name)
            if ch is not None and screen.checked(ch):
                col = rows.column(i)
                arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
                u = screen.unfit_typed(field.name, arr, ch)
                if u is not None:
                    unfits.append((arr, u))
        if not unfits:
            return rows
        names = rows.schema.names
        key_cols = []
        for k in info.key:
            col = rows.column(names.index(k))
            key_cols.append((k, col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col))
        bad = unfits[0][1].mask
        rejects = []
        for arr, u in unfits:
            bad = pc.or_(bad, u.mask)
            for row in np.flatnonzero(u.mask.to_numpy(zero_copy_only=False)):
                r = int(row)
                key = {k: screen.typed_text(c, r) for k, c in key_cols}
                rejects.append(
                    Reject(
                        f"{schema}.{table}",
                        key_text(key),
                        lsn,
                        u.column,
                        screen.typed_text(arr, r),
                        u.reason,
                    )
                )
        record_rejects(self.wh, self._slot, rejects)
        log.warning(
            "%s.%s: %d snapshot row(s) held back in meta.cdc_rejects", schema, table, len(rejects)
        )
        return rows.filter(pc.invert(bad))

    @staticmethod
    def _text_columns(
        names: list[str], full: list[dict[str, Any]], partial: list[dict[str, Any]]
    ) -> list[pa.Array]:
        """One Arrow string array per column: `full` rows hold every column, `partial` maybe not."""
        if not names:
            return []
        try:
            getter = itemgetter(*names)
            if len(names) == 1:
                head: list[Sequence[Any]] = [[getter(r) for r in full]]
            else:
                head = list(zip(*map(getter, full), strict=True)) or [() for _ in names]
        except KeyError:
            head = [[r.get(name) for r in full] for name in names]
        arrays = []
        for name, values in zip(names, head, strict=True):
            arr = _strings(values)
            if partial:
                arr = pa.concat_arrays([arr, _strings([r.get(name) for r in partial])])
            arrays.append(arr)
        return arrays

    def _check_columns(
        self, schema: str, table: str, info: TableInfo, rows: list[dict[str, Any]]
    ) -> None:
        """A column the warehouse lacks means a Relation message was not applied: stop loudly."""
        known = info.column_types
        for row in (rows[0], rows[-1]):
            for name in row:
                if name not in known:
                    raise _unknown_column(schema, table, name, info)

    def _check_not_null(
        self,
        schema: str,
        table: str,
        info: TableInfo,
        arrays: list[pa.Array],
        deleted: pa.Array,
    ) -> TableInfo:
        """`info` again, or as it is after making columns Nullable that got a NULL."""
        key = set(info.key)
        nullable: list[str] = []
        for (name, ch_type), arr in zip(info.columns, arrays, strict=True):
            if not arr.null_count or strip_wrappers(ch_type)[1]:
                continue
            # Deletes carry only the key: other NOT NULL columns take their type's default there.
            bad = arr.is_null() if name in key else pc.and_(arr.is_null(), pc.invert(deleted))
            if pc.any(bad).as_py():
                if name in key:
                    raise CaptureError(
                        f"{schema}.{table}.{name}: NULL arrived for key column {ch_type}"
                    )
                nullable.append(name)
        if not nullable:
            return info
        # The source dropped NOT NULL (pgoutput's Relation does not say so) or the column
        # (it arrives missing): the warehouse column takes NULL from now on, old rows unchanged.
        log.info("%s.%s: warehouse columns now Nullable: %s", schema, table, ", ".join(nullable))
        types = info.column_types
        landing = self._find_info(schema, table)
        assert landing is not None
        db, tbl = (p.strip("`") for p in landing.name.split(".", 1))
        ddl.retype_columns(
            self.wh,
            db,
            tbl,
            {n: ddl.wrap_like(types[n], strip_wrappers(types[n])[0], True) for n in nullable},
            f"{schema}.{table}",
        )
        self._tables.pop((schema, table), None)
        if (schema, table) in self._txn_tables:
            self._align_txn_table(schema, table)
        return self._info(schema, table)

    def _fill_unchanged(
        self,
        schema: str,
        table: str,
        info: TableInfo,
        events: list[ChangeEvent],
        rows: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Unchanged TOAST values: from the event's old row, else the newest earlier event of the
        key in this batch, else the warehouse (FINAL)."""
        key_cols = info.key

        def key_of(row: dict[str, Any]) -> tuple[Any, ...]:
            return tuple(row.get(k) for k in key_cols)

        seen: set[tuple[Any, ...]] = set()
        lookup: set[tuple[Any, ...]] = set()
        for ev, row in zip(events, rows, strict=True):
            k = key_of(row)
            if ev.unchanged and ev.op != "d" and k not in seen:
                old = ev.before or {}
                if any(old.get(c) is None for c in ev.unchanged):
                    lookup.add(k)
            seen.add(k)
        stored = self._current_rows(info, sorted(lookup, key=str)) if lookup else {}

        latest: dict[tuple[Any, ...], dict[str, Any]] = {}
        out = []
        for ev, row in zip(events, rows, strict=True):
            k = key_of(row)
            if ev.unchanged and ev.op != "d":
                row = dict(row)
                old = ev.before or {}
                base = latest.get(k) or stored.get(k)
                for c in ev.unchanged:
                    if old.get(c) is not None:
                        row[c] = old[c]
                    elif base is not None and c in base:
                        row[c] = base[c]
                    else:
                        raise CaptureError(
                            f"{schema}.{table}.{c}: unchanged TOAST value of key {k} has no earlier "
                            "value in the batch or the warehouse; run `bankde cdc resync`"
                        )
            latest[k] = row
            out.append(row)
        return out

    def _current_rows(
        self, info: TableInfo, keys: list[tuple[Any, ...]]
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """Current visible rows of `keys`, every value as text the sink's casts read back."""
        types = info.column_types
        names = [n for n, _ in info.columns]
        select = ", ".join(f"toString({ident(n)})" for n in names)
        key_tuple = f"tuple({', '.join(ident(k) for k in info.key)})"
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            literals = ", ".join(
                "tuple("
                + ", ".join(
                    text_cast_expr("NULL" if v is None else sql_str(str(v)), types[k])
                    for k, v in zip(info.key, key, strict=True)
                )
                + ")"
                for key in chunk
            )
            rows = self.wh.query(
                f"SELECT {select} FROM {info.name} FINAL WHERE _is_deleted = 0 "
                f"AND {key_tuple} IN ({literals})"
            )
            for values in rows:
                row = dict(zip(names, values, strict=True))
                found[tuple(row[k] for k in info.key)] = row
        return found

    def _publish_snapshot(self, slot: str) -> None:
        """Swap every staged snapshot table in with ONE statement, then drop the old data.

        Each pair's EXCHANGE is atomic; the pairs run one after another inside the statement,
        and every statement on the embedded (or served) warehouse runs under the engine's
        mutex, so no reader sees some tables from the old snapshot and some from the new. On
        an external ClickHouse server, readers between two pairs could (docs/cdc.md)."""
        staged = self._staged.pop(slot, [])
        if not staged:
            return
        pairs = [
            (self.names.landing_table(s, t), self.names.snapshot_table(s, t)) for s, t in staged
        ]
        self.wh.command(
            "EXCHANGE TABLES " + ", ".join(f"{landing} AND {staging}" for landing, staging in pairs)
        )
        for (schema, table), (_landing, staging) in zip(staged, pairs, strict=True):
            self.wh.command(f"DROP TABLE IF EXISTS {staging} SYNC")
            self._tables.pop((schema, table), None)

    def _write_offset(self, offset: Offset) -> None:
        if offset.positions:
            # Topic-partition positions first: the LSN row below is the cut they lead to.
            self.wh.command(
                f"INSERT INTO {self.names.meta_table('cdc_kafka_offsets')} "
                "(slot, topic, partition_id, next_offset) VALUES "
                + ", ".join(
                    f"({sql_str(offset.slot)}, {sql_str(topic)}, {part}, {pos})"
                    for (topic, part), pos in offset.positions
                )
            )
        # Versioned by lsn: the highest LSN of the slot's current incarnation wins under FINAL.
        self.wh.command(
            f"INSERT INTO {self.names.offsets} (slot, lsn, snapshot_done) VALUES "
            f"({sql_str(offset.slot)}, {offset.lsn}, {int(offset.snapshot_done)})"
        )

    def _forget_offset(self, slot: str) -> None:
        for table in (self.names.offsets, *self._kafka_tables()):
            self.wh.command(
                f"ALTER TABLE {table} DELETE WHERE slot = {sql_str(slot)} "
                "SETTINGS mutations_sync = 2"
            )

    def _kafka_tables(self) -> tuple[str, str]:
        return (
            self.names.meta_table("cdc_kafka_offsets"),
            self.names.meta_table("cdc_connector_lsn"),
        )

    # --- the kafka engine's positions (contracts.StoresPositions) ---------------------------
    def load_positions(self, slot: str) -> dict[tuple[str, int], int]:
        """Next offset per (topic, partition) stored for `slot` (highest written wins)."""
        with self._mutex:
            rows = self.wh.query(
                f"SELECT topic, partition_id, max(next_offset) FROM "
                f"{self.names.meta_table('cdc_kafka_offsets')} WHERE slot = {{s:String}} "
                "GROUP BY topic, partition_id",
                {"s": slot},
            )
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def write_connector_lsns(self, slot: str, lsns: dict[str, int]) -> None:
        """Per connector, the commit LSN it is fully applied up to (kafka engine's cut)."""
        if not lsns:
            return
        with self._mutex:
            self.wh.command(
                f"INSERT INTO {self.names.meta_table('cdc_connector_lsn')} "
                "(slot, connector, lsn) VALUES "
                + ", ".join(
                    f"({sql_str(slot)}, {sql_str(c)}, {lsn})" for c, lsn in sorted(lsns.items())
                )
            )

    def load_connector_lsns(self, slot: str) -> dict[str, int]:
        with self._mutex:
            rows = self.wh.query(
                f"SELECT connector, max(lsn) FROM "
                f"{self.names.meta_table('cdc_connector_lsn')} WHERE slot = {{s:String}} "
                "GROUP BY connector",
                {"s": slot},
            )
        return {str(c): int(lsn) for c, lsn in rows}

    def _write_metrics(
        self,
        offset: Offset,
        groups: Sequence[ChangeColumns],
        events: Sequence[ChangeEvent],
        started_us: int,
    ) -> None:
        ops = Counter(map(_OP, events))
        tables = Counter(f"{e.source.schema}.{e.source.table}" for e in events)
        newest_commit_ms = max(map(_TS, events), default=0)
        first_lsn = min(map(_LSN, events), default=offset.lsn)
        for g in groups:
            for op, n in zip(*pc.value_counts(g.op).flatten(), strict=True):
                ops[op.as_py()] += n.as_py()
            tables[f"{g.schema}.{g.table}"] += len(g)
            newest_commit_ms = max(newest_commit_ms, int(g.ts_ms.max()))
            first_lsn = min(first_lsn, int(g.lsn.min()))
        finished_us = time.time_ns() // 1000
        self._hold_metrics(
            offset.slot,
            "stream",
            started_us,
            finished_us,
            first_lsn,
            offset.lsn,
            sum(tables.values()),
            ops["c"] + ops["r"],
            ops["u"],
            ops["d"],
            dict(tables),
            finished_us // 1000 - newest_commit_ms,
        )

    def _write_snapshot_metrics(self, schema: str, table: str, rows: int, lsn: int) -> None:
        now = time.time_ns() // 1000
        slot = next((s for s, t in self._staged.items() if (schema, table) in t), "")
        if slot.startswith(_RETYPE):
            slot = self._slot
        self._hold_metrics(
            slot, "snapshot", now, now, lsn, lsn, rows, rows, 0, 0, {f"{schema}.{table}": rows}, 0
        )

    def _hold_metrics(
        self,
        slot: str,
        kind: str,
        started_us: int,
        finished_us: int,
        first_lsn: int,
        last_lsn: int,
        events: int,
        inserts: int,
        updates: int,
        deletes: int,
        tables: dict[str, int],
        lag_ms: int,
    ) -> None:
        """Add one meta.cdc_batches row to those held for the next _write_log()."""
        tmap = ", ".join(f"{sql_str(k)}: {v}" for k, v in sorted(tables.items()))
        if not self._log_rows:
            self._log_since = time.monotonic()
        self._log_rows.append(
            f"({sql_str(slot)}, {time.time_ns()}, '{_utc_text(started_us)}', "
            f"'{_utc_text(finished_us)}', {sql_str(kind)}, "
            f"{first_lsn}, {last_lsn}, {events}, {inserts}, {updates}, {deletes}, "
            f"{{{tmap}}}, {lag_ms})"
        )

    def _write_log(self) -> None:
        """The held batch-log rows in one INSERT: plain literals, no expression per row."""
        rows, self._log_rows = self._log_rows, []
        self.wh.command(
            f"INSERT INTO {self.names.batches} (slot, batch_id, started_at, finished_at, kind, "
            "first_lsn, last_lsn, events, inserts, updates, deletes, tables, lag_ms) VALUES "
            + ", ".join(rows)
        )


def load_offset(wh: Warehouse, slot: str) -> Offset | None:
    """The last offset recorded for `slot`, or None when nothing was ever applied. Read-only:
    a warehouse without meta.cdc_offsets (never written to) has none."""
    names = DbNames(wh.settings.wh_prefix)
    if not ddl.has_table(wh, names.meta, "cdc_offsets"):
        return None
    rows = wh.query(
        f"SELECT lsn, snapshot_done FROM {names.offsets} FINAL WHERE slot = {{s:String}} "
        "ORDER BY lsn DESC LIMIT 1",
        {"s": slot},
    )
    if not rows:
        return None
    lsn, done = rows[0]
    return Offset(slot, int(lsn), bool(done))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: a batch allocates millions of small acyclic objects while millions
    more (the events) are alive, and each collection would rescan them all (measured 2x)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_LSN = attrgetter("source.lsn")
_POS = attrgetter("pos")
_OP = attrgetter("op")
_TX = attrgetter("source.tx_id")
_TS = attrgetter("source.ts_ms")


def stopped_tables(wh: Warehouse) -> dict[str, str]:
    """schema.table -> reason, of every table stopped by a type change (read-only: {} in a
    warehouse nothing was captured into)."""
    meta = DbNames(wh.settings.wh_prefix).meta
    if not ddl.has_table(wh, meta, "cdc_table_snapshots"):
        return {}
    rows = wh.query(
        f"SELECT source_table, reason FROM {ident(meta)}.cdc_table_snapshots FINAL "
        "WHERE state = 'stopped' ORDER BY source_table"
    )
    return {str(t): str(r) for t, r in rows}


# Key of a table staged by stage_table() among the staged snapshots (self._staged).
_RETYPE = "retype:"


def _unknown_column(schema: str, table: str, name: str, info: TableInfo) -> CaptureError:
    """A column the warehouse lacks means a Relation message was not applied: stop loudly."""
    return CaptureError(
        f"{schema}.{table}.{name} is not in warehouse table {info.name}: the "
        "capture must call ensure_columns() for the new column before its changes"
    )


def _utc_text(us: int) -> str:
    """Microseconds since the epoch as DateTime64(6, 'UTC') text (a bare integer reads as seconds)."""
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%d %H:%M:%S.%f")


_EPOCH = datetime(1970, 1, 1)


def _strings(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # The contract says text form; tolerate engines that hand over numbers.
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _pg_name(ch_type: str) -> str:
    """A Postgres type name mapping back to `ch_type` (for columns learnt from Arrow)."""
    mapping = {
        "Int16": "int2",
        "Int32": "int4",
        "Int64": "int8",
        "Bool": "bool",
        "Float32": "float4",
        "Float64": "float8",
        "Date32": "date",
        "DateTime64(6, 'UTC')": "timestamptz",
    }
    if ch_type.startswith("Decimal("):
        return "numeric" + ch_type[len("Decimal") :]
    return mapping.get(ch_type, "text")
