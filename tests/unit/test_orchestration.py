"""Orchestration helpers without services: demo sizing, rerun windows, settings passed to Airflow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bankde.errors import ConfigError
from bankde.orchestration.airflow_env import WAREHOUSE_POOL, airflow_env, pool_slots, settings_env
from bankde.orchestration.demo import SIZES, fill_config
from bankde.settings import Settings


def test_first_demo_run_is_reproducible_and_backfills() -> None:
    a, b = fill_config("small"), fill_config("small")
    assert a.seed == b.seed
    assert a.backfill_days >= 2 and a.n_new_txns == SIZES["small"]["n_new_txns"]


def test_rerun_adds_the_day_after_the_newest_event() -> None:
    newest = datetime.now(UTC) - timedelta(hours=3)
    config = fill_config("small", newest)
    assert config.backfill_days == 0
    window_start = config.as_of - timedelta(hours=config.window_hours)
    assert window_start >= newest - timedelta(seconds=1)
    assert config.customers < SIZES["small"]["customers"]


def test_rerun_right_after_a_run_still_starts_after_it() -> None:
    newest = datetime.now(UTC) + timedelta(seconds=5)  # e.g. a clock a little ahead
    config = fill_config("small", newest)
    assert config.as_of - timedelta(hours=config.window_hours) >= newest


def test_unknown_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--size"):
        fill_config("huge")


def test_airflow_env_carries_the_settings_to_task_processes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pg_port=55999, cdc_slot="s1", wh_prefix="t1_", db_name="x")
    env = airflow_env(settings, port=18080)
    assert env["BANKDE_HOME"] == str(tmp_path.resolve())
    assert env["BANKDE_PG_PORT"] == "55999"
    assert env["BANKDE_CDC_SLOT"] == "s1"
    assert env["BANKDE_WH_PREFIX"] == "t1_"
    assert env["DB_NAME"] == "x"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW_HOME"] == str(tmp_path.resolve() / "airflow")


def test_two_airflows_never_share_a_log_server_port(tmp_path: Path) -> None:
    """The scheduler's and the triggerer's log servers get free ports, not Airflow's fixed
    8793/8794: two Airflows on one machine (two homes, two test workers) both start."""
    keys = ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")
    first = airflow_env(Settings(home=tmp_path / "a"), port=18080)
    second = airflow_env(Settings(home=tmp_path / "b"), port=18081)
    ports = [int(env[k]) for env in (first, second) for k in keys]
    assert not {8793, 8794} & set(ports), ports
    assert len(set(ports[:2])) == 2 and len(set(ports[2:])) == 2, ports


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pg_port=55998, cdc_slot="s2", monitor_max_lag_bytes=123)
    for k, v in settings_env(settings).items():
        monkeypatch.setenv(k, v)
    again = Settings()
    assert (again.home_dir, again.pg_port, again.cdc_slot, again.monitor_max_lag_bytes) == (
        tmp_path.resolve(),
        55998,
        "s2",
        123,
    )


def test_pool_is_one_slot_for_the_embedded_warehouse() -> None:
    assert WAREHOUSE_POOL == "bankde_warehouse"
    assert pool_slots(Settings()) == 1
    assert pool_slots(Settings(clickhouse_url="http://ch:8123", airflow_pool_slots=6)) == 6


def _fake_standalone(tmp_path: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for `airflow standalone` (a shell script), with a 1 s stop grace."""
    from bankde.orchestration import airflow_env as module

    fake = tmp_path / "airflow"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o700)
    monkeypatch.setattr(module, "airflow_bin", lambda: fake)
    monkeypatch.setattr(module, "STOP_GRACE_SECONDS", 1.0)


def _ctrl_c_when(path: Path) -> None:
    """SIGINT to this process (as Ctrl-C would) once `path` is written: the launcher's handler
    is installed by then, as it is before the child can write anything."""
    import os
    import signal
    import threading
    import time

    def send() -> None:
        deadline = time.monotonic() + 10
        while not (path.exists() and path.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=send, daemon=True).start()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.parametrize(
    ("script", "stopped_by_grace"),
    [
        # A clean stop that leaves a component's child behind in the group.
        ("trap 'exit 0' INT\nsleep 300 &\necho $! > {pid}\nwhile :; do sleep 0.1; done\n", False),
        # standalone stuck in its stop (it waits for a pipe a straggler holds).
        ("trap '' INT\nsleep 300 &\necho $! > {pid}\nwhile :; do sleep 0.1; done\n", True),
    ],
    ids=["clean-stop-leaves-a-child", "stuck-stop"],
)
def test_ctrl_c_stops_airflow_and_everything_it_started(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    script: str,
    stopped_by_grace: bool,
) -> None:
    import time

    from bankde.orchestration.airflow_env import _standalone

    pid_file = tmp_path / "child.pid"
    _fake_standalone(tmp_path, script.format(pid=pid_file), monkeypatch)
    _ctrl_c_when(pid_file)
    started = time.monotonic()
    rc = _standalone(Settings(home=tmp_path / "home"), 8080, {"PATH": "/usr/bin:/bin"})
    elapsed = time.monotonic() - started
    child = int(pid_file.read_text())
    time.sleep(0.2)  # SIGKILL is asynchronous; the orphan is reaped by init
    assert rc == 0 and not _alive(child)
    printed = capsys.readouterr().out.replace("\n", "")  # rich wraps long lines
    assert ("did not stop within 1s" in printed) == stopped_by_grace
    if stopped_by_grace:
        assert f"{child} sleep" in printed  # the straggler is named
    assert elapsed < 8
