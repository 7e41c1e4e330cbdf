"""The capture loop: snapshot, stream in bounded batches, write, then acknowledge; sync/run/resync."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bankde.cdc.columnar import ChangeBatch
from bankde.cdc.engine import CaptureEngine, ProgressFn
from bankde.cdc.envelope import format_lsn
from bankde.cdc.pgoutput import Relation, Transaction
from bankde.console import err
from bankde.contracts import Offset, Sink, SourceColumn
from bankde.errors import CaptureError, ConfigError, SourceUnavailable
from bankde.settings import Settings

# Reconnect backoff after the source went away: doubles from the first to the last.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
# How long `cdc sync` keeps retrying a source lost mid-stream before giving up (one that is
# unreachable at the start fails at once).
SYNC_RETRY_SECONDS = 120.0


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


def open_sink(settings: Settings) -> Sink:
    """The warehouse sink the settings select (embedded chDB or a ClickHouse server)."""
    from bankde.warehouse.sink import ClickHouseSink

    return ClickHouseSink.open(settings)


def make_engine(settings: Settings, engine: str = "native") -> CaptureEngine:
    if engine == "native":
        from bankde.cdc.native import NativeEngine

        return NativeEngine(settings)
    if engine == "debezium":
        try:
            from bankde.cdc.engines.debezium import DebeziumEngine
        except ModuleNotFoundError as exc:
            raise CaptureError(
                f"the debezium engine is not available ({exc.name} missing): "
                "pip install 'bankde[debezium]'"
            ) from None
        return DebeziumEngine(settings)
    raise ConfigError(f"unknown capture engine {engine!r}: use --engine native or debezium")


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
        self.batch_rows = batch_rows or settings.cdc_batch_rows
        self.batch_seconds = batch_seconds or settings.cdc_batch_seconds
        self.on_batch = on_batch
        self.result = SyncResult(settings.cdc_slot)
        self._batch = ChangeBatch()
        self._commit_ms: list[int] = []
        self._txns = 0
        self._first_lsn = 0
        self._end_lsn = 0  # end LSN of the last complete transaction held or written
        self._submitted = 0  # end LSN of the last batch handed to the writer
        self._acked = 0
        self._writer = _Writer(self._write)
        self._batch_started: float | None = None
        # Per table, the columns last ensured in the warehouse: (name, type OID, typmod) each.
        self._columns: dict[tuple[str, str], tuple[tuple[str, int, int], ...]] = {}

    # -- connection lifecycle -----------------------------------------------------------
    def open(self, progress: ProgressFn | None = None) -> Offset:
        self.engine = self.engine_factory()
        try:
            offset = self.engine.open(self.sink, progress)
        except BaseException:
            self.engine.close()
            self.engine = None
            raise
        snap_rows = getattr(self.engine, "snapshot_rows", None)
        if snap_rows:
            self.result.snapshot_rows = dict(snap_rows)
            self.result.snapshot_seconds = float(getattr(self.engine, "snapshot_seconds", 0.0))
        self._reset_buffer()
        self._writer.reset(offset.lsn)
        self._submitted = self._acked = self._end_lsn = offset.lsn
        self.result.lsn = offset.lsn
        self._columns.clear()
        return offset

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def shutdown(self) -> None:
        """Close the source and stop the writer thread (after the write in flight, if any)."""
        self.close()
        self._writer.close()

    def _reset_buffer(self) -> None:
        self._batch = ChangeBatch()
        self._commit_ms = []
        self._txns = 0
        self._first_lsn = 0
        self._batch_started = None

    # -- the loop -----------------------------------------------------------------------
    def step(self, timeout: float) -> Transaction | None:
        """Poll once; write a batch when it is full, old enough, or the engine asks."""
        engine = self.engine
        assert engine is not None
        now = time.monotonic()
        if self._batch_started is not None:
            timeout = max(0.0, min(timeout, self._batch_started + self.batch_seconds - now))
        txn = engine.poll(timeout)
        if txn is not None:
            self._take(txn)
        now = time.monotonic()
        due = self._batch_started is not None and now >= self._batch_started + self.batch_seconds
        if engine.must_flush:
            self.flush()
        elif self._batch.rows >= self.batch_rows or due:
            # Hand the batch to the writer and read on; it is acknowledged once written.
            self.flush(wait=False)
        else:
            self._acknowledge()
        return txn

    def _take(self, txn: Transaction) -> None:
        if txn.relations:
            self._ensure_columns(txn.relations)
        if self._batch_started is None:
            self._batch_started = time.monotonic()
            self._first_lsn = txn.commit_lsn
        # Row messages stay raw: the batch decodes them in bulk when the sink writes it.
        self._batch.add(txn)
        self._txns += 1
        self._commit_ms.append(txn.ts_ms)
        self._end_lsn = txn.end_lsn

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
            self.sink.ensure_columns(rel.schema, rel.table, source_columns(rel))
            self._columns[key] = shape

    @property
    def holding(self) -> bool:
        """Whether complete transactions with rows are held, not yet handed to the writer."""
        return self._batch.rows > 0

    def flush(self, wait: bool = True) -> None:
        """Hand what is held (complete transactions) with its offset to the writer; with `wait`,
        also wait until everything handed over is written. Then acknowledge what is written."""
        assert self.engine is not None
        if self._end_lsn > self._submitted:
            job = _Job(
                self._batch,
                Offset(self.settings.cdc_slot, self._end_lsn, True),
                self._txns,
                self._first_lsn,
                self._commit_ms,
            )
            # Blocks while the previous batch is still being written: at most two batches
            # (one being written, one being filled) are ever held.
            self._writer.submit(job)
            self._submitted = self._end_lsn
            self._reset_buffer()
        if wait:
            self._writer.wait()
        self._acknowledge()

    def _acknowledge(self) -> None:
        """Acknowledge (from the reading thread: the connection is not thread-safe) what the
        writer has durably written, offset included."""
        engine = self.engine
        assert engine is not None
        written = self._writer.written()
        if written > self._acked:
            engine.acknowledge(written)
            self._acked = written
            self.result.lsn = written
        elif engine.must_flush and self._submitted <= self._acked:
            engine.acknowledge(self._acked)

    def _write(self, job: _Job) -> None:
        """The writer thread's work: one batch and its offset into the sink."""
        started = time.monotonic()
        batch = job.batch
        # Rows of a table older than a truncate are hidden; later events stay.
        truncates = batch.truncates()
        if batch.rows or truncates:
            self.sink.apply(batch, job.offset, truncates)
        # A transaction with no captured rows needs no write: acknowledging it is enough.
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
                    job.offset.lsn,
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
        self._end_lsn = self._submitted = self._writer.written()


