"""In-memory state of the bank's entities that transactions depend on (ids, balances, closes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import psycopg

from bankde.generator import geo

NEVER = np.iinfo(np.int64).max  # closed_at of an entity that is open
KIND_ATM, KIND_POS, KIND_ONLINE = 0, 1, 2
TERMINAL_KINDS = ("atm", "pos", "online")
SEGMENTS = ("student", "retail", "affluent", "business")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a stable hash so a customer's profile follows from its id alone."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(z ^ (z >> np.uint64(31)))


def id_uniforms(ids: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) numbers derived from ids (deterministic across runs)."""
    with np.errstate(over="ignore"):
        h = _mix64(ids.astype(np.uint64) * np.uint64(1_000_003) + np.uint64(salt))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _no_ints() -> np.ndarray:
    return np.zeros(0, np.int64)


def _no_floats() -> np.ndarray:
    return np.zeros(0)


def _no_bools() -> np.ndarray:
    return np.zeros(0, bool)


class _Rows:
    """An entity table held as parallel arrays, one row per id."""

    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


# Segment effects: (activity multiplier, amount scale).
_SEGMENT_ACTIVITY = np.array([0.8, 1.0, 1.3, 1.8])
_SEGMENT_SCALE = np.array([0.5, 1.0, 2.2, 3.0])


@dataclass
class Customers(_Rows):
    ids: np.ndarray = field(default_factory=_no_ints)
    city: np.ndarray = field(default_factory=_no_ints)
    segment: np.ndarray = field(default_factory=_no_ints)
    lat: np.ndarray = field(default_factory=_no_floats)
    lon: np.ndarray = field(default_factory=_no_floats)
    closed_at: np.ndarray = field(default_factory=_no_ints)
    created_at: np.ndarray = field(default_factory=_no_ints)
    # Earliest time a close may take (µs): after creation, the row's last update and the
    # latest transaction already written on it, so no close is back-dated before them.
    floor: np.ndarray = field(default_factory=_no_ints)

    # Spending profile, derived from the id so repeated runs agree on it.
    @property
    def activity(self) -> np.ndarray:
        u = id_uniforms(self.ids, 1)
        return np.asarray(np.exp((u - 0.5) * 2.4) * _SEGMENT_ACTIVITY[self.segment])

    @property
    def amount_scale(self) -> np.ndarray:
        u = id_uniforms(self.ids, 2)
        return np.asarray(np.exp((u - 0.5) * 1.0) * _SEGMENT_SCALE[self.segment])

    @property
    def atm_pref(self) -> np.ndarray:
        return np.asarray(0.3 + 1.7 * id_uniforms(self.ids, 3))

    @property
    def online_pref(self) -> np.ndarray:
        return np.asarray(0.3 + 1.7 * id_uniforms(self.ids, 4))


@dataclass
class Accounts(_Rows):
    ids: np.ndarray = field(default_factory=_no_ints)
    cust: np.ndarray = field(default_factory=_no_ints)  # index into customers
    checking: np.ndarray = field(default_factory=_no_bools)
    balance: np.ndarray = field(default_factory=_no_ints)  # cents
    overdraft: np.ndarray = field(default_factory=_no_ints)  # cents
    closed_at: np.ndarray = field(default_factory=_no_ints)
    created_at: np.ndarray = field(default_factory=_no_ints)
    floor: np.ndarray = field(default_factory=_no_ints)


@dataclass
class Cards(_Rows):
    ids: np.ndarray = field(default_factory=_no_ints)
    acct: np.ndarray = field(default_factory=_no_ints)
    cust: np.ndarray = field(default_factory=_no_ints)
    daily_limit: np.ndarray = field(default_factory=_no_ints)  # cents
    expires_at: np.ndarray = field(default_factory=_no_ints)
    closed_at: np.ndarray = field(default_factory=_no_ints)
    created_at: np.ndarray = field(default_factory=_no_ints)
    floor: np.ndarray = field(default_factory=_no_ints)


