"""Stage 3: logical closes, and the authorisation + ledger rules every transaction obeys."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bankde.generator.activity import CREDIT_TYPES, TT_PURCHASE, TT_WITHDRAWAL, Txns
from bankde.generator.config import FillConfig
from bankde.generator.world import NEVER, World

# Index = code - 1 in Settled.reason (0 means approved). Names match the schema's CHECK list.
DECLINE_REASONS = (
    "insufficient_funds", "card_closed", "card_blocked", "card_expired", "account_closed",
    "account_frozen", "terminal_closed", "limit_exceeded", "incorrect_pin", "suspected_fraud",
)  # fmt: skip
R_FUNDS, R_CARD_CLOSED, R_CARD_EXPIRED, R_ACCOUNT_CLOSED, R_TERMINAL_CLOSED, R_LIMIT = (
    1,
    2,
    4,
    5,
    7,
    8,
)
TABLES = ("customer", "account", "card", "terminal")


@dataclass
class Closes:
    """Planned logical closes: entity index and closed_at (µs) per table, sorted by time."""

    idx: dict[str, np.ndarray] = field(default_factory=dict)
    at: dict[str, np.ndarray] = field(default_factory=dict)
    pos: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, idx: np.ndarray, at: np.ndarray) -> None:
        i = np.concatenate([self.idx.get(table, np.zeros(0, np.int64)), idx.astype(np.int64)])
        a = np.concatenate([self.at.get(table, np.zeros(0, np.int64)), at.astype(np.int64)])
        order = np.argsort(a, kind="stable")
        self.idx[table], self.at[table] = i[order], a[order]
        self.pos.setdefault(table, 0)


def close_floors(world: World) -> dict[str, np.ndarray]:
    """Per table, the time each entity's close must come after: its own floor and, because a
    close cascades, those of everything it takes along (an account's cards, a customer's
    accounts and cards)."""
    cu, ac, cd = world.customers, world.accounts, world.cards
    card = cd.floor
    acct = ac.floor.copy()
    np.maximum.at(acct, cd.acct, card)
    cust = cu.floor.copy()
    np.maximum.at(cust, ac.cust, acct)
    return {"customer": cust, "account": acct, "card": card, "terminal": world.terminals.floor}


def plan_closes(
    rng: np.random.Generator,
    world: World,
    config: FillConfig,
    start: int,
    end: int,
    per_hour: bool = False,
) -> Closes:
    """Which open entities close during [start, end) and when (uniform in time).

    A closing customer closes their accounts and cards at the same moment; a closing account
    closes its cards. Rates are shares of the open entities (per hour when `per_hour`). A close
    comes after the entity's floor (creation, last update, transactions already written by
    earlier runs), so a rerun over a time span that holds data never back-dates a close before
    it; an entity whose floor is past `end` stays open in this run.
    """
    closes = Closes()
    scale = (end - start) / 3_600_000_000 if per_hour else 1.0
    rates = {
        "customer": config.customer_close_rate,
        "account": config.account_close_rate,
        "card": config.card_close_rate,
        "terminal": config.terminal_close_rate,
    }
    floors = close_floors(world)
    when: dict[str, np.ndarray] = {}
    for table in TABLES:
        ents = getattr(world, table + "s")
        open_ = np.flatnonzero(ents.closed_at >= NEVER)
        p = min(1.0, rates[table] * scale)
        chosen = open_[rng.random(len(open_)) < p]
        lo = np.maximum(start, floors[table][chosen] + 1)
        u = rng.random(len(chosen))
        fits = lo < end
        chosen, lo, u = chosen[fits], lo[fits], u[fits]
        at = np.full(len(ents), NEVER, np.int64)
        at[chosen] = lo + (u * (end - lo)).astype(np.int64)
        when[table] = at
    # Cascade: accounts of closing customers, cards of closing accounts.
    acc = world.accounts
    when["account"] = np.minimum(when["account"], when["customer"][acc.cust])
    when["card"] = np.minimum(when["card"], when["account"][world.cards.acct])
    for table in TABLES:
        idx = np.flatnonzero(when[table] < NEVER)
        closes.add(table, idx, when[table][idx])
    return closes


def due_closes(
    closes: Closes, world: World, until: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Apply the planned closes before `until` to the world; returns them per table."""
    out = {}
    for table in TABLES:
        if table not in closes.idx:
            continue
        at = closes.at[table]
        lo = closes.pos[table]
        hi = int(np.searchsorted(at, until, side="left"))
        closes.pos[table] = hi
        idx, ts = closes.idx[table][lo:hi], at[lo:hi]
        ents = getattr(world, table + "s")
        # An entity may already be closed earlier (e.g. a card closed by a fraud episode).
        keep = ents.closed_at[idx] > ts
        idx, ts = idx[keep], ts[keep]
        ents.closed_at[idx] = ts
        if len(idx):
            out[table] = (idx, ts)
    return out


