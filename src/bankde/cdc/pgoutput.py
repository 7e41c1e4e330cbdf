"""A struct-based decoder of the pgoutput logical replication protocol into change envelopes."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bankde.cdc.envelope import ChangeEvent, Column, Relation, Source
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


@dataclass(slots=True)
class RowChunk:
    """Raw Insert/Update/Delete messages of one relation, in stream order, not yet decoded.

    `seq` holds each message's 0-based place among the row and truncate entries of its
    transaction; positions (`ChangeEvent.pos`) follow from it once key changes are known.
    """

    relation: Relation
    payloads: list[bytes] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)


@dataclass
class Transaction:
    """One committed transaction: its changes in order, and where it ends in the WAL.

    The native decoder keeps row messages raw in `chunks` (decoding them is the costly part, and
    the sink decodes a whole batch of them at once, columnar); `events` decodes them into
    ChangeEvents on first use. Engines that build events themselves append to `events`.
    """

    xid: int
    commit_lsn: int
    end_lsn: int
    ts_ms: int
    # Relations (re)described inside this transaction: a column may have been added.
    relations: list[Relation] = field(default_factory=list)
    chunks: list[RowChunk] = field(default_factory=list)
    # Row messages plus truncated relations: the entries `seq` counts.
    entries: int = 0
    # (schema, table, seq) of each relation truncated (native decoder, before positions).
    truncate_seqs: list[tuple[str, str, int]] = field(default_factory=list)
    # A transaction larger than the decoder's part size comes in parts, 0.., the last one
    # `final`; a part's positions start after pos_base (twice the entries before it: an entry
    # takes at most two positions), so they grow across parts without decoding earlier ones.
    part: int = 0
    final: bool = True
    pos_base: int = 0
    _events: list[ChangeEvent] | None = field(default=None, repr=False)
    _truncates: list[tuple[str, str, int]] | None = field(default=None, repr=False)

    @property
    def raw(self) -> bool:
        """Whether its row messages are still undecoded (a batch may then decode them columnar)."""
        return self._events is None and bool(self.chunks or self.truncate_seqs)

    @property
    def rows(self) -> int:
        """Row messages (native) or events held: what batch bounds count."""
        if self.raw:
            return self.entries - len(self.truncate_seqs)
        return len(self.events)

    @property
    def events(self) -> list[ChangeEvent]:
        if self._events is None:
            self._materialise()
        assert self._events is not None
        return self._events

    @property
    def truncates(self) -> list[tuple[str, str, int]]:
        """(schema, table, position of the truncate inside the transaction)."""
        if self._truncates is None:
            self._materialise()
        assert self._truncates is not None
        return self._truncates

    def _materialise(self) -> None:
        events: list[ChangeEvent] = []
        truncates: list[tuple[str, str, int]] = []
        entries: list[tuple[int, RowChunk | None, bytes | tuple[str, str]]] = [
            (seq, chunk, buf)
            for chunk in self.chunks
            for seq, buf in zip(chunk.seq, chunk.payloads, strict=True)
        ]
        entries += [(seq, None, (schema, table)) for schema, table, seq in self.truncate_seqs]
        entries.sort(key=lambda e: e[0])
        sources: dict[int, Source] = {}
        pos = self.pos_base
        for _seq, chunk, item in entries:
            if chunk is None:
                assert isinstance(item, tuple)
                pos += 1
                truncates.append((item[0], item[1], pos))
                continue
            assert isinstance(item, bytes)
            rel = chunk.relation
            src = sources.get(id(rel))
            if src is None:
                src = sources[id(rel)] = Source(
                    self.commit_lsn, self.xid, self.ts_ms, rel.schema, rel.table
                )
            for op, before, after, unchanged in _decode_row(item, rel):
                pos += 1
                events.append(ChangeEvent(op, before, after, src, self.ts_ms, pos, unchanged))  # type: ignore[arg-type]
        self._events = events
        self._truncates = truncates


KeyLookup = Callable[[str, str], tuple[str, ...] | None]


def _no_keys(schema: str, table: str) -> tuple[str, ...] | None:
    return None


class Decoder:
    """Turns pgoutput messages (protocol 1 or 2, text tuples) into complete Transactions.

    `feed` takes one XLogData payload and returns a Transaction when that payload was a Commit,
    else None. Relation messages are remembered per relid for the life of the decoder (the
    server re-sends them after a reconnect and after any schema change). Row messages stay raw
    until `Transaction.events` or the columnar batch decoder (bankde.cdc.columnar) reads them.

    Updates arrive with the old row when REPLICA IDENTITY FULL is set (bankde sets it): the
    decoder fills unchanged-TOAST ('u') columns of the new row from the old row, so `after` is
    complete; only without an old row do such columns land in `ChangeEvent.unchanged`. An update
    that changes the primary key becomes a delete of the old key and an insert of the new one.
    """

    def __init__(self, primary_keys: KeyLookup = _no_keys, part_rows: int | None = None) -> None:
        self.relations: dict[int, Relation] = {}
        # A transaction reaching this many entries is handed out in parts (bounded memory).
        self._part_rows = part_rows or sys.maxsize
        self.types: dict[int, tuple[str, str]] = {}
        self._primary_keys = primary_keys
        self._txn: Transaction | None = None
        self._seq = 0
        # The chunk collecting each relation's rows in the open transaction, by raw relid bytes.
        self._open: dict[bytes, RowChunk] = {}
        self.dispatch: Mapping[int, Callable[[bytes], Transaction | None]] = {
            ord("B"): self._begin,
            ord("C"): self._commit,
            ord("R"): self._relation,
            ord("I"): self._row,
            ord("U"): self._row,
            ord("D"): self._row,
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
        self._seq = 0
        self._open = {}

    def feed(self, payload: bytes) -> Transaction | None:
        # The hot path (one call per row change): file the raw message under its relation.
        if payload[0] in _ROW_KINDS:
            chunk = self._open.get(payload[1:5])
            if chunk is None:
                chunk = self._new_chunk(payload)
            chunk.payloads.append(payload)
            chunk.seq.append(self._seq)
            self._seq += 1
            if self._seq >= self._part_rows:
                return self._cut()
            return None
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
        self._seq = 0
        self._open = {}
        return None

    def _commit(self, buf: bytes) -> Transaction:
        _flags, commit_lsn, end_lsn, _ts = _COMMIT.unpack_from(buf, 1)
        txn = self._current()
        txn.commit_lsn = commit_lsn
        txn.end_lsn = end_lsn
        txn.entries = self._seq
        self._txn = None
        self._open = {}
        return txn

    def _cut(self) -> Transaction:
        """Hand out the open transaction's entries so far as a part; the rest follows in a new
        part of the same transaction (its commit LSN, hence its versions, known from Begin)."""
        txn = self._current()
        txn.entries = self._seq
        txn.final = False
        self._txn = Transaction(
            txn.xid,
            txn.commit_lsn,
            0,
            txn.ts_ms,
            part=txn.part + 1,
            pos_base=txn.pos_base + 2 * self._seq,
        )
        self._seq = 0
        self._open = {}
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
        # Later rows of this relation belong to a new chunk with the new column list.
        self._open.pop(buf[1:5], None)
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

    def _new_chunk(self, buf: bytes) -> RowChunk:
        txn = self._current()
        chunk = RowChunk(self._rel(_U32.unpack_from(buf, 1)[0]))
        txn.chunks.append(chunk)
        self._open[buf[1:5]] = chunk
        return chunk

    def _row(self, buf: bytes) -> None:
        self.feed(buf)
        return None

    def _truncate(self, buf: bytes) -> None:
        nrels, _options = _TRUNC.unpack_from(buf, 1)
        txn = self._current()
        for i in range(nrels):
            rel = self._rel(_U32.unpack_from(buf, 6 + 4 * i)[0])
            txn.truncate_seqs.append((rel.schema, rel.table, self._seq))
            self._seq += 1
        return None


_ROW_KINDS = frozenset(b"IUD")

Row = dict[str, str | None]


def _decode_row(
    buf: bytes, rel: Relation
) -> list[tuple[str, Row | None, Row | None, frozenset[str]]]:
    """One Insert/Update/Delete message as (op, before, after, unchanged) changes.

    Updates arrive with the old row when REPLICA IDENTITY FULL is set: unchanged-TOAST ('u')
    columns of the new row are filled from it. An update that changes the primary key becomes
    a delete of the old key and an insert of the new one.
    """
    names = rel.names
    kind = buf[0]
    if kind == 0x49:  # 'I'; buf[5] is 'N'
        row, _, _ = _tuple(buf, 6, names)
        return [("c", None, row, frozenset())]
    if kind == 0x44:  # 'D'; buf[5] is 'K' (key columns only, others null) or 'O' (whole row)
        gone, _, _ = _tuple(buf, 6, names)
        return [("d", gone, None, frozenset())]
    sub = buf[5]
    old: Row | None = None
    off = 6
    old_is_key_only = False
    if sub in (0x4B, 0x4F):  # 'K' old key only, 'O' whole old row
        old, off, _ = _tuple(buf, 6, names)
        old_is_key_only = sub == 0x4B
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
        return [("d", old_row, None, frozenset()), ("c", None, new, frozenset(unchanged))]
    return [("u", before, new, frozenset(unchanged))]


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
