"""The streamer: one engine into one sink in bounded batches, written on a thread, then acknowledged."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bankde.cdc._tuples import keep_freed_memory
from bankde.cdc.columnar import ChangeBatch
from bankde.cdc.envelope import Relation, format_lsn
from bankde.cdc.tablesnap import TableSnapshotter
from bankde.contracts import (
    CapturedTransaction,
    CaptureEngine,
    CommitsPositions,
    Offset,
    PositionedTransaction,
    ProgressFn,
    ReportsIdlePosition,
    Sink,
    SnapshotsTables,
    SourceColumn,
    StopsTables,
)
from bankde.errors import IncompatibleTypeChange
from bankde.settings import Settings

log = logging.getLogger(__name__)

# How often a running stream looks for new tables in the captured schemas.
TABLE_CHECK_SECONDS = 30.0
# The writer, idle this long, has the sink write its held batch log (see Sink.flush_log).
IDLE_SECONDS = 1.0
# An idle stream records the position the source may confirm by itself this often at most.
IDLE_OFFSET_SECONDS = 1.0
# Adaptive batching: how long a poll waits for more while changes are held, and how recent
# (source commit time vs this host's clock) the newest held change must be to count as caught up.
ADAPTIVE_POLL_SECONDS = 0.002
ADAPTIVE_FRESH_MS = 250
# Freed memory a streaming process keeps for its next batches (see _tuples.keep_freed_memory).
KEEP_FREED_BYTES = 256 * 1024 * 1024


@functools.cache
def _keep_freed_memory() -> None:
    """Once per process (a malloc setting): each batch allocates tens of MB of decode buffers,
    so freed memory is reused rather than returned and faulted in again as fresh pages."""
    keep_freed_memory(KEEP_FREED_BYTES)


@dataclass
class BatchStats:
    """One applied batch, as reported to callers (and written to meta.cdc_batches by the sink)."""

    events: int
    transactions: int
    first_lsn: int
    last_lsn: int
    seconds: float
    tables: dict[str, int]
    lag_ms: int  # now minus the commit time of the newest change written
    commit_ms: list[int] = field(default_factory=list)  # commit time of each transaction


@dataclass
class SyncResult:
    """What `cdc.sync` (or a finished `cdc.run`) did."""

    slot: str
    snapshot_rows: dict[str, int] = field(default_factory=dict)
    snapshot_seconds: float = 0.0
    changes: int = 0
    transactions: int = 0
    batches: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stream_seconds: float = 0.0
    lsn: int = 0
    target_lsn: int | None = None
    reconnects: int = 0

    @property
    def changes_per_s(self) -> float:
        return self.changes / self.stream_seconds if self.stream_seconds > 0 else 0.0

    @property
    def snapshot_rows_per_s(self) -> float:
        total = sum(self.snapshot_rows.values())
        return total / self.snapshot_seconds if self.snapshot_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "snapshot_rows": self.snapshot_rows,
            "snapshot_seconds": round(self.snapshot_seconds, 3),
            "changes": self.changes,
            "transactions": self.transactions,
            "batches": self.batches,
            "tables": self.tables,
            "seconds": round(self.seconds, 3),
            "changes_per_s": round(self.changes_per_s, 1),
            "lsn": format_lsn(self.lsn),
            "target_lsn": format_lsn(self.target_lsn) if self.target_lsn is not None else None,
            "reconnects": self.reconnects,
        }


class Streamer:
    """Drives one engine into one sink: batches bounded by rows and time, write, then ack.

    Invariants: a batch holds only complete transactions; the sink writes the batch and the
    offset (the end LSN of its last transaction) before the engine acknowledges that LSN; a lost
    source connection drops the unacknowledged batch, which the slot delivers again.
    """

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        engine_factory: Callable[[], CaptureEngine],
        batch_rows: int | None = None,
        batch_seconds: float | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.engine_factory = engine_factory
        self.engine: CaptureEngine | None = None
        _keep_freed_memory()
        self.batch_rows = batch_rows or settings.cdc_batch_rows
        self.batch_seconds = batch_seconds or settings.cdc_batch_seconds
        # Write as soon as the stream has caught up (BANKDE_CDC_BATCH_ADAPTIVE), not only when
        # a batch is full or batch_seconds old.
        self.adaptive = settings.cdc_batch_adaptive
        # When set: never take a transaction committed at or after this LSN (reached_stop then).
        self.stop_before: int | None = None
        self.reached_stop = False
        self.on_batch = on_batch
        self.result = SyncResult(settings.cdc_slot)
        self._batch = ChangeBatch()
        self._commit_ms: list[int] = []
        self._txns = 0
        self._first_lsn = 0
        self._end_lsn = 0  # end LSN of the last complete transaction held or written
        # Transactions are counted: the bookkeeping of what is submitted, written and
        # acknowledged goes by this count, since an engine's end LSN may stay put across
        # transactions (kafka: the consistent cut moves only when every partition passed it).
        self._taken = 0
        self._submitted = 0  # count of transactions handed to the writer
        self._acked = 0
        self._acked_lsn = 0
        self._positions: dict[tuple[str, int], int] = {}
        self._writer = _Writer(self._write, sink.flush_log, settings.cdc_offset_seconds)
        self._batch_started: float | None = None
        self._last_submit = 0.0  # when the last batch with rows went to the writer
        self._idle_recorded = 0.0
        # Per table, the columns last ensured in the warehouse: (name, type OID, typmod) each.
        self._columns: dict[tuple[str, str], tuple[tuple[str, int, int], ...]] = {}
        # Tables copied again while streaming: new ones, and ones a column was added to.
        self.tables = (
            TableSnapshotter(settings, sink) if isinstance(sink, SnapshotsTables) else None
        )
        self._tables_checked = 0.0
        self._keyless: set[tuple[str, str]] = set()  # reported by ensure_publication

    # -- connection lifecycle -----------------------------------------------------------
    def open(self, progress: ProgressFn | None = None) -> Offset:
        self.engine = self.engine_factory()
        try:
            offset = self.engine.open(self.sink, progress)
        except BaseException:
            self.engine.close()
            self.engine = None
            raise
        if self.engine.snapshot_rows:
            self.result.snapshot_rows = dict(self.engine.snapshot_rows)
            self.result.snapshot_seconds = self.engine.snapshot_seconds
        self._reset_buffer()
        self._writer.reset(offset.lsn)
        self._taken = self._submitted = self._acked = 0
        self._acked_lsn = self._end_lsn = offset.lsn
        self.result.lsn = offset.lsn
        self._columns.clear()
        if self.tables is not None:
            self.tables.resume()
            self._check_tables()
        return offset

    def _check_tables(self) -> None:
        """Publish tables created in the captured schemas since the last look, and have the
        ones with no landing table copied while the stream goes on (tables without a primary
        key are reported by ensure_publication and left out).

        One catalog read on one connection; ensure_publication (grants, replica identity,
        ALTER PUBLICATION: several connections as the owner) only when the tables changed."""
        self._tables_checked = time.monotonic()
        if self.tables is None or self.engine is None or self.engine.name != "native":
            return
        from bankde.cdc.slot import ensure_publication, published_tables_in
        from bankde.source.catalog import catalog_tables_in
        from bankde.source.connection import cdc_info, connect

        with connect(cdc_info(self.settings)) as conn:
            catalog = catalog_tables_in(conn)
            published = published_tables_in(conn, self.settings.cdc_publication)
        keyed = sorted(k for k, info in catalog.items() if info.key)
        keyless = set(catalog) - set(keyed)
        if set(keyed) != published or not keyless <= self._keyless:
            tables = ensure_publication(self.settings)
            self._keyless = keyless
        else:
            tables = keyed
        assert isinstance(self.sink, SnapshotsTables)
        missing = self.sink.missing_tables(tables)
        self.tables.request(missing, "new table")
        # A column added at the source shows in the stream only with the table's next change;
        # the catalog shows it now (with values Postgres filled in without WAL: copy them).
        flushed = False
        for key in tables:
            info = catalog.get(key)
            if info is None or key in missing:
                continue
            columns = info.source_columns()
            if not self.sink.missing_columns(key[0], key[1], columns):
                continue
            if not flushed:
                self.flush()  # rows held have the old columns: written before altering
                flushed = True
            if self._ensure_table(key[0], key[1], columns):
                self._columns.pop(key, None)
                self.tables.request([key], "column added")

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def shutdown(self, finish_copies: bool = False) -> None:
        """Close the source and stop the writer thread (after the write in flight, if any), and
        the table copies (all requested ones with `finish_copies`, else the one under way),
        then write the sink's held batch log."""
        if self.tables is not None:
            self.tables.close(finish=finish_copies)
        self.close()
        self._writer.close()
        try:
            self.sink.flush_log()
        except Exception as exc:
            # Informational rows only; never let them hide the error that stopped the stream.
            log.warning("could not write the batch log: %s", exc)

    def _reset_buffer(self) -> None:
        self._batch = ChangeBatch()
        self._commit_ms = []
        self._txns = 0
        self._first_lsn = 0
        self._batch_started = None
        self._positions = {}

    # -- the loop -----------------------------------------------------------------------
    def step(self, timeout: float) -> CapturedTransaction | None:
        """Poll once; write a batch when it is full, old enough, or the engine asks."""
        engine = self.engine
        assert engine is not None
        now = time.monotonic()
        if self.tables is not None and now - self._tables_checked >= TABLE_CHECK_SECONDS:
            self._check_tables()
        if self._batch_started is not None:
            timeout = max(0.0, min(timeout, self._batch_started + self.batch_seconds - now))
            if self.adaptive:
                # Holding changes: only a glance at the source, so that a stream that has
                # caught up is written at once instead of after batch_seconds.
                timeout = min(timeout, ADAPTIVE_POLL_SECONDS)
        txn = engine.poll(timeout)
        if txn is not None and self.stop_before is not None and txn.commit_lsn >= self.stop_before:
            # Exact stop (a check comparing at one LSN): this one and everything after it stay
            # unacknowledged in the slot, for the next capture.
            self.reached_stop = True
            txn = None
        if txn is not None:
            self._take(txn)
        elif self._batch_started is None:
            self.record_idle_position()
        now = time.monotonic()
        due = self._batch_started is not None and now >= self._batch_started + self.batch_seconds
        if engine.must_flush:
            self.flush()
        elif self._batch.rows >= self.batch_rows or due:
            # Hand the batch to the writer and read on; it is acknowledged once written.
            self.flush(wait=False)
        elif (
            self.adaptive
            and txn is None
            and self.holding
            and time.time() * 1000 - self._commit_ms[-1] < ADAPTIVE_FRESH_MS
            and now - self._last_submit >= self.settings.cdc_batch_min_seconds
            and not self._writer.busy()
        ):
            # Adaptive batching: nothing more arrived and the newest change held committed
            # moments ago, i.e. the stream has caught up, and the writer is free: write now.
            # While it writes, what arrives accumulates into the next batch, so batches grow
            # with the load; a catch-up (old commits) still fills batch_rows, undisturbed by a
            # source that pauses a few ms now and then. At most one batch per
            # cdc_batch_min_seconds: every batch is a new part per table, and the parts that
            # merges replace are deleted later, which costs a steady stream its p99 on a disk
            # that is slow to delete (docs/cdc.md, "Latency").
            self.flush(wait=False)
        else:
            self._acknowledge()
        return txn

    def record_idle_position(self, force: bool = False) -> None:
        """Idle and fully acknowledged: where the source may move the slot by itself (a
        keepalive's WAL end), record an offset first, then acknowledge it. At most once per
        IDLE_OFFSET_SECONDS (well inside psycopg2's own 10 s status interval) unless `force`
        (before anything that makes psycopg2 report its position, such as request_status)."""
        engine = self.engine
        if not isinstance(engine, ReportsIdlePosition) or self._submitted > self._acked:
            return
        if self.holding:
            return
        now = time.monotonic()
        if not force and now - self._idle_recorded < IDLE_OFFSET_SECONDS:
            return
        lsn = engine.idle_lsn()
        if lsn is None or lsn <= self._acked_lsn:
            return
        self._idle_recorded = now
        self._end_lsn = lsn
        self._taken += 1  # an offset-only job: counted like a transaction, so it is written
        self.flush()

    def _take(self, txn: CapturedTransaction) -> None:
        if txn.relations:
            self._ensure_columns(txn.relations)
        if txn.part or not txn.final:
            self._take_part(txn)
            return
        if self._batch_started is None:
            self._batch_started = time.monotonic()
            self._first_lsn = txn.commit_lsn
        # Row messages stay raw: the batch decodes them in bulk when the sink writes it.
        self._batch.add(txn)
        self._txns += 1
        self._commit_ms.append(txn.ts_ms)
        self._end_lsn = txn.end_lsn
        self._taken += 1
        if isinstance(txn, PositionedTransaction):
            self._positions.update(txn.positions)

    def _take_part(self, txn: CapturedTransaction) -> None:
        """A part of a transaction too large for one batch goes to the writer on its own, after
        the complete transactions held before it; only its final part carries an offset, so
        nothing is acknowledged until the whole transaction has landed."""
        if txn.part == 0:
            self.flush(wait=False)
        batch = ChangeBatch()
        batch.add(txn)
        if txn.final:
            offset: Offset | None = Offset(self.settings.cdc_slot, txn.end_lsn, True)
            self._end_lsn = txn.end_lsn
            self._taken += 1
            self._submitted = self._taken
        else:
            offset = None
        self._writer.submit(
            _Job(batch, offset, int(txn.final), txn.commit_lsn, [txn.ts_ms], self._taken, txn.part)
        )

    def _ensure_columns(self, relations: list[Relation]) -> None:
        """A table described with columns we have not ensured yet (a new name, or a type or
        typmod change such as numeric(18,2) -> numeric(18,4)): widen the warehouse first, or
        stop with the sink's CaptureError before any row of the new shape is written."""
        for rel in relations:
            key = (rel.schema, rel.table)
            shape = tuple((c.name, c.type_oid, c.typmod) for c in rel.columns)
            if self._columns.get(key) == shape:
                continue
            # Rows already held have the old columns: write them before altering.
            self.flush()
            snap = self.tables
            existed = snap is not None and not snap.sink.missing_tables([key])
            added = self._ensure_table(rel.schema, rel.table, source_columns(rel))
            self._columns[key] = shape
            if snap is not None and added:
                # Postgres fills an added column's default in without WAL, and a table new to
                # the stream may hold rows from before it was published: copy it at one point.
                snap.request([key], "column added" if existed else "new table")

    def _ensure_table(self, schema: str, table: str, columns: list[SourceColumn]) -> list[str]:
        return ensure_table(self.sink, schema, table, columns)

    @property
    def holding(self) -> bool:
        """Whether complete transactions with rows are held, not yet handed to the writer."""
        return self._batch.rows > 0

    def flush(self, wait: bool = True) -> None:
        """Hand what is held (complete transactions) with its offset to the writer; with `wait`,
        also wait until everything handed over is written. Then acknowledge what is written."""
        assert self.engine is not None
        if self._taken > self._submitted:
            positions = tuple(sorted(self._positions.items()))
            job = _Job(
                self._batch,
                Offset(self.settings.cdc_slot, self._end_lsn, True, positions),
                self._txns,
                self._first_lsn,
                self._commit_ms,
                self._taken,
            )
            # Blocks while the previous batch is still being written: at most two batches
            # (one being written, one being filled) are ever held.
            self._writer.submit(job)
            self._submitted = self._taken
            if self._batch.rows:
                self._last_submit = time.monotonic()
            self._reset_buffer()
        if wait:
            self._writer.wait()
        self._acknowledge()

    def _acknowledge(self) -> None:
        """Acknowledge (from the reading thread: the connection is not thread-safe) what the
        writer has durably written, offset included."""
        engine = self.engine
        assert engine is not None
        count, written = self._writer.written()
        if count > self._acked:
            engine.acknowledge(written)
            self._acked = count
            self._acked_lsn = written
            self.result.lsn = written
            positions = self._writer.take_positions()
            if positions and isinstance(engine, CommitsPositions):
                engine.commit_positions(positions)
        elif engine.must_flush and self._submitted <= self._acked:
            engine.acknowledge(self._acked_lsn)

    def _write(self, job: _Job, record_offset: bool = True) -> None:
        """The writer thread's work: one batch and its offset into the sink (the offset held
        back unless `record_offset`: the writer records a later one soon)."""
        started = time.monotonic()
        batch = job.batch
        # Rows of a table older than a truncate are hidden; later events stay.
        truncates = batch.truncates()
        if job.offset is None:
            self.sink.apply_part(batch, job.part, truncates)
        else:
            # Transactions without captured rows (and idle positions) get their offset written
            # too: the slot must never be confirmed past the warehouse's offset.
            self.sink.apply(batch, job.offset, truncates, record_offset=record_offset)
        self._record(job, started)

    def _record(self, job: _Job, started: float) -> None:
        batch = job.batch
        if not batch.rows:
            return
        tables = batch.table_counts()
        changes = sum(tables.values())
        res = self.result
        res.changes += changes
        res.transactions += job.txns
        res.batches += 1
        for name, n in tables.items():
            res.tables[name] = res.tables.get(name, 0) + n
        if self.on_batch is not None:
            lag = int(time.time() * 1000) - job.commit_ms[-1]
            self.on_batch(
                BatchStats(
                    changes,
                    job.txns,
                    job.first_lsn,
                    job.offset.lsn if job.offset is not None else job.first_lsn,
                    time.monotonic() - started,
                    tables,
                    lag,
                    job.commit_ms,
                )
            )

    def drop_unwritten(self) -> None:
        """Forget held transactions (the connection broke; the slot re-sends them). A batch
        already being written finishes first, so a reconnect resumes from a settled offset."""
        self._writer.wait()
        self._reset_buffer()
        self._taken = self._submitted
        self._end_lsn = self._writer.written()[1]


