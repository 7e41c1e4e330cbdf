"""The streamer's invariants, driven directly: a scripted fake engine into a fake sink.

Whatever the script does (kills, empty polls, keepalives, failed or slow writes), the slot is
never acknowledged past the offset the sink holds durably, and transactions land in commit
order: a transaction is applied again only after a reconnect, and only if it was not yet
acknowledged, never after a later one has been acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from bankde.cdc import retry, stream
from bankde.cdc.envelope import ChangeEvent, Column, EventTransaction, Relation, Source
from bankde.cdc.stream import Streamer
from bankde.contracts import (
    CaptureEngine,
    Changes,
    ColumnarChanges,
    Offset,
    ProgressFn,
    Sink,
    SourceColumn,
    Truncate,
)
from bankde.errors import SourceUnavailable
from bankde.settings import Settings, load_settings

SLOT = "fake_slot"
REL = Relation(
    1, "bank", "t", "f", (Column("id", 20, -1, True), Column("v", 25, -1, False)), ("id",)
)


def txn(n: int, rows: int = 2) -> EventTransaction:
    """Transaction number n (1..): commits at LSN 100*n, ends at 100*n + 8."""
    commit = 100 * n
    src = Source(commit, n, 0, "bank", "t")
    events = [
        ChangeEvent("c", None, {"id": str(n * 10 + i), "v": "x"}, src, 0, i + 1)
        for i in range(rows)
    ]
    return EventTransaction(n, commit, commit + 8, int(time.time() * 1000), events=events)


class WriteFailed(Exception):
    """The warehouse refused a write (not a lost source connection: the stream stops)."""


@dataclass
class FakeSink:
    """contracts.Sink keeping what it holds in memory. `durable` is the offset a crash would
    keep; a write may be slow, or fail before its offset is recorded."""

    slow: float = 0.0
    fail_at: int | None = None  # the n-th apply() (1-based) raises before writing anything
    durable: int = 0
    applies: int = 0
    batches: list[tuple[list[int], int]] = field(default_factory=list)  # (commit LSNs, offset)
    log: list[tuple[str, object]] = field(default_factory=list)  # shared with the server
    columns: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    log_flushes: int = 0
    recorded: int = 0  # offsets recorded

    def apply(
        self,
        events: Changes,
        offset: Offset,
        truncates: Sequence[Truncate] = (),
        record_offset: bool = True,
    ) -> None:
        self.applies += 1
        if self.fail_at == self.applies:
            raise WriteFailed(f"write {self.applies} failed")
        if self.slow:
            time.sleep(self.slow)
        assert isinstance(events, ColumnarChanges)
        groups, rest = events.columnar()
        assert not groups  # events built by an engine come back as events
        lsns = sorted({ev.source.lsn for ev in rest})
        with self.lock:
            if lsns:
                self.batches.append((lsns, offset.lsn))
                self.log.append(("apply", lsns))
            if record_offset:
                self.recorded += 1
                self.durable = offset.lsn  # the offset lands after the rows it covers

    def ensure_columns(self, schema: str, table: str, columns: Sequence[SourceColumn]) -> None:
        self.columns.append((schema, table))

    def flush_log(self) -> None:
        with self.lock:
            self.log_flushes += 1

    def reset_for_snapshot(self, slot: str, tables: Sequence[tuple[str, str]]) -> None:
        raise AssertionError("no snapshot in these tests")

    def load_snapshot(self, schema: str, table: str, rows: object, snapshot_lsn: int) -> int:
        raise AssertionError("no snapshot in these tests")

    def reset(self, slot: str) -> None:
        raise AssertionError("no resync in these tests")

    def load_offset(self, slot: str) -> Offset | None:
        with self.lock:
            return Offset(slot, self.durable, True) if self.durable else None


@dataclass
class Server:
    """The source side: committed transactions and the slot's confirmed position, shared by
    every connection; `scripts` holds, per connection, what each poll does."""

    txns: list[EventTransaction]
    scripts: list[list[str]]
    sink: FakeSink
    confirmed: int = 0
    acks: list[tuple[int, int]] = field(default_factory=list)  # (acked, durable at the time)
    connections: int = 0

    def engine(self) -> FakeEngine:
        script = self.scripts[self.connections] if self.connections < len(self.scripts) else []
        self.connections += 1
        self.sink.log.append(("connect", self.connections))
        return FakeEngine(self, list(script))


class FakeEngine:
    """contracts.CaptureEngine over a Server. Script steps, one per poll: 'txn' the next
    transaction, 'empty' nothing within the timeout, 'keepalive' a server keepalive that asks
    the caller to flush (must_flush), 'kill' the connection drops. After the script: the rest of
    the transactions, then empty polls."""

    name = "fake"

    def __init__(self, server: Server, script: list[str]) -> None:
        self.server = server
        self.script = script
        self.snapshot_rows: dict[str, int] = {}
        self.snapshot_seconds = 0.0
        self._must_flush = False
        self._returned = 0
        self._acked = 0
        self._next = 0
        self._described = False

    def open(self, sink: Sink, progress: ProgressFn | None = None) -> Offset:
        offset = sink.load_offset(SLOT) or Offset(SLOT, 0, True)
        # The server resends from its confirmed position (never ahead of the warehouse).
        start = max(self.server.confirmed, offset.lsn)
        assert self.server.confirmed <= offset.lsn, "the slot was confirmed past the warehouse"
        self._next = next(
            (i for i, t in enumerate(self.server.txns) if t.end_lsn > start),
            len(self.server.txns),
        )
        self._returned = self._acked = start
        return offset

    def _deliver(self) -> EventTransaction | None:
        if self._next >= len(self.server.txns):
            return None
        t = self.server.txns[self._next]
        self._next += 1
        self._returned = t.end_lsn
        relations = [] if self._described else [REL]
        self._described = True  # each connection describes the table with its first change
        return EventTransaction(t.xid, t.commit_lsn, t.end_lsn, t.ts_ms, relations, t.events)

    def poll(self, timeout: float) -> EventTransaction | None:
        # must_flush contract: the caller wrote and acknowledged what it held before polling.
        assert not self._must_flush, "polled again without acknowledging after a keepalive"
        step = self.script.pop(0) if self.script else "txn"
        if step == "kill":
            raise SourceUnavailable("connection to the source lost")
        if step == "empty":
            time.sleep(min(timeout, 0.002))
            return None
        if step == "keepalive":
            if self._returned > self._acked:
                self._must_flush = True
            return None
        return self._deliver()

    @property
    def must_flush(self) -> bool:
        return self._must_flush

    def acknowledge(self, lsn: int) -> None:
        durable = self.server.sink.durable
        self.server.acks.append((lsn, durable))
        self.server.sink.log.append(("ack", lsn))
        assert lsn <= durable, f"acknowledged {lsn} while the warehouse holds {durable}"
        assert lsn >= self._acked, "acknowledgements went backwards"
        self._acked = lsn
        self.server.confirmed = max(self.server.confirmed, lsn)
        self._must_flush = False

    def caught_up(self, target_lsn: int) -> bool:
        return self._returned >= target_lsn

    def close(self) -> None:
        pass


def settings(**update: object) -> Settings:
    return load_settings().model_copy(
        update={"cdc_slot": SLOT, "cdc_batch_rows": 5, "cdc_batch_seconds": 0.01, **update}
    )


def run_stream(server: Server, batch_rows: int = 5, **update: object) -> None:
    target = server.txns[-1].end_lsn
    retry.stream(
        settings(**update),
        server.sink,
        server.engine,
        until_lsn=lambda: target,
        stop=None,
        progress=None,
        batch_rows=batch_rows,
        batch_seconds=0.01,
        max_outage=30,
    )


def check_order(server: Server) -> None:
    """Commit order within and across batches, nothing lost; a transaction is applied again
    only after a reconnect, and never once it was acknowledged."""
    acked = 0
    last = 0
    applied: set[int] = set()
    reconnected = False
    for kind, item in server.sink.log:
        if kind == "ack":
            assert isinstance(item, int)
            acked = item
        elif kind == "connect":
            reconnected = True
        else:
            assert isinstance(item, list)
            assert item == sorted(item)
            for lsn in item:
                assert lsn + 8 > acked, f"transaction at {lsn} applied after it was acknowledged"
                if lsn <= last:
                    assert reconnected and lsn in applied, f"{lsn} applied out of order"
                last = lsn
                applied.add(lsn)
            reconnected = False
    for lsns, offset in server.sink.batches:
        assert offset == max(lsns) + 8  # the offset is the end of the batch's last transaction
    assert applied == {t.commit_lsn for t in server.txns}, "a transaction was never applied"
    assert server.sink.durable == server.txns[-1].end_lsn
    assert server.confirmed == server.txns[-1].end_lsn


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BACKOFF_FIRST", 0.001)
    monkeypatch.setattr(retry, "BACKOFF_MAX", 0.001)


def test_empty_polls_and_keepalives_acknowledge_only_what_is_durable() -> None:
    sink = FakeSink()
    script = ["empty", "txn", "keepalive", "empty", "txn", "txn", "empty", "keepalive"] * 4
    server = Server([txn(n) for n in range(1, 31)], [script], sink)
    run_stream(server)
    assert server.acks and all(a <= d for a, d in server.acks)
    assert sink.columns == [("bank", "t")]
    check_order(server)
    assert sink.log_flushes == 1  # the held batch log is written when the stream stops


def test_an_idle_writer_has_the_sink_write_its_batch_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "IDLE_SECONDS", 0.01)
    sink = FakeSink()
    server = Server([txn(n) for n in range(1, 4)], [["txn", *["empty"] * 50, "txn", "txn"]], sink)
    run_stream(server, batch_rows=1)
    assert sink.log_flushes >= 2  # while polling empty, then at the stop
    check_order(server)


@pytest.mark.parametrize("seed", range(6))
def test_kill_points_redeliver_unacknowledged_transactions_in_order(seed: int) -> None:
    import random

    rng = random.Random(seed)
    steps = ["txn"] * 6 + ["empty", "keepalive"]
    scripts = [
        [rng.choice(steps) for _ in range(rng.randrange(0, 25))] + ["kill"] for _ in range(5)
    ]
    sink = FakeSink(slow=rng.choice([0.0, 0.003]))
    # More transactions than the scripts read: every kill happens before the stream catches up.
    server = Server([txn(n, rows=rng.randrange(1, 4)) for n in range(1, 201)], scripts, sink)
    run_stream(server, batch_rows=rng.choice([1, 4, 9]))
    assert server.connections == 6
    check_order(server)


def test_slow_writes_never_let_the_acknowledgement_run_ahead() -> None:
    sink = FakeSink(slow=0.02)
    server = Server([txn(n) for n in range(1, 41)], [["txn", "keepalive"] * 20], sink)
    run_stream(server, batch_rows=2)
    # The reader went on while the writer was busy, yet every ack stayed behind the sink.
    assert len(sink.batches) > 1
    assert all(a <= d for a, d in server.acks)
    check_order(server)


def test_a_failed_write_stops_the_stream_and_nothing_after_it_is_written() -> None:
    sink = FakeSink(slow=0.005, fail_at=3)
    server = Server([txn(n) for n in range(1, 41)], [[]], sink)
    with pytest.raises(WriteFailed, match="write 3 failed"):
        run_stream(server, batch_rows=4, cdc_offset_seconds=0)  # every batch records its offset
    assert len(sink.batches) == 2 and sink.applies == 3
    assert sink.log_flushes == 1  # the batches written before the failure are still logged
    assert server.confirmed <= sink.durable == sink.batches[-1][1]
    assert all(a <= d for a, d in server.acks)


def test_offsets_recorded_at_most_every_offset_seconds_and_acks_wait_for_them() -> None:
    """Batches written faster than cdc_offset_seconds land without their offset; the slot is
    acknowledged only up to a recorded one, and the last is recorded when the stream stops."""
    sink = FakeSink(slow=0.004)
    server = Server([txn(n) for n in range(1, 121)], [["txn", "empty"] * 60], sink)
    run_stream(server, batch_rows=1, cdc_offset_seconds=0.05)
    assert len(sink.batches) > 2 * sink.recorded > 0, (len(sink.batches), sink.recorded)
    assert all(a <= d for a, d in server.acks)
    check_order(server)


def test_held_offsets_keep_every_partition_position() -> None:
    """Offsets held back and then recorded by a later batch carry the positions of all of them
    (the kafka engine commits topic offsets from what was recorded)."""
    recorded: list[Offset] = []

    def write(job: stream._Job, record: bool) -> None:
        if record:
            assert job.offset is not None
            recorded.append(job.offset)

    writer = stream._Writer(write, lambda: None, offset_seconds=60)
    positions = [{("t", 0): 5}, {("t", 1): 7}, {("t", 0): 9}]
    try:
        for n, pos in enumerate(positions, 1):
            batch = stream.ChangeBatch()
            batch.add(txn(n))
            offset = Offset(SLOT, txn(n).end_lsn, True, tuple(sorted(pos.items())))
            writer.submit(stream._Job(batch, offset, 1, txn(n).commit_lsn, [0], n))
        writer.wait()
    finally:
        writer.close()
    # The first is recorded at once; the next two are held, then recorded together by wait().
    assert [o.lsn for o in recorded] == [txn(1).end_lsn, txn(3).end_lsn]
    assert dict(recorded[-1].positions) == {("t", 0): 9, ("t", 1): 7}
    assert writer.written() == (3, txn(3).end_lsn)
    assert writer.take_positions() == {("t", 0): 9, ("t", 1): 7}


def test_a_held_offset_is_recorded_between_the_parts_of_a_large_transaction() -> None:
    """Parts of a large transaction keep the writer busy for minutes: a held offset that is due
    is recorded before the next part, not only with the transaction's final part; a batch with
    its own offset records it instead (it covers the held one)."""
    writer = stream._Writer(lambda job, record: None, lambda: None, offset_seconds=0.05)
    batch = stream.ChangeBatch()
    batch.add(txn(1))
    held = stream._Job(batch, Offset(SLOT, txn(1).end_lsn, True), 1, 0, [0], 1)
    part = stream._Job(stream.ChangeBatch(), None, 0, 0, [0], 1, 1)
    later = stream._Job(batch, Offset(SLOT, txn(2).end_lsn, True), 1, 0, [0], 2)
    writer._pending, writer._offset_at = held, time.monotonic() - 1  # due
    with writer._cond:
        writer._job = part
        assert writer._next() == (held, True)
        writer._job = later
        assert writer._next() == (later, True)
        writer._offset_at = time.monotonic()  # not due: the batch lands, its offset held
        assert writer._next() == (later, False)


def test_streamer_drop_unwritten_resumes_from_the_written_offset() -> None:
    """A kill while a batch is being written: the write finishes, held transactions are
    forgotten, and the streamer resumes from what is durable, not from what it had read."""
    sink = FakeSink(slow=0.05)
    server = Server([txn(n) for n in range(1, 11)], [[]], sink)
    streamer = Streamer(settings(), sink, server.engine, batch_rows=100, batch_seconds=10)
    try:
        streamer.open()
        for _ in range(2):
            streamer.step(0.01)
        streamer.flush(wait=False)  # transactions 1-2 now being written (slowly)
        for _ in range(3):
            streamer.step(0.01)  # 3-5 read and held meanwhile
        assert streamer.holding and sink.durable < txn(2).end_lsn
        streamer.drop_unwritten()
        assert not streamer.holding
        assert sink.durable == txn(2).end_lsn
        streamer.close()
        offset = streamer.open()
        assert offset.lsn == sink.durable
        assert server.confirmed <= sink.durable
    finally:
        streamer.shutdown()
    assert all(a <= d for a, d in server.acks)


def test_fakes_satisfy_the_contracts() -> None:
    sink: Sink = FakeSink()
    engine: CaptureEngine = FakeEngine(Server([txn(1)], [], FakeSink()), [])
    assert sink is not None and engine.name == "fake"
