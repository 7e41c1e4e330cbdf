"""The native capture engine: a pgoutput slot read through psycopg2's replication connection."""

from __future__ import annotations

import contextlib
import select
import time
from typing import Any

from bankde.cdc.pgoutput import Decoder, Transaction
from bankde.cdc.preflight import preflight
from bankde.cdc.slot import (
    PROTO_VERSION,
    SlotCreationWatch,
    drop_slot,
)
from bankde.cdc.snapshot import copy_snapshot
from bankde.contracts import Offset, ProgressFn, Sink
from bankde.errors import CaptureError
from bankde.settings import Settings
from bankde.source.catalog import catalog_tables, primary_keys
from bankde.source.connection import capture_session_sql, cdc_info


class NativeEngine:
    """Reads the slot with psycopg2's LogicalReplicationConnection and decodes pgoutput itself.

    Acknowledgement subtlety: psycopg2 advances the flush LSN it reports on its own when a
    server keepalive arrives and the last message received starts at or below the last LSN we
    acknowledged. With interleaved transactions, the next transaction's first changes can start
    below that LSN while later, complete, not yet written transactions sit in our buffer; an
    automatic advance then would acknowledge them. `must_flush` asks the caller to write and
    acknowledge what it holds as soon as such a message arrives, before the next read; any
    automatic advance that can still happen then stops before the commit of the transaction
    being received, which the server therefore sends again after a crash.
    """

    name = "native"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: Any = None
        self._cur: Any = None
        self.decoder: Decoder | None = None
        self._acked = 0
        self._returned = 0  # end LSN of the last transaction handed out
        self._must_flush = False
        self.snapshot_rows: dict[str, int] = {}
        self.snapshot_seconds = 0.0

    # -- connection ---------------------------------------------------------------------
    def _connect(self) -> Any:
        import psycopg2
        import psycopg2.extras

        info = cdc_info(self.settings)
        try:
            conn = psycopg2.connect(
                info.dsn,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
                connect_timeout=10,
                keepalives=1,
                keepalives_idle=10,
                application_name="bankde_cdc",
            )
        except psycopg2.OperationalError as exc:
            from bankde.source.connection import connect_error

            # bankde-security: a certificate problem is a setting to fix (exit 2).
            raise connect_error(exc, info) from None
        # Pinned before anything is read: pgoutput prints values in the walsender's settings.
        with conn.cursor() as cur:
            for stmt in capture_session_sql():
                cur.execute(stmt)
        return conn

    def open(self, sink: Sink, progress: ProgressFn | None = None) -> Offset:
        start = preflight(self.settings, sink)
        keys = primary_keys(cdc_info(self.settings))
        self._conn = self._connect()
        self._cur = self._conn.cursor()
        if start.fresh or start.offset is None:
            offset = self._snapshot(sink, start.tables, progress)
        else:
            offset = start.offset
        self.decoder = Decoder(lambda s, t: keys.get((s, t)))
        self._acked = offset.lsn
        self._returned = offset.lsn
        self._must_flush = False
        self._cur.start_replication(
            slot_name=self.settings.cdc_slot,
            decode=False,
            start_lsn=offset.lsn,
            options={
                "proto_version": PROTO_VERSION,
                "publication_names": self.settings.cdc_publication,
            },
            status_interval=10,
        )
        return offset

    def _snapshot(
        self, sink: Sink, tables: list[tuple[str, str]], progress: ProgressFn | None
    ) -> Offset:
        """(Re)create the slot with an exported snapshot and copy every table at that point."""
        import psycopg2.errors

        from bankde.cdc.envelope import parse_lsn

        slot = self.settings.cdc_slot
        # A slot from an unfinished snapshot points past rows we never copied: start afresh.
        drop_slot(self.settings)
        # Staged first: the staged copies then take the source's columns, a changed type
        # included (the landing tables are replaced when the snapshot is done).
        sink.reset_for_snapshot(slot, tables)
        for (schema, table), info in catalog_tables(cdc_info(self.settings), tables).items():
            sink.ensure_columns(schema, table, info.source_columns())
        started = time.monotonic()
        self._cur.execute("SELECT pg_backend_pid()")
        pid = int(self._cur.fetchone()[0])
        with SlotCreationWatch(self.settings, self._conn, pid) as watch:
            try:
                self._cur.execute(
                    f'CREATE_REPLICATION_SLOT "{slot}" LOGICAL pgoutput EXPORT_SNAPSHOT'
                )
            except psycopg2.errors.QueryCanceled:
                if watch.gave_up:
                    raise CaptureError(watch.message) from None
                raise
        _name, consistent, snapshot_name, _plugin = self._cur.fetchone()
        lsn = parse_lsn(consistent)
        self.snapshot_rows = copy_snapshot(
            cdc_info(self.settings), snapshot_name, tables, sink, lsn, progress
        )
        offset = Offset(slot, lsn, True)
        # The offset with snapshot_done lands only after every table did.
        sink.apply([], offset)
        self.snapshot_seconds = time.monotonic() - started
        return offset

    # -- streaming ----------------------------------------------------------------------
    @property
    def must_flush(self) -> bool:
        return self._must_flush

    def poll(self, timeout: float) -> Transaction | None:
        cur = self._cur
        decoder = self.decoder
        assert cur is not None and decoder is not None, "open() first"
        deadline = time.monotonic() + timeout
        while True:
            msg = cur.read_message()
            if msg is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                select.select([cur], [], [], min(remaining, 1.0))
                continue
            txn = decoder.feed(msg.payload)
            if txn is not None:
                self._returned = txn.end_lsn
                return txn
            if msg.data_start <= self._acked and self._returned > self._acked:
                self._must_flush = True
                return None

    def acknowledge(self, lsn: int) -> None:
        if lsn <= self._acked:
            self._must_flush = False
            return
        self._cur.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)
        self._acked = lsn
        self._must_flush = False

    def idle_lsn(self) -> int | None:
        if self._cur is None or self.decoder is None or self.decoder.in_transaction:
            return None
        if self._must_flush or self._returned > self._acked:
            return None
        return int(self._cur.wal_end or 0) or None

    def request_status(self) -> None:
        """Ask the server for a keepalive, which carries how far it has decoded."""
        self._cur.send_feedback(reply=True)

    def caught_up(self, target_lsn: int) -> bool:
        if self.decoder is None or self.decoder.in_transaction:
            return False
        if self._returned >= target_lsn:
            return True
        wal_end = int(self._cur.wal_end or 0)
        return wal_end >= target_lsn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the server may already be gone
                self._conn.close()
        self._conn = None
        self._cur = None


# The registry's entry point (cdc/registry.py).
Engine = NativeEngine
