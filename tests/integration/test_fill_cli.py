"""`bankde fill` and new_events.py as a user runs them: exit codes, JSON summary, --live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from bankde.source.connection import connect, source_info
from tests.conftest import REPO, cli_env, free_port

BANKDE = [sys.executable, "-m", "bankde.cli"]
SMALL = {"N_NEW_TXNS": "1500", "BANKDE_FILL_CUSTOMERS": "60", "BANKDE_FILL_TERMINALS": "60"}


def _count(settings, table: str = "bank.transaction") -> int:
    with connect(source_info(settings)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _run(args, env, timeout=120):
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_bad_input_exits_2_and_writes_nothing(source_settings):
    cases = [
        ({"FRAUD_SHARE": "1.5"}, [], "FRAUD_SHARE=1.5: must be a number in [0, 1]"),
        ({"N_NEW_TXNS": "many"}, [], "N_NEW_TXNS=many: must be an integer >= 0"),
        ({"BACKFILL_DAYS": "-2"}, [], "BACKFILL_DAYS=-2"),
        ({}, ["--customers", "-1"], "--customers=-1"),
    ]
    for extra, flags, needle in cases:
        r = _run([*BANKDE, "fill", *flags], cli_env(source_settings, **{**SMALL, **extra}))
        assert r.returncode == 2, (extra, flags, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], r.stderr
        assert "Traceback" not in r.stderr
    assert _count(source_settings) == 0 and _count(source_settings, "bank.customer") == 0


def test_unreachable_database_is_one_line_exit_1(source_settings):
    env = cli_env(source_settings, **SMALL)
    env["BANKDE_PG_PORT"] = str(free_port())
    r = _run([*BANKDE, "fill"], env)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot connect to source" in r.stderr


def test_json_summary_and_original_entry_point(source_settings):
    env = cli_env(source_settings, **SMALL, FRAUD_SHARE="0.05")
    r = _run([*BANKDE, "fill", "--json", "--seed", "3", "--as-of", "2024-01-10T10:00:00Z"], env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["transactions"] == 1500 and data["seed"] == 3
    assert data["as_of"] == "2024-01-10T10:00:00+00:00"
    assert data["rows"]["bank.transaction"] == 1500 and data["rows"]["bank.customer"] == 60
    assert set(data["fraud_txns"]) >= {"rapid_withdrawals", "after_card_closed", "amount_probing"}
    assert abs(data["fraud_share"] - 0.05) < 0.02 and data["txns_per_second"] > 0
    # new_events.py: same filler, configured by the original variables; it adds to the data.
    env = cli_env(source_settings, **{**SMALL, "N_NEW_TXNS": "700", "BACKFILL_DAYS": "1",
                                      "BACKFILL_TXNS_PER_DAY": "300"})  # fmt: skip
    r = _run([sys.executable, "new_events.py", "--json"], env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["transactions"] == 1000
    assert _count(source_settings) == 2500


def test_live_streams_at_rate_and_stops_cleanly_on_sigint(source_settings):
    env = cli_env(
        source_settings, BANKDE_FILL_CUSTOMERS="80", BANKDE_FILL_TERMINALS="60", FRAUD_SHARE="0.05"
    )
    proc = subprocess.Popen(
        [*BANKDE, "fill", "--live", "--rate", "300", "--json"], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _count(source_settings, "bank.customer") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        start_n, t0 = _count(source_settings), time.monotonic()
        time.sleep(3.0)
        mid_n, t1 = _count(source_settings), time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    rate = (mid_n - start_n) / (t1 - t0)
    assert 120 <= rate <= 450, rate
    data = json.loads(out)
    # Everything the stream reported is committed; nothing half-written after the stop.
    assert data["transactions"] == _count(source_settings)
    with connect(source_info(source_settings)) as conn:
        bad = conn.execute("""SELECT count(*) FROM bank.transaction t JOIN bank.account a USING (account_id)
                              WHERE t.balance_after < -a.overdraft_limit""").fetchone()[0]
        assert bad == 0


def test_killed_fill_leaves_whole_batches_and_a_rerun_continues(source_settings):
    env = cli_env(source_settings, BANKDE_FILL_CUSTOMERS="80", BANKDE_FILL_TERMINALS="40")
    big = [*BANKDE, "fill", "--n-new-txns", "2000000", "--batch-size", "1000", "--json"]
    proc = subprocess.Popen(big, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while (
            _count(source_settings) < 5_000
            and time.monotonic() < deadline
            and proc.poll() is None  # a fill that stopped by itself: its error below
        ):
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: only commits count
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the fill stopped by itself: {err.decode()[-2000:]}"
    with connect(source_info(source_settings), autocommit=True) as conn:
        # Wait until the server has noticed: its backend aborts (or commits) what was in flight.
        while (
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()[0]
            and time.monotonic() < deadline + 30
        ):
            time.sleep(0.05)
    killed_at = _count(source_settings)
    assert 5_000 <= killed_at < 2_000_000
    # Every batch writes its transactions, the balances they move and the sequence together:
    # after the kill each account's balance is still its last transaction's balance_after.
    stale = """SELECT count(*) FROM bank.account a JOIN (
        SELECT DISTINCT ON (account_id) account_id, balance_after FROM bank.transaction
        ORDER BY account_id, txn_id DESC) l USING (account_id) WHERE l.balance_after <> a.balance"""
    with connect(source_info(source_settings)) as conn:
        assert conn.execute(stale).fetchone()[0] == 0
    r = _run([*BANKDE, "fill", "--n-new-txns", "1500", "--json"], env)
    assert r.returncode == 0, r.stderr
    assert _count(source_settings) == killed_at + json.loads(r.stdout)["transactions"]
    with connect(source_info(source_settings)) as conn:
        assert conn.execute(stale).fetchone()[0] == 0
        gaps = conn.execute("SELECT max(txn_id) - count(*) FROM bank.transaction").fetchone()[0]
        assert gaps == 0  # ids continue right after the last committed batch
