"""A struct-based decoder of the pgoutput logical replication protocol into change envelopes."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bankde.cdc.envelope import ChangeEvent, Source
from bankde.errors import CaptureError

# Commit timestamps count microseconds from 2000-01-01 (Postgres' epoch).
PG_EPOCH_US = 946_684_800_000_000

_I8 = struct.Struct("!b")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_BEGIN = struct.Struct("!QqI")  # final (commit) LSN, commit time, xid
_COMMIT = struct.Struct("!bQQq")  # flags, commit LSN, end LSN, commit time
_COL = struct.Struct("!Ii")  # type oid, typmod
_TRUNC = struct.Struct("!Ib")  # number of relations, options


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    is_key: bool  # part of the replica identity as pgoutput flags it


@dataclass(frozen=True)
class Relation:
    """A table as the stream last described it (a Relation message)."""

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

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Transaction:
    """One committed transaction: its changes in order, and where it ends in the WAL."""

    xid: int
    commit_lsn: int
    end_lsn: int
    ts_ms: int
    events: list[ChangeEvent] = field(default_factory=list)
    # Relations (re)described inside this transaction: a column may have been added.
    relations: list[Relation] = field(default_factory=list)
    # (schema, table) truncated, with the position of the truncate inside the transaction.
    truncates: list[tuple[str, str, int]] = field(default_factory=list)


KeyLookup = Callable[[str, str], tuple[str, ...] | None]


def _no_keys(schema: str, table: str) -> tuple[str, ...] | None:
    return None


class Decoder:
    """Turns pgoutput messages (protocol 1 or 2, text tuples) into complete Transactions.

    `feed` takes one XLogData payload and returns a Transaction when that payload was a Commit,
    else None. Relation messages are remembered per relid for the life of the decoder (the
    server re-sends them after a reconnect and after any schema change).

    Updates arrive with the old row when REPLICA IDENTITY FULL is set (bankde sets it): the
    decoder fills unchanged-TOAST ('u') columns of the new row from the old row, so `after` is
    complete; only without an old row do such columns land in `ChangeEvent.unchanged`. An update
    that changes the primary key becomes a delete of the old key and an insert of the new one.
    """

    def __init__(self, primary_keys: KeyLookup = _no_keys) -> None:
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, tuple[str, str]] = {}
        self._primary_keys = primary_keys
        self._txn: Transaction | None = None
        self._pos = 0
        self._source_cache: dict[int, Source] = {}
        self.dispatch: Mapping[int, Callable[[bytes], Transaction | None]] = {
            ord("B"): self._begin,
            ord("C"): self._commit,
            ord("R"): self._relation,
            ord("I"): self._insert,
            ord("U"): self._update,
            ord("D"): self._delete,
            ord("T"): self._truncate,
            ord("Y"): self._type,
            ord("O"): self._ignore,  # origin: we capture every origin alike
            ord("M"): self._ignore,  # logical decoding messages are not requested
        }

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    def reset(self) -> None:
        """Forget a partly received transaction (after a lost connection)."""
        self._txn = None
        self._pos = 0
        self._source_cache.clear()

    def feed(self, payload: bytes) -> Transaction | None:
        handler = self.dispatch.get(payload[0])
        if handler is None:
            raise CaptureError(
                f"unknown pgoutput message {chr(payload[0])!r}: the server speaks a newer protocol "
                "than bankde decodes (streaming of in-progress transactions must stay off)"
            )
        return handler(payload)

    # -- transaction framing ------------------------------------------------------------
    def _begin(self, buf: bytes) -> None:
        commit_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
        self._txn = Transaction(xid, commit_lsn, 0, (ts + PG_EPOCH_US) // 1000)
        self._pos = 0
        self._source_cache.clear()
        return None

    def _commit(self, buf: bytes) -> Transaction:
        _flags, commit_lsn, end_lsn, _ts = _COMMIT.unpack_from(buf, 1)
        txn = self._current()
        txn.commit_lsn = commit_lsn
        txn.end_lsn = end_lsn
        self._txn = None
        return txn

    def _current(self) -> Transaction:
        if self._txn is None:
            raise CaptureError("pgoutput change outside a transaction: the stream is out of step")
        return self._txn

    def _ignore(self, buf: bytes) -> None:
        return None

    # -- catalog messages ---------------------------------------------------------------
    def _relation(self, buf: bytes) -> None:
        relid = _U32.unpack_from(buf, 1)[0]
        off = 5
        schema, off = _cstring(buf, off)
        table, off = _cstring(buf, off)
        ident = chr(buf[off])
        ncols = _I16.unpack_from(buf, off + 1)[0]
        off += 3
        cols = []
        for _ in range(ncols):
            flags = buf[off]
            name, off = _cstring(buf, off + 1)
            oid, typmod = _COL.unpack_from(buf, off)
            off += 8
            cols.append(Column(name, oid, typmod, bool(flags & 1)))
        key = self._primary_keys(schema, table) or tuple(c.name for c in cols if c.is_key)
        rel = Relation(relid, schema, table, ident, tuple(cols), key)
        self.relations[relid] = rel
        self._source_cache.pop(relid, None)
        if self._txn is not None:
            self._txn.relations.append(rel)
        return None

    def _type(self, buf: bytes) -> None:
        oid = _U32.unpack_from(buf, 1)[0]
        schema, off = _cstring(buf, 5)
        name, _ = _cstring(buf, off)
        self.types[oid] = (schema, name)
        return None

    # -- row changes --------------------------------------------------------------------
    def _rel(self, relid: int) -> Relation:
        try:
            return self.relations[relid]
        except KeyError:
            raise CaptureError(
                f"pgoutput change for relation {relid} before its Relation message"
            ) from None

    def _source(self, relid: int, rel: Relation) -> Source:
        src = self._source_cache.get(relid)
        if src is None:
            txn = self._current()
            # The commit LSN is known from Begin, so a Source can be shared by the whole txn.
            src = Source(txn.commit_lsn, txn.xid, txn.ts_ms, rel.schema, rel.table)
            self._source_cache[relid] = src
        return src

    def _emit(
        self,
        op: str,
        relid: int,
        before: dict[str, str | None] | None,
        after: dict[str, str | None] | None,
        unchanged: frozenset[str] = frozenset(),
    ) -> None:
        txn = self._current()
        rel = self._rel(relid)
        self._pos += 1
        txn.events.append(
            ChangeEvent(
                op,  # type: ignore[arg-type]
                before,
                after,
                self._source(relid, rel),
                txn.ts_ms,
                self._pos,
                unchanged,
            )
        )

    def _insert(self, buf: bytes) -> None:
        relid = _U32.unpack_from(buf, 1)[0]
        # buf[5] is 'N'
        row, _, _ = _tuple(buf, 6, self._rel(relid).names)
        self._emit("c", relid, None, row)
        return None

    def _update(self, buf: bytes) -> None:
        relid = _U32.unpack_from(buf, 1)[0]
        rel = self._rel(relid)
        names = rel.names
        kind = buf[5]
        old: dict[str, str | None] | None = None
        off = 6
        old_is_key_only = False
        if kind in (0x4B, 0x4F):  # 'K' old key only, 'O' whole old row
            old, off, _ = _tuple(buf, 6, names)
            old_is_key_only = kind == 0x4B
            off += 1  # the 'N' before the new tuple
        new, _, unchanged = _tuple(buf, off, names)
        if unchanged and old is not None and not old_is_key_only:
            for col in unchanged:
                new[col] = old[col]
            unchanged = []
        before = None if old_is_key_only else old
        if old is not None and rel.key and any(old[k] != new[k] for k in rel.key):
            # Primary key changed: the old key disappears, the new key appears.
            old_row = old if not old_is_key_only else {n: old.get(n) for n in names}
            self._emit("d", relid, old_row, None)
            self._emit("c", relid, None, new, frozenset(unchanged))
            return None
        self._emit("u", relid, before, new, frozenset(unchanged))
        return None

    def _delete(self, buf: bytes) -> None:
        relid = _U32.unpack_from(buf, 1)[0]
        # buf[5] is 'K' (key columns only, others null) or 'O' (whole old row)
        old, _, _ = _tuple(buf, 6, self._rel(relid).names)
        self._emit("d", relid, old, None)
        return None

    def _truncate(self, buf: bytes) -> None:
        nrels, _options = _TRUNC.unpack_from(buf, 1)
        txn = self._current()
        for i in range(nrels):
            rel = self._rel(_U32.unpack_from(buf, 6 + 4 * i)[0])
            self._pos += 1
            txn.truncates.append((rel.schema, rel.table, self._pos))
        return None


def _cstring(buf: bytes, off: int) -> tuple[str, int]:
    end = buf.index(0, off)
    return buf[off:end].decode(), end + 1


def _tuple(
    buf: bytes, off: int, names: tuple[str, ...]
) -> tuple[dict[str, str | None], int, list[str]]:
    """TupleData at `off`: the row, the offset after it, and the unchanged-TOAST columns."""
    ncols = (buf[off] << 8) | buf[off + 1]
    off += 2
    vals: list[str | None] = []
    append = vals.append
    unchanged: list[str] = []
    unpack = _I32.unpack_from
    for i in range(ncols):
        kind = buf[off]
        if kind == 0x74:  # 't' text
            n = unpack(buf, off + 1)[0]
            off += 5
            append(buf[off : off + n].decode())
            off += n
        elif kind == 0x6E:  # 'n' null
            append(None)
            off += 1
        elif kind == 0x75:  # 'u' unchanged TOAST: the value was not sent
            append(None)
            unchanged.append(names[i])
            off += 1
        else:
            raise CaptureError(
                f"pgoutput tuple column kind {chr(kind)!r}: binary tuples must stay off"
            )
    return dict(zip(names, vals, strict=False)), off, unchanged
