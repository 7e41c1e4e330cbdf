"""Snapshot some tables again while the stream goes on: a temporary slot's consistent point."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bankde.cdc.envelope import parse_lsn
from bankde.cdc.native import replication_connection
from bankde.cdc.snapshot import copy_snapshot
from bankde.cdc.version import make_version
from bankde.contracts import ProgressFn, RetypesTables, Sink, SnapshotsTables, StopsTables
from bankde.errors import ConfigError, IncompatibleTypeChange
from bankde.settings import Settings
from bankde.source.catalog import catalog_tables
from bankde.source.connection import cdc_info

log = logging.getLogger(__name__)


@dataclass
class TableSnapshot:
    """What snapshot_tables_live() did: rows per table, at which LSN, in how long."""

    rows: dict[str, int]
    lsn: int
    seconds: float


def snapshot_tables_live(
    settings: Settings,
    sink: Sink,
    tables: Sequence[tuple[str, str]],
    progress: ProgressFn | None = None,
) -> TableSnapshot:
    """Copy `tables` again into their landing tables while the slot keeps streaming.

    A TEMPORARY slot created with EXPORT_SNAPSHOT gives a snapshot and the LSN it is consistent
    at: every transaction committed before that LSN is in the snapshot, none after it. Its rows
    land at version make_version(lsn, 0), the same rule as the initial snapshot, so whatever the
    main slot streams for these tables sorts correctly against them whichever lands first: a
    change committed after the point wins, one before it loses to the copy that contains it.
    Rows older than the copy that it does not contain (deleted at the source while the
    warehouse missed it) are then hidden. The temporary slot goes away with its connection.
    """
    catalog = catalog_tables(cdc_info(settings), tables)
    stopped = sink.stopped_tables() if isinstance(sink, StopsTables) else {}
    # Tables whose landing table cannot take the source's types: copied into a staged table
    # of the new shape, swapped in once complete (with the changes held meanwhile).
    retyped: list[tuple[str, str]] = []
    for schema, table in tables:
        info = catalog.get((schema, table))
        if info is None:
            raise ConfigError(f"{schema}.{table} is not a table of the captured schemas")
        if not info.key:
            raise ConfigError(
                f"{schema}.{table} has no primary key: it cannot be captured (add one)"
            )
        columns = info.source_columns()
        try:
            if f"{schema}.{table}" in stopped:
                raise IncompatibleTypeChange(f"{schema}.{table}", "", "", "")
            sink.ensure_columns(schema, table, columns)
        except IncompatibleTypeChange:
            if not isinstance(sink, RetypesTables):
                raise
            sink.stage_table(schema, table, columns)
            retyped.append((schema, table))
    started = time.monotonic()
    conn = replication_connection(settings, "bankde_table_snapshot")
    try:
        cur = conn.cursor()
        name = f"bankde_tmp_{uuid.uuid4().hex[:12]}"
        cur.execute(f'CREATE_REPLICATION_SLOT "{name}" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT')
        _slot, consistent, snapshot_name, _plugin = cur.fetchone()
        lsn = parse_lsn(consistent)
        rows = copy_snapshot(cdc_info(settings), snapshot_name, list(tables), sink, lsn, progress)
    finally:
        conn.close()
    for schema, table in retyped:
        assert isinstance(sink, RetypesTables)
        sink.swap_in(schema, table, rows.get(f"{schema}.{table}", 0), lsn)
        log.info("%s.%s reloaded with the source's types; its changes land again", schema, table)
    for schema, table in tables:
        sink.truncate(schema, table, make_version(lsn, 0))
    return TableSnapshot(rows, lsn, time.monotonic() - started)


class TableSnapshotter:
    """Copies tables again on a thread of its own while the stream goes on, one table at a time.

    Requests are kept by the sink (meta.cdc_table_snapshots) until their copy is done, so a
    capture stopped halfway redoes them when it starts again (`resume`). A copy that fails is
    logged in one line and stays requested.
    """

    def __init__(self, settings: Settings, sink: SnapshotSink) -> None:
        self.settings = settings
        self.sink = sink
        self._queue: list[tuple[str, str]] = []
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.copied: dict[str, int] = {}
        self.failed: dict[str, str] = {}

    def resume(self) -> None:
        self._enqueue(self.sink.pending_table_snapshots())

    def request(self, tables: Sequence[tuple[str, str]], reason: str) -> None:
        with self._cond:
            tables = [t for t in tables if t not in self._queue]
        if tables:
            log.info("copying again while streaming (%s): %s", reason, _names(tables))
            self.sink.request_table_snapshots(tables, reason)
            self._enqueue(tables)

    def _enqueue(self, tables: Sequence[tuple[str, str]]) -> None:
        with self._cond:
            self._queue += [t for t in tables if t not in self._queue]
            if self._queue and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="bankde-table-snapshot", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def wait(self) -> None:
        """Until every requested copy has been tried."""
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()

    def close(self, finish: bool) -> None:
        """Stop: after the queue (`finish`), or after the copy under way (the rest stays
        requested for the next start)."""
        if finish:
            self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._thread = None
                    return
                table = self._queue[0]
                self._busy = True
            name = f"{table[0]}.{table[1]}"
            try:
                done = snapshot_tables_live(self.settings, self.sink, [table])
                rows = done.rows.get(name, 0)
                self.sink.table_snapshot_done(table[0], table[1], rows, done.lsn)
                self.copied[name] = rows
                log.info("%s copied again: %s rows at LSN %X", name, f"{rows:,}", done.lsn)
            except Exception as exc:
                self.failed[name] = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
                log.warning("%s could not be copied again: %s", name, self.failed[name])
                log.debug("table copy failed", exc_info=True)
            with self._cond:
                self._queue.remove(table)
                self._busy = False
                self._cond.notify_all()


class SnapshotSink(Sink, SnapshotsTables, Protocol):
    """A sink that also keeps the table copy requests."""


def _names(tables: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{s}.{t}" for s, t in tables)
