"""Typed contracts between pipeline stages; each docstring states the invariant callers rely on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pyarrow as pa

    from bankde.cdc.envelope import ChangeColumns, ChangeEvent, Relation
    from bankde.cdc.rejects import Reject


@dataclass(frozen=True)
class Offset:
    """How far the warehouse holds the stream of one slot.

    `lsn` is the end LSN of the last transaction fully applied (what the slot may be acknowledged
    up to); `snapshot_done` says the initial snapshot of every captured table has landed.
    """

    slot: str
    lsn: int
    snapshot_done: bool
    # Topic-partition positions the batch covers (the kafka engine): ((topic, partition), next
    # offset to read) each; the sink stores them after the data, the highest offset winning.
    positions: tuple[tuple[tuple[str, int], int], ...] = ()


@dataclass(frozen=True)
class SourceColumn:
    """One column of a captured source table, as a Relation message or the catalog describes it.

    `pg_type` is either the type OID (with `typmod`, as pgoutput sends them) or the type name as
    format_type() spells it ('numeric(18,2)', 'timestamp with time zone', 'bank.txn_type').
    `not_null` None means unknown (pgoutput does not say): a new column is then Nullable.
    """

    name: str
    pg_type: int | str
    typmod: int = -1
    not_null: bool | None = None
    key: bool = False


# A source TRUNCATE inside the stream: (schema, table, version of the truncate itself).
Truncate = tuple[str, str, int]

# Snapshot progress: (schema.table, rows so far, estimated total or None).
ProgressFn = Callable[[str, int, int | None], None]


class CapturedTransaction(Protocol):
    """One committed transaction, as every capture engine hands it out.

    `end_lsn` is what the slot is acknowledged up to once the sink holds the transaction;
    `commit_lsn` versions its changes (make_version(commit_lsn, pos)). `relations` are the tables
    (re)described inside it, whose columns the sink must hold before its rows land. `events` are
    its row changes in order, positions 1..; `truncates` (schema, table, position) its TRUNCATEs.
    `rows` counts its row changes (what batch bounds count) without decoding them.
    A transaction too large for one batch may come in parts sharing xid and commit_lsn: `part`
    0, 1, .. and only the last one `final`, with `end_lsn`; earlier parts have end_lsn 0 and are
    never acknowledged (Sink.apply_part holds them until the final part's apply()).
    Implementations: pgoutput.Transaction (row messages kept raw until a batch decodes them
    columnar) and envelope.EventTransaction (built as events, e.g. by Debezium).
    """

    @property
    def xid(self) -> int: ...
    @property
    def commit_lsn(self) -> int: ...
    @property
    def end_lsn(self) -> int: ...
    @property
    def ts_ms(self) -> int: ...
    @property
    def relations(self) -> list[Relation]: ...
    @property
    def rows(self) -> int: ...
    @property
    def events(self) -> list[ChangeEvent]: ...
    @property
    def truncates(self) -> list[tuple[str, str, int]]: ...
    @property
    def part(self) -> int: ...
    @property
    def final(self) -> bool: ...


@runtime_checkable
class ColumnarChanges(Protocol):
    """A batch of change events that also hands them over per table as Arrow columns
    (cdc.columnar.ChangeBatch): the sink then skips the per-event pivot."""

    def columnar(self) -> tuple[list[ChangeColumns], list[ChangeEvent]]:
        """ChangeColumns per table, plus the events the bulk decoder left as ChangeEvents: the
        same envelopes as iterating the batch, once each."""
        ...


# What a sink applies: row change events, or a columnar batch of them.
Changes = Sequence["ChangeEvent"] | ColumnarChanges


class CaptureEngine(Protocol):
    """A source of committed transactions for one slot (native pgoutput, Debezium, ...).

    Invariant: `poll` returns complete transactions in commit order, each with `end_lsn`, the
    commit end LSN to acknowledge; the caller acknowledges (`acknowledge`) only after the sink
    wrote that transaction and the offset covering it. Whatever was returned but not
    acknowledged may be returned again after a reconnect; nothing acknowledged ever is.
    `snapshot_rows`/`snapshot_seconds` describe the snapshot the last `open` took (empty, 0.0
    when it resumed streaming instead).
    """

    name: str
    snapshot_rows: dict[str, int]
    snapshot_seconds: float

    def open(self, sink: Sink, progress: ProgressFn | None = None) -> Offset:
        """Connect; snapshot into the sink when the sink has no finished snapshot for this slot;
        start streaming after the sink's stored offset. Returns the offset streaming resumes at."""
        ...

    def poll(self, timeout: float) -> CapturedTransaction | None:
        """The next complete transaction, or None when none completed within `timeout` seconds
        (or when `must_flush` asks the caller to write what it holds first)."""
        ...

    @property
    def must_flush(self) -> bool:
        """True when the caller must write and acknowledge what it holds before polling again."""
        ...

    def acknowledge(self, lsn: int) -> None:
        """Tell the source everything up to `lsn` (a returned `end_lsn`) is durably written."""
        ...

    def caught_up(self, target_lsn: int) -> bool:
        """True when every transaction committed before `target_lsn` has been returned."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SnapshotsTables(Protocol):
    """Optional sink feature: it keeps the list of tables to copy again while the slot streams
    (cdc.tablesnap), so a copy a stopped capture did not finish is redone when it starts."""

    def request_table_snapshots(self, tables: Sequence[tuple[str, str]], reason: str) -> None: ...

    def pending_table_snapshots(self) -> list[tuple[str, str]]: ...

    def table_snapshot_done(self, schema: str, table: str, rows: int, lsn: int) -> None: ...

    def missing_tables(self, tables: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The tables of `tables` that have no landing table yet."""
        ...

    def missing_columns(
        self, schema: str, table: str, columns: Sequence[SourceColumn]
    ) -> list[str]:
        """The names of `columns` the landing table does not have."""
        ...


@runtime_checkable
class StopsTables(Protocol):
    """Optional sink feature: one table stopped (a source type change the warehouse cannot
    take in place) while the others stream. Its changes are held, durably and before the
    offset that covers them, until `cdc resync --table` reloads it and lets them in."""

    def stop_table(
        self, schema: str, table: str, columns: Sequence[SourceColumn], reason: str
    ) -> None:
        """Hold the table's changes from now on (shaped like `columns`); idempotent."""
        ...

    def stopped_tables(self) -> dict[str, str]:
        """schema.table -> reason, of every stopped table."""
        ...


@runtime_checkable
class RetypesTables(Protocol):
    """Optional sink feature: reload one table whose types changed (`cdc resync --table`) into
    a staged table of the new shape, swapped in complete, so readers never see it empty."""

    def stage_table(self, schema: str, table: str, columns: Sequence[SourceColumn]) -> None:
        """Snapshot rows of the table land in a new staged table shaped like `columns`."""
        ...

    def swap_in(self, schema: str, table: str, rows: int, lsn: int) -> None:
        """The staged table replaces the landing table, with the changes held for it; the
        table, if stopped, streams again."""
        ...


@runtime_checkable
class PositionedTransaction(Protocol):
    """Optional transaction feature: the topic-partition positions (next offset to read) it
    covers. The streamer hands them to the sink with the batch's Offset (kafka engine)."""

    @property
    def positions(self) -> dict[tuple[str, int], int]: ...


@runtime_checkable
class ColumnarTransaction(Protocol):
    """Optional transaction feature: changes an engine already converted into Arrow columns,
    one ChangeColumns per table, besides its `events` (kafka engine: JSON parsed in bulk).
    `rows` counts both."""

    @property
    def columns(self) -> list[ChangeColumns]: ...


@runtime_checkable
class CommitsPositions(Protocol):
    """Optional engine feature: told the positions the warehouse now holds (after the sink wrote
    them), e.g. to commit them to a Kafka consumer group for lag monitoring."""

    def commit_positions(self, positions: dict[tuple[str, int], int]) -> None: ...


@runtime_checkable
class StoresPositions(Protocol):
    """Optional sink feature the kafka engine needs: the topic-partition positions stored for a
    slot (written by apply() from Offset.positions), the commit LSN each connector is applied up
    to, and the quarantine for events it cannot convert."""

    def load_positions(self, slot: str) -> dict[tuple[str, int], int]: ...

    def load_connector_lsns(self, slot: str) -> dict[str, int]: ...

    def write_connector_lsns(self, slot: str, lsns: dict[str, int]) -> None: ...

    def quarantine(self, slot: str, rejects: Sequence[Reject]) -> int: ...


@runtime_checkable
class RequestsStatus(Protocol):
    """Optional engine feature: ask the source for a keepalive now, so `caught_up` learns how
    far the server has decoded without waiting for its next one (native pgoutput)."""

    def request_status(self) -> None: ...


@runtime_checkable
class ReportsIdlePosition(Protocol):
    """Optional engine feature: how far the source may confirm the slot on its own while the
    stream idles (psycopg2 moves the flush position to a keepalive's WAL end once everything
    received is acknowledged). The capture records an offset there before acknowledging it,
    so the slot never runs ahead of the warehouse's offset (native pgoutput)."""

    def idle_lsn(self) -> int | None:
        """The WAL end the server last reported, when nothing received is unacknowledged and no
        transaction is half received; else None."""
        ...


class Sink(Protocol):
    """Where change events land (the ClickHouse raw tables)."""

    def apply(
        self,
        events: Changes,
        offset: Offset,
        truncates: Sequence[Truncate] = (),
        record_offset: bool = True,
    ) -> None:
        """Write `events` (complete transactions, in commit order), then record `offset`.

        Idempotent: the same events may be delivered again after a crash; applying them twice
        changes nothing visible through FINAL, because versions come from the source LSNs.
        Durable on return: the caller acknowledges the slot up to `offset.lsn` only afterwards.
        `truncates` of the same transactions hide every row of the table older than the
        truncate's version (events after it in the stream stay); they land before the offset.
        An offset with snapshot_done=True makes a snapshot staged since reset_for_snapshot()
        visible, every table at once, before the offset is recorded.
        With `record_offset` False the offset may be left unrecorded (the caller records a later
        one and acknowledges nothing past the last recorded); the sink records it anyway when it
        must (a snapshot made visible).
        """
        ...

    def apply_part(self, events: Changes, part: int, truncates: Sequence[Truncate] = ()) -> None:
        """Write a part of a transaction too large for one batch (more parts follow) where no
        reader sees it, offset untouched. The apply() that carries the transaction's final
        part writes that part too, then makes every part visible, each table at once, then
        records the offset. `part` 0 discards whatever an unfinished earlier delivery had held (a
        transaction is re-sent from its start after a crash or a reconnect)."""
        ...

    def ensure_columns(self, schema: str, table: str, columns: Sequence[SourceColumn]) -> list[str]:
        """Make the landing table hold every source column (create it, ADD COLUMN, drop NOT NULL);
        returns the columns added (all of them for a table it created).

        Call it for every Relation message before applying events that use it, and before a
        table's snapshot. A column whose type widened (int -> bigint, numeric precision up) is
        converted in place; one the warehouse column cannot take raises IncompatibleTypeChange
        naming table, column and both types (the streamer then stops only that table where the
        sink StopsTables; `bankde cdc resync --table` reloads it).
        While reset_for_snapshot() has the table staged, the staged copy is shaped instead:
        being still empty, it is re-created with the source's types (key columns included), so
        the landing table it replaces takes them; CaptureError only if rows were staged already.
        """
        ...

    def reset_for_snapshot(self, slot: str, tables: Sequence[tuple[str, str]]) -> None:
        """Start a (re)snapshot of `tables`: empty staging tables receive load_snapshot() rows
        and replace the landing tables only when apply() records snapshot_done, so a snapshot
        interrupted halfway is never visible and a redo starts clean."""
        ...

    def load_snapshot(
        self, schema: str, table: str, rows: pa.RecordBatch, snapshot_lsn: int
    ) -> int:
        """Write snapshot rows (op 'r', columnar) of one table at the slot's consistent point.

        Rows carry version make_version(snapshot_lsn, 0), below every streamed change. Columns
        may be Arrow-typed (int, decimal128, timestamp, date32, bool, binary) or text form.
        Staged when reset_for_snapshot() named the table, else written to the landing table.
        Safe to repeat: a redone snapshot replaces nothing newer. Returns the rows written.
        """
        ...

    def truncate(self, schema: str, table: str, version: int) -> None:
        """Hide every row of the table older than `version` (a TRUNCATE, or rows a table
        snapshot at that version did not contain); rows with a higher version stay."""
        ...

    def reset(self, slot: str) -> None:
        """Forget `slot`'s offset (cdc resync), so the next open snapshots again. The landing
        tables stay readable, with their data, until that snapshot is complete and replaces
        them all at once; they are never emptied first."""
        ...

    def load_offset(self, slot: str) -> Offset | None:
        """The last offset recorded for `slot`, or None when nothing was ever applied."""
        ...

    def flush_log(self) -> None:
        """Write what the sink holds back of its informational batch log (not data, not
        offsets: those are durable when apply() returns). The stream calls it when idle and
        when it stops."""
        ...
