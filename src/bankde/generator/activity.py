"""Stage 2: legitimate transactions with hour-of-day/weekday seasonality and customer profiles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bankde.generator import geo
from bankde.generator.world import KIND_ATM, KIND_ONLINE, KIND_POS, NEVER, World, id_uniforms

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
MINUTE_US = 60_000_000
SECOND_US = 1_000_000

TXN_TYPES = ("purchase", "withdrawal", "transfer", "refund", "deposit", "fee")
TT_PURCHASE, TT_WITHDRAWAL, TT_TRANSFER, TT_REFUND, TT_DEPOSIT, TT_FEE = range(6)
CREDIT_TYPES = (TT_REFUND, TT_DEPOSIT)
DESCRIPTIONS = (
    "salary", "transfer received", "cash deposit", "rent", "utilities", "savings plan",
    "transfer to friend", "insurance", "monthly account fee", "card fee",
)  # fmt: skip

# Relative intensity per UTC hour (Germany is UTC+1/+2): quiet nights, lunch and evening peaks.
HOUR_WEIGHTS = np.array(
    [0.12, 0.07, 0.05, 0.04, 0.05, 0.12, 0.35, 0.65, 0.85, 0.95, 1.05, 1.3,
     1.2, 1.05, 1.0, 1.05, 1.25, 1.4, 1.35, 1.15, 0.9, 0.65, 0.4, 0.22]
)  # fmt: skip
# Monday .. Sunday (1970-01-01 was a Thursday).
WEEKDAY_WEIGHTS = np.array([0.95, 0.97, 1.0, 1.03, 1.18, 1.22, 0.65])

# Categories of legitimate activity and their base mix.
CAT_POS, CAT_ONLINE, CAT_ATM, CAT_REFUND, CAT_TRANSFER, CAT_DEPOSIT, CAT_FEE = range(7)
BASE_P = np.array([0.44, 0.20, 0.12, 0.02, 0.07, 0.10, 0.05])
ATM_AMOUNTS = np.array([20, 40, 50, 100, 150, 200, 250, 300, 400, 500]) * 100
ATM_P = np.array([0.08, 0.08, 0.2, 0.22, 0.1, 0.14, 0.05, 0.06, 0.04, 0.03])
FEE_AMOUNTS = np.array([150, 490, 990])
TRIP_BLACKOUT_US = 8 * HOUR_US
# About one customer in ten travels in a 30-day period, 3-12 days, to one far city.
TRIP_PERIOD_US = 30 * DAY_US
TRIP_SHARE = 0.1


@dataclass
class Txns:
    """Transactions before the ledger, as parallel arrays (indices into the World's entities)."""

    t: np.ndarray
    acct: np.ndarray
    card: np.ndarray  # -1: no card
    term: np.ndarray  # -1: no terminal
    ttype: np.ndarray
    amount: np.ndarray  # cents, > 0
    desc: np.ndarray  # -1: NULL
    scenario: np.ndarray  # -1: legitimate
    episode: np.ndarray  # episode id, -1: legitimate

    @staticmethod
    def empty() -> Txns:
        z = np.zeros(0, np.int64)
        return Txns(z, z, z, z, z, z, z, z, z)

    def __len__(self) -> int:
        return len(self.t)

    def take(self, idx: np.ndarray) -> Txns:
        return Txns(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[Txns]) -> Txns:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Txns.empty()
        return Txns(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Txns.__dataclass_fields__)
        )


