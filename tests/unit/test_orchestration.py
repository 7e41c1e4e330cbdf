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
