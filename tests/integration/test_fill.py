"""The filler against the real managed Postgres: invariants, signatures, determinism, reruns."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql

from bankde.generator.config import FillConfig
from bankde.generator.runner import fill
from bankde.generator.scenarios import SCENARIO_NAMES
from bankde.source.cluster import ManagedCluster
from bankde.source.connection import admin_info, cdc_info, connect, owner_info, source_info
from bankde.source.scram import scram_verifier
from tests.conftest import fresh_source_db

AS_OF = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)

# One rule per scenario, reading bank.* only: the signature each scenario's docstring promises.
RULES = {
    "rapid_withdrawals": """
        WITH w AS (SELECT txn_id, card_id, occurred_at FROM bank.transaction
                   WHERE txn_type = 'withdrawal' AND card_id IS NOT NULL),
        s AS (SELECT a.card_id, a.occurred_at AS s FROM w a JOIN w b ON b.card_id = a.card_id
              AND b.occurred_at >= a.occurred_at AND b.occurred_at < a.occurred_at + interval '10 min'
              GROUP BY a.txn_id, a.card_id, a.occurred_at HAVING count(*) >= 4)
        SELECT DISTINCT w.txn_id FROM w JOIN s ON w.card_id = s.card_id
        AND w.occurred_at >= s.s AND w.occurred_at < s.s + interval '10 min'""",
    "after_card_closed": """
        WITH p AS (SELECT t.txn_id, t.card_id, t.occurred_at FROM bank.transaction t
                   JOIN bank.card c USING (card_id) WHERE t.occurred_at >= c.closed_at),
        s AS (SELECT a.card_id, a.occurred_at AS s FROM p a JOIN p b ON b.card_id = a.card_id
              AND b.occurred_at >= a.occurred_at AND b.occurred_at < a.occurred_at + interval '60 min'
              GROUP BY a.txn_id, a.card_id, a.occurred_at HAVING count(*) >= 3)
        SELECT DISTINCT p.txn_id FROM p JOIN s ON p.card_id = s.card_id
        AND p.occurred_at >= s.s AND p.occurred_at < s.s + interval '60 min'""",
    "amount_probing": """
        WITH d AS (SELECT t.txn_id, t.card_id, t.terminal_id, t.occurred_at, t.amount, t.status,
                          t.decline_reason, c.daily_limit FROM bank.transaction t
                   JOIN bank.card c USING (card_id) WHERE t.terminal_id IS NOT NULL),
        s AS (SELECT a.card_id, a.terminal_id, a.occurred_at AS s FROM d a JOIN d b
              ON b.card_id = a.card_id AND b.terminal_id = a.terminal_id
              AND b.occurred_at >= a.occurred_at AND b.occurred_at < a.occurred_at + interval '15 min'
              WHERE a.decline_reason = 'limit_exceeded' AND a.amount > a.daily_limit
              AND b.decline_reason IN ('limit_exceeded', 'insufficient_funds') AND b.amount <= a.amount
              GROUP BY a.txn_id, a.card_id, a.terminal_id, a.occurred_at HAVING count(*) >= 3)
        SELECT DISTINCT d.txn_id FROM d JOIN s ON d.card_id = s.card_id
        AND d.terminal_id = s.terminal_id AND d.occurred_at >= s.s
        AND d.occurred_at < s.s + interval '15 min'""",
    "card_testing": """
        WITH o AS (SELECT t.txn_id, t.card_id, t.terminal_id, t.occurred_at FROM bank.transaction t
                   JOIN bank.terminal m USING (terminal_id)
                   WHERE m.kind = 'online' AND t.txn_type = 'purchase' AND t.amount < 5),
        s AS (SELECT a.card_id, a.occurred_at AS s FROM o a JOIN o b ON b.card_id = a.card_id
              AND b.occurred_at >= a.occurred_at AND b.occurred_at < a.occurred_at + interval '30 min'
              GROUP BY a.txn_id, a.card_id, a.occurred_at
              HAVING count(*) >= 5 AND count(DISTINCT b.terminal_id) >= 5)
        SELECT DISTINCT o.txn_id FROM o JOIN s ON o.card_id = s.card_id
        AND o.occurred_at >= s.s AND o.occurred_at < s.s + interval '30 min'""",
    "account_takeover": """
        WITH cp AS (SELECT t.txn_id, t.card_id, t.occurred_at,
                           2 * 6371 * asin(sqrt(power(sin(radians(m.lat - u.home_lat) / 2), 2)
                             + cos(radians(u.home_lat)) * cos(radians(m.lat))
                             * power(sin(radians(m.lon - u.home_lon) / 2), 2))) AS km
                    FROM bank.transaction t JOIN bank.terminal m USING (terminal_id)
                    JOIN bank.card c USING (card_id) JOIN bank.customer u ON u.customer_id = c.customer_id
                    WHERE m.kind IN ('atm', 'pos'))
        SELECT DISTINCT f.txn_id FROM cp f JOIN cp h ON h.card_id = f.card_id
        AND h.km < 300 AND h.occurred_at BETWEEN f.occurred_at - interval '3 hours'
        AND f.occurred_at + interval '3 hours' WHERE f.km > 1000""",
}


def _one(conn, q, *args):
    return conn.execute(q, args).fetchone()[0]


@pytest.fixture(scope="module")
def filled(cluster_settings):
    """One mid-sized fill shared by the read-only checks below."""
    config = FillConfig(
        n_new_txns=14_000, backfill_days=4, backfill_txns_per_day=6_000, fraud_share=0.03, seed=11,
        as_of=AS_OF, customers=500, terminals=200, card_close_rate=0.08, account_close_rate=0.03,
        customer_close_rate=0.02, terminal_close_rate=0.03, batch_size=9_000,
    )  # fmt: skip
    with fresh_source_db(cluster_settings) as settings:
        summary = fill(settings, config)
        with connect(source_info(settings)) as conn:
            yield settings, conn, summary, config


def test_counts_summary_and_fraud_share(filled):
    _, conn, summary, config = filled
    assert (
        summary.transactions
        == config.total_txns
        == _one(conn, "SELECT count(*) FROM bank.transaction")
    )
    labels = _one(conn, "SELECT count(*) FROM truth.fraud_label")
    assert labels == sum(summary.fraud_txns.values())
    assert abs(labels / summary.transactions - 0.03) < 0.004
    assert summary.batches >= 5  # 38k rows in batches of 9k, plus the entities
    assert all(summary.fraud_episodes[s] > 0 for s in SCENARIO_NAMES)
    assert summary.closed.get("bank.card", 0) > 0 and summary.closed.get("bank.customer", 0) > 0
    # All timestamps are anchored to as_of.
    assert _one(conn, "SELECT max(occurred_at) FROM bank.transaction") <= AS_OF
    assert _one(conn, "SELECT max(created_at) FROM bank.customer") < AS_OF


def test_foreign_keys_and_closes_hold(filled):
    _, conn, _, _ = filled
    orphans = """SELECT count(*) FROM bank.transaction t
        LEFT JOIN bank.account a USING (account_id) LEFT JOIN bank.card c USING (card_id)
        LEFT JOIN bank.terminal m USING (terminal_id)
        WHERE a.account_id IS NULL OR (t.card_id IS NOT NULL AND c.card_id IS NULL)
           OR (t.terminal_id IS NOT NULL AND m.terminal_id IS NULL)"""
    assert _one(conn, orphans) == 0
    assert (
        _one(
            conn,
            "SELECT count(*) FROM truth.fraud_label l LEFT JOIN bank.transaction t USING (txn_id) WHERE t.txn_id IS NULL",
        )
        == 0
    )
    # No approved transaction on a card, account or terminal after it closed.
    assert (
        _one(
            conn,
            """SELECT count(*) FROM bank.transaction t JOIN bank.card c USING (card_id)
                         WHERE t.status = 'approved' AND t.occurred_at >= c.closed_at""",
        )
        == 0
    )
    assert (
        _one(
            conn,
            """SELECT count(*) FROM bank.transaction t JOIN bank.account a USING (account_id)
                         WHERE t.status = 'approved' AND t.occurred_at >= a.closed_at""",
        )
        == 0
    )
    assert (
        _one(
            conn,
            """SELECT count(*) FROM bank.transaction t JOIN bank.terminal m USING (terminal_id)
                         WHERE t.status = 'approved' AND t.occurred_at >= m.closed_at""",
        )
        == 0
    )
    # Closed cards did get declined attempts (legitimate and fraudulent).
    assert (
        _one(conn, "SELECT count(*) FROM bank.transaction WHERE decline_reason = 'card_closed'") > 0
    )
    # A closed customer's accounts and cards are closed too.
    assert (
        _one(
            conn,
            """SELECT count(*) FROM bank.customer u JOIN bank.card c USING (customer_id)
                         WHERE u.status = 'closed' AND (c.closed_at IS NULL OR c.closed_at > u.closed_at)""",
        )
        == 0
    )


def test_ledger_is_consistent(filled):
    _, conn, _, _ = filled
    # Balances never below the overdraft floor, before or after any transaction.
    assert (
        _one(
            conn,
            """SELECT count(*) FROM bank.transaction t JOIN bank.account a USING (account_id)
                         WHERE t.balance_after < -a.overdraft_limit""",
        )
        == 0
    )
    assert _one(conn, "SELECT count(*) FROM bank.transaction WHERE balance_after IS NULL") == 0
    # Each balance_after = previous balance_after +/- amount when approved, unchanged otherwise.
    broken = """SELECT count(*) FROM (
        SELECT t.status, t.txn_type, t.amount, t.balance_after,
               lag(t.balance_after) OVER (PARTITION BY t.account_id ORDER BY t.txn_id) AS prev
        FROM bank.transaction t) x
        WHERE prev IS NOT NULL AND balance_after <> prev + CASE
            WHEN status <> 'approved' THEN 0
            WHEN txn_type IN ('refund', 'deposit') THEN amount ELSE -amount END"""
    assert _one(conn, broken) == 0
    # The account's balance is the last balance_after.
    assert (
        _one(
            conn,
            """SELECT count(*) FROM bank.account a JOIN LATERAL (
        SELECT balance_after FROM bank.transaction t WHERE t.account_id = a.account_id
        ORDER BY txn_id DESC LIMIT 1) l ON true WHERE l.balance_after <> a.balance""",
        )
        == 0
    )
    # Ids follow time inside a run.
    assert (
        _one(
            conn,
            """SELECT count(*) FROM (SELECT occurred_at < lag(occurred_at) OVER (ORDER BY txn_id)
                         AS back FROM bank.transaction) x WHERE back""",
        )
        == 0
    )


@pytest.fixture(scope="module")
def refilled(cluster_settings):
    """Two consecutive fills on one database, as the demo's first and second day: a backfilled
    first run, then the next 24 hours with another seed and a few new customers."""
    first = FillConfig(
        n_new_txns=12_000, backfill_days=3, backfill_txns_per_day=6_000, fraud_share=0.03,
        seed=21, as_of=AS_OF, customers=400, terminals=180, batch_size=9_000,
    )  # fmt: skip
    second = FillConfig(
        **{**first.__dict__, "backfill_days": 0, "seed": 22, "customers": 40, "terminals": 18,
           "as_of": AS_OF + timedelta(days=1, seconds=1)},
    )  # fmt: skip
    with fresh_source_db(cluster_settings) as settings:
        fill(settings, first)
        fill(settings, second)
        with connect(source_info(settings)) as conn:
            yield conn


@pytest.mark.parametrize("runs", ["one fill", "two consecutive fills"])
@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_each_scenario_leaves_its_signature(request, runs, scenario):
    # Over two fills too: a rerun's legitimate rows must not look like fraud next to the first
    # run's (trips crossing the boundary, home use during an earlier run's trip, ...).
    conn = (
        request.getfixturevalue("filled")[1]
        if runs == "one fill"
        else request.getfixturevalue("refilled")
    )
    flagged = {r[0] for r in conn.execute(RULES[scenario]).fetchall()}
    labelled = {
        r[0]
        for r in conn.execute(
            "SELECT txn_id FROM truth.fraud_label WHERE scenario = %s", (scenario,)
        )
    }
    assert labelled
    hit = len(flagged & labelled)
    recall, precision = hit / len(labelled), hit / max(len(flagged), 1)
    assert recall >= 0.9, (scenario, recall, precision, len(labelled))
    assert precision >= 0.8, (scenario, recall, precision, len(labelled))


def test_fraud_is_not_given_away_by_one_column(filled):
    _, conn, _, _ = filled
    # Hours, amounts and terminals of fraud overlap with legitimate ones.
    row = conn.execute("""SELECT count(DISTINCT extract(hour FROM t.occurred_at)),
        count(*) FILTER (WHERE t.amount BETWEEN 20 AND 500),
        count(DISTINCT t.terminal_id) FILTER (WHERE EXISTS (
            SELECT 1 FROM bank.transaction o WHERE o.terminal_id = t.terminal_id
            AND NOT EXISTS (SELECT 1 FROM truth.fraud_label x WHERE x.txn_id = o.txn_id))),
        count(DISTINCT t.terminal_id)
        FROM bank.transaction t JOIN truth.fraud_label l USING (txn_id)""").fetchone()
    assert row[0] >= 18 and row[1] > 0 and row[2] >= 0.8 * row[3]
    # Legitimate customers also make ATM bursts, tiny purchases and declined attempts.
    legit = """SELECT count(*) FROM bank.transaction t WHERE NOT EXISTS
        (SELECT 1 FROM truth.fraud_label l WHERE l.txn_id = t.txn_id) AND {}"""
    assert _one(conn, legit.format("t.amount < 5 AND t.txn_type = 'purchase'")) > 100
    assert _one(conn, legit.format("t.decline_reason = 'limit_exceeded'")) > 5
    assert _one(conn, legit.format("t.decline_reason = 'card_closed'")) > 0


# Lifecycle invariants, as the warehouse's dbt tests state them (no approved transaction at or
# after the close of its card, account or terminal; closes and transactions after creation;
# histories in order), plus the ledger. Each query counts violations.
INVARIANTS = {
    "approved after card close": """SELECT count(*) FROM bank.transaction t
        JOIN bank.card c USING (card_id) WHERE t.status = 'approved' AND t.occurred_at >= c.closed_at""",
    "approved after account close": """SELECT count(*) FROM bank.transaction t
        JOIN bank.account a USING (account_id) WHERE t.status = 'approved' AND t.occurred_at >= a.closed_at""",
    "approved after terminal close": """SELECT count(*) FROM bank.transaction t
        JOIN bank.terminal m USING (terminal_id) WHERE t.status = 'approved' AND t.occurred_at >= m.closed_at""",
    "transaction before card created": """SELECT count(*) FROM bank.transaction t
        JOIN bank.card c USING (card_id) WHERE t.occurred_at < c.created_at""",
    "transaction before account created": """SELECT count(*) FROM bank.transaction t
        JOIN bank.account a USING (account_id) WHERE t.occurred_at < a.created_at""",
    "transaction before terminal created": """SELECT count(*) FROM bank.transaction t
        JOIN bank.terminal m USING (terminal_id) WHERE t.occurred_at < m.created_at""",
    **{
        f"{table} closed before created": f"SELECT count(*) FROM bank.{table} WHERE closed_at < created_at"
        for table in ("customer", "account", "card", "terminal")
    },
    **{
        f"{table} updated before its close": f"SELECT count(*) FROM bank.{table} WHERE updated_at < closed_at"
        for table in ("customer", "account", "card", "terminal")
    },
    "account updated before its last approved transaction": """SELECT count(*) FROM bank.account a
        WHERE a.updated_at < (SELECT max(occurred_at) FROM bank.transaction t
                              WHERE t.account_id = a.account_id AND t.status = 'approved')""",
    "card of a closed account open or closed later": """SELECT count(*) FROM bank.account a
        JOIN bank.card c USING (account_id)
        WHERE a.status = 'closed' AND (c.closed_at IS NULL OR c.closed_at > a.closed_at)""",
    "account of a closed customer open or closed later": """SELECT count(*) FROM bank.customer u
        JOIN bank.account a USING (customer_id)
        WHERE u.status = 'closed' AND (a.closed_at IS NULL OR a.closed_at > u.closed_at)""",
    "balance below the overdraft floor": """SELECT count(*) FROM bank.transaction t
        JOIN bank.account a USING (account_id) WHERE t.balance_after < -a.overdraft_limit""",
    "ledger break in txn_id order": """SELECT count(*) FROM (
        SELECT t.status, t.txn_type, t.amount, t.balance_after,
               lag(t.balance_after) OVER (PARTITION BY t.account_id ORDER BY t.txn_id) AS prev
        FROM bank.transaction t) x
        WHERE prev IS NOT NULL AND balance_after <> prev + CASE
            WHEN status <> 'approved' THEN 0
            WHEN txn_type IN ('refund', 'deposit') THEN amount ELSE -amount END""",
    "balance is not the last balance_after": """SELECT count(*) FROM bank.account a
        JOIN (SELECT DISTINCT ON (account_id) account_id, balance_after FROM bank.transaction
              ORDER BY account_id, txn_id DESC) l USING (account_id)
        WHERE l.balance_after <> a.balance""",
}  # fmt: skip


def _violations(conn) -> dict[str, int]:
    found = {name: _one(conn, q) for name, q in INVARIANTS.items()}
    return {name: n for name, n in found.items() if n}


def _updated_at(conn) -> dict[tuple[str, int], datetime]:
    return {
        (table, row[0]): row[1]
        for table in ("customer", "account", "card", "terminal")
        for row in conn.execute(f"SELECT {table}_id, updated_at FROM bank.{table}")
    }


def test_overlapping_reruns_keep_lifecycle_invariants(source_settings):
    """Fills whose windows overlap (same as-of twice, 2 h later, a day earlier) add to the data
    without contradicting it: no close is back-dated before activity already written, no
    transaction uses an entity before it exists, updated_at never goes back."""
    base = dict(
        n_new_txns=3_000, fraud_share=0.05, customers=150, terminals=80, card_close_rate=0.1,
        account_close_rate=0.05, customer_close_rate=0.03, terminal_close_rate=0.08,
        batch_size=1_000,
    )  # fmt: skip
    runs = [
        FillConfig(**base, seed=31, as_of=AS_OF, backfill_days=2, backfill_txns_per_day=1_500),
        FillConfig(**base, seed=31, as_of=AS_OF),
        FillConfig(**base, seed=32, as_of=AS_OF + timedelta(hours=2)),
        FillConfig(**base, seed=33, as_of=AS_OF - timedelta(days=1)),
    ]
    closed_by_reruns = 0
    with connect(source_info(source_settings)) as conn:
        before: dict[tuple[str, int], datetime] = {}
        for i, config in enumerate(runs):
            summary = fill(source_settings, config)
            if i:
                closed_by_reruns += sum(summary.closed.values())
            assert _violations(conn) == {}, (i, config.as_of)
            now = _updated_at(conn)
            went_back = [k for k, v in before.items() if now[k] < v]
            assert went_back == [], (i, went_back[:5])
            before = now
            conn.commit()
        # Not vacuous: the reruns closed entities and used the first run's cards (6,000 rows),
        # and the day-earlier run (rows after the first 12,000) wrote before the others' rows.
        assert closed_by_reruns > 20
        used = "SELECT count(DISTINCT card_id) FROM bank.transaction WHERE card_id <= 150 AND txn_id > 6000"
        assert _one(conn, used) > 100
        early = "SELECT count(*) FROM bank.transaction WHERE txn_id > 12000 AND occurred_at < %s"
        assert _one(conn, early, AS_OF - timedelta(days=1)) == 3_000


def _checksum(settings) -> dict[str, str]:
    tables = {
        "bank.customer": "customer_id", "bank.account": "account_id", "bank.card": "card_id",
        "bank.terminal": "terminal_id", "bank.transaction": "txn_id",
        "truth.fraud_episode": "episode_id", "truth.fraud_label": "txn_id",
    }  # fmt: skip
    with connect(source_info(settings)) as conn:
        return {
            t: _one(conn, sql.SQL("SELECT md5(string_agg(x::text, '|' ORDER BY x.{})) FROM {} x").format(
                sql.Identifier(pk), sql.SQL(t)))
            for t, pk in tables.items()
        }  # fmt: skip


def test_same_seed_same_rows_and_reruns_continue(cluster_settings, source_settings):
    config = FillConfig(
        n_new_txns=3_000, backfill_days=1, backfill_txns_per_day=2_000, fraud_share=0.05, seed=5,
        as_of=AS_OF, customers=120, terminals=80, batch_size=2_000,
    )  # fmt: skip
    fill(source_settings, config)
    first = _checksum(source_settings)
    with fresh_source_db(cluster_settings) as other:
        fill(other, config)
        assert _checksum(other) == first
    # A different seed gives different data.
    with fresh_source_db(cluster_settings) as other:
        fill(other, FillConfig(**{**config.__dict__, "seed": 6}))
        assert _checksum(other)["bank.transaction"] != first["bank.transaction"]
    # A second run adds: ids continue, nothing collides, sequences move past.
    with connect(source_info(source_settings)) as conn:
        before = conn.execute(
            "SELECT max(txn_id), count(*), max(customer_id) FROM bank.transaction, "
            "(SELECT max(customer_id) AS customer_id FROM bank.customer) c"
        ).fetchone()
    summary = fill(source_settings, config)
    with connect(source_info(source_settings)) as conn:
        assert (
            _one(conn, "SELECT count(*) FROM bank.transaction") == before[1] + summary.transactions
        )
        assert (
            _one(conn, "SELECT min(txn_id) FROM bank.transaction WHERE txn_id > %s", before[0])
            == before[0] + 1
        )
        assert (
            _one(conn, "SELECT count(*) FROM bank.customer WHERE customer_id > %s", before[2])
            == 120
        )
        nxt = _one(conn, "SELECT nextval(pg_get_serial_sequence('bank.transaction', 'txn_id'))")
        assert nxt == _one(conn, "SELECT max(txn_id) FROM bank.transaction") + 1
        assert _one(conn, "SELECT count(DISTINCT iban) = count(*) FROM bank.account")


SMALL = dict(n_new_txns=3_000, seed=3, as_of=AS_OF, customers=60, terminals=30, batch_size=1_000)


def test_bulk_batches_skip_fk_triggers_yet_every_row_reaches_logical_decoding(cluster_settings):
    with fresh_source_db(cluster_settings) as settings:
        slot = "t_fill_" + uuid.uuid4().hex[:10]
        with connect(cdc_info(settings), autocommit=True) as conn:  # REPLICATION: the capture role
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
            try:
                summary = fill(settings, FillConfig(**SMALL, fraud_share=0.05))
                # Not a superuser: granted SET on session_replication_role (roles.py).
                assert summary.fk_triggers_skipped
                decoded = dict(
                    conn.execute(
                        "SELECT substring(data from '^table ([a-z_.]+): INSERT:'), count(*)"
                        " FROM pg_logical_slot_get_changes(%s, NULL, NULL)"
                        " WHERE data LIKE 'table %%: INSERT:%%' GROUP BY 1",
                        (slot,),
                    ).fetchall()
                )
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            for table in ("bank.transaction", "truth.fraud_label", "bank.card"):
                assert (
                    decoded[table]
                    == summary.rows[table]
                    == _one(conn, f"SELECT count(*) FROM {table}")
                )
            assert summary.rows["truth.fraud_label"] > 0


def test_role_that_may_not_skip_fk_triggers_fills_with_checks(cluster_settings):
    role, password = "t_nosu_" + uuid.uuid4().hex[:10], uuid.uuid4().hex
    admin = admin_info(cluster_settings)
    with connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(scram_verifier(password))
            )
        )
    try:
        with fresh_source_db(cluster_settings) as settings:
            ManagedCluster(settings).allow_database(settings.db_name, users=(role,))
            with connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                        sql.Identifier(settings.db_name), sql.Identifier(role)
                    )
                )
            with connect(owner_info(settings), autocommit=True) as conn:
                for stmt in (
                    "GRANT USAGE ON SCHEMA bank, truth TO {r}",
                    "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA bank, truth TO {r}",
                    "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA bank, truth TO {r}",
                ):
                    conn.execute(sql.SQL(stmt).format(r=sql.Identifier(role)))
            as_role = settings.model_copy(update={"db_user": role, "db_password": password})
            summary = fill(as_role, FillConfig(**SMALL, fraud_share=0.02))
            assert not summary.fk_triggers_skipped
            with connect(source_info(settings)) as conn:
                assert _one(conn, "SELECT count(*) FROM bank.transaction") == 3_000
                orphans = """SELECT count(*) FROM bank.transaction t
                    LEFT JOIN bank.card c USING (card_id) WHERE t.card_id IS NOT NULL
                    AND c.card_id IS NULL"""
                assert _one(conn, orphans) == 0
    finally:
        with connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
