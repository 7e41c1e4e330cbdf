"""Typed contracts between pipeline stages; each docstring states the invariant callers rely on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from bankde.cdc.envelope import ChangeEvent


@dataclass(frozen=True)
class Offset:
    """How far the warehouse holds the stream of one slot.

    `lsn` is the end LSN of the last transaction fully applied (what the slot may be acknowledged
    up to); `snapshot_done` says the initial snapshot of every captured table has landed.
    """

    slot: str
    lsn: int
    snapshot_done: bool


class Sink(Protocol):
    """Where change events land (the ClickHouse raw tables)."""

    def apply(self, events: Sequence[ChangeEvent], offset: Offset) -> None:
        """Write `events` (complete transactions, in commit order), then record `offset`.

        Idempotent: the same events may be delivered again after a crash; applying them twice
        changes nothing visible through FINAL, because versions come from the source LSNs.
        Durable on return: the caller acknowledges the slot up to `offset.lsn` only afterwards.
        """
        ...

    def load_snapshot(
        self, schema: str, table: str, rows: pa.RecordBatch, snapshot_lsn: int
    ) -> int:
        """Write snapshot rows (op 'r', columnar) of one table at the slot's consistent point.

        Rows carry version make_version(snapshot_lsn, 0), below every streamed change. Safe to
        repeat: a redone snapshot replaces nothing newer. Returns the rows written.
        """
        ...

    def load_offset(self, slot: str) -> Offset | None:
        """The last offset recorded for `slot`, or None when nothing was ever applied."""
        ...