def trip_table(cust_ids: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each customer's trip in one 30-day period: start, end (NEVER: stays home) and city.

    A pure function of customer id and period, so every run, whatever its window, as-of or
    seed, sees the same trips: a rerun never puts a customer at home while an earlier run had
    them abroad. A trip and the blackouts around it lie inside its period, so trips of
    neighbouring periods never meet.
    """
    salt = 1_000 + 8 * period
    goes = id_uniforms(cust_ids, salt) < TRIP_SHARE
    dur = (3 * DAY_US + id_uniforms(cust_ids, salt + 1) * 9 * DAY_US).astype(np.int64)
    room = TRIP_PERIOD_US - dur - 2 * TRIP_BLACKOUT_US
    first = period * TRIP_PERIOD_US + TRIP_BLACKOUT_US
    start = first + (id_uniforms(cust_ids, salt + 2) * room).astype(np.int64)
    city = geo.N_HOME + (id_uniforms(cust_ids, salt + 3) * len(geo.FAR_CITIES)).astype(np.int64)
    return np.where(goes, start, NEVER), np.where(goes, start + dur, NEVER), city


def _intensity(start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Hour-bin edges over [start, end) and each bin's weight (seasonality x length)."""
    first = start - start % HOUR_US
    edges = np.arange(first, end + HOUR_US, HOUR_US, dtype=np.int64)
    edges[0] = start
    edges = edges[edges <= end]
    if edges[-1] != end:
        edges = np.append(edges, end)
    lo = edges[:-1]
    hour = (lo // HOUR_US) % 24
    weekday = ((lo // DAY_US) + 3) % 7
    w = HOUR_WEIGHTS[hour] * WEEKDAY_WEIGHTS[weekday] * (edges[1:] - lo)
    return edges, w.astype(np.float64)


class Timeline:
    """Inverse CDF of the seasonal intensity over [start, end): maps [0, 1) to timestamps."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, max(end, start + 1)
        self.edges, w = _intensity(self.start, self.end)
        cdf = np.cumsum(w)
        self.cdf = np.concatenate([[0.0], cdf / cdf[-1]])

    def at(self, u: np.ndarray) -> np.ndarray:
        u = np.clip(u, 0.0, np.nextafter(1.0, 0.0))
        b = np.searchsorted(self.cdf, u, side="right") - 1
        b = np.clip(b, 0, len(self.edges) - 2)
        frac = (u - self.cdf[b]) / np.maximum(self.cdf[b + 1] - self.cdf[b], 1e-300)
        lo, hi = self.edges[b], self.edges[b + 1]
        return np.minimum(lo + (frac * (hi - lo)).astype(np.int64), hi - 1)

    def sample(
        self, rng: np.random.Generator, n: int, u0: float = 0.0, u1: float = 1.0
    ) -> np.ndarray:
        """n sorted timestamps with the seasonal density restricted to quantiles [u0, u1)."""
        u = u0 + (u1 - u0) * np.sort(rng.random(n))
        return self.at(u)


def _csr(
    keys: np.ndarray, members: np.ndarray, n_keys: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    sorted_members = members[order]
    counts = np.bincount(keys, minlength=n_keys)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return sorted_members, offsets, counts


class TerminalPicker:
    """Terminals open at a moment (created by then, not yet closed), by (city, kind), with
    popular terminals picked more often."""

    def __init__(self, world: World, at: int) -> None:
        tm = world.terminals
        n_city = len(geo.CITIES)
        open_ = np.flatnonzero((tm.closed_at > at) & (tm.created_at <= at))
        key = tm.city[open_] * 3 + tm.kind[open_]
        self.members, self.offsets, self.counts = _csr(key, open_, n_city * 3)
        far = (tm.city[open_] >= geo.N_HOME).astype(np.int64)
        self.f_members, self.f_offsets, self.f_counts = _csr(far * 3 + tm.kind[open_], open_, 6)

    def pick(self, rng: np.random.Generator, city: np.ndarray, kind: np.ndarray) -> np.ndarray:
        n = len(city)
        out = np.full(n, -1, np.int64)
        if n == 0:
            return out
        u = rng.random(n) ** 1.6  # a few favourite shops take most visits
        key = city * 3 + kind
        cnt = self.counts[key]
        ok = cnt > 0
        out[ok] = self.members[self.offsets[key[ok]] + (u[ok] * cnt[ok]).astype(np.int64)]
        if (~ok).any():
            fk = (city[~ok] >= geo.N_HOME) * 3 + kind[~ok]
            fc = self.f_counts[fk]
            has = fc > 0
            sub = np.full(len(fk), -1, np.int64)
            sub[has] = self.f_members[
                self.f_offsets[fk[has]] + (u[~ok][has] * fc[has]).astype(np.int64)
            ]
            out[~ok] = sub
        return out

    def online(self, rng: np.random.Generator, n: int) -> np.ndarray:
        # Online merchants are global: pick among all open online terminals of every city.
        pools = [
            self.f_members[self.f_offsets[k] : self.f_offsets[k] + self.f_counts[k]] for k in (2, 5)
        ]
        pool = np.concatenate(pools)
        if len(pool) == 0:
            return np.full(n, -1, np.int64)
        return pool[(rng.random(n) ** 2.0 * len(pool)).astype(np.int64)]


class CardPicker:
    """Customers' cards open at `at` and created by `created_by` (default `at`), weighted by the
    customer's activity. A run whose window lies before entities of later runs were created
    never uses them (a card is created after its account and customer)."""

    def __init__(self, world: World, at: int, created_by: int | None = None) -> None:
        cu, ac, cd = world.customers, world.accounts, world.cards
        open_card = (
            (cd.closed_at > at) & (ac.closed_at[cd.acct] > at) & (cu.closed_at[cd.cust] > at)
        )
        open_card &= cd.created_at <= (at if created_by is None else created_by)
        cards = np.flatnonzero(open_card)
        self.members, self.offsets, self.counts = _csr(cd.cust[cards], cards, len(cu))
        w = cu.activity * (self.counts > 0) * (cu.closed_at > at)
        total = w.sum()
        self.cum = np.cumsum(w) / total if total > 0 else None

    @property
    def empty(self) -> bool:
        return self.cum is None

    def customers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        assert self.cum is not None
        return np.minimum(np.searchsorted(self.cum, rng.random(n), side="right"), len(self.cum) - 1)

    def card_of(self, rng: np.random.Generator, cust: np.ndarray) -> np.ndarray:
        cnt = self.counts[cust]
        return self.members[
            self.offsets[cust] + (rng.random(len(cust)) * np.maximum(cnt, 1)).astype(np.int64)
        ]


def _cents(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(x).astype(np.int64), 1)


def legit_amounts(
    rng: np.random.Generator, cat: np.ndarray, scale: np.ndarray, deposit_base: np.ndarray
) -> np.ndarray:
    n = len(cat)
    amt = np.empty(n, np.int64)
    ln = rng.normal(0.0, 1.0, n)
    small = rng.random(n)
    m = cat == CAT_POS
    pos = 2200 * scale[m] * np.exp(0.9 * ln[m])
    amt[m] = _cents(np.where(small[m] < 0.15, 80 + small[m] / 0.15 * 370, pos))
    m = cat == CAT_ONLINE
    onl = 3500 * scale[m] * np.exp(1.0 * ln[m])
    amt[m] = _cents(np.where(small[m] < 0.06, 50 + small[m] / 0.06 * 449, onl))
    m = cat == CAT_ATM
    amt[m] = atm_amounts(rng, int(m.sum()))
    m = cat == CAT_REFUND
    amt[m] = _cents(3000 * scale[m] * np.exp(0.8 * ln[m]))
    m = cat == CAT_TRANSFER
    amt[m] = _cents(12000 * scale[m] * np.exp(0.9 * ln[m]))
    m = cat == CAT_DEPOSIT
    amt[m] = _cents(deposit_base[m] * scale[m] * np.exp(0.5 * ln[m]))
    m = cat == CAT_FEE
    amt[m] = FEE_AMOUNTS[rng.integers(0, len(FEE_AMOUNTS), int(m.sum()))]
    return np.minimum(amt, 5_000_000_00)


def atm_amounts(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.asarray(ATM_AMOUNTS[rng.choice(len(ATM_AMOUNTS), n, p=ATM_P)], np.int64)


# Expected debit per row and unit scale for each of POS/ONLINE/ATM, used to size deposits so
# that a customer's balance drifts slightly upwards whatever their mix.
_MEAN_DEBIT = np.array([28.4, 54.5, 170.0]) * 100
_MEAN_OTHER_DEBIT = 0.07 * 180 * 100 + 0.05 * 4 * 100 - 0.02 * 41 * 100


def _category_cum(world: World) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer cumulative category probabilities and the deposit size keeping them solvent."""
    cu = world.customers
    p = np.tile(BASE_P, (len(cu), 1))
    p[:, CAT_ONLINE] *= cu.online_pref
    p[:, CAT_ATM] *= cu.atm_pref
    card_share = BASE_P[:3].sum()
    p[:, :3] *= card_share / p[:, :3].sum(axis=1, keepdims=True)
    debit = (p[:, :3] * _MEAN_DEBIT).sum(axis=1) + _MEAN_OTHER_DEBIT
    deposit_base = 1.08 * debit / BASE_P[CAT_DEPOSIT] / 1.133
    return np.cumsum(p, axis=1), deposit_base


class Activity:
    """Generates legitimate transactions for consecutive windows of one run."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.refresh()

    def refresh(self) -> None:
        """Recompute per-customer tables after entities were added."""
        self.cat_cum, self.deposit_base = _category_cum(self.world)
        self._trips: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def trips(self, cust: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trip start, end and city of each row's customer in the period of its time."""
        period = t // TRIP_PERIOD_US
        periods = np.unique(period).tolist()
        for k in periods:
            if k not in self._trips:
                self._trips[k] = trip_table(self.world.customers.ids, k)
        if len(periods) == 1:  # the usual batch: no per-period split needed
            s_k, e_k, c_k = self._trips[periods[0]]
            return s_k[cust], e_k[cust], c_k[cust]
        start, end, city = (np.empty(len(t), np.int64) for _ in range(3))
        for k in periods:
            rows = np.flatnonzero(period == k)
            s_k, e_k, c_k = self._trips[k]
            start[rows], end[rows], city[rows] = s_k[cust[rows]], e_k[cust[rows]], c_k[cust[rows]]
        return start, end, city

    def generate(self, rng: np.random.Generator, t: np.ndarray) -> Txns:
        """One legitimate transaction per timestamp in sorted `t` (same length out)."""
        n = len(t)
        w = self.world
        if n == 0 or len(t) == 0:
            return Txns.empty()
        ws, we = int(t[0]), int(t[-1]) + 1
        cards = CardPicker(w, ws)
        if cards.empty:
            return Txns.empty()
        terms = TerminalPicker(w, ws)
        cust = cards.customers(rng, n)
        card = cards.card_of(rng, cust)
        # Remap rows whose card, account or customer closes during the window (few rounds).
        for _ in range(3):
            gone = (w.cards.closed_at[card] <= t) | (w.accounts.closed_at[w.cards.acct[card]] <= t)
            gone |= w.customers.closed_at[cust] <= t
            if not gone.any():
                break
            idx = np.flatnonzero(gone)
            cust[idx] = cards.customers(rng, len(idx))
            card[idx] = cards.card_of(rng, cust[idx])
        cat = (rng.random(n)[:, None] > self.cat_cum[cust]).sum(axis=1)
        cat = np.minimum(cat, CAT_FEE)
        # Travel: card-present use happens in the trip city; around the flights only online.
        ts, te, trip_city = self.trips(cust, t)
        on_trip = (t >= ts) & (t < te)
        blackout = ((t >= ts - TRIP_BLACKOUT_US) & (t < ts)) | (
            (t >= te) & (t < te + TRIP_BLACKOUT_US)
        )
        present = (cat == CAT_POS) | (cat == CAT_ATM) | (cat == CAT_REFUND)
        cat = np.where(blackout & present & (cat != CAT_REFUND), CAT_ONLINE, cat)
        city = np.where(on_trip, trip_city, w.customers.city[cust])
        scale = w.customers.amount_scale[cust]
        amount = legit_amounts(rng, cat, scale, self.deposit_base[cust])

        term = np.full(n, -1, np.int64)
        m = (cat == CAT_POS) | ((cat == CAT_REFUND) & ~blackout)
        term[m] = terms.pick(rng, city[m], np.full(int(m.sum()), KIND_POS))
        m = cat == CAT_ATM
        term[m] = terms.pick(rng, city[m], np.full(int(m.sum()), KIND_ATM))
        m = (cat == CAT_ONLINE) | ((cat == CAT_REFUND) & blackout)
        term[m] = terms.online(rng, int(m.sum()))
        carded = cat <= CAT_REFUND
        # No terminal of that kind at all: the row becomes an online purchase or is dropped.
        lost = carded & (term < 0)
        if lost.any():
            term[lost] = terms.online(rng, int(lost.sum()))
            cat[lost & (cat != CAT_REFUND)] = CAT_ONLINE
        ttype = np.array([TT_PURCHASE, TT_PURCHASE, TT_WITHDRAWAL, TT_REFUND, TT_TRANSFER,
                          TT_DEPOSIT, TT_FEE])[cat]  # fmt: skip
        desc = np.full(n, -1, np.int64)
        m = cat == CAT_DEPOSIT
        desc[m] = rng.choice(3, int(m.sum()), p=[0.6, 0.3, 0.1])
        m = cat == CAT_TRANSFER
        desc[m] = 3 + rng.choice(5, int(m.sum()), p=[0.2, 0.25, 0.15, 0.3, 0.1])
        m = cat == CAT_FEE
        desc[m] = 8 + rng.integers(0, 2, int(m.sum()))
        base = Txns(
            t=t.copy(),
            acct=w.cards.acct[card],
            card=np.where(carded & (term >= 0), card, -1),
            term=term,
            ttype=ttype,
            amount=amount,
            desc=desc,
            scenario=np.full(n, -1, np.int64),
            episode=np.full(n, -1, np.int64),
        )
        drop = carded & (term < 0)
        extras = self._habits(rng, base, cat, we)
        return _fit(rng, base, drop, extras, n)

    def _habits(self, rng: np.random.Generator, base: Txns, cat: np.ndarray, we: int) -> Txns:
        """Legitimate patterns that resemble fraud: ATM bursts, limit retries, closed-card tries."""
        w = self.world
        parts = []
        # ATM bursts: a second (sometimes third) withdrawal at the same ATM within minutes.
        atm = np.flatnonzero((cat == CAT_ATM) & (base.card >= 0))
        src = atm[rng.random(len(atm)) < 0.06]
        third = src[rng.random(len(src)) < 0.15]
        for rows, lo, hi in ((src, 40, 300), (third, 320, 420)):
            e = base.take(rows)
            e.t = e.t + rng.integers(lo * SECOND_US, hi * SECOND_US, len(rows))
            e.amount = atm_amounts(rng, len(rows))
            parts.append(e)
        # A purchase above the card limit is declined and retried lower at the same merchant.
        buy = np.flatnonzero(((cat == CAT_POS) | (cat == CAT_ONLINE)) & (base.card >= 0))
        src = buy[rng.random(len(buy)) < 0.003]
        if len(src):
            limit = w.cards.daily_limit[base.card[src]]
            base.amount[src] = _cents(limit * rng.uniform(1.05, 1.8, len(src)))
            e = base.take(src)
            e.t = e.t + rng.integers(30 * SECOND_US, 240 * SECOND_US, len(src))
            e.amount = _cents(limit * rng.uniform(0.3, 0.9, len(src)))
            parts.append(e)
        # A customer now and then tries a card that was closed earlier (declined, card_closed).
        t0 = int(base.t[0])
        closed = np.flatnonzero(w.cards.closed_at < t0)
        k = int(rng.poisson(0.002 * len(base))) if len(closed) else 0
        if k:
            rows = rng.integers(0, len(base), k)
            e = base.take(rows)
            e.card = closed[rng.integers(0, len(closed), k)]
            e.acct = w.cards.acct[e.card]
            e.ttype = np.full(k, TT_PURCHASE)
            e.term = np.where(
                e.term >= 0, e.term, base.term[base.term >= 0][0] if (base.term >= 0).any() else -1
            )
            # Not at a shop abroad (the row's terminal came from someone else's trip): the
            # holder is at home, and card-present use far away is the account-takeover signature.
            ok = e.term >= 0
            tm, at = w.terminals, np.maximum(e.term, 0)
            if len(tm):
                ok &= (tm.kind[at] == KIND_ONLINE) | (tm.city[at] < geo.N_HOME)
            e = e.take(np.flatnonzero(ok))
            e.desc = np.full(len(e), -1)
            parts.append(e)
        ex = Txns.concat(parts)
        ex.t = np.minimum(ex.t, we - 1)
        return ex


def _fit(rng: np.random.Generator, base: Txns, drop: np.ndarray, extras: Txns, n: int) -> Txns:
    """Keep exactly n rows: extras replace randomly chosen plain rows."""
    keep = ~drop
    surplus = int(keep.sum()) + len(extras) - n
    if surplus > 0:
        candidates = np.flatnonzero(keep & (base.desc >= -1))
        candidates = (
            candidates[base.card[candidates] >= 0] if len(candidates) > surplus else candidates
        )
        gone = rng.choice(candidates, size=min(surplus, len(candidates)), replace=False)
        keep[gone] = False
    out = Txns.concat([base.take(np.flatnonzero(keep)), extras])
    if len(out) > n:
        out = out.take(np.sort(rng.choice(len(out), n, replace=False)))
    return out
