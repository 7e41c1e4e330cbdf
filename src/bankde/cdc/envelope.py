"""What every capture engine produces: the Debezium change-event envelope, tables, transactions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Re-exported: callers built before the version module had its own home import it from here.
from bankde.cdc.version import POS_BITS as POS_BITS
from bankde.cdc.version import make_version as make_version

Op = Literal["r", "c", "u", "d"]


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


@dataclass(slots=True, frozen=True)
class Source:
    """Debezium's `source` block, trimmed to what the sink and monitoring use."""

    lsn: int  # commit LSN of the transaction (snapshot: the slot's consistent point)
    tx_id: int | None
    ts_ms: int  # commit time in the source, ms since epoch
    schema: str
    table: str
    snapshot: bool = False

    def to_debezium(self) -> dict[str, Any]:
        return {
            "connector": "postgresql",
            "db": "",
            "schema": self.schema,
            "table": self.table,
            "lsn": self.lsn,
            "txId": self.tx_id,
            "ts_ms": self.ts_ms,
            "snapshot": "true" if self.snapshot else "false",
        }


@dataclass(slots=True)
class ChangeEvent:
    """One row change. `before`/`after` map column name to the value in Postgres' text output
    form (as pgoutput sends it, and as Debezium does with decimal.handling.mode=string): a str,
    or None for NULL. Money stays exact ("12.30"), timestamps keep their zone; the sink parses
    each column with the warehouse's own casts, in bulk, never through float.

    op: r snapshot read, c insert, u update, d delete. A primary-key change arrives as a `d` of
    the old key followed by a `c` of the new one. `pos` is the 1-based position of the change in
    its transaction (0 for snapshot rows); with `source.lsn` it gives the row's version.
    """

    op: Op
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: Source
    ts_ms: int
    pos: int = 0
    # Columns whose value the source did not send (unchanged TOAST); the sink keeps the old value.
    unchanged: frozenset[str] = field(default_factory=frozenset)
    # Where the event was read when it came through Kafka (topic, partition, offset): a value the
    # sink's screen holds back is recorded with it in meta.cdc_rejects.
    origin: tuple[str, int, int] | None = None

    @property
    def version(self) -> int:
        return make_version(self.source.lsn, self.pos)

    @property
    def key_row(self) -> dict[str, Any]:
        """The row that identifies the key: `after` for r/c/u, `before` for d."""
        row = self.before if self.op == "d" else self.after
        assert row is not None, f"{self.op} event without a row"
        return row

    def to_debezium(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "op": self.op,
            "source": self.source.to_debezium(),
            "ts_ms": self.ts_ms,
        }


@dataclass(slots=True)
class ChangeColumns:
    """Change events of one table in columnar form: the same envelopes, pivoted for bulk writes.

    Row i is one ChangeEvent: `values[j][i]` is column `names[j]` of its key row (`after` for
    c/u, `before` for d) in Postgres text form (Arrow string, null for NULL), `op[i]` its op
    (Arrow string), `deleted[i]` whether op is d, and `lsn`/`pos`/`tx_id`/`ts_ms` its source
    fields (numpy arrays; `lsn` is the commit LSN, so the version is `make_version(lsn, pos)`). Rows
    are in no particular order: versions decide. Never holds unchanged-TOAST gaps.
    """

    schema: str
    table: str
    names: tuple[str, ...]
    values: list[Any]  # pa.StringArray per name
    op: Any  # pa.StringArray
    deleted: Any  # np.ndarray[bool]
    lsn: Any  # np.ndarray[uint64]
    pos: Any  # np.ndarray[uint32]
    tx_id: Any  # np.ndarray[uint64]
    ts_ms: Any  # np.ndarray[int64]
    # Where each row was read when it came through Kafka (for meta.cdc_rejects); None otherwise.
    origins: Origins | None = None

    def __len__(self) -> int:
        return len(self.deleted)

    def take(self, index: Any) -> ChangeColumns:
        """The rows at `index` (a numpy integer array), in that order."""
        import pyarrow as pa

        at = pa.array(index, pa.int64())
        return ChangeColumns(
            self.schema,
            self.table,
            self.names,
            [v.take(at) for v in self.values],
            self.op.take(at),
            self.deleted[index],
            self.lsn[index],
            self.pos[index],
            self.tx_id[index],
            self.ts_ms[index],
            None if self.origins is None else self.origins.take(index),
        )


@dataclass(frozen=True)
class Origins:
    """Per row of a ChangeColumns, the Kafka record it was read from."""

    topic: Any  # np.ndarray[object] of str
    partition: Any  # np.ndarray[int32]
    offset: Any  # np.ndarray[int64]

    def at(self, i: int) -> tuple[str, int, int]:
        return str(self.topic[i]), int(self.partition[i]), int(self.offset[i])

    def take(self, index: Any) -> Origins:
        return Origins(self.topic[index], self.partition[index], self.offset[index])

    @staticmethod
    def concat(parts: list[Origins | None], sizes: list[int]) -> Origins | None:
        """Origins of groups joined in order; rows of a group without any get ('', -1, -1)."""
        import numpy as np

        if all(p is None for p in parts):
            return None
        filled = [
            p
            if p is not None
            else Origins(np.full(n, "", object), np.full(n, -1, np.int32), np.full(n, -1, np.int64))
            for p, n in zip(parts, sizes, strict=True)
        ]
        return Origins(
            np.concatenate([p.topic for p in filled]),
            np.concatenate([p.partition for p in filled]),
            np.concatenate([p.offset for p in filled]),
        )


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    is_key: bool  # part of the replica identity as pgoutput flags it


@dataclass(frozen=True)
class Relation:
    """A table as the stream last described it (pgoutput's Relation message, or the catalog)."""

    relid: int
    schema: str
    table: str
    replica_identity: str  # 'd' default, 'f' full, 'i' index, 'n' nothing
    columns: tuple[Column, ...]
    # The primary key, from the catalog when known; else the replica-identity columns.
    key: tuple[str, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", tuple(c.name for c in self.columns))


@dataclass
class EventTransaction:
    """A committed transaction an engine built as ChangeEvents (contracts.CapturedTransaction).

    `truncates` holds (schema, table, position inside the transaction) of each truncated table.
    """

    xid: int
    commit_lsn: int
    end_lsn: int
    ts_ms: int
    relations: list[Relation] = field(default_factory=list)
    events: list[ChangeEvent] = field(default_factory=list)
    truncates: list[tuple[str, str, int]] = field(default_factory=list)
    # Engines that build events hand out whole transactions: one part, the final one.
    part: int = 0
    final: bool = True

    @property
    def rows(self) -> int:
        return len(self.events)
