"""Stage 4: labelled fraud scenarios, each with parameters and the signature a rule can detect."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from bankde.generator import geo
from bankde.generator.activity import (
    MINUTE_US,
    SECOND_US,
    TT_PURCHASE,
    TT_WITHDRAWAL,
    CardPicker,
    TerminalPicker,
    Timeline,
    Txns,
    atm_amounts,
)
from bankde.generator.world import KIND_ATM, KIND_ONLINE, KIND_POS, World


@dataclass
class Episodes:
    """Rows of truth.fraud_episode for one window (ids assigned from the world's counter)."""

    ids: list[int] = field(default_factory=list)
    scenario: list[str] = field(default_factory=list)
    customer: list[int | None] = field(default_factory=list)
    card: list[int | None] = field(default_factory=list)
    terminal: list[int | None] = field(default_factory=list)
    started_at: list[int] = field(default_factory=list)
    ended_at: list[int] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, other: Episodes) -> None:
        for f in self.__dataclass_fields__:
            getattr(self, f).extend(getattr(other, f))


@dataclass
class Context:
    """What a scenario may use in one window: the world, pickers, the legit rows, the timeline."""

    world: World
    timeline: Timeline
    legit: Txns
    ws: int
    we: int
    # The window is the quantile slice [u0, u1) of the timeline.
    u0: float = 0.0
    u1: float = 1.0
    closes: list[tuple[int, int]] = field(default_factory=list)  # (card index, closed_at)

    def pickers(self) -> tuple[CardPicker, TerminalPicker]:
        # Cards open at the window's end: a victim card never closes under a running episode.
        return CardPicker(self.world, self.we, self.ws), TerminalPicker(self.world, self.ws)

    def starts(self, rng: np.random.Generator, k: int, span: int) -> np.ndarray:
        """Episode start times with the usual daily rhythm, mixed with some uniform time."""
        u = rng.random(k)
        seasonal = self.timeline.at(self.u0 + (self.u1 - self.u0) * u)
        flat = self.ws + (u * (self.we - self.ws)).astype(np.int64)
        t = np.where(rng.random(k) < 0.7, seasonal, flat)
        latest = max(self.ws, self.we - span)
        return np.clip(t, self.ws, latest)