@dataclass
class Settled:
    status_declined: np.ndarray  # bool
    reason: np.ndarray  # 0 approved, else DECLINE_REASONS[code - 1]
    balance_after: np.ndarray  # cents
    touched: np.ndarray  # account indices whose balance changed
    touched_at: np.ndarray  # last approved occurred_at per touched account


def settle(world: World, tx: Txns) -> Settled:
    """Authorise time-sorted transactions against the world's state and post them to balances.

    Rules, first match wins: card closed at that moment -> card_closed; card expired ->
    card_expired; account closed -> account_closed; terminal closed -> terminal_closed;
    purchase/withdrawal above the card's daily_limit -> limit_exceeded; a debit that would take
    the balance below -overdraft_limit -> insufficient_funds. Approved rows move the balance;
    balance_after is the account's balance after the row (unchanged when declined).
    """
    n = len(tx)
    cd, ac, tm = world.cards, world.accounts, world.terminals
    has_card = tx.card >= 0
    card = np.maximum(tx.card, 0)
    reason = np.zeros(n, np.int64)
    debit = ~np.isin(tx.ttype, CREDIT_TYPES)
    has_term = tx.term >= 0
    term_closed = np.zeros(n, bool)
    if len(tm):
        term_closed = has_term & (tm.closed_at[np.maximum(tx.term, 0)] <= tx.t)
    rules = [
        (has_card & debit & np.isin(tx.ttype, (TT_PURCHASE, TT_WITHDRAWAL)) & (tx.amount > cd.daily_limit[card]), R_LIMIT),
        (term_closed, R_TERMINAL_CLOSED),
        (ac.closed_at[tx.acct] <= tx.t, R_ACCOUNT_CLOSED),
        (has_card & (cd.expires_at[card] <= tx.t), R_CARD_EXPIRED),
        (has_card & (cd.closed_at[card] <= tx.t), R_CARD_CLOSED),
    ]  # fmt: skip
    for mask, code in rules:
        reason[mask] = code
    delta = np.where(reason == 0, np.where(debit, -tx.amount, tx.amount), 0)

    order = np.argsort(tx.acct, kind="stable")  # rows are time-sorted: stays in time order
    a = tx.acct[order]
    d = delta[order]
    starts = (
        np.flatnonzero(np.concatenate([[True], a[1:] != a[:-1]])) if n else np.zeros(0, np.int64)
    )
    sizes = np.diff(np.append(starts, n))
    cs = np.cumsum(d)
    base = np.repeat(cs[starts] - d[starts] - ac.balance[a[starts]], sizes)
    run = cs - base
    floor = -ac.overdraft[a]
    bad = (run < floor) & (d < 0)
    if bad.any():
        # Few accounts reach their floor: replay just those sequentially.
        bad_groups = np.unique(np.searchsorted(starts, np.flatnonzero(bad), side="right") - 1)
        r = reason[order]
        for g in bad_groups.tolist():
            lo, hi = int(starts[g]), int(starts[g]) + int(sizes[g])
            bal = int(ac.balance[a[lo]])
            fl = int(floor[lo])
            ds = d[lo:hi].tolist()
            out = []
            for i, x in enumerate(ds):
                if x < 0 and bal + x < fl:
                    r[lo + i] = R_FUNDS
                    d[lo + i] = 0
                else:
                    bal += x
                out.append(bal)
            run[lo:hi] = out
        reason[order] = r
    balance_after = np.empty(n, np.int64)
    balance_after[order] = run
    # Final balances and when they last changed.
    last = starts + sizes - 1
    touched = a[last] if n else np.zeros(0, np.int64)
    ac.balance[touched] = run[last]
    moved = d != 0
    t_sorted = tx.t[order]
    last_moved = np.full(len(starts), -1, np.int64)
    if moved.any():
        grp = np.repeat(np.arange(len(starts)), sizes)
        np.maximum.at(last_moved, grp[moved], t_sorted[moved])
    keep = last_moved >= 0
    return Settled(reason != 0, reason, balance_after, touched[keep], last_moved[keep])