@dataclass
class Terminals(_Rows):
    ids: np.ndarray = field(default_factory=_no_ints)
    kind: np.ndarray = field(default_factory=_no_ints)
    city: np.ndarray = field(default_factory=_no_ints)
    lat: np.ndarray = field(default_factory=_no_floats)
    lon: np.ndarray = field(default_factory=_no_floats)
    closed_at: np.ndarray = field(default_factory=_no_ints)
    created_at: np.ndarray = field(default_factory=_no_ints)
    floor: np.ndarray = field(default_factory=_no_ints)


@dataclass
class NextIds:
    """Next free id per table: max(id)+1 at load, advanced as rows are generated."""

    customer: int = 1
    account: int = 1
    card: int = 1
    terminal: int = 1
    txn: int = 1
    episode: int = 1

    def take(self, table: str, n: int) -> np.ndarray:
        start = getattr(self, table)
        setattr(self, table, start + n)
        return np.arange(start, start + n, dtype=np.int64)


@dataclass
class World:
    customers: Customers = field(default_factory=Customers)
    accounts: Accounts = field(default_factory=Accounts)
    cards: Cards = field(default_factory=Cards)
    terminals: Terminals = field(default_factory=Terminals)
    next_ids: NextIds = field(default_factory=NextIds)
    # Latest occurred_at already in the database (µs), to continue the ledger after it.
    last_txn_at: int | None = None

    def extend(self, other: World) -> None:
        """Append newly generated entities (same index spaces: other's indices are relative)."""
        c0, a0 = len(self.customers), len(self.accounts)
        for name in ("customers", "accounts", "cards", "terminals"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for f in mine.__dataclass_fields__:
                ours = getattr(mine, f)
                new = getattr(theirs, f)
                if f == "cust" and name in ("accounts", "cards"):
                    new = new + c0
                if name == "cards" and f == "acct":
                    new = new + a0
                setattr(mine, f, np.concatenate([ours, new]))


def _us(col: str) -> str:
    return f"coalesce((extract(epoch from {col}) * 1000000)::bigint, {NEVER})"


def load_world(
    conn: psycopg.Connection, last_txn_at: bool = False, activity_since: int | None = None
) -> World:
    """Read every entity's generator-relevant state (small tables; of transactions only the
    max id, plus with `last_txn_at` the latest occurred_at, a full scan: no index serves it).

    `activity_since` (µs) also reads, per account, card and terminal, its latest transaction
    (any status) at or after that time into `floor` (one filtered scan; a run passes the start
    of its span): a later run never closes an entity before activity already written on it.
    """
    w = World()
    life = f"{_us('closed_at')}, {_us('created_at')}, {_us('updated_at')}"
    rows = conn.execute(
        f"SELECT customer_id, city, segment, home_lat::float8, home_lon::float8, {life}"
        " FROM bank.customer ORDER BY customer_id"
    ).fetchall()
    if rows:
        ids, city, seg, lat, lon, closed, created, updated = zip(*rows, strict=True)
        w.customers = Customers(
            ids=np.array(ids, np.int64),
            city=np.array([geo.CITY_INDEX.get(c, 0) for c in city], np.int64),
            segment=np.array([SEGMENTS.index(s) if s in SEGMENTS else 1 for s in seg], np.int64),
            lat=np.array(lat, float),
            lon=np.array(lon, float),
            closed_at=np.array(closed, np.int64),
            created_at=np.array(created, np.int64),
            floor=np.maximum(np.array(created, np.int64), np.array(updated, np.int64)),
        )
    cust_ids = w.customers.ids
    rows = conn.execute(
        "SELECT account_id, customer_id, kind = 'checking', (balance * 100)::bigint,"
        f" (overdraft_limit * 100)::bigint, {life} FROM bank.account ORDER BY account_id"
    ).fetchall()
    if rows:
        ids, cust, chk, bal, od, closed, created, updated = zip(*rows, strict=True)
        w.accounts = Accounts(
            ids=np.array(ids, np.int64),
            cust=np.searchsorted(cust_ids, np.array(cust, np.int64)),
            checking=np.array(chk, bool),
            balance=np.array(bal, np.int64),
            overdraft=np.array(od, np.int64),
            closed_at=np.array(closed, np.int64),
            created_at=np.array(created, np.int64),
            floor=np.maximum(np.array(created, np.int64), np.array(updated, np.int64)),
        )
    rows = conn.execute(
        "SELECT card_id, account_id, customer_id, (daily_limit * 100)::bigint,"
        f" {_us('expires_on::timestamptz')}, {life} FROM bank.card ORDER BY card_id"
    ).fetchall()
    if rows:
        ids, acct, cust, lim, exp, closed, created, updated = zip(*rows, strict=True)
        w.cards = Cards(
            ids=np.array(ids, np.int64),
            acct=np.searchsorted(w.accounts.ids, np.array(acct, np.int64)),
            cust=np.searchsorted(cust_ids, np.array(cust, np.int64)),
            daily_limit=np.array(lim, np.int64),
            expires_at=np.array(exp, np.int64),
            closed_at=np.array(closed, np.int64),
            created_at=np.array(created, np.int64),
            floor=np.maximum(np.array(created, np.int64), np.array(updated, np.int64)),
        )
    rows = conn.execute(
        f"SELECT terminal_id, kind, city, lat::float8, lon::float8, {life}"
        " FROM bank.terminal ORDER BY terminal_id"
    ).fetchall()
    if rows:
        ids, kind, city, lat, lon, closed, created, updated = zip(*rows, strict=True)
        w.terminals = Terminals(
            ids=np.array(ids, np.int64),
            kind=np.array([TERMINAL_KINDS.index(k) for k in kind], np.int64),
            city=np.array([geo.CITY_INDEX.get(c, 0) for c in city], np.int64),
            lat=np.array(lat, float),
            lon=np.array(lon, float),
            closed_at=np.array(closed, np.int64),
            created_at=np.array(created, np.int64),
            floor=np.maximum(np.array(created, np.int64), np.array(updated, np.int64)),
        )
    row = conn.execute(
        "SELECT (SELECT coalesce(max(customer_id), 0) FROM bank.customer),"
        " (SELECT coalesce(max(account_id), 0) FROM bank.account),"
        " (SELECT coalesce(max(card_id), 0) FROM bank.card),"
        " (SELECT coalesce(max(terminal_id), 0) FROM bank.terminal),"
        " (SELECT coalesce(max(txn_id), 0) FROM bank.transaction),"
        " (SELECT coalesce(max(episode_id), 0) FROM truth.fraud_episode)"
    ).fetchone()
    assert row is not None
    w.next_ids = NextIds(*(int(v) + 1 for v in row))
    if activity_since is not None and w.next_ids.txn > 1:
        _raise_floors(conn, w, activity_since)
    if last_txn_at:
        got = conn.execute(
            "SELECT (extract(epoch from max(occurred_at)) * 1000000)::bigint FROM bank.transaction"
        ).fetchone()
        w.last_txn_at = None if got is None or got[0] is None else int(got[0])
    return w


def _raise_floors(conn: psycopg.Connection, w: World, since: int) -> None:
    # Declined rows count too: a close before them would turn them into "attempts after the
    # close", which only the after_card_closed scenario is meant to produce.
    rows = conn.execute(
        "SELECT account_id, card_id, terminal_id,"
        " (extract(epoch from max(occurred_at)) * 1000000)::bigint FROM bank.transaction"
        " WHERE occurred_at >= 'epoch'::timestamptz + %s * interval '1 microsecond'"
        " GROUP BY GROUPING SETS ((account_id), (card_id), (terminal_id))",
        (since,),
    ).fetchall()
    tables: tuple[Accounts | Cards | Terminals, ...] = (w.accounts, w.cards, w.terminals)
    for col, ents in enumerate(tables):
        got = [(r[col], r[3]) for r in rows if r[col] is not None]
        if not got or not len(ents.ids):
            continue
        ids, last = (np.array(x, np.int64) for x in zip(*got, strict=True))
        idx = np.minimum(np.searchsorted(ents.ids, ids), len(ents.ids) - 1)
        ok = ents.ids[idx] == ids
        np.maximum.at(ents.floor, idx[ok], last[ok])
