"""Write one prepared batch to Postgres in a single transaction (binary COPY for transactions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from bankde.errors import BankdeError
from bankde.generator import copybin
from bankde.generator.entities import COLUMNS, EntityRows
from bankde.generator.scenarios import Episodes
from bankde.source.pan import PanKey

TXN_COLUMNS = (
    "txn_id", "txn_ref", "account_id", "card_id", "terminal_id", "txn_type", "status",
    "decline_reason", "amount", "currency", "balance_after", "description", "occurred_at",
    "created_at", "updated_at",
)  # fmt: skip
# bank.card as stored: `pan` (generated) becomes `pan_enc` and `pan_hash` (source/pan.py).
STORED_CARD_COLUMNS = tuple(
    c for col in COLUMNS["card"] for c in (("pan_enc", "pan_hash") if col == "pan" else (col,))
)
SEQUENCES = {
    "customer": "customer_id",
    "account": "account_id",
    "card": "card_id",
    "terminal": "terminal_id",
    "transaction": "txn_id",
}
# Session advisory lock: one filler per database at a time.
FILL_LOCK = 0x62616E6B_66696C6C
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


@dataclass
class Batch:
    """Everything one database transaction writes; built by the generator, written here."""

    entities: EntityRows | None = None
    closes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # ids, µs
    txn_blocks: list[np.ndarray] = field(default_factory=list)
    label_blocks: list[np.ndarray] = field(default_factory=list)
    episodes: Episodes = field(default_factory=Episodes)
    balances: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # ids, cents, µs
    max_ids: dict[str, int] = field(default_factory=dict)
    n_txns: int = 0
    n_labels: int = 0
    # Counts for the summary: fraud rows per scenario, declines per reason, closes per table.
    stats: dict[str, Any] = field(default_factory=dict)


def _copy_blocks(
    cur: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], blocks: list[np.ndarray]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with cur.copy(stmt) as cp:
        for chunk in copybin.iter_payload(blocks):
            cp.write(chunk)


def _copy_rows(
    cur: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.SQL(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with cur.copy(stmt) as cp:
        for row in rows:
            cp.write_row(row)


def _card_rows(rows: list[tuple[Any, ...]], pan_key: PanKey) -> list[tuple[Any, ...]]:
    """The generated card rows as stored: the clear number becomes ciphertext and a keyed hash
    here, at the last step, so it never reaches the database, the WAL or the warehouse."""
    pan_at = COLUMNS["card"].index("pan")
    return [
        (*r[:pan_at], pan_key.encrypt(r[pan_at]), pan_key.lookup_hash(r[pan_at]), *r[pan_at + 1 :])
        for r in rows
    ]


def write_batch(
    conn: psycopg.Connection,
    batch: Batch,
    pan_key: PanKey,
    skip_fk_triggers: bool = False,
    durable: bool = True,
) -> None:
    """One transaction: either the whole batch is visible afterwards or none of it.

    `durable=False` commits without waiting for the WAL flush (synchronous_commit = off): a
    server crash may lose such a commit, but only whole, and never corrupts anything. The
    caller must end with a durable batch before it reports rows as written: flushing that
    commit's WAL flushes every earlier commit too.

    `skip_fk_triggers` (see `fk_triggers_skippable`) runs the transaction with
    session_replication_role = replica: Postgres then fires no foreign-key triggers for it, which
    takes ~80% of the server's work off a bulk COPY into bank.transaction. The rows are valid by
    construction (every id comes from the world the generator holds, which only grows) and the
    constraints stay declared; WAL and therefore logical decoding see every row as usual.
    """
    with conn.transaction(), conn.cursor() as cur:
        if skip_fk_triggers:
            cur.execute("SET LOCAL session_replication_role = replica")
        if not durable:
            cur.execute("SET LOCAL synchronous_commit = off")
        if batch.entities is not None:
            for table in ("customer", "account", "card", "terminal"):
                rows = getattr(batch.entities, table)
                if rows and table == "card":
                    _copy_rows(cur, "bank.card", STORED_CARD_COLUMNS, _card_rows(rows, pan_key))
                elif rows:
                    _copy_rows(cur, f"bank.{table}", COLUMNS[table], rows)
        for table, (ids, at) in batch.closes.items():
            key = SEQUENCES[table]
            cur.execute(
                sql.SQL(
                    "UPDATE {t} SET status = 'closed', closed_at = u.at,"
                    " updated_at = greatest({t}.updated_at, u.at)"
                    " FROM (SELECT unnest(%s::bigint[]) AS id,"
                    " 'epoch'::timestamptz + unnest(%s::bigint[]) * interval '1 microsecond' AS at) u"
                    " WHERE {t}.{k} = u.id AND {t}.status <> 'closed'"
                ).format(t=sql.SQL(f"bank.{table}"), k=sql.Identifier(key)),
                (ids.tolist(), at.tolist()),
            )
        if batch.txn_blocks:
            _copy_blocks(cur, "bank.transaction", TXN_COLUMNS, batch.txn_blocks)
        ep = batch.episodes
        if len(ep):
            rows = [
                (ep.ids[i], ep.scenario[i], ep.customer[i], ep.card[i], ep.terminal[i],
                 ts(ep.started_at[i]), ts(ep.ended_at[i]), Jsonb(ep.params[i]))
                for i in range(len(ep))
            ]  # fmt: skip
            cols = ("episode_id", "scenario", "customer_id", "card_id", "terminal_id", "started_at",
                    "ended_at", "params")  # fmt: skip
            _copy_rows(cur, "truth.fraud_episode", cols, rows)
        if batch.label_blocks:
            _copy_blocks(
                cur, "truth.fraud_label", ("txn_id", "scenario", "episode_id"), batch.label_blocks
            )
        if batch.balances is not None and len(batch.balances[0]):
            # Most accounts move in every batch (6.5M rows per 10M transactions with 50k
            # customers): binary COPY into a session temp table costs the client next to nothing,
            # where Python lists as array parameters cost ~1.4 µs a row.
            ids, cents, at = batch.balances
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS fill_balance (account_id bigint,"
                " balance numeric(18,2), at timestamptz) ON COMMIT DELETE ROWS"
            )
            new: list[copybin.Column] = [
                copybin.Int8(ids),
                copybin.Cents(cents),
                copybin.Timestamp(at),
            ]
            _copy_blocks(
                cur, "fill_balance", ("account_id", "balance", "at"), copybin.encode_blocks(new)
            )
            # updated_at never goes back: a close earlier in this batch, or a run whose rows lie
            # before earlier runs' rows, may already have set a later one (CDC and the SCD2
            # history read change order from it).
            cur.execute(
                "UPDATE bank.account a SET balance = b.balance,"
                " updated_at = greatest(a.updated_at, b.at)"
                " FROM fill_balance b WHERE a.account_id = b.account_id"
            )
        for table, max_id in batch.max_ids.items():
            if max_id > 0:
                cur.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, %s), %s)",
                    (f"bank.{table}", SEQUENCES[table], max_id),
                )


def fk_triggers_skippable(conn: psycopg.Connection) -> bool:
    """Whether this role may set session_replication_role (a superuser, or on Postgres 15+ a
    role granted SET on it). Others (typical on managed external servers) keep the checks."""
    try:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def lock_and_check(conn: psycopg.Connection) -> None:
    """Refuse to run without the schema or while another filler writes to the same database."""
    row = conn.execute(
        "SELECT to_regclass('bank.transaction'), to_regclass('truth.fraud_label')"
    ).fetchone()
    if row is None or row[0] is None or row[1] is None:
        raise BankdeError(
            "the source database has no bank/truth schema: run `bankde db init` first"
        )
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (FILL_LOCK,)).fetchone()
    conn.commit()
    if not got or not got[0]:
        raise BankdeError(
            "another `bankde fill` is writing to this database; wait for it or stop it"
        )
