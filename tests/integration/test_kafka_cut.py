"""The kafka engine's consistent cut: a transaction across two connectors is below it whole or not at all."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from bankde.settings import Settings
from bankde.source.connection import connect, owner_info
from bankde.warehouse.session import WarehouseSession
from tests.integration.test_debezium_engine import _seed
from tests.kafka_stack import Stack, connectors

pytest.importorskip("confluent_kafka", reason="the [kafka] extra is not installed")

TXNS = 160
# Every SLOW-th transaction sleeps between its two halves longer than the connectors' heartbeat
# interval (1 s): a heartbeat marker then falls inside it, the case a cut by change LSN gets wrong.
SLOW = 16
BASE = 100_000  # transaction k inserts customer BASE + k and card BASE + k


def _writer(settings: Settings, stop: threading.Event, done: list[int]) -> None:
    """Transaction k inserts customer BASE + k (customer connector) and card BASE + k (card
    connector), in one transaction: new keys, so no merge of the landing tables folds them."""
    rng = random.Random(5)
    with connect(owner_info(settings)) as conn:
        for k in range(1, TXNS + 1):
            if stop.is_set():
                break
            conn.execute(
                """INSERT INTO bank.customer (customer_id, first_name, last_name, email, phone,
                    birth_date, address, city, country, home_lat, home_lon, segment)
                VALUES (%(id)s, 'Cut', 'Half', 'cut' || %(id)s || '@x.org', '+49' || %(id)s,
                    date '1980-01-01', 'Cutstr. 1', 'Berlin', 'DE', 52.5, 13.4, 'retail')""",
                {"id": BASE + k},
            )
            if k % SLOW == 0:
                time.sleep(1.3)
            conn.execute(
                """INSERT INTO bank.card (card_id, account_id, customer_id, pan_enc, pan_hash,
                    pan_last4, network, expires_on, daily_limit)
                VALUES (%(id)s, %(acc)s, %(acc)s, gen_random_bytes(48),
                    encode(sha256(('cut' || %(id)s)::bytea), 'hex'), '0000', 'visa',
                    date '2030-01-31', 500)""",
                {"id": BASE + k, "acc": rng.randint(1, 50)},
            )
            conn.commit()
            done.append(k)
            time.sleep(rng.uniform(0.0, 0.05))


def _below_cut(wh: Any, slot: str) -> tuple[int, set[int], set[int]]:
    """The cut as dbt pins it (the largest version of meta.cdc_offsets' LSN,
    pin_cdc_watermark_statements) and the transactions each half shows at or below it (every
    landed version, not only the current ones)."""
    from bankde.cdc.version import POS_MASK, make_version
    from bankde.warehouse.ddl import DbNames
    from bankde.warehouse.sink import load_offset

    offset = load_offset(wh, slot)
    cut = offset.lsn if offset is not None else 0
    cap = make_version(cut, POS_MASK)
    names = DbNames(wh.settings.wh_prefix)
    customer = names.landing_table("bank", "customer")
    card = names.landing_table("bank", "card")
    sql = "SELECT {key} - {base} FROM {table} WHERE {key} > {base} AND _version <= {{cap:UInt128}}"
    left = {
        int(k)
        for (k,) in wh.query(sql.format(key="customer_id", base=BASE, table=customer), {"cap": cap})
    }
    right = {
        int(k) for (k,) in wh.query(sql.format(key="card_id", base=BASE, table=card), {"cap": cap})
    }
    return cut, left, right


def test_a_transaction_across_two_connectors_is_never_half_below_the_cut(
    kafka_cluster: Any, source_wh_settings: Settings, source_wh_session: WarehouseSession
) -> None:
    """While `cdc run --engine kafka` applies transactions that each change a customer (one
    connector) and a card (another), the versions at or below the stored cut (what a dbt run
    pins) always hold both halves of a transaction or neither; at the end all of them."""
    from bankde.cdc import api as capture
    from bankde.cdc.engines.kafka_names import engine_settings

    stack = Stack(kafka_cluster.bootstrap, kafka_cluster.connect_url)
    _seed(source_wh_settings)
    with connectors(stack, source_wh_settings) as regs:
        settings = regs.settings
        regs.wait_running()
        sink = capture.open_sink(settings, source_wh_session)
        wh = source_wh_session.warehouse(settings)
        slot = engine_settings(settings).cdc_slot
        stop, done, errors = threading.Event(), [], []

        def consume() -> None:
            try:
                capture.run(settings, stop, sink, engine="kafka", show_progress=False)
            except Exception as exc:  # the assertion below names it
                errors.append(exc)

        engine = threading.Thread(target=consume, daemon=True)
        writer = threading.Thread(target=_writer, args=(settings, stop, done), daemon=True)
        engine.start()
        writer.start()
        checks, seen_cuts, partial = 0, set(), 0
        deadline = time.monotonic() + 600
        try:
            while True:
                assert not errors, errors
                cut, left, right = _below_cut(wh, slot)
                assert left == right, (
                    f"cut {cut:X}: only one half below it: customer side {sorted(left - right)}, "
                    f"card side {sorted(right - left)}"
                )
                checks += 1
                seen_cuts.add(cut)
                if 0 < len(left) < TXNS:
                    partial += 1
                if not writer.is_alive() and len(left) == len(done) == TXNS:
                    break
                assert time.monotonic() < deadline, f"cut stuck at {cut:X}: {len(left)}/{TXNS}"
                time.sleep(0.05)
        finally:
            stop.set()
            writer.join(timeout=60)
            engine.join(timeout=120)
        assert not errors, errors
        # The check ran while the cut moved through the workload, not only before and after.
        assert partial >= 5 and len(seen_cuts) >= 5, (checks, partial, len(seen_cuts))
