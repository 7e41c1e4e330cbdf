"""The kafka engine's bulk path: a change waiting for its END record holds back only its partition."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Message

from bankde.cdc.engines.kafka import KafkaEngine
from bankde.settings import Settings
from tests.unit.test_debezium_columns import INFO, ROWS, envelope

TOPIC = "bankde.bank.t"


def engine(tmp_path: Path, commits: dict[int, int]) -> KafkaEngine:
    e = KafkaEngine(Settings(home=tmp_path))
    e._tables[("bank", "t")] = INFO
    e._commits = dict(commits)
    return e


def messages() -> tuple[list[Message], dict[int, int]]:
    """Two partitions of inserts and updates, each change its own transaction (xid 500 + i)."""
    msgs, commits = [], {}
    offsets = {0: 10, 1: 20}
    for i in range(1, 13):
        part = i % 2
        row = dict(ROWS[i % 3], id=i)
        msgs.append(
            Message(
                topic=TOPIC,
                partition=part,
                offset=offsets[part],
                value=envelope("c" if i % 3 else "u", row, i),
            )
        )
        offsets[part] += 1
        commits[500 + i] = 10_000 + i
    return msgs, commits


def test_all_ends_read_applies_everything_with_its_origin(tmp_path: Path) -> None:
    msgs, commits = messages()
    e = engine(tmp_path, commits)
    batch = e._bulk_batch(msgs)
    assert batch is not None and not e._held and not e._waiting
    assert batch.positions == {(TOPIC, 0): 16, (TOPIC, 1): 26}
    (cols,) = batch.columns
    assert len(cols) == 12
    assert cols.origins is not None
    got = {cols.origins.at(i): int(cols.lsn[i]) for i in range(len(cols))}
    want = {(TOPIC, m.partition(), m.offset()): 10_000 + i + 1 for i, m in enumerate(msgs)}
    assert got == want


def test_a_missing_end_holds_back_its_partition_from_that_offset_only(tmp_path: Path) -> None:
    msgs, commits = messages()
    # Change 5 (partition 1, offset 22) and change 8 (partition 0, offset 13): ENDs not read yet.
    del commits[505], commits[508]
    e = engine(tmp_path, commits)
    batch = e._bulk_batch(msgs)
    assert batch is not None, "the bulk path must not give the whole batch up"
    assert e._waiting
    # Resume where the first waiting change of each partition is; nothing after it is applied.
    assert batch.positions[(TOPIC, 1)] == 22
    assert batch.positions[(TOPIC, 0)] == 13
    held = [(m.partition(), m.offset()) for m in e._held]
    assert held == [
        (p, o)
        for p, o in ((m.partition(), m.offset()) for m in msgs)
        if o >= 22 or (p == 0 and o >= 13)
    ]
    (cols,) = batch.columns
    assert cols.origins is not None
    applied = sorted(cols.origins.at(i)[1:] for i in range(len(cols)))
    assert applied == [(0, 10), (0, 11), (0, 12), (1, 20), (1, 21)]
    assert all(int(x) > 0 for x in cols.lsn)

    # The ENDs arrive: the held messages go through in order, with nothing left waiting.
    e._commits.update({505: 10_005, 508: 10_008})
    held_msgs, e._held = e._held, []
    batch = e._bulk_batch(held_msgs)
    assert batch is not None and not e._held and not e._waiting
    assert batch.positions == {(TOPIC, 0): 16, (TOPIC, 1): 26}
    assert len(batch.columns[0]) == 7
