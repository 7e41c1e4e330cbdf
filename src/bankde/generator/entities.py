"""Stage 1: new customers, accounts, cards and terminals (Faker only for these small tables)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from faker import Faker

from bankde.generator import geo
from bankde.generator.world import (
    KIND_ATM,
    KIND_ONLINE,
    KIND_POS,
    NEVER,
    SEGMENTS,
    TERMINAL_KINDS,
    Accounts,
    Cards,
    Customers,
    NextIds,
    Terminals,
    World,
)

DAY_US = 86_400_000_000
SEGMENT_P = np.array([0.15, 0.60, 0.17, 0.08])
BANK_CODE = "10050000"
POS_MCC = (
    ("5411", "Supermarkt", 0.30),
    ("5812", "Restaurant", 0.14),
    ("5814", "Imbiss", 0.12),
    ("5541", "Tankstelle", 0.10),
    ("5912", "Apotheke", 0.07),
    ("5651", "Mode", 0.08),
    ("5311", "Kaufhaus", 0.06),
    ("5732", "Elektronik", 0.05),
    ("5942", "Buchhandlung", 0.04),
    ("4121", "Taxi", 0.04),
)
ONLINE_MCC = (
    ("5999", 0.30),
    ("5732", 0.15),
    ("4899", 0.15),
    ("5735", 0.10),
    ("5691", 0.15),
    ("4722", 0.08),
    ("7995", 0.07),
)
MAIL_DOMAINS = (
    "gmail.com",
    "web.de",
    "gmx.de",
    "t-online.de",
    "outlook.de",
    "posteo.de",
    "icloud.com",
)


@dataclass
class EntityRows:
    """Rows to COPY for the new entities, column order as in `COLUMNS`."""

    customer: list[tuple[Any, ...]] = field(default_factory=list)
    account: list[tuple[Any, ...]] = field(default_factory=list)
    card: list[tuple[Any, ...]] = field(default_factory=list)
    terminal: list[tuple[Any, ...]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            f"bank.{k}": len(getattr(self, k)) for k in ("customer", "account", "card", "terminal")
        }


COLUMNS = {
    "customer": (
        "customer_id", "first_name", "last_name", "email", "phone", "birth_date", "address", "city",
        "country", "home_lat", "home_lon", "segment", "status", "created_at", "updated_at",
    ),
    "account": (
        "account_id", "customer_id", "iban", "kind", "currency", "balance", "overdraft_limit",
        "status", "created_at", "updated_at",
    ),
    "card": (
        "card_id", "account_id", "customer_id", "pan", "pan_last4", "network", "expires_on",
        "daily_limit", "status", "created_at", "updated_at",
    ),
    "terminal": (
        "terminal_id", "kind", "merchant_name", "mcc", "city", "country", "lat", "lon", "status",
        "created_at", "updated_at",
    ),
}  # fmt: skip


def _ts(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def _money(cents: int) -> Decimal:
    return Decimal(int(cents)).scaleb(-2)


def _ascii(s: str) -> str:
    s = s.replace("ß", "ss").replace("ä", "ae").replace("ö", "oe").replace("ü", "ue")
    s = s.replace("Ä", "Ae").replace("Ö", "Oe").replace("Ü", "Ue")
    norm = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return "".join(ch for ch in norm.lower() if ch.isalnum())


def _iban(account_id: int) -> str:
    number = (account_id * 7_919 + 1_234_567) % 10**10  # bijective: 7919 is coprime to 10^10
    bban = f"{BANK_CODE}{number:010d}"
    check = 98 - int(bban + "131400") % 97  # "DE00" moved to the end, letters as numbers
    return f"DE{check:02d}{bban}"


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


_BINS = {"visa": "455951", "mastercard": "535522", "amex": "378282"}


def _pan(card_id: int, network: str) -> str:
    width = 8 if network == "amex" else 9
    body = _BINS[network] + f"{(card_id * 7_919 + 48_611) % 10**width:0{width}d}"
    return body + _luhn_digit(body)


def _faker(rng: np.random.Generator) -> Faker:
    fake = Faker("de_DE")
    fake.seed_instance(int(rng.integers(0, 2**31)))
    return fake


def new_entities(
    rng: np.random.Generator,
    ids: NextIds,
    n_customers: int,
    n_terminals: int,
    created_before: int,
    as_of: int,
) -> tuple[World, EntityRows]:
    """Customers (with accounts and cards) and terminals, all created before `created_before` µs.

    Each customer gets a home city, a segment, a checking account with a card (some a second card,
    some a savings account). Names, streets, companies and domains come from a seeded Faker.
    """
    fake = _faker(rng)
    rows = EntityRows()
    world = World(next_ids=ids)
    pool = max(1, min(400, n_customers + n_terminals))
    first_names = [fake.first_name() for _ in range(pool)]
    last_names = [fake.last_name() for _ in range(pool)]
    streets = [fake.street_name() for _ in range(pool)]
    companies = [fake.company() for _ in range(pool)]
    domains = [fake.domain_name() for _ in range(pool)]

    # --- customers
    n = n_customers
    cid = ids.take("customer", n)
    city = rng.choice(geo.N_HOME, size=n, p=geo.HOME_WEIGHTS)
    seg = rng.choice(len(SEGMENTS), size=n, p=SEGMENT_P)
    lat = geo.CITY_LAT[city] + rng.normal(0, 0.04, n)
    lon = geo.CITY_LON[city] + rng.normal(0, 0.06, n)
    c_created = created_before - rng.integers(30 * DAY_US, 1500 * DAY_US, n, endpoint=True)
    age_days = np.where(
        seg == 0, rng.integers(18 * 365, 27 * 365, n), rng.integers(21 * 365, 82 * 365, n)
    )
    fn_i = rng.integers(0, pool, n)
    ln_i = rng.integers(0, pool, n)
    st_i = rng.integers(0, pool, n)
    house = rng.integers(1, 180, n)
    plz = rng.integers(10_000, 99_999, n)
    mail_dom = rng.integers(0, len(MAIL_DOMAINS), n)
    mail_num = rng.integers(0, 100, n)
    mail_style = rng.integers(0, 3, n)
    phone_pre = rng.integers(150, 180, n)
    phone_num = rng.integers(1_000_000, 99_999_999, n)
    today = _ts(as_of).date()
    for i in range(n):
        first, last = first_names[fn_i[i]], last_names[ln_i[i]]
        local = {0: f"{_ascii(first)}.{_ascii(last)}", 1: f"{_ascii(first)[:1]}{_ascii(last)}"}.get(
            int(mail_style[i]), f"{_ascii(last)}{int(mail_num[i]):02d}"
        )
        created = _ts(c_created[i])
        rows.customer.append(
            (
                int(cid[i]), first, last, f"{local}{int(cid[i]) % 97}@{MAIL_DOMAINS[mail_dom[i]]}",
                f"+49 {int(phone_pre[i])} {int(phone_num[i])}", today - timedelta(days=int(age_days[i])),
                f"{streets[st_i[i]]} {int(house[i])}, {int(plz[i]):05d}", geo.CITIES[city[i]].name,
                "DE", f"{lat[i]:.6f}", f"{lon[i]:.6f}", SEGMENTS[seg[i]], "active", created, created,
            )
        )  # fmt: skip
    world.customers = Customers(cid, city.astype(np.int64), seg.astype(np.int64), lat, lon,
                                np.full(n, NEVER, np.int64), c_created, c_created.copy())  # fmt: skip
    scale = world.customers.amount_scale

    # --- accounts: one checking each, some savings
    has_savings = rng.random(n) < 0.3
    a_cust = np.concatenate([np.arange(n), np.flatnonzero(has_savings)])
    a_chk = np.concatenate([np.ones(n, bool), np.zeros(int(has_savings.sum()), bool)])
    na = len(a_cust)
    aid = ids.take("account", na)
    a_created = c_created[a_cust] + rng.integers(0, 20 * DAY_US, na)
    base = np.where(a_chk, 1_500_00, 8_000_00) * scale[a_cust]
    balance = np.round(base * rng.lognormal(0, 0.7, na)).astype(np.int64)
    od_choice = np.array([0, 0, 200_00, 500_00, 1_000_00, 2_000_00])
    overdraft = np.where(a_chk, od_choice[rng.integers(0, len(od_choice), na)], 0).astype(np.int64)
    for i in range(na):
        created = _ts(a_created[i])
        rows.account.append(
            (
                int(aid[i]), int(cid[a_cust[i]]), _iban(int(aid[i])),
                "checking" if a_chk[i] else "savings", "EUR", _money(balance[i]),
                _money(overdraft[i]), "active", created, created,
            )
        )  # fmt: skip
    world.accounts = Accounts(aid, a_cust.astype(np.int64), a_chk, balance, overdraft,
                              np.full(na, NEVER, np.int64), a_created, a_created.copy())  # fmt: skip

    # --- cards: on checking accounts (first n accounts), some customers hold two
    second = rng.random(n) < 0.25
    k_acct = np.concatenate([np.arange(n), np.flatnonzero(second)])
    nk = len(k_acct)
    kid = ids.take("card", nk)
    k_created = a_created[k_acct] + rng.integers(0, 10 * DAY_US, nk)
    limits = np.array([500_00, 1_000_00, 1_500_00, 2_000_00, 3_000_00])
    lim_i = np.clip(rng.integers(0, 3, nk) + (seg[a_cust[k_acct]] >= 2) * 2, 0, 4)
    daily_limit = limits[lim_i].astype(np.int64)
    expires = np.maximum(
        k_created + rng.integers(3 * 365, 5 * 365, nk) * DAY_US,
        as_of + rng.integers(90, 900, nk) * DAY_US,
    )
    networks = np.array(["visa", "mastercard", "amex"])[rng.choice(3, nk, p=[0.52, 0.43, 0.05])]
    for i in range(nk):
        created = _ts(k_created[i])
        pan = _pan(int(kid[i]), str(networks[i]))
        exp_date = _ts(expires[i]).date()
        exp_month_end = date(exp_date.year, exp_date.month, 1)
        rows.card.append(
            (
                int(kid[i]), int(aid[k_acct[i]]), int(cid[a_cust[k_acct[i]]]), pan, pan[-4:],
                str(networks[i]), exp_month_end, _money(daily_limit[i]), "active", created, created,
            )
        )  # fmt: skip
    exp_us = np.array(
        [int((datetime.combine(r[6], datetime.min.time(), UTC) - _ts(0)).total_seconds()) * 10**6
         for r in rows.card[-nk:]] if nk else [], np.int64,
    )  # fmt: skip
    world.cards = Cards(kid, k_acct.astype(np.int64), a_cust[k_acct].astype(np.int64), daily_limit,
                        exp_us, np.full(nk, NEVER, np.int64), k_created, k_created.copy())  # fmt: skip

    # --- terminals
    m = n_terminals
    tid = ids.take("terminal", m)
    kind = rng.choice(3, m, p=[0.2, 0.6, 0.2])
    far = rng.random(m) < np.where(kind == KIND_ONLINE, 0.2, 0.15)
    t_city = np.where(
        far,
        geo.N_HOME + rng.integers(0, len(geo.FAR_CITIES), m),
        rng.choice(geo.N_HOME, m, p=geo.HOME_WEIGHTS),
    )
    # Every city gets at least one ATM and one POS when there are enough terminals, so that
    # card-present activity never has to fall back to another city.
    cover = 2 * len(geo.CITIES)
    if m >= 2 * cover:
        t_city[:cover] = np.repeat(np.arange(len(geo.CITIES)), 2)
        kind[:cover] = np.tile([KIND_ATM, KIND_POS], len(geo.CITIES))
    jitter = np.where(kind == KIND_ONLINE, 0.0, 1.0)
    t_lat = geo.CITY_LAT[t_city] + rng.normal(0, 0.03, m) * jitter
    t_lon = geo.CITY_LON[t_city] + rng.normal(0, 0.045, m) * jitter
    t_created = created_before - rng.integers(60 * DAY_US, 2000 * DAY_US, m)
    pos_p = np.array([p for _, _, p in POS_MCC])
    onl_p = np.array([p for _, p in ONLINE_MCC])
    pos_i = rng.choice(len(POS_MCC), m, p=pos_p / pos_p.sum())
    onl_i = rng.choice(len(ONLINE_MCC), m, p=onl_p / onl_p.sum())
    name_i = rng.integers(0, pool, m)
    for i in range(m):
        c = geo.CITIES[t_city[i]]
        if kind[i] == KIND_ATM:
            mcc, name = "6011", f"ATM {streets[name_i[i]]}" if c.home else f"ATM {c.name} {i % 50}"
        elif kind[i] == KIND_POS:
            mcc, label, _ = POS_MCC[pos_i[i]]
            name = f"{label} {companies[name_i[i]]}"
        else:
            mcc, name = ONLINE_MCC[onl_i[i]][0], domains[name_i[i]]
        created = _ts(t_created[i])
        rows.terminal.append(
            (
                int(tid[i]), TERMINAL_KINDS[kind[i]], name, mcc, c.name, c.country,
                f"{t_lat[i]:.6f}", f"{t_lon[i]:.6f}", "active", created, created,
            )
        )  # fmt: skip
    world.terminals = Terminals(tid, kind.astype(np.int64), t_city.astype(np.int64), t_lat, t_lon,
                                np.full(m, NEVER, np.int64), t_created, t_created.copy())  # fmt: skip
    assert KIND_POS == 1
    return world, rows
