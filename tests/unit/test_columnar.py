"""The bulk (columnar) pgoutput decoder gives the same changes as the per-row decoder."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from bankde.cdc.columnar import ChangeBatch
from bankde.cdc.envelope import ChangeEvent, make_version
from bankde.cdc.pgoutput import Transaction
from bankde.errors import CaptureError
from tests.unit.test_pgoutput import (
    COLS,
    RELID,
    begin,
    commit,
    decoder,
    delete,
    insert,
    relation,
    run,
    update,
)

TRUNCATE = b"T" + struct.pack("!Ib", 1, 0) + struct.pack("!I", RELID)

Change = tuple[int, str, dict[str, Any], int, int]


def batch_of(*msgs: bytes) -> tuple[ChangeBatch, list[Transaction]]:
    txns = run(decoder(), *msgs)
    batch = ChangeBatch()
    for txn in txns:
        batch.add(txn)
    return batch, txns


def columnar_changes(batch: ChangeBatch) -> tuple[list[Change], int]:
    groups, rest = batch.columnar()
    out: list[Change] = []
    for g in groups:
        assert len(g.values) == len(g.names)
        for i in range(len(g)):
            row = {name: g.values[j][i].as_py() for j, name in enumerate(g.names)}
            op = g.op[i].as_py()
            assert bool(g.deleted[i]) == (op == "d")
            out.append((make_version(int(g.lsn[i]), int(g.pos[i])), op, row, int(g.tx_id[i]), 0))
    out += [_change(ev) for ev in rest]
    return sorted(out, key=lambda c: (c[0], c[1])), len(groups)


def _change(ev: ChangeEvent) -> Change:
    return (ev.version, ev.op, ev.key_row, ev.source.tx_id or 0, len(ev.unchanged))


def row_changes(txns: list[Transaction]) -> list[Change]:
    # Fresh decodes of the same messages, one change at a time.
    out = []
    for txn in txns:
        txn._events = txn._truncates = None
        out += [_change(ev) for ev in txn.events]
    return sorted(out, key=lambda c: (c[0], c[1]))


def test_mixed_changes_key_changes_toast_and_truncate_match_the_row_decoder():
    batch, txns = batch_of(
        begin(0x2000, xid=5),
        relation(),
        insert("9", "1.00", None),
        update(("5", "1.00", "a"), ("6", "1.00", "a")),  # key change: d 5, c 6
        update(("6", "1.00", "a"), ("6", "2.00", "a")),
        delete(("9", "1.00", None)),
        commit(0x2000, 0x2030),
        begin(0x3000, xid=6),
        update(("7", "1.00", "x" * 5000), ("7", "2.00", b"u")),  # TOAST filled from old row
        update(("7", "1.00", "y"), ("8", "2.00", b"u")),  # key change with TOAST left out
        TRUNCATE,
        insert("2", "1.00", "Zürich €"),
        insert("3", "1.00", ""),
        commit(0x3000, 0x3050),
    )
    got, groups = columnar_changes(batch)
    assert groups == 1
    assert got == row_changes(txns)
    assert [c[1] for c in got] == ["c", "d", "c", "u", "d", "u", "d", "c", "c", "c"]
    big = next(c for c in got if c[2]["txn_id"] == "7")
    assert big[2]["description"] == "x" * 5000
    assert next(c for c in got if c[2]["txn_id"] == "8")[2]["description"] == "y"
    # The truncate sits after the key change's two positions.
    assert batch.truncates() == [("bank", "transaction", make_version(0x3000, 4))]
    assert len(batch) == len(got) == batch.table_counts()["bank.transaction"]


def test_key_only_old_rows_with_default_identity():
    batch, txns = batch_of(
        begin(0x2000),
        relation(ident=b"d"),
        update(("5", None, None), ("6", "2.00", None), kind=b"K"),
        update(None, ("6", "3.00", None)),
        delete(("6", None, None), kind=b"K"),
        commit(0x2000, 0x2030),
    )
    got, groups = columnar_changes(batch)
    assert groups == 1
    assert got == row_changes(txns)
    assert [c[1] for c in got] == ["d", "c", "u", "d"]


def test_toast_left_out_without_old_row_goes_to_the_row_path():
    batch, txns = batch_of(
        begin(0x2000),
        relation(ident=b"d"),
        insert("1", "1.00", "long"),
        update(None, ("1", "2.00", b"u")),
        commit(0x2000, 0x2030),
    )
    groups, rest = batch.columnar()
    assert groups == []
    assert [ev.unchanged for ev in rest] == [frozenset(), frozenset({"description"})]
    assert [_change(ev) for ev in rest] == row_changes(txns)


def test_added_column_and_several_transactions_and_tables():
    cols = [*COLS, ("channel", 25, False)]
    batch, txns = batch_of(
        begin(0x5000, xid=1),
        relation(),
        insert("1", "1.00", None),
        relation(cols=cols),
        insert("2", "1.00", None, "web"),
        relation(relid=77, cols=cols),
        insert("3", "1.00", None, "pos", relid=77),
        insert("4", "1.00", None, None),
        commit(0x5000, 0x5010),
        begin(0x6000, xid=2),
        update(("4", "1.00", None, None), ("4", "1.00", None, "app")),
        commit(0x6000, 0x6010),
    )
    got, groups = columnar_changes(batch)
    assert groups == 2  # the old and the new column list
    assert got == row_changes(txns)
    assert [c[3] for c in got] == [1, 1, 1, 1, 2]


def test_engine_built_events_pass_through_and_binary_tuples_fail():
    txn = Transaction(9, 0x100, 0x110, 0)
    batch = ChangeBatch()
    batch.add(txn)
    assert batch.columnar() == ([], [])
    bad, _ = batch_of(
        begin(0x1000),
        relation(),
        b"I" + struct.pack("!I", RELID) + b"N" + struct.pack("!h", 3) + b"b" * 3,
        commit(0x1000, 0x1010),
    )
    with pytest.raises(CaptureError, match="binary tuples"):
        bad.columnar()


@pytest.mark.parametrize("seed", range(20))
def test_random_transactions_match_the_row_decoder(seed: int) -> None:
    # Random inserts, updates (with and without an old row, key changes, TOAST left out and
    # filled from the old row), deletes, NULLs, empty and multi-byte text over several
    # transactions: the C walk and gather must give what the row decoder gives.
    rng = random.Random(seed)

    def text() -> str | None:
        return rng.choice([None, "", "é€𝄞", "x" * rng.randint(0, 300), str(rng.random())])

    msgs = [relation()]
    keys = list(range(1, 40))
    for t in range(rng.randint(1, 6)):
        msgs.append(begin(0x1000 * (t + 1), xid=t))
        for _ in range(rng.randint(1, 60)):
            k = str(rng.choice(keys))
            kind = rng.random()
            if kind < 0.4:
                msgs.append(insert(k, f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}", text()))
            elif kind < 0.8:
                old = (k, "1.00", text())
                new_key = str(rng.choice(keys)) if rng.random() < 0.2 else k
                desc: str | bytes | None = b"u" if rng.random() < 0.2 else text()
                msgs.append(update(old, (new_key, "2.00", desc)))
            else:
                msgs.append(delete((k, "1.00", text())))
        msgs.append(commit(0x1000 * (t + 1), 0x1000 * (t + 1) + 0x10))
    batch, txns = batch_of(*msgs)
    got, groups = columnar_changes(batch)
    assert groups == 1
    assert got == row_changes(txns)


def test_a_truncated_tuple_is_an_error_not_a_read_past_the_buffer() -> None:
    whole = insert("1", "1.00", "abcdef")
    after = insert("2", "2.00", "ghijkl")
    for cut in (len(whole) - 3, 8, 6):
        # Alone, and followed by a whole message its walk would otherwise read on into.
        for msgs in ([whole[:cut]], [whole[:cut], after]):
            batch, _ = batch_of(begin(0x2000), relation(), *msgs, commit(0x2000, 0x2010))
            with pytest.raises(CaptureError, match="malformed"):
                batch.columnar()
