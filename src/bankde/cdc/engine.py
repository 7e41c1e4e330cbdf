"""The capture-engine contract: what the stream loop needs from any source of change events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bankde.cdc.pgoutput import Transaction
from bankde.contracts import Offset, Sink

# Snapshot progress: (schema.table, rows so far, estimated total or None).
ProgressFn = Callable[[str, int, int | None], None]


class CaptureEngine(Protocol):
    """A source of committed transactions for one slot (native pgoutput, Debezium, ...).

    Invariant: `poll` returns complete transactions of ChangeEvents in commit order, each with
    `end_lsn`, the commit end LSN to acknowledge; the caller acknowledges (`acknowledge`) only
    after the sink wrote that transaction and the offset covering it. Whatever was returned but
    not acknowledged may be returned again after a reconnect; nothing acknowledged ever is.
    """

    name: str

    def open(self, sink: Sink, progress: ProgressFn | None = None) -> Offset:
        """Connect; snapshot into the sink when the sink has no finished snapshot for this slot;
        start streaming after the sink's stored offset. Returns the offset streaming resumes at."""
        ...

    def poll(self, timeout: float) -> Transaction | None:
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
