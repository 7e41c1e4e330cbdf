"""`bankde wh` in subprocesses with their own warehouse: init, sql formats, the named lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_home

BANKDE = str(Path(sys.executable).with_name("bankde"))


@pytest.fixture()
def home() -> Iterator[Path]:
    path = make_home("bankde-whcli-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_"))}
    env["BANKDE_HOME"] = str(home)
    return env


def bankde(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BANKDE, *args], env=env_for(home), capture_output=True, text=True, timeout=120
    )


def test_init_twice_then_query_in_every_format(home: Path) -> None:
    for _ in range(2):
        res = bankde(home, "wh", "init")
        assert res.returncode == 0, res.stderr
        assert "schema applied" in res.stdout
    res = bankde(
        home,
        "wh",
        "sql",
        "SELECT name FROM system.tables WHERE database = 'raw' ORDER BY name",
        "--format",
        "json",
    )
    assert res.returncode == 0, res.stderr
    assert [r["name"] for r in json.loads(res.stdout)] == [
        "account",
        "card",
        "customer",
        "terminal",
        "transaction",
    ]
    res = bankde(
        home,
        "wh",
        "sql",
        "SELECT toDecimal64('12345678901234.99', 2) AS m, NULL AS n",
        "--format",
        "csv",
    )
    assert res.stdout.splitlines() == ["m,n", "12345678901234.99,"]
    res = bankde(home, "wh", "sql", "SELECT 1 AS one")
    assert "one" in res.stdout and "1 row" in res.stdout
    res = bankde(home, "wh", "sql", "SELEC 1")
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "Syntax error" in res.stderr
    res = bankde(home, "wh", "sql", "SELECT 1", "--format", "xml")
    assert res.returncode == 2


def test_second_process_gets_the_named_lock_then_takes_over_a_dead_holder(home: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from bankde.settings import get_settings; "
            "from bankde.warehouse.session import open_session; "
            "open_session(get_settings()).warehouse().query('SELECT 1'); "
            "print('ready', flush=True); time.sleep(60)",
            "cdc-run-standin",
        ],
        env=env_for(home),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        # Every command that opens the warehouse takes --wait and names the holder.
        for command in (
            ("wh", "sql", "SELECT 1"),
            ("wh", "init"),
            ("reconcile",),
            ("cdc", "sync", "--no-progress"),
            ("cdc", "run", "--no-progress"),
            ("cdc", "resync", "--yes", "--no-progress"),
        ):
            res = bankde(home, *command, "--wait", "0.3")
            assert res.returncode == 1, (command, res.stderr)
            # (`cdc run` announces the slot first, on a line of its own.)
            errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
            assert len(errors) == 1 and "Traceback" not in res.stderr, (command, res.stderr)
            assert f"pid {holder.pid}" in errors[0] and "cdc-run-standin" in errors[0]
            assert "waited 0.3s" in errors[0] and "--wait" in errors[0], errors[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    # The dead holder's lock file is still there; the next process takes it over.
    assert json.loads((home / "warehouse.lock").read_text())["pid"] == holder.pid
    res = bankde(home, "wh", "sql", "SELECT 41 + 1 AS x", "--format", "csv", "--wait", "0")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["x", "42"]
