"""Filler units without a database: config validation, seasonality, ledger rules, encoder."""

from __future__ import annotations

import numpy as np
import pytest

from bankde.errors import ConfigError
from bankde.generator import copybin
from bankde.generator.activity import (
    HOUR_US,
    TRIP_BLACKOUT_US,
    TRIP_PERIOD_US,
    TT_DEPOSIT,
    TT_PURCHASE,
    Timeline,
    Txns,
    trip_table,
)
from bankde.generator.config import FillConfig, load_fill_config
from bankde.generator.lifecycle import R_CARD_CLOSED, R_FUNDS, R_LIMIT, plan_closes, settle
from bankde.generator.scenarios import SCENARIOS, Context, _episodes, allocate, episode_offsets
from bankde.generator.world import NEVER, Accounts, Cards, Customers, Terminals, World


def test_env_names_and_flag_precedence():
    env = {"N_NEW_TXNS": "123", "FRAUD_SHARE": "0.1", "BACKFILL_DAYS": "2", "BANKDE_SEED": "9"}
    cfg = load_fill_config({"n_new_txns": 5}, env)
    assert (cfg.n_new_txns, cfg.fraud_share, cfg.backfill_days, cfg.seed) == (5, 0.1, 2, 9)
    assert cfg.total_txns == 5 + 2 * FillConfig.backfill_txns_per_day