@dataclass
class _Job:
    batch: ChangeBatch
    offset: Offset | None  # None: a part of a transaction whose final part is still to come
    txns: int
    first_lsn: int
    commit_ms: list[int]
    count: int = 0  # the streamer's count of transactions up to this batch's last
    part: int = 0


class _Writer:
    """One thread writing batches to the sink in order, one at a time, while the caller reads
    on (the warehouse insert and most of the bulk decoding release the GIL).

    `written()` is (transaction count, end LSN) of the newest batch fully written (rows and
    offset); `take_positions()` the topic-partition positions written since last asked. A failed
    write is raised to the caller at its next submit/wait, and nothing after it is written.

    Offsets are recorded at most every `offset_seconds` while batches with rows keep coming:
    each offset row is one more part in the warehouse. A batch written within that time of the
    last recorded offset lands without one; its offset is held (pending) until the next batch
    records it, the interval runs out, or the caller waits, and `written()` moves only when it
    is recorded, so the slot is never acknowledged past the warehouse's offset. A crash before
    then re-delivers those batches, which the versions make harmless.
    """

    def __init__(
        self, write: Callable[[_Job, bool], None], idle: Callable[[], None], offset_seconds: float
    ) -> None:
        self._write = write
        self._idle = idle  # called on this thread after IDLE_SECONDS without a job
        self._offset_seconds = offset_seconds
        self._cond = threading.Condition()
        self._job: _Job | None = None
        self._pending: _Job | None = None  # written rows whose offset is not recorded yet
        self._offset_at = 0.0  # when an offset was last recorded
        self._syncing = False  # the caller waits: record a pending offset now
        self._written = (0, 0)
        self._positions: dict[tuple[str, int], int] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def reset(self, lsn: int) -> None:
        self.wait()
        with self._cond:
            self._written = (0, lsn)
            self._positions = {}

    def written(self) -> tuple[int, int]:
        with self._cond:
            self._raise()
            return self._written

    def take_positions(self) -> dict[tuple[str, int], int]:
        with self._cond:
            positions, self._positions = self._positions, {}
            return positions

    def submit(self, job: _Job) -> None:
        with self._cond:
            while self._job is not None and self._error is None:
                self._cond.wait()
            self._raise()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="bankde-cdc-writer", daemon=True
                )
                self._thread.start()
            self._job = job
            self._cond.notify_all()

    def busy(self) -> bool:
        """Whether a batch is being written."""
        with self._cond:
            return self._job is not None

    def wait(self) -> None:
        """Until everything submitted is written, offsets included."""
        with self._cond:
            self._syncing = True
            self._cond.notify_all()
            try:
                while (self._job is not None or self._pending is not None) and self._error is None:
                    self._cond.wait()
            finally:
                self._syncing = False
            self._raise()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _next(self) -> tuple[_Job | None, bool]:
        """Under the lock, waiting as needed: the job to write next and whether to record its
        offset; (None, False) after IDLE_SECONDS without one, (None, True) once closed."""
        while True:
            now = time.monotonic()
            due = self._syncing or self._closed or now >= self._offset_at + self._offset_seconds
            job = self._job
            if self._pending is not None and due and (job is None or job.offset is None):
                # Before a part of a large transaction too: its parts can take minutes.
                return self._pending, True
            if job is not None:
                # Offset-only jobs (idle positions, transactions without rows) exist to be
                # recorded, and so does a large transaction's final part.
                hold = job.offset is not None and job.batch.rows > 0 and job.part == 0
                return job, due or not hold
            if self._pending is not None:
                self._cond.wait(self._offset_at + self._offset_seconds - now)
            elif self._closed:
                return None, True
            elif not self._cond.wait(IDLE_SECONDS) and self._job is None:
                return None, False

    def _run(self) -> None:
        while True:
            with self._cond:
                job, record = self._next()
                pending_only = job is not None and job is self._pending
                if job is not None and job.offset is not None and not pending_only:
                    # The held offset's positions, then this batch's (the newer win).
                    job.offset = _merge_positions(self._pending, job.offset)
            if job is None:
                if record:
                    return
                try:
                    self._idle()
                except Exception as exc:
                    # The batch log is informational: the next write will meet a real fault.
                    log.warning("could not write the batch log: %s", exc)
                continue
            try:
                if pending_only:
                    self._write_pending(job)
                else:
                    self._write(job, record)
            except BaseException as exc:
                with self._cond:
                    self._error = exc
                    self._job = self._pending = None
                    self._cond.notify_all()
                return
            with self._cond:
                if job.offset is not None:
                    if record:
                        self._written = (job.count, job.offset.lsn)
                        self._positions.update(job.offset.positions)
                        self._offset_at = time.monotonic()
                        self._pending = None
                    else:
                        self._pending = job
                if not pending_only:
                    self._job = None
                self._cond.notify_all()

    def _write_pending(self, job: _Job) -> None:
        """Record the offset of written rows: an apply() without events."""
        self._write(_Job(ChangeBatch(), job.offset, 0, job.first_lsn, [], job.count), True)


