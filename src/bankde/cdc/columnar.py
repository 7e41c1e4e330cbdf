"""Bulk pgoutput decoding: a batch of raw row messages into per-table Arrow text columns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa

from bankde.cdc import _tuples
from bankde.cdc.envelope import ChangeColumns, ChangeEvent, Origins, Relation, Source
from bankde.cdc.pgoutput import RowChunk, Transaction
from bankde.cdc.version import make_version
from bankde.contracts import CapturedTransaction, ColumnarTransaction, Truncate
from bankde.errors import CaptureError

_T, _N, _U = 0x74, 0x6E, 0x75  # tuple column kinds: text, null, unchanged TOAST
_K, _O, _NEW = 0x4B, 0x4F, 0x4E  # old key, old row, new row markers
_UPD, _DEL = 0x55, 0x44
_OPS = pa.array(["c", "u", "d"], pa.string())
_C, _UOP, _D = 0, 1, 2
_MAX_STRING_BYTES = 2**31 - 1  # Arrow string offsets are int32


class _Irregular(Exception):
    """A group the bulk decoder leaves to the per-row decoder (flagged unchanged TOAST...)."""


class ChangeBatch(Sequence[ChangeEvent]):
    """The complete transactions of one sink batch, as a sequence of ChangeEvents.

    The events are decoded only when read; a sink that knows the columnar form calls
    `columnar()` instead, which decodes every row message of a table in the batch at once,
    with numpy, straight into Arrow columns (the same envelopes: ops, key changes split into
    d + c, unchanged TOAST filled from the old row, positions counted like
    `Transaction.events` does). Transactions an engine built as events (no raw chunks) and
    groups the bulk decoder cannot take come back as events.
    """

    def __init__(self) -> None:
        self.txns: list[CapturedTransaction] = []
        self.rows = 0  # row messages or events: what batch bounds count
        self._columnar: tuple[list[ChangeColumns], list[ChangeEvent]] | None = None
        self._truncates: list[Truncate] | None = None
        self._events: list[ChangeEvent] | None = None

    def add(self, txn: CapturedTransaction) -> None:
        self.txns.append(txn)
        self.rows += txn.rows
        self._columnar = self._truncates = self._events = None

    # -- Sequence[ChangeEvent] ------------------------------------------------------------
    def _all(self) -> list[ChangeEvent]:
        if self._events is None:
            self._events = [ev for txn in self.txns for ev in _events_of(txn)]
        return self._events

    def __len__(self) -> int:
        groups, rest = self.columnar()
        return sum(len(g) for g in groups) + len(rest)

    @overload
    def __getitem__(self, i: int) -> ChangeEvent: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[ChangeEvent]: ...
    def __getitem__(self, i: int | slice) -> ChangeEvent | Sequence[ChangeEvent]:
        return self._all()[i]

    def __iter__(self) -> Iterator[ChangeEvent]:
        return iter(self._all())

    # -- columnar -------------------------------------------------------------------------
    def truncates(self) -> list[Truncate]:
        """(schema, table, version) of every truncate in the batch."""
        if self._truncates is None:
            self.columnar()
        assert self._truncates is not None
        return self._truncates

    def table_counts(self) -> dict[str, int]:
        groups, rest = self.columnar()
        counts: dict[str, int] = {}
        for g in groups:
            name = f"{g.schema}.{g.table}"
            counts[name] = counts.get(name, 0) + len(g)
        for ev in rest:
            name = f"{ev.source.schema}.{ev.source.table}"
            counts[name] = counts.get(name, 0) + 1
        return counts

    def columnar(self) -> tuple[list[ChangeColumns], list[ChangeEvent]]:
        """ChangeColumns per table for the raw row messages; ChangeEvents for everything else."""
        if self._columnar is None:
            try:
                self._columnar, self._truncates = self._decode()
            except _Irregular:
                self._columnar = ([], self._all())
                self._truncates = [
                    (s, t, make_version(txn.commit_lsn, pos))
                    for txn in self.txns
                    for s, t, pos in txn.truncates
                ]
        return self._columnar

    def _decode(self) -> tuple[tuple[list[ChangeColumns], list[ChangeEvent]], list[Truncate]]:
        # Still raw: the native decoder's transactions nobody has read as events yet.
        raw = [t for t in self.txns if isinstance(t, Transaction) and t.raw]
        raw_ids = {id(t) for t in raw}
        built = [t for t in self.txns if id(t) not in raw_ids]
        rest = [ev for t in built for ev in t.events]
        truncates: list[Truncate] = [
            (s, tb, make_version(t.commit_lsn, pos)) for t in built for s, tb, pos in t.truncates
        ]
        # Changes an engine converted in bulk already: one group per table for the whole batch.
        ready = _merged([c for t in built if isinstance(t, ColumnarTransaction) for c in t.columns])
        if not raw:
            return (ready, rest), truncates
        entries = np.fromiter((t.entries for t in raw), np.int64, len(raw))
        base = np.zeros(len(raw), np.int64)
        np.cumsum(entries[:-1], out=base[1:])
        groups: dict[tuple[str, str, tuple[str, ...]], list[tuple[int, RowChunk]]] = {}
        for i, txn in enumerate(raw):
            for chunk in txn.chunks:
                rel = chunk.relation
                groups.setdefault((rel.schema, rel.table, rel.names), []).append((i, chunk))
        decoded = []
        weight = np.ones(int(entries.sum()), np.int64)
        for parts in groups.values():
            rel = parts[-1][1].relation
            payloads = [p for _, c in parts for p in c.payloads]
            seq = np.concatenate([np.asarray(c.seq, np.int64) + base[i] for i, c in parts])
            txn_idx = np.concatenate([np.full(len(c.seq), i, np.int64) for i, c in parts])
            rows = _Rows(rel, payloads)
            weight[seq[rows.changed]] = 2  # a key change is a d and a c: two positions
            decoded.append((rel, rows, seq, txn_idx))
        # 1-based position of each entry's first change inside its transaction.
        before = np.cumsum(weight) - weight
        first_pos = before - np.repeat(before[base[entries > 0]], entries[entries > 0]) + 1
        # A later part of a transaction split into parts counts on from its base.
        pos_base = np.fromiter((t.pos_base for t in raw), np.int64, len(raw))
        if pos_base.any():
            first_pos += np.repeat(pos_base[entries > 0], entries[entries > 0])
        lsn = np.fromiter((t.commit_lsn for t in raw), np.uint64, len(raw))
        xid = np.fromiter((t.xid for t in raw), np.uint64, len(raw))
        ts = np.fromiter((t.ts_ms for t in raw), np.int64, len(raw))
        columns = [
            rows.columns(rel, first_pos[seq], lsn[txn_idx], xid[txn_idx], ts[txn_idx])
            for rel, rows, seq, txn_idx in decoded
        ]
        for i, txn in enumerate(raw):
            for s, tb, seq_i in txn.truncate_seqs:
                pos = int(first_pos[base[i] + seq_i])
                truncates.append((s, tb, make_version(txn.commit_lsn, pos)))
        return (columns + ready, rest), truncates


def _events_of(txn: CapturedTransaction) -> list[ChangeEvent]:
    """A transaction's changes as events, bulk-converted ones included (then after the others:
    versions, not order, decide)."""
    if not isinstance(txn, ColumnarTransaction) or not txn.columns:
        return list(txn.events)
    return [*txn.events, *(ev for cols in txn.columns for ev in _column_events(cols))]


def _column_events(cols: ChangeColumns) -> Iterator[ChangeEvent]:
    """ChangeColumns back as ChangeEvents: the key row as `before` of a delete, else `after`."""
    values = [v.to_pylist() for v in cols.values]
    ops = cols.op.to_pylist()
    for i in range(len(cols)):
        row = {name: values[j][i] for j, name in enumerate(cols.names)}
        op = ops[i]
        ts = int(cols.ts_ms[i])
        src = Source(int(cols.lsn[i]), int(cols.tx_id[i]), ts, cols.schema, cols.table, op == "r")
        d = op == "d"
        origin = None if cols.origins is None else cols.origins.at(i)
        yield ChangeEvent(
            op, row if d else None, None if d else row, src, ts, int(cols.pos[i]), origin=origin
        )


def _merged(groups: list[ChangeColumns]) -> list[ChangeColumns]:
    """Groups of the same table and columns joined into one (one INSERT per table)."""
    by_table: dict[tuple[str, str, tuple[str, ...]], list[ChangeColumns]] = {}
    for g in groups:
        by_table.setdefault((g.schema, g.table, g.names), []).append(g)
    out = []
    for parts in by_table.values():
        if len(parts) == 1:
            out.append(parts[0])
            continue
        first = parts[0]
        out.append(
            ChangeColumns(
                first.schema,
                first.table,
                first.names,
                [pa.concat_arrays([p.values[j] for p in parts]) for j in range(len(first.names))],
                pa.concat_arrays([p.op for p in parts]),
                np.concatenate([p.deleted for p in parts]),
                np.concatenate([p.lsn for p in parts]),
                np.concatenate([p.pos for p in parts]),
                np.concatenate([p.tx_id for p in parts]),
                np.concatenate([p.ts_ms for p in parts]),
                Origins.concat([p.origins for p in parts], [len(p) for p in parts]),
            )
        )
    return out


class _Rows:
    """The row messages of one relation, decoded in bulk.

    Two walks over the joined messages (in C, `_tuples.walk`) find where every value lies: the
    first tuple of each message (the row of inserts, the old row of updates and deletes) and
    the second tuple of updates that carry an old row. `start`/`length`/`kind` arrays have one
    row per column and one column per message; building a column is then one copy of its
    values' byte ranges into a compact Arrow string array (`_tuples.gather`).
    """

    def __init__(self, rel: Relation, payloads: list[bytes]) -> None:
        n = len(payloads)
        self.ncols = ncols = len(rel.names)
        sizes = np.fromiter(map(len, payloads), np.int64, n)
        at = np.zeros(n, np.int64)
        np.cumsum(sizes[:-1], out=at[1:])
        if int(sizes.sum()) > _MAX_STRING_BYTES:
            raise _Irregular  # a column's values could overflow Arrow's int32 string offsets
        joined = b"".join(payloads)
        self.buf = buf = np.frombuffer(joined, np.uint8)
        mtype = buf[at]
        # A message too short to hold it is caught by the walk, which stays inside each message.
        sub = buf[np.minimum(at + 5, len(buf) - 1)]
        msg_end = at + sizes
        o_start, o_len, o_kind, end = _walk(joined, at + 6, ncols, msg_end)
        self.old = (o_start, o_len, o_kind)
        upd_old = np.flatnonzero((mtype == _UPD) & ((sub == _K) | (sub == _O)))
        self.upd_old = upd_old
        self.fill = np.zeros((ncols, len(upd_old)), bool)
        self.joined = joined
        if len(upd_old):
            nxt = end[upd_old]
            if (nxt >= len(buf)).any() or (buf[nxt] != _NEW).any():
                raise CaptureError("pgoutput update without its new row: the stream is malformed")
            s2, l2, k2, _ = _walk(joined, nxt + 1, ncols, msg_end[upd_old])
            self.new2 = (s2, l2, k2)
            unchanged2 = k2 == _U
            if unchanged2.any():
                fill = unchanged2 & (sub[upd_old] == _O)[None, :]
                if (unchanged2 & ~fill).any():
                    raise _Irregular  # no old row to fill from: the row path keeps the value
                self.fill = fill
        if (o_kind == _U).any():
            raise _Irregular  # an update without an old row left a TOAST value out
        self.changed = np.zeros(n, bool)
        if len(upd_old) and rel.key:
            try:
                key_cols = [rel.names.index(k) for k in rel.key]
            except ValueError:
                raise _Irregular from None
            s2, l2, k2 = self.new2
            differs = np.zeros(len(upd_old), bool)
            for j in key_cols:
                # A key column left out as unchanged is the old value: equal by definition.
                sent = ~self.fill[j]
                differs |= sent & _differ(
                    buf,
                    (o_start[j, upd_old], o_len[j, upd_old], o_kind[j, upd_old]),
                    (s2[j], l2[j], k2[j]),
                )
            self.changed[upd_old] = differs
        op = np.full(n, _UOP, np.int8)
        op[mtype == _DEL] = _D
        op[mtype == 0x49] = _C
        op[self.changed] = _C
        self.op = op

    def columns(self, rel: Relation, first_pos: Any, lsn: Any, xid: Any, ts: Any) -> ChangeColumns:
        """The ChangeColumns of these messages: one row each, plus a d row per key change.

        Rows come in three runs: messages whose row is their first tuple, updates whose new row
        is their second tuple, then the old rows of key changes (as deletes).
        """
        n = len(self.op)
        upd_old = self.upd_old
        in_first = np.ones(n, bool)
        in_first[upd_old] = False
        run_a = np.flatnonzero(in_first)
        moved = np.flatnonzero(self.changed)
        order = np.concatenate([run_a, upd_old, moved])
        o_start, o_len, o_kind = self.old
        values = []
        for j in range(self.ncols):
            # Where each row's value lies in the joined messages, then one copy per column.
            starts, lens, kinds = [o_start[j, run_a]], [o_len[j, run_a]], [o_kind[j, run_a]]
            if len(upd_old):
                s2, l2, k2 = (a[j] for a in self.new2)
                fill = self.fill[j]
                if fill.any():  # unchanged TOAST: the old row's value
                    s2 = np.where(fill, o_start[j, upd_old], s2)
                    l2 = np.where(fill, o_len[j, upd_old], l2)
                    k2 = np.where(fill, o_kind[j, upd_old], k2)
                starts.append(s2)
                lens.append(l2)
                kinds.append(k2)
            if len(moved):
                starts.append(o_start[j, moved])
                lens.append(o_len[j, moved])
                kinds.append(o_kind[j, moved])
            values.append(_strings(self.joined, starts, lens, kinds))
        op = np.concatenate([self.op[run_a], self.op[upd_old], np.full(len(moved), _D, np.int8)])
        # The d of a key change takes the message's first position, its c the next.
        pos = (first_pos + self.changed)[order[:n]]
        pos = np.concatenate([pos, first_pos[moved]]).astype(np.uint32)
        return ChangeColumns(
            rel.schema,
            rel.table,
            rel.names,
            values,
            _OPS.take(pa.array(op)),
            op == _D,
            lsn[order],
            pos,
            xid[order],
            ts[order],
        )


def _walk(joined: bytes, at: Any, ncols: int, limit: Any) -> tuple[Any, Any, Any, Any]:
    """TupleData starting at each offset in `at`, each inside its message (ending by `limit`):
    value starts, lengths, kinds (one row per column, one column per message), and where each
    tuple ends.

    A null or unchanged value gets length 0 and starts right after its kind byte.
    """
    n = len(at)
    start = np.empty((ncols, n), np.int64)
    length = np.empty((ncols, n), np.int64)
    kind = np.empty((ncols, n), np.uint8)
    end = np.empty(n, np.int64)
    status, detail = _tuples.walk(
        joined,
        np.ascontiguousarray(at, np.int64),
        np.ascontiguousarray(limit, np.int64),
        ncols,
        start,
        length,
        kind,
        end,
    )
    if status == 1:
        raise _Irregular  # not the relation's column count: leave it to the row decoder
    if status == 2:
        raise CaptureError(
            f"pgoutput tuple column kind {chr(detail)!r}: binary tuples must stay off"
        )
    if status:
        raise CaptureError(
            "pgoutput tuple runs past the end of its message: the stream is malformed"
        )
    return start, length, kind, end


def _strings(joined: bytes, starts: list[Any], lens: list[Any], kinds: list[Any]) -> pa.Array:
    """The values at these ranges of the joined messages as one compact Arrow string array;
    null where the kind is not text (an unchanged TOAST value was filled from the old row)."""
    start = np.concatenate(starts) if len(starts) > 1 else starts[0]
    length = np.concatenate(lens) if len(lens) > 1 else lens[0]
    valid = (np.concatenate(kinds) if len(kinds) > 1 else kinds[0]) == _T
    offsets, data = _tuples.gather(
        joined, np.ascontiguousarray(start, np.int64), np.ascontiguousarray(length, np.int64)
    )
    nulls = len(valid) - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.StringArray.from_buffers(
        len(valid), pa.py_buffer(offsets), pa.py_buffer(data), bitmap, nulls
    )


def _differ(buf: Any, a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> Any:
    """Per pair of values: True when kind, length or bytes differ."""
    a_start, a_len, a_kind = a
    b_start, b_len, b_kind = b
    differs = (a_kind != b_kind) | (a_len != b_len)
    same = np.flatnonzero(~differs & (a_len > 0))
    if len(same):
        lens = a_len[same]
        row = np.repeat(np.arange(len(same)), lens)
        offset = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        unequal = buf[a_start[same][row] + offset] != buf[b_start[same][row] + offset]
        differs[same] = np.bincount(row, weights=unequal, minlength=len(same)) > 0
    return differs