@pytest.mark.parametrize(
    ("env", "flags", "needle"),
    [
        ({"FRAUD_SHARE": "1.5"}, {}, "FRAUD_SHARE=1.5: must be a number in [0, 1]"),
        ({"FRAUD_SHARE": "-0.1"}, {}, "FRAUD_SHARE=-0.1"),
        ({"N_NEW_TXNS": "abc"}, {}, "N_NEW_TXNS=abc: must be an integer >= 0"),
        ({"BACKFILL_DAYS": "-1"}, {}, "BACKFILL_DAYS=-1"),
        ({"BACKFILL_TXNS_PER_DAY": "1e3x"}, {}, "BACKFILL_TXNS_PER_DAY"),
        ({}, {"customers": -3}, "--customers=-3"),
        ({"BANKDE_AS_OF": "yesterday"}, {}, "BANKDE_AS_OF=yesterday"),
    ],
)
def test_bad_values_name_the_variable(env, flags, needle):
    with pytest.raises(ConfigError) as exc:
        load_fill_config(flags, env)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_timeline_has_daily_rhythm_and_stays_in_window():
    start = 1_700_000_000_000_000 - 1_700_000_000_000_000 % (24 * HOUR_US)
    tl = Timeline(start, start + 7 * 24 * HOUR_US)
    t = tl.sample(np.random.default_rng(1), 200_000)
    assert (np.diff(t) >= 0).all() and t.min() >= tl.start and t.max() < tl.end
    hours = np.bincount((t // HOUR_US) % 24, minlength=24)
    assert hours[17] > 8 * hours[3]
    # Quantile slices partition the same density: batches never overlap in time.
    a, b = tl.at(np.array([0.5 - 1e-12])), tl.at(np.array([0.5]))
    assert a[0] <= b[0]


def _world() -> World:
    w = World()
    w.accounts = Accounts(
        ids=np.array([10, 11]), cust=np.array([0, 0]), checking=np.array([True, True]),
        balance=np.array([10_000, 0]), overdraft=np.array([5_000, 0]), closed_at=np.full(2, NEVER),
    )  # fmt: skip
    w.cards = Cards(
        ids=np.array([20, 21]), acct=np.array([0, 1]), cust=np.array([0, 0]),
        daily_limit=np.array([100_000, 100_000]), expires_at=np.full(2, NEVER),
        closed_at=np.array([NEVER, 600]),
    )  # fmt: skip
    return w


def test_ledger_never_breaks_the_floor_and_declines_with_reasons():
    w = _world()
    n = 8
    tx = Txns(
        t=np.arange(n) * 100,
        acct=np.array([0, 0, 0, 0, 0, 1, 1, 1]),
        card=np.array([0, 0, 0, 0, 0, 1, 1, 1]),
        term=np.full(n, -1),
        ttype=np.array([TT_PURCHASE] * 4 + [TT_DEPOSIT, TT_PURCHASE, TT_DEPOSIT, TT_PURCHASE]),
        amount=np.array([12_000, 4_000, 200_000, 1_000, 7_000, 1, 5, 1]),
        desc=np.full(n, -1), scenario=np.full(n, -1), episode=np.full(n, -1),
    )  # fmt: skip
    st = settle(w, tx)
    # 100.00 - 120.00 = -20.00 (overdraft 50) ok; -40.00 - 40.00 < -50 -> insufficient funds.
    assert st.reason.tolist()[:5] == [0, R_FUNDS, R_LIMIT, 0, 0]
    assert st.balance_after.tolist()[:5] == [-2_000, -2_000, -2_000, -3_000, 4_000]
    # Card 21 closes at t=600: rows at 600 and 700 are declined card_closed (even the deposit
    # row is on that closed card), the first row fails for funds.
    assert st.reason.tolist()[5:] == [R_FUNDS, R_CARD_CLOSED, R_CARD_CLOSED]
    assert w.accounts.balance.tolist() == [4_000, 0]


def test_numeric_words_encode_cents_exactly():
    words = copybin._numeric_words(np.array([0, 1, -12_345, 123_456_789_012]))
    assert words[1].tolist() == [4, 2, 0, 2, 0, 0, 0, 100]
    assert words[2].tolist() == [4, 2, 0x4000, 2, 0, 0, 123, 4500]
    assert words[3].tolist() == [4, 2, 0, 2, 12, 3456, 7890, 1200]
    with pytest.raises(ValueError):
        copybin._numeric_words(np.array([10**15]))


def test_blocks_group_rows_by_layout():
    n = 5
    cols = [
        copybin.Int8(np.arange(n), np.array([False, True, False, True, False])),
        copybin.Label(np.array([0, 1, -1, 0, 1]), [b"ab", b"cde"]),
    ]
    blocks = copybin.encode_blocks(cols)
    assert sum(len(b) for b in blocks) == n
    payload = b"".join(bytes(m) for m in copybin.iter_payload(blocks))
    assert payload.startswith(copybin.SIGNATURE) and payload.endswith(copybin.TRAILER)


def test_episode_offsets_respect_the_window():
    rng = np.random.default_rng(3)
    sizes = np.array([4, 8, 6])
    ep, off = episode_offsets(rng, sizes, 10, 1_000, 600)
    assert ep.tolist() == [0] * 4 + [1] * 8 + [2] * 6
    for e in range(3):
        o = off[ep == e]
        assert o[0] == 0 and (np.diff(o) >= 0).all() and o[-1] <= 600


def test_allocation_hits_the_target_and_uses_every_scenario():
    sizes = allocate(np.random.default_rng(5), 5_000)
    total = sum(int(s.sum()) for s in sizes)
    assert abs(total - 5_000) <= 10
    assert all(len(s) > 0 for s in sizes) and len(sizes) == len(SCENARIOS)


def test_trips_are_a_function_of_customer_and_period():
    ids = np.arange(1, 20_001, dtype=np.int64)
    start, end, city = trip_table(ids, 660)
    again = trip_table(ids, 660)
    assert all((a == b).all() for a, b in zip((start, end, city), again, strict=True))
    goes = start < NEVER
    assert 0.08 < goes.mean() < 0.12
    # Trip and blackouts inside the period: trips of neighbouring periods never meet.
    lo, hi = 660 * TRIP_PERIOD_US, 661 * TRIP_PERIOD_US
    assert (start[goes] - TRIP_BLACKOUT_US >= lo).all() and (
        end[goes] + TRIP_BLACKOUT_US <= hi
    ).all()
    days = (end[goes] - start[goes]) / (24 * HOUR_US)
    assert days.min() >= 3 and days.max() <= 12
    assert (trip_table(ids, 661)[0] != start).any()


def test_closes_come_after_each_entity_floor_and_cascade():
    n = 2_000
    ids = np.arange(1, n + 1, dtype=np.int64)
    zeros, never = np.zeros(n, np.int64), np.full(n, NEVER)
    w = World()
    w.customers = Customers(
        ids, zeros, zeros, zeros * 1.0, zeros * 1.0, never.copy(), zeros, zeros.copy()
    )
    w.accounts = Accounts(ids, np.arange(n), np.ones(n, bool), zeros, zeros, never.copy(), zeros,
                          zeros.copy())  # fmt: skip
    # Card i was used at time 10 * i by an earlier run: its close, and that of its account and
    # customer, must come after that.
    w.cards = Cards(ids, np.arange(n), np.arange(n), zeros, never, never.copy(), zeros, ids * 10)
    w.terminals = Terminals(ids, zeros, zeros, zeros * 1.0, zeros * 1.0, never.copy(), zeros,
                            ids * 10)  # fmt: skip
    cfg = FillConfig(card_close_rate=0.5, account_close_rate=0.3, customer_close_rate=0.2,
                     terminal_close_rate=0.5)  # fmt: skip
    closes = plan_closes(np.random.default_rng(1), w, cfg, 5_000, 15_000)
    for table in ("customer", "account", "card", "terminal"):
        idx, at = closes.idx[table], closes.at[table]
        assert len(idx) > 50
        assert (at > (idx + 1) * 10).all() and (at >= 5_000).all() and (at < 15_000).all()
    # Entities whose floor is past the span stay open.
    assert closes.idx["card"].max() < 1_500


def test_an_episode_whose_rows_were_all_dropped_is_left_out():
    """A scenario drops the rows it finds no terminal for; an episode left without rows has no
    time span (it once went to the writer with int64 sentinels and stopped the fill)."""
    n = 3
    ids = np.arange(1, n + 1, dtype=np.int64)
    zeros, never = np.zeros(n, np.int64), np.full(n, NEVER)
    w = World()
    w.customers = Customers(
        ids, zeros, zeros, zeros * 1.0, zeros * 1.0, never.copy(), zeros, zeros.copy()
    )
    w.cards = Cards(ids, np.arange(n), np.arange(n), zeros, never, never.copy(), zeros, zeros)
    ctx = Context.__new__(Context)
    ctx.world = w
    # Episodes 10, 11, 12 on cards 0, 1, 2; rows only for the first and the last.
    out = _episodes(ctx, "s", np.array([10, 11, 12]), np.array([0, 1, 2]),
                    np.array([5, 7, 9]), np.array([0, 0, 2]), {})  # fmt: skip
    assert out.ids == [10, 12]
    assert out.card == [1, 3]
    assert (out.started_at, out.ended_at) == ([5, 9], [7, 9])
