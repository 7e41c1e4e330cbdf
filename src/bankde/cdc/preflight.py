"""The start-up checks every capture engine runs before it touches the slot or the warehouse."""

from __future__ import annotations

from dataclasses import dataclass

from bankde.cdc.envelope import format_lsn
from bankde.cdc.slot import SlotState, ensure_publication, lost_slot_message, slot_state
from bankde.contracts import Offset, Sink
from bankde.errors import CaptureError
from bankde.settings import Settings
from bankde.source.connection import cdc_info


@dataclass(frozen=True)
class StartPoint:
    """Where a capture starts: the slot as the server has it, the published tables, and the
    offset the warehouse holds for the slot."""

    state: SlotState
    tables: list[tuple[str, str]]
    offset: Offset | None

    @property
    def fresh(self) -> bool:
        """No finished snapshot in the warehouse: the engine must (re)snapshot, slot included."""
        return self.offset is None or not self.offset.snapshot_done


def preflight(settings: Settings, sink: Sink) -> StartPoint:
    """Refuse to start on a lost slot, a slot of another database, a warehouse that holds data
    streamed through a slot that is gone, or a slot confirmed past the warehouse's offset;
    otherwise publish every captured table."""
    slot = settings.cdc_slot
    state = slot_state(settings)
    if state.exists and state.lost:
        raise CaptureError(lost_slot_message(settings))
    if state.exists and state.database not in (None, cdc_info(settings).dbname):
        raise CaptureError(
            f"replication slot {slot} belongs to database {state.database}: set BANKDE_CDC_SLOT "
            "to another name"
        )
    tables = ensure_publication(settings)
    offset = sink.load_offset(slot)
    if offset is not None and offset.snapshot_done and not state.exists:
        raise CaptureError(
            f"replication slot {slot} is gone but the warehouse holds data streamed through it "
            "(changes since then cannot be recovered): run `bankde cdc resync`"
        )
    if (
        offset is not None
        and offset.snapshot_done
        and state.exists
        and state.confirmed_flush_lsn is not None
        and state.confirmed_flush_lsn > offset.lsn
    ):
        # The slot will not send what lies between: a warehouse restored from a backup, or a
        # slot dropped and re-created by someone. Streaming on would skip those changes.
        raise CaptureError(
            f"replication slot {slot} is confirmed up to {format_lsn(state.confirmed_flush_lsn)} "
            f"but the warehouse holds changes only up to {format_lsn(offset.lsn)}: the changes "
            "in between cannot be recovered from the slot (warehouse restored from a backup, or "
            "slot re-created?); run `bankde cdc resync`"
        )
    return StartPoint(state, tables, offset)
