"""Typed errors a user can cause; the CLI turns each into one line and an exit code."""

from __future__ import annotations


class BankdeError(Exception):
    """Base of every error the CLI reports as one line (no traceback unless --debug)."""

    exit_code = 1


class ConfigError(BankdeError):
    """Bad settings, flags or environment: the user must change something. Exit 2."""

    exit_code = 2


class SourceUnavailable(BankdeError):
    """The source Postgres cannot be reached or refused the credentials."""


class WarehouseLocked(BankdeError):
    """Another process owns the embedded warehouse directory."""


class CaptureError(BankdeError):
    """Replication cannot continue safely (invalidated slot, schema change it cannot apply...)."""


class IncompatibleTypeChange(CaptureError):
    """A source column changed to a type its warehouse column cannot take in place: only that
    table stops (its changes are held) until `bankde cdc resync --table` reloads it."""

    def __init__(self, source: str, column: str, old: str, new: str) -> None:
        self.source, self.column, self.old, self.new = source, column, old, new
        super().__init__(
            f"{source}.{column} changed type: warehouse {old}, source now {new}, which the "
            f"warehouse cannot convert in place: {source} stopped, its changes held; run "
            f"`bankde cdc resync --table {source}`"
        )
