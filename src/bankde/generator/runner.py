"""The filler's stages wired together: `fill` for a run, `run_live` for a steady stream."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bankde.generator import copybin
from bankde.generator.activity import (
    DAY_US,
    DESCRIPTIONS,
    HOUR_US,
    TXN_TYPES,
    Activity,
    Timeline,
    Txns,
)
from bankde.generator.config import FillConfig, resolve, validate
from bankde.generator.entities import new_entities
from bankde.generator.lifecycle import (
    DECLINE_REASONS,
    Closes,
    due_closes,
    plan_closes,
    settle,
)
from bankde.generator.scenarios import (
    PRE_LEGIT,
    SCENARIO_NAMES,
    SCENARIOS,
    Context,
    Episodes,
    allocate,
)
from bankde.generator.world import World, load_world
from bankde.generator.writer import Batch, fk_triggers_skippable, lock_and_check, write_batch
from bankde.settings import Settings
from bankde.source.connection import connect, source_info
from bankde.source.pan import PanKey, load_key

_TT = [s.encode() for s in TXN_TYPES]
_STATUS = [b"approved", b"declined"]
_REASONS = [s.encode() for s in DECLINE_REASONS]
_DESC = [s.encode() for s in DESCRIPTIONS]
_SCEN = [s.encode() for s in SCENARIO_NAMES]
_CURRENCY = [b"EUR"]

Progress = Callable[[int, int], None]  # (transactions committed so far, total planned)


@dataclass
class FillSummary:
    """What a run wrote. Same shape from `fill` and `run_live`; `as_dict` is the --json output."""

    seed: int
    as_of: datetime
    rows: dict[str, int] = field(default_factory=dict)  # inserted rows per table
    closed: dict[str, int] = field(default_factory=dict)  # logical closes (UPDATEs) per table
    fraud_txns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCENARIO_NAMES, 0))
    fraud_episodes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCENARIO_NAMES, 0))
    declined: dict[str, int] = field(default_factory=dict)
    transactions: int = 0
    batches: int = 0
    seconds: float = 0.0
    # Bulk batches ran without foreign-key triggers (see writer.write_batch).
    fk_triggers_skipped: bool = False
    # Transactions asked for; more than `transactions` when the world ran out of open cards.
    requested: int = 0

    @property
    def fraud_share(self) -> float:
        return sum(self.fraud_txns.values()) / self.transactions if self.transactions else 0.0

    @property
    def txns_per_second(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    def add(self, key: str, table: str, n: int) -> None:
        d: dict[str, int] = getattr(self, key)
        d[table] = d.get(table, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "as_of": self.as_of.isoformat(),
            "transactions": self.transactions,
            "batches": self.batches,
            "fk_triggers_skipped": self.fk_triggers_skipped,
            "requested": self.requested,
            "seconds": round(self.seconds, 3),
            "txns_per_second": round(self.txns_per_second, 1),
            "rows": dict(sorted(self.rows.items())),
            "closed": dict(sorted(self.closed.items())),
            "declined": dict(sorted(self.declined.items())),
            "fraud_share": round(self.fraud_share, 5),
            "fraud_txns": self.fraud_txns,
            "fraud_episodes": self.fraud_episodes,
        }


def to_us(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)


class Generator:
    """Turns windows of time into prepared batches. Owns the world state and the RNG."""

    def __init__(self, world: World, config: FillConfig, rng: np.random.Generator) -> None:
        self.world = world
        self.config = config
        self.rng = rng
        self.activity = Activity(world)
        self.closes = Closes()
        self.carry = Txns.empty()
        self.total_rows = 0
        self.fraud_rows = 0

    def add_entities(
        self, n_customers: int, n_terminals: int, created_before: int, as_of: int
    ) -> Batch:
        """Stage 1: new dimension rows, appended to the world; returned as a batch to write."""
        new, rows = new_entities(
            self.rng, self.world.next_ids, n_customers, n_terminals, created_before, as_of
        )
        self.world.extend(new)
        self.activity.refresh()
        batch = Batch(entities=rows)
        batch.max_ids = {
            "customer": self.world.next_ids.customer - 1,
            "account": self.world.next_ids.account - 1,
            "card": self.world.next_ids.card - 1,
            "terminal": self.world.next_ids.terminal - 1,
        }
        return batch

    def window(self, timeline: Timeline, u0: float, u1: float, n: int, final: bool) -> Batch:
        """Stages 2-4 for the slice [u0, u1) of a timeline holding n transactions."""
        rng, w = self.rng, self.world
        ws = int(timeline.at(np.array([u0]))[0]) if u0 > 0 else timeline.start
        we = int(timeline.at(np.array([u1]))[0]) if u1 < 1 else timeline.end
        closes = due_closes(self.closes, w, we)
        # Fraud quota: keep the running share on target, whatever the episode sizes.
        target = round(self.config.fraud_share * (self.total_rows + n)) - self.fraud_rows
        sizes = allocate(rng, max(0, min(target, n)))
        fraud_n = int(sum(int(s.sum()) for s in sizes))
        ctx = Context(w, timeline, Txns.empty(), ws, we, u0, u1)
        parts: list[Txns] = []
        episodes = Episodes()
        for s in PRE_LEGIT:
            tx, ep = SCENARIOS[s].generate(rng, ctx, sizes[s])
            parts.append(tx)
            episodes.extend(ep)
        t = timeline.sample(rng, max(0, n - fraud_n), u0, u1)
        legit = self.activity.generate(rng, t)
        ctx.legit = legit
        for s in range(len(SCENARIOS)):
            if s in PRE_LEGIT:
                continue
            tx, ep = SCENARIOS[s].generate(rng, ctx, sizes[s])
            parts.append(tx)
            episodes.extend(ep)
        fraud = Txns.concat(parts)
        # Scenarios may find fewer victims than planned: top up with legitimate rows so that
        # every window holds exactly n transactions.
        short = n - len(legit) - len(fraud)
        if short > 0:
            legit = Txns.concat(
                [legit, self.activity.generate(rng, timeline.sample(rng, short, u0, u1))]
            )
        self.total_rows += len(legit) + len(fraud)
        self.fraud_rows += len(fraud)
        rows = Txns.concat([self.carry, legit, fraud])
        if not final:
            later = rows.t >= we
            self.carry = rows.take(np.flatnonzero(later))
            rows = rows.take(np.flatnonzero(~later))
        else:
            self.carry = Txns.empty()
        rows = rows.take(np.argsort(rows.t, kind="stable"))
        if ctx.closes:
            ci = np.array([c for c, _ in ctx.closes], np.int64)
            ca = np.array([a for _, a in ctx.closes], np.int64)
            old = closes.get("card")
            if old is not None:
                ci, ca = np.concatenate([old[0], ci]), np.concatenate([old[1], ca])
            closes["card"] = (ci, ca)
        return self._batch(rows, closes, episodes)

    def _batch(
        self, rows: Txns, closes: dict[str, tuple[np.ndarray, np.ndarray]], episodes: Episodes
    ) -> Batch:
        w, rng = self.world, self.rng
        st = settle(w, rows)
        n = len(rows)
        txn_ids = w.next_ids.take("txn", n)
        refs = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
        refs[:, 6] = (refs[:, 6] & 0x0F) | 0x40  # RFC 4122 version 4, variant 1
        refs[:, 8] = (refs[:, 8] & 0x3F) | 0x80
        # The COPY stream stays in txn_id order (encode_blocks keeps it within each layout
        # block): primary-key inserts then walk the index left to right. Account order, which
        # helped while foreign-key triggers and per-account indexes ran, costs ~20% more
        # server CPU without them (docs/filler.md).
        card_null = rows.card < 0
        term_null = rows.term < 0
        cols: list[copybin.Column] = [
            copybin.Int8(txn_ids),
            copybin.Uuid(refs),
            copybin.Int8(w.accounts.ids[rows.acct]),
            copybin.Int8(np.where(card_null, 0, w.cards.ids[np.maximum(rows.card, 0)]), card_null),
            copybin.Int8(
                np.where(term_null, 0, w.terminals.ids[np.maximum(rows.term, 0)]), term_null
            ),
            copybin.Label(rows.ttype, _TT),
            copybin.Label(st.status_declined.astype(np.int64), _STATUS),
            copybin.Label(st.reason - 1, _REASONS),
            copybin.Cents(rows.amount),
            copybin.Label(np.zeros(n, np.int64), _CURRENCY),
            copybin.Cents(st.balance_after),
            copybin.Label(rows.desc, _DESC),
            copybin.Timestamp(rows.t),
            copybin.Timestamp(rows.t),
            copybin.Timestamp(rows.t),
        ]
        fraud = np.flatnonzero(rows.scenario >= 0)
        batch = Batch(
            closes={t: (getattr(w, t + "s").ids[i], a) for t, (i, a) in closes.items()},
            txn_blocks=copybin.encode_blocks(cols) if n else [],
            label_blocks=copybin.encode_blocks(
                [
                    copybin.Int8(txn_ids[fraud]),
                    copybin.Label(rows.scenario[fraud], _SCEN),
                    copybin.Int8(rows.episode[fraud]),
                ]
            )
            if len(fraud)
            else [],
            episodes=episodes,
            balances=(w.accounts.ids[st.touched], w.accounts.balance[st.touched], st.touched_at),
            max_ids={"transaction": w.next_ids.txn - 1},
            n_txns=n,
            n_labels=len(fraud),
            stats=_stats(rows, st.reason, closes),
        )
        return batch


def _stats(
    rows: Txns, reason: np.ndarray, closes: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    scen = np.bincount(rows.scenario[rows.scenario >= 0], minlength=len(SCENARIO_NAMES))
    dec = np.bincount(reason, minlength=len(DECLINE_REASONS) + 1)
    return {
        "fraud": {SCENARIO_NAMES[i]: int(scen[i]) for i in range(len(SCENARIO_NAMES))},
        "declined": {DECLINE_REASONS[i - 1]: int(dec[i]) for i in range(1, len(dec)) if dec[i]},
        "closed": {t: len(i) for t, (i, _) in closes.items()},
    }


def _account(summary: FillSummary, batch: Batch) -> None:
    summary.batches += 1
    summary.transactions += batch.n_txns
    if batch.entities is not None:
        for k, v in batch.entities.counts().items():
            summary.add("rows", k, v)
    if batch.n_txns:
        summary.add("rows", "bank.transaction", batch.n_txns)
    if batch.n_labels:
        summary.add("rows", "truth.fraud_label", batch.n_labels)
    if len(batch.episodes):
        summary.add("rows", "truth.fraud_episode", len(batch.episodes))
        for s in batch.episodes.scenario:
            summary.fraud_episodes[s] += 1
    stats = batch.stats
    if stats:
        for k, v in stats["fraud"].items():
            summary.fraud_txns[k] += v
        for k, v in stats["declined"].items():
            summary.add("declined", k, v)
        for k, v in stats["closed"].items():
            summary.add("closed", f"bank.{k}", v)


def _rng(config: FillConfig, world: World) -> np.random.Generator:
    # Mixing in where the database stands makes repeated runs with one seed add new data.
    assert config.seed is not None
    ids = world.next_ids
    return np.random.default_rng([config.seed, ids.txn, ids.customer, ids.terminal, ids.episode])


def plan_windows(config: FillConfig, as_of: int) -> list[tuple[Timeline, float, float, int, bool]]:
    """Backfill days, then the current window, cut into batches of at most batch_size."""
    spans: list[tuple[Timeline, int]] = []
    window = int(config.window_hours * HOUR_US)
    if config.backfill_days and config.backfill_txns_per_day:
        start = as_of - window - config.backfill_days * DAY_US
        spans.append(
            (Timeline(start, as_of - window), config.backfill_days * config.backfill_txns_per_day)
        )
    if config.n_new_txns:
        spans.append((Timeline(as_of - window, as_of), config.n_new_txns))
    out = []
    for si, (tl, n) in enumerate(spans):
        cuts = [0]
        if si == 0 and n > config.batch_size:
            # A small first batch puts the server to work while the next one is generated,
            # instead of leaving it idle for a whole batch's generation.
            cuts.append(max(1, config.batch_size // 10))
        rest = n - cuts[-1]
        k = max(1, -(-rest // config.batch_size))
        cuts += [cuts[-1] + (j + 1) * rest // k for j in range(k)]
        for j, (lo, hi) in enumerate(itertools.pairwise(cuts)):
            final = si == len(spans) - 1 and j == len(cuts) - 2
            out.append((tl, lo / n, hi / n, hi - lo, final))
    return out


def fill(settings: Settings, config: FillConfig, progress: Progress | None = None) -> FillSummary:
    """Run the filler once: entities, transactions (+ backfill), closes, fraud. Batches commit
    one by one; an interruption loses at most the batch in flight and a rerun continues."""
    config = resolve(validate(config))
    assert config.as_of is not None and config.seed is not None
    info = source_info(settings)
    pan_key = load_key(settings)  # a bad key stops here, before anything is written
    started = time.perf_counter()
    summary = FillSummary(seed=config.seed, as_of=config.as_of)
    with connect(info) as conn:
        lock_and_check(conn)
        summary.fk_triggers_skipped = fk_triggers_skippable(conn)
        as_of = to_us(config.as_of)
        windows = plan_windows(config, as_of)
        span_start = windows[0][0].at(np.array([windows[0][1]]))[0] if windows else as_of
        span_start = int(span_start)
        # Floors from what earlier runs wrote inside this run's span: its closes come after them.
        world = load_world(conn, activity_since=span_start)
        conn.commit()
        rng = _rng(config, world)
        gen = Generator(world, config, rng)
        first = gen.add_entities(config.customers, config.terminals, span_start, as_of)
        gen.closes = plan_closes(rng, world, config, span_start, as_of)
        total = config.total_txns
        summary.requested = total
        _pipeline(conn, gen, first, windows, summary, progress, total, pan_key)
    summary.seconds = time.perf_counter() - started
    return summary


_DONE = object()


def _pipeline(
    conn: Any, gen: Generator, first: Batch, windows: list[tuple[Timeline, float, float, int, bool]],
    summary: FillSummary, progress: Progress | None, total: int, pan_key: PanKey,
) -> None:  # fmt: skip
    """Generate batch k+1 while the database ingests batch k (a writer thread, queue of 2)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                batch, durable = item
                write_batch(conn, batch, pan_key, summary.fk_triggers_skipped, durable)
                _account(summary, batch)
                if progress:
                    progress(summary.transactions, total)
        except BaseException as exc:
            failure.append(exc)
            # Drain so the producer never blocks on a dead consumer.
            while q.get() is not _DONE:
                pass

    th = threading.Thread(target=writer, name="bankde-fill-writer", daemon=True)
    th.start()
    try:
        # Only the last batch waits for its WAL flush, which makes every earlier one durable
        # too: the summary never counts a row that a server crash could still take back.
        q.put((first, not windows))
        for i, (tl, u0, u1, n, final) in enumerate(windows):
            if failure:
                break
            q.put((gen.window(tl, u0, u1, n, final), i == len(windows) - 1))
    finally:
        q.put(_DONE)
        th.join()
    if failure:
        raise failure[0]