def episode_offsets(
    rng: np.random.Generator, sizes: np.ndarray, lo: int, hi: int, max_span: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row -> episode index, and each row's offset from its episode start (first row 0).

    Gaps are uniform in [lo, hi) and squeezed so that no episode lasts longer than max_span.
    """
    ep = np.repeat(np.arange(len(sizes)), sizes)
    first = np.cumsum(sizes) - sizes
    gaps = rng.integers(lo, hi, len(ep))
    gaps[first] = 0
    cs = np.cumsum(gaps)
    off = cs - np.repeat(cs[first], sizes)
    span = off[first + sizes - 1]
    squeeze = np.minimum(1.0, max_span / np.maximum(span, 1))
    return ep, (off * squeeze[ep]).astype(np.int64)


def _between(rng: np.random.Generator, lo: int, hi: int) -> int:
    """One whole number drawn uniformly from lo..hi, both included."""
    return int(rng.integers(lo, hi + 1))


class Scenario:
    """A fraud pattern. `size` draws the rows of one episode; `generate` makes the episodes."""

    name: ClassVar[str]

    def size(self, rng: np.random.Generator) -> int:
        raise NotImplementedError

    def generate(
        self, rng: np.random.Generator, ctx: Context, sizes: np.ndarray
    ) -> tuple[Txns, Episodes]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


def _rows(
    ctx: Context, code: int, card: np.ndarray, t: np.ndarray, term: np.ndarray, ttype: np.ndarray,
    amount: np.ndarray, episode: np.ndarray,
) -> Txns:  # fmt: skip
    n = len(t)
    return Txns(
        t=t.astype(np.int64),
        acct=ctx.world.cards.acct[card],
        card=card.astype(np.int64),
        term=term.astype(np.int64),
        ttype=ttype.astype(np.int64),
        amount=np.maximum(amount.astype(np.int64), 1),
        desc=np.full(n, -1, np.int64),
        scenario=np.full(n, code, np.int64),
        episode=episode.astype(np.int64),
    )


def _episodes(
    ctx: Context, name: str, ids: np.ndarray, card: np.ndarray, t: np.ndarray, ep: np.ndarray,
    base: dict[str, Any], extra: list[dict[str, Any]] | None = None, terminal: np.ndarray | None = None,
) -> Episodes:  # fmt: skip
    w = ctx.world
    k = len(ids)
    first = np.full(k, np.iinfo(np.int64).max)
    last = np.full(k, np.iinfo(np.int64).min)
    np.minimum.at(first, ep, t)
    np.maximum.at(last, ep, t)
    out = Episodes()
    for i in range(k):
        if first[i] > last[i]:
            # Every row of this episode was dropped (no terminal of the kind in its city among
            # few terminals): it never happened, so it is no episode (and has no time span).
            continue
        out.ids.append(int(ids[i]))
        out.scenario.append(name)
        out.customer.append(int(w.customers.ids[w.cards.cust[card[i]]]))
        out.card.append(int(w.cards.ids[card[i]]))
        out.terminal.append(None if terminal is None else int(w.terminals.ids[terminal[i]]))
        out.started_at.append(int(first[i]))
        out.ended_at.append(int(last[i]))
        out.params.append({**base, **(extra[i] if extra else {})})
    return out


@dataclass(frozen=True)
class RapidWithdrawals(Scenario):
    """A cloned card is cashed out at ATMs in quick succession.

    Episode: `min_count`..`max_count` withdrawals on one card, 20 s .. 2.5 min apart, all within
    `window_minutes`, at ATMs of the card holder's home city, ATM-typical amounts (some get
    declined when the account runs dry).
    Signature: >= `min_count` withdrawals (any status) on one card within `window_minutes`.
    Legitimate customers also make bursts, but of at most 3 withdrawals.
    """

    name: ClassVar[str] = "rapid_withdrawals"
    min_count: int = 4
    max_count: int = 8
    window_minutes: int = 10

    def size(self, rng: np.random.Generator) -> int:
        return _between(rng, self.min_count, self.max_count)

    def generate(
        self, rng: np.random.Generator, ctx: Context, sizes: np.ndarray
    ) -> tuple[Txns, Episodes]:
        cards, terms = ctx.pickers()
        k = len(sizes)
        if cards.empty or k == 0:
            return Txns.empty(), Episodes()
        card = cards.card_of(rng, cards.customers(rng, k))
        span = self.window_minutes * MINUTE_US - SECOND_US
        start = ctx.starts(rng, k, span)
        ep, off = episode_offsets(rng, sizes, 20 * SECOND_US, 150 * SECOND_US, span)
        city = ctx.world.customers.city[ctx.world.cards.cust[card]]
        term = terms.pick(rng, city[ep], np.full(len(ep), KIND_ATM))
        ids = ctx.world.next_ids.take("episode", k)
        amount = atm_amounts(rng, len(ep))
        txns = _rows(ctx, 0, card[ep], start[ep] + off, term, np.full(len(ep), TT_WITHDRAWAL),
                     amount, ids[ep])  # fmt: skip
        return txns, _episodes(ctx, self.name, ids, card, txns.t, ep, self.params())


@dataclass(frozen=True)
class AfterCardClosed(Scenario):
    """A card reported stolen is closed by the bank; the thief keeps trying it.

    Episode: the card is closed (an UPDATE: status='closed', closed_at) and `delay` later
    (`min_delay_minutes`..`max_delay_minutes`) come `min_attempts`..`max_attempts` purchases within
    `window_minutes`, online or at shops; all are declined with decline_reason 'card_closed'.
    Signature: >= `min_attempts` transactions on one card after its closed_at within
    `window_minutes`. Legitimate holders try a closed card at most once or twice.
    """

    name: ClassVar[str] = "after_card_closed"
    min_attempts: int = 3
    max_attempts: int = 6
    window_minutes: int = 60
    min_delay_minutes: int = 10
    max_delay_minutes: int = 240

    def size(self, rng: np.random.Generator) -> int:
        return _between(rng, self.min_attempts, self.max_attempts)

    def generate(
        self, rng: np.random.Generator, ctx: Context, sizes: np.ndarray
    ) -> tuple[Txns, Episodes]:
        cards, terms = ctx.pickers()
        k = len(sizes)
        if cards.empty or k == 0:
            return Txns.empty(), Episodes()
        w = ctx.world
        card = np.unique(cards.card_of(rng, cards.customers(rng, k)))
        k = len(card)
        sizes = sizes[:k]
        span = self.window_minutes * MINUTE_US - SECOND_US
        closed_at = ctx.starts(rng, k, self.max_delay_minutes * MINUTE_US + span)
        delay = rng.integers(
            self.min_delay_minutes * MINUTE_US, self.max_delay_minutes * MINUTE_US, k
        )
        # Never close before what earlier runs wrote on the card (its floor); a card whose floor
        # leaves no room in this window is spared.
        closed_at = np.maximum(closed_at, w.cards.floor[card] + 1)
        fits = closed_at <= max(ctx.ws, ctx.we - self.max_delay_minutes * MINUTE_US - span)
        card, closed_at, delay, sizes = card[fits], closed_at[fits], delay[fits], sizes[fits]
        k = len(card)
        w.cards.closed_at[card] = closed_at
        ctx.closes.extend(zip(card.tolist(), closed_at.tolist(), strict=True))
        ep, off = episode_offsets(rng, sizes, MINUTE_US, 15 * MINUTE_US, span)
        online = rng.random(len(ep)) < 0.6
        # Shops in the bank's own country: a stolen card is used where it was stolen (far-away
        # card-present use is the account-takeover signature).
        city = rng.integers(0, geo.N_HOME, len(ep))
        term = np.where(
            online, terms.online(rng, len(ep)), terms.pick(rng, city, np.full(len(ep), KIND_POS))
        )
        amount = np.round(8000 * np.exp(0.9 * rng.normal(0, 1, len(ep))))
        ids = w.next_ids.take("episode", k)
        t = closed_at[ep] + delay[ep] + off
        ok = term >= 0
        ep_ok = ep[ok]
        txns = _rows(ctx, 1, card[ep_ok], t[ok], term[ok], np.full(len(ep_ok), TT_PURCHASE),
                     amount[ok], ids[ep_ok])  # fmt: skip
        extra = [{"card_closed_at_us": int(c)} for c in closed_at]
        return txns, _episodes(ctx, self.name, ids, card, txns.t, ep_ok, self.params(), extra)


@dataclass(frozen=True)
class AmountProbing(Scenario):
    """A fraudster probes how much a stolen card will take, lowering the amount after each decline.

    Episode at one merchant (online or a shop) on one card: `min_declines`..`max_declines`
    attempts above the card's daily_limit (declined 'limit_exceeded'), each `ratio_low`..
    `ratio_high` times the previous, then 1..`max_after` lower attempts (approved, or declined for
    insufficient funds), 20 s .. 2.5 min apart, all within `window_minutes`.
    Signature: >= `min_declines` declined attempts (limit_exceeded / insufficient_funds) on one
    card at one terminal within `window_minutes`, amounts strictly decreasing, the first above the
    daily_limit. Legitimate customers retry a declined purchase at most once.
    """

    name: ClassVar[str] = "amount_probing"
    min_declines: int = 3
    max_declines: int = 5
    max_after: int = 2
    window_minutes: int = 15
    ratio_low: float = 0.55
    ratio_high: float = 0.8

    def size(self, rng: np.random.Generator) -> int:
        return _between(rng, self.min_declines, self.max_declines) + _between(
            rng, 1, self.max_after
        )

    def generate(
        self, rng: np.random.Generator, ctx: Context, sizes: np.ndarray
    ) -> tuple[Txns, Episodes]:
        cards, terms = ctx.pickers()
        k = len(sizes)
        if cards.empty or k == 0:
            return Txns.empty(), Episodes()
        w = ctx.world
        card = cards.card_of(rng, cards.customers(rng, k))
        after = np.minimum(rng.integers(1, self.max_after + 1, k), sizes - self.min_declines)
        after = np.maximum(after, 1)
        declines = sizes - after
        ratio = rng.uniform(self.ratio_low, self.ratio_high, k)
        last_over = w.cards.daily_limit[card] * rng.uniform(1.02, 1.2, k)
        span = self.window_minutes * MINUTE_US - SECOND_US
        start = ctx.starts(rng, k, span)
        ep, off = episode_offsets(rng, sizes, 20 * SECOND_US, 150 * SECOND_US, span)
        first = np.cumsum(sizes) - sizes
        j = np.arange(len(ep)) - first[ep]
        amount = np.round(last_over[ep] * ratio[ep] ** (j - (declines[ep] - 1)))
        online = rng.random(k) < 0.7
        city = w.customers.city[w.cards.cust[card]]
        term_ep = np.where(
            online, terms.online(rng, k), terms.pick(rng, city, np.full(k, KIND_POS))
        )
        ids = w.next_ids.take("episode", k)
        txns = _rows(ctx, 2, card[ep], start[ep] + off, term_ep[ep], np.full(len(ep), TT_PURCHASE),
                     amount, ids[ep])  # fmt: skip
        extra = [
            {"declines": int(d), "ratio": round(float(r), 3)}
            for d, r in zip(declines, ratio, strict=True)
        ]
        return txns, _episodes(ctx, self.name, ids, card, txns.t, ep, self.params(), extra, term_ep)


@dataclass(frozen=True)
class CardTesting(Scenario):
    """Stolen card numbers are tested with tiny online purchases at many different merchants.

    Episode: `min_count`..`max_count` purchases of `min_cents`..`max_cents` on one card, each at a
    different online merchant, 30 s .. 4 min apart, within `window_minutes`.
    Signature: >= `min_count` purchases below `max_cents`+1 cents at >= `min_count` distinct
    online terminals on one card within `window_minutes`. Legitimate small purchases are mostly
    in shops; small online ones are rare and never this dense.
    """

    name: ClassVar[str] = "card_testing"
    min_count: int = 5
    max_count: int = 10
    window_minutes: int = 30
    min_cents: int = 50
    max_cents: int = 499

    def size(self, rng: np.random.Generator) -> int:
        return _between(rng, self.min_count, self.max_count)

    def generate(
        self, rng: np.random.Generator, ctx: Context, sizes: np.ndarray
    ) -> tuple[Txns, Episodes]:
        cards, _ = ctx.pickers()
        k = len(sizes)
        tm = ctx.world.terminals
        online = np.flatnonzero(
            (tm.kind == KIND_ONLINE) & (tm.closed_at > ctx.we) & (tm.created_at <= ctx.ws)
        )
        if cards.empty or k == 0 or len(online) < self.min_count:
            return Txns.empty(), Episodes()
        sizes = np.minimum(sizes, len(online))
        card = cards.card_of(rng, cards.customers(rng, k))
        span = self.window_minutes * MINUTE_US - SECOND_US
        start = ctx.starts(rng, k, span)
        ep, off = episode_offsets(rng, sizes, 30 * SECOND_US, 240 * SECOND_US, span)
        term = np.concatenate([rng.choice(online, int(s), replace=False) for s in sizes])
        amount = rng.integers(self.min_cents, self.max_cents + 1, len(ep))
        ids = ctx.world.next_ids.take("episode", k)
        txns = _rows(ctx, 3, card[ep], start[ep] + off, term, np.full(len(ep), TT_PURCHASE),
                     amount, ids[ep])  # fmt: skip
        return txns, _episodes(ctx, self.name, ids, card, txns.t, ep, self.params())


@dataclass(frozen=True)
class AccountTakeover(Scenario):
    """Someone else uses the customer's card far away while the customer still shops at home.

    Episode: anchored on a legitimate card-present transaction of the customer at home (t0), the
    fraudster makes `min_count`..`max_count` card-present transactions (shops, some ATM cash) in a
    far city (>= 1,500 km), the first `min_delay_minutes`..`max_delay_minutes` after t0, all within
    `span_minutes` of t0. Amounts are ordinary shop/ATM amounts.
    Signature: a card-present transaction > 1,000 km from the customer's home with another
    card-present transaction of the same card < 300 km from home within 3 hours ("impossible
    travel"). Legitimate travellers use the same far cities but make no card-present transaction
    at home within 8 hours of leaving or returning.
    """

    name: ClassVar[str] = "account_takeover"
    min_count: int = 3
    max_count: int = 6
    min_delay_minutes: int = 20
    max_delay_minutes: int = 60
    span_minutes: int = 150

    def size(self, rng: np.random.Generator) -> int:
        return _between(rng, self.min_count, self.max_count)

    def generate(
        self, rng: np.random.Generator, ctx: Context, sizes: np.ndarray
    ) -> tuple[Txns, Episodes]:
        _, terms = ctx.pickers()
        w, lg = ctx.world, ctx.legit
        if len(sizes) == 0 or len(lg) == 0:
            return Txns.empty(), Episodes()
        tm_kind = np.where(lg.term >= 0, w.terminals.kind[np.maximum(lg.term, 0)], KIND_ONLINE)
        tm_city = w.terminals.city[np.maximum(lg.term, 0)]
        home = w.customers.city[w.cards.cust[np.maximum(lg.card, 0)]]
        open_card = (
            w.cards.closed_at[np.maximum(lg.card, 0)] > ctx.we + self.span_minutes * MINUTE_US
        )
        anchor = (lg.card >= 0) & (tm_kind != KIND_ONLINE) & (tm_city == home) & open_card
        early = anchor & (lg.t < ctx.we - self.span_minutes * MINUTE_US)
        cand = np.flatnonzero(early) if early.sum() >= len(sizes) else np.flatnonzero(anchor)
        if len(cand) == 0:
            return Txns.empty(), Episodes()
        _, first_of_card = np.unique(lg.card[cand], return_index=True)
        cand = cand[first_of_card]
        k = min(len(sizes), len(cand))
        pick = np.sort(rng.choice(cand, k, replace=False))
        sizes = sizes[:k]
        card, t0 = lg.card[pick], lg.t[pick]
        far = geo.N_HOME + rng.integers(0, len(geo.FAR_CITIES), k)
        delay = rng.integers(
            self.min_delay_minutes * MINUTE_US, self.max_delay_minutes * MINUTE_US, k
        )
        rest = (self.span_minutes - self.max_delay_minutes) * MINUTE_US
        ep, off = episode_offsets(rng, sizes, 3 * MINUTE_US, 25 * MINUTE_US, rest)
        atm = rng.random(len(ep)) < 0.25
        term = terms.pick(rng, far[ep], np.where(atm, KIND_ATM, KIND_POS))
        amount = np.where(
            atm,
            atm_amounts(rng, len(ep)),
            np.round(15000 * np.exp(0.7 * rng.normal(0, 1, len(ep)))),
        )
        ok = term >= 0
        ids = w.next_ids.take("episode", k)
        ep_ok = ep[ok]
        txns = _rows(ctx, 4, card[ep_ok], (t0 + delay)[ep_ok] + off[ok], term[ok],
                     np.where(atm, TT_WITHDRAWAL, TT_PURCHASE)[ok], amount[ok], ids[ep_ok])  # fmt: skip
        extra = [
            {"city": geo.CITIES[c].name, "anchor_at_us": int(a)}
            for c, a in zip(far, t0, strict=True)
        ]
        return txns, _episodes(ctx, self.name, ids, card, txns.t, ep_ok, self.params(), extra)


SCENARIOS: tuple[Scenario, ...] = (
    RapidWithdrawals(),
    AfterCardClosed(),
    AmountProbing(),
    CardTesting(),
    AccountTakeover(),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
# Scenarios that need the window's legitimate rows run after them; those that close cards first.
PRE_LEGIT = (1,)


def allocate(
    rng: np.random.Generator, target_rows: int, weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """Episode sizes per scenario so that their rows add up to about target_rows."""
    w = np.ones(len(SCENARIOS)) if weights is None else weights
    p = w / w.sum()
    sizes: list[list[int]] = [[] for _ in SCENARIOS]
    total = 0
    while target_rows - total > 2:
        s = int(rng.choice(len(SCENARIOS), p=p))
        size = SCENARIOS[s].size(rng)
        if total + size > target_rows + size // 2:
            break
        sizes[s].append(size)
        total += size
    return [np.array(x, np.int64) for x in sizes]
