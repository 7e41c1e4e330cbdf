"""The pgoutput decoder on hand-built protocol messages."""

from __future__ import annotations

import struct

import pytest

from bankde.cdc.envelope import make_version
from bankde.cdc.pgoutput import PG_EPOCH_US, Decoder
from bankde.errors import CaptureError

RELID = 16400
COLS = [("txn_id", 20, True), ("amount", 1700, False), ("description", 25, False)]


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def begin(commit_lsn: int, xid: int = 700, ts_us: int = 0) -> bytes:
    return b"B" + struct.pack("!QqI", commit_lsn, ts_us, xid)


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack("!bQQq", 0, commit_lsn, end_lsn, 0)


def relation(relid: int = RELID, cols=COLS, ident: bytes = b"f") -> bytes:
    body = struct.pack("!I", relid) + cstr("bank") + cstr("transaction") + ident
    body += struct.pack("!h", len(cols))
    for name, oid, key in cols:
        body += bytes([1 if key else 0]) + cstr(name) + struct.pack("!Ii", oid, -1)
    return b"R" + body


def tup(*vals: str | bytes | None) -> bytes:
    out = struct.pack("!h", len(vals))
    for v in vals:
        if v is None:
            out += b"n"
        elif v == b"u":
            out += b"u"
        else:
            assert isinstance(v, str)
            data = v.encode()
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


def insert(*vals, relid: int = RELID) -> bytes:
    return b"I" + struct.pack("!I", relid) + b"N" + tup(*vals)


def update(old, new, kind: bytes = b"O", relid: int = RELID) -> bytes:
    body = b"U" + struct.pack("!I", relid)
    if old is not None:
        body += kind + tup(*old)
    return body + b"N" + tup(*new)


def delete(old, kind: bytes = b"O", relid: int = RELID) -> bytes:
    return b"D" + struct.pack("!I", relid) + kind + tup(*old)


def decoder() -> Decoder:
    return Decoder(lambda s, t: ("txn_id",) if (s, t) == ("bank", "transaction") else None)


def run(dec: Decoder, *msgs: bytes):
    done = [t for m in msgs if (t := dec.feed(m)) is not None]
    return done


def test_insert_update_delete_in_one_transaction():
    dec = decoder()
    ts_us = 800_000_000_000_000  # 2025-05 in Postgres' epoch
    [txn] = run(
        dec,
        begin(0x1000, xid=42, ts_us=ts_us),
        relation(),
        insert("1", "12.30", None),
        update(("1", "12.30", None), ("1", "99.99", "paid")),
        delete(("1", "99.99", "paid")),
        commit(0x1000, 0x1040),
    )
    assert (txn.xid, txn.commit_lsn, txn.end_lsn) == (42, 0x1000, 0x1040)
    assert txn.ts_ms == (ts_us + PG_EPOCH_US) // 1000
    assert [e.op for e in txn.events] == ["c", "u", "d"]
    c, u, d = txn.events
    assert c.after == {"txn_id": "1", "amount": "12.30", "description": None}
    assert c.before is None
    assert u.before == {"txn_id": "1", "amount": "12.30", "description": None}
    assert u.after == {"txn_id": "1", "amount": "99.99", "description": "paid"}
    assert d.before == {"txn_id": "1", "amount": "99.99", "description": "paid"} and d.after is None
    assert [e.pos for e in txn.events] == [1, 2, 3]
    assert [e.version for e in txn.events] == [make_version(0x1000, p) for p in (1, 2, 3)]
    assert c.source.schema == "bank" and c.source.table == "transaction" and c.source.tx_id == 42
    assert c.to_debezium()["source"]["lsn"] == 0x1000
    assert txn.relations and txn.relations[0].key == ("txn_id",)


def test_primary_key_change_becomes_delete_then_insert():
    dec = decoder()
    [txn] = run(
        dec,
        begin(0x2000),
        relation(),
        update(("5", "1.00", "a"), ("6", "1.00", "a")),
        commit(0x2000, 0x2030),
    )
    assert [e.op for e in txn.events] == ["d", "c"]
    assert txn.events[0].before == {"txn_id": "5", "amount": "1.00", "description": "a"}
    assert txn.events[1].after == {"txn_id": "6", "amount": "1.00", "description": "a"}
    assert txn.events[0].version < txn.events[1].version