def run_live(
    settings: Settings,
    config: FillConfig,
    rate: float,
    stop: threading.Event,
    on_batch: Callable[[FillSummary], None] | None = None,
    tick_seconds: float = 0.2,
) -> FillSummary:
    """Produce about `rate` transactions per second until `stop` is set, committing each tick
    (a few transactions, closes and now and then a fraud episode) as its own small transaction.
    Returns between transactions: nothing is half-written when it stops."""
    config = resolve(validate(config))
    assert config.seed is not None
    info = source_info(settings)
    pan_key = load_key(settings)
    summary = FillSummary(seed=config.seed, as_of=datetime.now(UTC))
    started = time.perf_counter()
    with connect(info) as conn:
        lock_and_check(conn)
        world = load_world(conn, last_txn_at=True)
        conn.commit()
        rng = _rng(config, world)
        now = to_us(datetime.now(UTC))
        gen = Generator(world, config, rng)
        # A stream needs someone to transact: an empty database first gets the configured entities.
        if len(world.customers) == 0:
            batch = gen.add_entities(config.customers, config.terminals, now, now)
            write_batch(conn, batch, pan_key)
            _account(summary, batch)
        last = max(now, (world.last_txn_at or 0) + 1)
        owed = 0.0
        t_prev = time.perf_counter()
        while not stop.is_set():
            stop.wait(tick_seconds)
            t_now = time.perf_counter()
            owed += rate * (t_now - t_prev)
            t_prev = t_now
            n = int(owed)
            owed -= n
            now = max(to_us(datetime.now(UTC)), last + 1)
            gen.closes = plan_closes(rng, world, config, last, now, per_hour=True)
            batch = gen.window(Timeline(last, now), 0.0, 1.0, n, final=False)
            last = now
            if batch.n_txns or batch.closes or len(batch.episodes):
                write_batch(conn, batch, pan_key)
                _account(summary, batch)
                if on_batch:
                    on_batch(summary)
    summary.seconds = time.perf_counter() - started
    return summary
