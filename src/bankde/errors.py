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
