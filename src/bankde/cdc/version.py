"""The one owner of the `_version` encoding: Python values and the SQL that sink and dbt use."""

from __future__ import annotations

# _version = commit LSN in the high bits, position inside the transaction in the low POS_BITS.
# Snapshot rows use position 0 at the slot's consistent point; streamed changes start at 1 and
# commit at or after that point, so every snapshot row sorts below every streamed change.
POS_BITS = 32
POS_MASK = (1 << POS_BITS) - 1


def make_version(commit_lsn: int, pos: int) -> int:
    """Version of a change: grows per key across restarts because LSNs do."""
    return (commit_lsn << POS_BITS) | pos


def version_lsn(version: int) -> int:
    """The commit LSN a version was made from."""
    return version >> POS_BITS


def sql_make_version(lsn_sql: str, pos_sql: str) -> str:
    """ClickHouse expression (UInt128) of make_version() over two SQL expressions."""
    return f"bitOr(bitShiftLeft(toUInt128({lsn_sql}), {POS_BITS}), toUInt128({pos_sql}))"


def sql_version_lsn(version_sql: str) -> str:
    """ClickHouse expression (UInt64) of version_lsn() over a SQL expression."""
    return f"toUInt64(bitShiftRight({version_sql}, {POS_BITS}))"


def sql_max_version_at(lsn_sql: str) -> str:
    """ClickHouse expression: the largest version any change committed at `lsn_sql` can have."""
    return sql_make_version(lsn_sql, str(POS_MASK))