def _merge_positions(held: _Job | None, newer: Offset) -> Offset:
    """`newer`, carrying also the topic-partition positions only the held offset names."""
    if held is None or held.offset is None or not held.offset.positions:
        return newer
    merged = dict(held.offset.positions)
    merged.update(newer.positions)
    return dataclasses.replace(newer, positions=tuple(sorted(merged.items())))


def ensure_table(sink: Sink, schema: str, table: str, columns: list[SourceColumn]) -> list[str]:
    """sink.ensure_columns: a widened type converted in place; a type change the warehouse
    cannot take stops only that table (its changes held by the sink from here on, one line on
    stderr), where the sink can do that. Every engine's way to a new table shape (the streamer
    with a transaction's relations, an engine at start). Returns the columns added."""
    try:
        return sink.ensure_columns(schema, table, columns)
    except IncompatibleTypeChange as exc:
        if not isinstance(sink, StopsTables):
            raise
        log.warning("%s", exc)
        sink.stop_table(schema, table, columns, str(exc))
        return []


def source_columns(rel: Relation) -> list[SourceColumn]:
    """The relation's columns in the sink's terms."""
    return [
        SourceColumn(name=c.name, pg_type=c.type_oid, typmod=c.typmod, key=c.name in rel.key)
        for c in rel.columns
    ]