@dataclass
class _Job:
    batch: ChangeBatch
    offset: Offset
    txns: int
    first_lsn: int
    commit_ms: list[int]


class _Writer:
    """One thread writing batches to the sink in order, one at a time, while the caller reads
    on (the warehouse insert and most of the bulk decoding release the GIL).

    `written()` is the end LSN of the newest batch fully written (rows and offset); a failed
    write is raised to the caller at its next submit/wait, and nothing after it is written.
    """

    def __init__(self, write: Callable[[_Job], None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._job: _Job | None = None
        self._written = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def reset(self, lsn: int) -> None:
        self.wait()
        with self._cond:
            self._written = lsn

    def written(self) -> int:
        with self._cond:
            self._raise()
            return self._written

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

    def wait(self) -> None:
        with self._cond:
            while self._job is not None and self._error is None:
                self._cond.wait()
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

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                job = self._job
                if job is None:
                    return
            try:
                self._write(job)
            except BaseException as exc:
                with self._cond:
                    self._error = exc
                    self._job = None
                    self._cond.notify_all()
                return
            with self._cond:
                self._written = job.offset.lsn
                self._job = None
                self._cond.notify_all()


def source_columns(rel: Relation) -> list[SourceColumn]:
    """The relation's columns in the sink's terms."""
    return [
        SourceColumn(name=c.name, pg_type=c.type_oid, typmod=c.typmod, key=c.name in rel.key)
        for c in rel.columns
    ]


def _is_disconnect(exc: BaseException) -> bool:
    """A lost or refused source connection (worth a reconnect), not a real error."""
    if isinstance(exc, SourceUnavailable):
        return True
    import psycopg
    import psycopg2

    if isinstance(exc, psycopg.OperationalError):
        return True
    if isinstance(exc, psycopg2.Error):
        code = getattr(exc, "pgcode", None)
        # No SQLSTATE: the socket went away ("server closed the connection", "no COPY in
        # progress"); class 08 connection exception; class 57 shutdown or admin termination.
        return code is None or code[:2] in ("08", "57")
    return False


class _Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST
        self.since: float | None = None

    def wait(self, stop: threading.Event | None) -> None:
        if self.since is None:
            self.since = time.monotonic()
        if stop is not None:
            stop.wait(self.delay)
        else:
            time.sleep(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX)

    def reset(self) -> None:
        self.delay = BACKOFF_FIRST
        self.since = None

    def elapsed(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


def _stream(
    settings: Settings,
    sink: Sink,
    engine_name: str,
    *,
    until_lsn: Callable[[], int] | None,
    stop: threading.Event | None,
    progress: ProgressFn | None,
    batch_rows: int | None = None,
    batch_seconds: float | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    max_outage: float | None = None,
    retry_at_start: bool = True,
) -> SyncResult:
    """Open (snapshot if needed), then stream until caught up with `until_lsn` or until `stop`.

    A lost source connection is retried with backoff (for at most `max_outage` seconds when
    given); without `retry_at_start`, a source that cannot be opened at all fails at once.
    """
    started = time.monotonic()
    if engine_name == "debezium":
        # Its own slot, publication and offset row: never the native engine's.
        from bankde.cdc.engines.debezium_config import engine_settings

        settings = engine_settings(settings)
    streamer = Streamer(
        settings,
        sink,
        lambda: make_engine(settings, engine_name),
        batch_rows,
        batch_seconds,
        on_batch,
    )
    backoff = _Backoff()
    target = until_lsn() if until_lsn is not None else None
    streamer.result.target_lsn = target
    stream_started: float | None = None
    try:
        while stop is None or not stop.is_set():
            try:
                if streamer.engine is None:
                    streamer.open(progress)
                    progress = None  # a reconnect never snapshots with a bar again
                    if stream_started is None:
                        stream_started = time.monotonic()
                    backoff.reset()
                streamer.step(0.25)
                if target is not None:
                    engine = streamer.engine
                    assert engine is not None
                    if engine.caught_up(target):
                        streamer.flush()
                        break
                    request = getattr(engine, "request_status", None)
                    if request is not None and not streamer.holding:
                        request()
            except Exception as exc:
                if not _is_disconnect(exc):
                    raise
                if stream_started is None and not retry_at_start:
                    # The first open failed: a scheduler's micro-batch fails now, in one line,
                    # rather than after minutes of retries.
                    if isinstance(exc, SourceUnavailable):
                        raise
                    raise SourceUnavailable(
                        f"cannot stream from the source: {_first_line(exc)}"
                    ) from None
                _on_disconnect(streamer, backoff, exc, stop, max_outage)
        else:
            # Stopped: write what is complete, so a clean shutdown loses no work.
            if streamer.engine is not None:
                try:
                    streamer.flush()
                except Exception as exc:
                    if not _is_disconnect(exc):
                        raise
    finally:
        streamer.shutdown()
    res = streamer.result
    res.seconds = time.monotonic() - started
    res.stream_seconds = time.monotonic() - stream_started if stream_started else 0.0
    return res


def _on_disconnect(
    streamer: Streamer,
    backoff: _Backoff,
    exc: BaseException,
    stop: threading.Event | None,
    max_outage: float | None,
) -> None:
    streamer.drop_unwritten()
    streamer.close()
    streamer.result.reconnects += 1
    if max_outage is not None and backoff.elapsed() > max_outage:
        raise SourceUnavailable(
            f"source unreachable for {max_outage:.0f}s, giving up: {_first_line(exc)}"
        ) from None
    err.print(
        f"[yellow]source connection lost ({_first_line(exc)}); reconnecting in "
        f"{backoff.delay:.1f}s[/yellow]"
    )
    backoff.wait(stop)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- public library API (CLI, demo/run loops and Airflow tasks call these) ----------------
def sync(
    settings: Settings,
    *,
    sink: Sink | None = None,
    engine: str = "native",
    show_progress: bool = True,
) -> SyncResult:
    """Snapshot if needed, then apply every change committed before the WAL position current at
    the start (pg_current_wal_lsn()), then return. Safe to run repeatedly (micro-batches).

    A source that cannot be reached or opened at the start fails at once (SourceUnavailable);
    one lost mid-stream is retried with backoff for up to SYNC_RETRY_SECONDS."""
    from bankde.cdc.slot import current_wal_lsn

    return _open_and_stream(
        settings,
        sink,
        engine,
        show_progress,
        until_lsn=lambda: current_wal_lsn(settings),
        stop=None,
        max_outage=SYNC_RETRY_SECONDS,
        retry_at_start=False,
    )


def run(
    settings: Settings,
    stop_event: threading.Event,
    *,
    sink: Sink | None = None,
    engine: str = "native",
    batch_rows: int | None = None,
    batch_seconds: float | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    show_progress: bool = True,
) -> SyncResult:
    """Stream until `stop_event` is set; reconnects with backoff while the source is down. On
    stop, the complete transactions held are written and acknowledged before returning."""
    return _open_and_stream(
        settings,
        sink,
        engine,
        show_progress,
        until_lsn=None,
        stop=stop_event,
        batch_rows=batch_rows,
        batch_seconds=batch_seconds,
        on_batch=on_batch,
    )


def _open_and_stream(
    settings: Settings, sink: Sink | None, engine: str, show_progress: bool, **options: Any
) -> SyncResult:
    """_stream into `sink` (default: the settings' warehouse), with snapshot progress bars."""
    make_engine(settings, engine)  # a wrong engine name fails before anything opens
    sink = sink or open_sink(settings)
    with snapshot_progress(show_progress) as progress:
        return _stream(settings, sink, engine, progress=progress, **options)


def resync(
    settings: Settings, *, sink: Sink | None = None, show_progress: bool = True
) -> SyncResult:
    """Drop the slot and the landing tables, then snapshot and catch up again (the way out of an
    invalidated slot or a lost warehouse)."""
    from bankde.cdc.slot import drop_slot

    sink = sink or open_sink(settings)
    drop_slot(settings)
    sink.reset(settings.cdc_slot)
    return sync(settings, sink=sink, show_progress=show_progress)


class snapshot_progress:
    """A rich progress bar per table on stderr while a snapshot runs (None when hidden)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressFn | None:
        if not self.show:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("snapshot {task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        return self._update

    def _update(self, table: str, done: int, total: int | None) -> None:
        prog = self._progress
        if not prog.live.is_started:
            prog.start()
        task = self._tasks.get(table)
        if task is None:
            task = prog.add_task(table, total=total)
            self._tasks[table] = task
        if total is not None and total < done:
            total = done
        prog.update(task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None and self._progress.live.is_started:
            self._progress.stop()
