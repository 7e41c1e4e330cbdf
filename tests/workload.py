"""The CDC engine tests' shared pieces: a workspace (own slot, publication, warehouse home) and a mixed workload at a given rate."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bankde.settings import Settings
from bankde.source.connection import connect, owner_info
from tests.conftest import make_home


@pytest.fixture()
def workspace(source_settings: Settings) -> Iterator[tuple[Settings, Path]]:
    """This test's slot and publication (named after its database) and a warehouse home of its
    own; the slots (the Debezium engine's suffixed one too) and publications dropped afterwards."""
    from bankde.cdc.engines.debezium.config import engine_settings
    from bankde.cdc.slot import drop_publication, drop_slot

    tag = source_settings.db_name
    settings = source_settings.model_copy(
        update={"cdc_slot": f"slot_{tag}", "cdc_publication": f"pub_{tag}"}
    )
    home = make_home("bankde-engine-wh-")
    try:
        yield settings, home
    finally:
        for s in (settings, engine_settings(settings)):
            drop_slot(s, wait=30)  # an undropped slot blocks DROP DATABASE
            drop_publication(s)
        shutil.rmtree(home, ignore_errors=True)


def mixed_workload(
    settings: Settings,
    stop: threading.Event,
    rng: random.Random,
    *,
    rate: float,
    rows: int = 20,
    wide_updates: bool = True,
) -> int:
    """Random small transactions on bank.transaction until `stop`; returns how many committed.

    At most `rate` transactions a second: a pause of 1/`rate` after each commit (never a burst
    to catch up; on a loaded machine, where a transaction takes longer, it just writes less).
    Each has 1-4 statements: an INSERT of 1..`rows` rows, an UPDATE (`wide_updates`: a 13th of
    the table, many events in one transaction; else two rows), a DELETE of two random rows, or a
    primary-key change. The ids start past _seed's."""
    done, next_id = 0, 10_000
    with connect(owner_info(settings)) as conn:
        while not stop.is_set():
            for _ in range(rng.randint(1, 4)):
                kind = rng.random()
                if kind < 0.5:
                    n = rng.randint(1, rows)
                    conn.execute(
                        """INSERT INTO bank.transaction (txn_id, account_id, txn_type, status,
                            amount, currency, description, occurred_at)
                        SELECT g, 1 + g %% 50, 'deposit', 'approved', 12.34, 'EUR', 'live ' || g,
                            now() FROM generate_series(%s::bigint, %s::bigint) g""",
                        (next_id, next_id + n - 1),
                    )
                    next_id += n
                elif kind < 0.8 and wide_updates:
                    conn.execute(
                        "UPDATE bank.transaction SET amount = amount + 0.01, updated_at = now() "
                        "WHERE txn_id %% 13 = %s",
                        (rng.randint(0, 12),),
                    )
                elif kind < 0.8:
                    conn.execute(
                        "UPDATE bank.transaction SET amount = amount + 0.01, updated_at = now() "
                        "WHERE txn_id IN (%s, %s)",
                        (rng.randint(1, next_id), rng.randint(1, next_id)),
                    )
                elif kind < 0.95:
                    conn.execute(
                        "DELETE FROM bank.transaction WHERE txn_id IN (SELECT txn_id FROM "
                        "bank.transaction WHERE txn_id > 30 ORDER BY random() LIMIT 2)"
                    )
                else:
                    conn.execute(
                        "UPDATE bank.transaction SET txn_id = %s WHERE txn_id = (SELECT max(txn_id) "
                        "FROM bank.transaction)",
                        (next_id,),
                    )
                    next_id += 1
            conn.commit()
            done += 1
            time.sleep(1 / rate)
    return done


@contextmanager
def writer(
    settings: Settings,
    seed: int,
    *,
    rate: float,
    rows: int = 20,
    wide_updates: bool = True,
) -> Iterator[list[int]]:
    """mixed_workload in a thread for the block's duration; yields [transactions done], filled
    when the block ends (the thread stopped)."""
    stop = threading.Event()
    done: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            done.append(
                mixed_workload(
                    settings,
                    stop,
                    random.Random(seed),
                    rate=rate,
                    rows=rows,
                    wide_updates=wide_updates,
                )
            )
        except BaseException as exc:  # the test fails on it below, not the thread silently
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the workload did not stop within 60 s"
    if errors:
        raise AssertionError(f"the workload failed: {errors[0]!r}") from errors[0]