def test_key_only_old_tuple_with_default_identity():
    dec = decoder()
    [txn] = run(
        dec,
        begin(0x2000),
        relation(ident=b"d"),
        update(("5", None, None), ("6", "2.00", None), kind=b"K"),
        update(None, ("6", "3.00", None)),
        commit(0x2000, 0x2030),
    )
    assert [e.op for e in txn.events] == ["d", "c", "u"]
    assert txn.events[0].before == {"txn_id": "5", "amount": None, "description": None}
    assert txn.events[2].before is None


def test_unchanged_toast_filled_from_full_old_row():
    dec = decoder()
    big = "x" * 5000
    [txn] = run(
        dec,
        begin(0x3000),
        relation(),
        update(("7", "1.00", big), ("7", "2.00", b"u")),
        commit(0x3000, 0x3050),
    )
    [e] = txn.events
    assert e.after == {"txn_id": "7", "amount": "2.00", "description": big}
    assert e.unchanged == frozenset()


def test_unchanged_toast_without_old_row_is_flagged():
    dec = decoder()
    [txn] = run(
        dec,
        begin(0x3000),
        relation(ident=b"d"),
        update(None, ("7", "2.00", b"u")),
        commit(0x3000, 0x3050),
    )
    [e] = txn.events
    assert e.unchanged == frozenset({"description"})
    assert e.after is not None and e.after["description"] is None


def test_truncate_and_type_and_origin_messages():
    dec = decoder()
    trunc = b"T" + struct.pack("!Ib", 1, 0) + struct.pack("!I", RELID)
    typ = b"Y" + struct.pack("!I", 16500) + cstr("bank") + cstr("txn_type")
    origin = b"O" + struct.pack("!Q", 0x10) + cstr("elsewhere")
    [txn] = run(
        dec,
        begin(0x4000),
        origin,
        typ,
        relation(),
        insert("1", "1.00", None),
        trunc,
        insert("2", "1.00", None),
        commit(0x4000, 0x4060),
    )
    assert txn.truncates == [("bank", "transaction", 2)]
    assert [e.pos for e in txn.events] == [1, 3]
    assert dec.types[16500] == ("bank", "txn_type")


def test_added_column_via_new_relation_message():
    dec = decoder()
    run(dec, begin(0x5000), relation(), insert("1", "1.00", None), commit(0x5000, 0x5010))
    cols = [*COLS, ("channel", 25, False)]
    [txn] = run(
        dec,
        begin(0x6000),
        relation(cols=cols),
        insert("2", "1.00", None, "web"),
        commit(0x6000, 0x6010),
    )
    assert txn.relations[0].names[-1] == "channel"
    assert txn.events[0].after == {
        "txn_id": "2",
        "amount": "1.00",
        "description": None,
        "channel": "web",
    }


def test_utf8_and_empty_strings_and_transactions_are_separate():
    dec = decoder()
    out = run(
        dec,
        begin(0x7000),
        relation(),
        insert("1", "1.00", "Zürich €"),
        insert("2", "1.00", ""),
        commit(0x7000, 0x7010),
        begin(0x8000),
        insert("3", "1.00", None),
        commit(0x8000, 0x8010),
    )
    assert [len(t.events) for t in out] == [2, 1]
    assert out[0].events[0].after["description"] == "Zürich €"
    assert out[0].events[1].after["description"] == ""
    assert out[1].events[0].pos == 1 and out[1].events[0].source.lsn == 0x8000


def test_protocol_errors_are_clear():
    dec = decoder()
    dec.feed(relation())
    with pytest.raises(CaptureError, match="outside a transaction"):
        dec.feed(insert("1", "1.00", None))
    dec.feed(begin(0x1))
    with pytest.raises(CaptureError, match="before its Relation"):
        dec.feed(insert("1", "1.00", None, relid=999))
    with pytest.raises(CaptureError, match="unknown pgoutput message"):
        dec.feed(b"S" + b"\0" * 8)
    dec.reset()
    assert not dec.in_transaction
