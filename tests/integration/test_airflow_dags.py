"""Airflow DAGs: integrity (import, ids, tags, retries, pool) and every DAG run for real, each task
in its own process, against the managed Postgres and a chDB warehouse of the test's own."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bankde.settings import Settings
from tests.conftest import REPO, free_port, make_home

# Needs the [airflow] extra (`make pytest` installs it): a missing Airflow fails, never skips.
EXPECTED = {"pg_to_ch", "cdc_to_dwh", "dbt_incremental", "cdc_monitoring"}
# Tasks that open the warehouse, per DAG: they must run in the one-slot pool.
WAREHOUSE_TASKS = {
    "pg_to_ch": {"resync_raw", "reconcile"},
    "cdc_to_dwh": {"sync"},
    "dbt_incremental": {"dbt_build"},
    "cdc_monitoring": {"freshness", "reconciliation"},
}

_DESCRIBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tags": sorted(dag.tags),
        "doc": bool(dag.doc_md and dag.doc_md.strip()),
        "schedule": type(dag.timetable).__name__,
        "assets": repr(getattr(dag.timetable, "asset_condition", None)),
        "tasks": {
            t.task_id: {
                "retries": t.retries,
                "pool": t.pool,
                "outlets": [getattr(o, "uri", str(o)) for o in t.outlets],
            }
            for t in dag.tasks
        },
    }
print(json.dumps(out))
"""


def _airflow_env(settings: Settings, port: int, home: Path) -> dict[str, str]:
    from bankde.orchestration.airflow_env import airflow_env

    return airflow_env(settings, port, home=home)


def test_dag_integrity(tmp_path: Path) -> None:
    """Every DAG file imports; ids, tags, docs, retries, pool and asset wiring are as designed."""
    from bankde.orchestration.airflow_env import WAREHOUSE_POOL, dags_folder
    from bankde.orchestration.tasks import RAW_ASSET_URI

    settings = Settings(home=tmp_path / "home")  # nothing is started: no server user enters it
    env = _airflow_env(settings, free_port(), tmp_path / "airflow")
    proc = subprocess.run(
        [sys.executable, "-c", _DESCRIBE, str(dags_folder())],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    assert set(info["dags"]) == EXPECTED
    for dag_id, dag in info["dags"].items():
        assert "bankde" in dag["tags"], dag_id
        assert dag["doc"], f"{dag_id} has no doc_md"
        for task_id, task in dag["tasks"].items():
            assert task["retries"] >= 1, f"{dag_id}.{task_id} has no retries"
            in_pool = task["pool"] == WAREHOUSE_POOL
            assert in_pool == (task_id in WAREHOUSE_TASKS[dag_id]), f"{dag_id}.{task_id} pool"
    assert RAW_ASSET_URI in info["dags"]["cdc_to_dwh"]["tasks"]["sync"]["outlets"]
    assert RAW_ASSET_URI in info["dags"]["pg_to_ch"]["tasks"]["resync_raw"]["outlets"]
    # dbt_incremental runs when cdc_to_dwh (or pg_to_ch) updated the raw asset.
    assert "Asset" in info["dags"]["dbt_incremental"]["schedule"]
    assert RAW_ASSET_URI in info["dags"]["dbt_incremental"]["assets"]


@pytest.fixture()
def pipeline_settings(source_settings: Settings) -> Iterator[Settings]:
    """The test's own database (on the session cluster), slot, publication, warehouse and home."""
    from bankde.cdc.slot import drop_publication, drop_slot
    from bankde.source.cluster import ManagedCluster

    cluster = ManagedCluster(source_settings)
    tag = uuid.uuid4().hex[:8]
    home = make_home("bankde-af-run-")
    settings = source_settings.model_copy(
        update={
            "home": home,
            "db_password": cluster.app_password(),
            "cdc_password": cluster.cdc_password(),
            "owner_password": cluster.owner_password(),
            "cdc_slot": f"af_{tag}",
            "cdc_publication": f"af_{tag}",
            # The session's chDB directory belongs to this pytest process; the Airflow task
            # processes need a warehouse of their own under the test's home.
            "wh_dir": None,
        }
    )
    try:
        yield settings
    finally:
        drop_slot(settings)
        drop_publication(settings)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def _fill(settings: Settings, txns: int, seed: int, backfill_days: int, as_of: datetime) -> None:
    from dataclasses import replace

    from bankde.generator import FillConfig, fill

    config = replace(
        FillConfig(),
        seed=seed,
        customers=150,
        terminals=80,
        n_new_txns=txns,
        backfill_days=backfill_days,
        as_of=as_of,
        backfill_txns_per_day=txns // 2,
    )
    fill(settings, config)


@pytest.fixture()
def api_server(pipeline_settings: Settings) -> Iterator[dict[str, str]]:
    """Airflow's API server (task runners report to it), its metadata DB and the warehouse pool."""
    from bankde.orchestration.airflow_env import airflow_bin, prepare

    port = free_port()
    env = _airflow_env(pipeline_settings, port, pipeline_settings.home_dir / "airflow")
    prepare(pipeline_settings, env)
    log = open(pipeline_settings.home_dir / "api-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(airflow_bin()), "api-server", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2
                ):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("airflow api-server did not start") from None
                time.sleep(0.5)
        yield env
    finally:
        # SIGINT is the API server's clean stop; SIGTERM would leave its workers behind.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _dags_test(
    env: dict[str, str], dag_id: str, timeout: float = 600, extra: list[str] | None = None
) -> str:
    """`airflow dags test --use-executor`: the LocalExecutor runs each task in its own process.

    Airflow 3.3's `dags test` sometimes never returns after its run has finished (its executor
    waits on an idle worker); the run's own "DagRun Finished" line is the verdict, and the
    command is stopped a grace period after it appeared.
    """
    import tempfile

    from bankde.orchestration.airflow_env import airflow_bin

    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(
            [str(airflow_bin()), "dags", "test", "--use-executor", *(extra or []), dag_id],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        finished_at: float | None = None
        finished = f"DagRun Finished: dag_id={dag_id},"
        while proc.poll() is None:
            now = time.monotonic()
            if finished_at is None:
                out.seek(0)
                if finished in out.read():
                    finished_at = now
            if now > deadline or (finished_at is not None and now - finished_at > 30):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.5)
        out.seek(0)
        output = out.read()
    assert finished in output, f"{dag_id} did not finish in {timeout:.0f}s:\n{output[-6000:]}"
    assert proc.returncode == 0 or finished_at is not None, f"{dag_id} failed:\n{output[-6000:]}"
    run_line = output[output.index(finished) :].splitlines()[0]
    assert "state=success" in run_line, f"{dag_id} failed:\n{output[-6000:]}"
    return output


def _task_log(settings: Settings, dag_id: str, task_id: str) -> str:
    logs = sorted(
        (settings.home_dir / "airflow" / "logs" / f"dag_id={dag_id}").rglob(
            f"task_id={task_id}/*.log"
        )
    )
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _bankde(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    from bankde.orchestration.airflow_env import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_"))}
    env.update(settings_env(settings))
    return subprocess.run(
        [str(Path(sys.executable).parent / "bankde"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_every_dag_runs_for_real(pipeline_settings: Settings, api_server: dict[str, str]) -> None:
    """pg_to_ch snapshots, cdc_to_dwh applies new changes (waiting for a warehouse held by another
    process), dbt_incremental builds, cdc_monitoring passes; source and warehouse end equal."""
    settings, env = pipeline_settings, api_server
    t0 = datetime.now(UTC).replace(microsecond=0)
    _fill(settings, 3000, seed=11, backfill_days=2, as_of=t0)
    _dags_test(env, "pg_to_ch")

    # New inserts, closes and fraud after the snapshot, for the micro-batch to apply: the next
    # day's activity, after everything the first fill wrote.
    _fill(settings, 2000, seed=12, backfill_days=0, as_of=t0 + timedelta(hours=25))
    hold = 10
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from bankde.settings import get_settings; "
            "from bankde.warehouse.session import open_session; "
            f"open_session(get_settings()); print('held', flush=True); time.sleep({hold})",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    _dags_test(env, "cdc_to_dwh")
    # The task waited on the named lock until the holder let go, instead of failing.
    assert time.monotonic() - started >= hold - 1
    assert holder.wait(timeout=30) == 0
    applied = re.search(r"'changes': (\d+)", _task_log(settings, "cdc_to_dwh", "sync"))
    assert applied and int(applied.group(1)) > 0

    _dags_test(env, "dbt_incremental")
    _dags_test(env, "cdc_monitoring")
    assert "'equal': True" in _task_log(settings, "cdc_monitoring", "reconciliation")

    rec = _bankde(settings, "reconcile", "--json")
    assert rec.returncode == 0, rec.stdout[-3000:] + rec.stderr[-2000:]
    assert json.loads(rec.stdout)["equal"] is True

    # With nothing new, cdc_to_dwh skips its task (no asset event, no dbt run for nothing).
    out = _dags_test(env, "cdc_to_dwh")
    assert "skipped" in out.lower()


def _task_times(env: dict[str, str], dag_id: str, task_id: str) -> tuple[datetime, datetime]:
    """When the task last ran, from Airflow's metadata DB (start, end)."""
    import sqlite3

    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT start_date, end_date FROM task_instance WHERE dag_id = ? AND task_id = ? "
            "AND state = 'success' ORDER BY end_date DESC LIMIT 1",
            (dag_id, task_id),
        ).fetchone()
    assert row is not None, f"{dag_id}.{task_id} has no successful run"
    return tuple(datetime.fromisoformat(v) for v in row)  # type: ignore[return-value]


def _wait_task_running(
    env: dict[str, str], dag_id: str, task_id: str, runner: threading.Thread, timeout: float
) -> None:
    """Until Airflow's metadata DB has the task running (or `runner`, the thread running the
    DAG, ended first: the test fails on its outcome)."""
    import sqlite3

    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and runner.is_alive():
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute(
                    "SELECT 1 FROM task_instance WHERE dag_id = ? AND task_id = ? "
                    "AND state = 'running'",
                    (dag_id, task_id),
                ).fetchone()
        except sqlite3.OperationalError:  # not created yet, or locked by a writer a moment
            row = None
        if row:
            return
        time.sleep(0.5)
    raise AssertionError(f"{dag_id}.{task_id} never ran within {timeout:.0f} s")


def test_served_warehouse_lets_cdc_and_dbt_tasks_overlap(
    pipeline_settings: Settings, api_server: dict[str, str]
) -> None:
    """With the warehouse served (as `bankde airflow` does), the pool has several slots and the
    tasks are HTTP clients: cdc_to_dwh's sync runs while dbt_incremental's build runs."""
    from bankde.orchestration.airflow_env import pool_slots, prepare
    from tests.served import start_served

    settings, env = pipeline_settings, api_server
    served = start_served(settings.home_dir, free_port())
    try:
        prepare(settings, env, served=True)
        assert pool_slots(settings, served=True) > 1
        t0 = datetime.now(UTC).replace(microsecond=0)
        _fill(settings, 3000, seed=21, backfill_days=2, as_of=t0)
        _dags_test(env, "pg_to_ch")
        _fill(settings, 20000, seed=22, backfill_days=0, as_of=t0 + timedelta(hours=25))

        outputs: dict[str, str] = {}

        def run(dag_id: str) -> None:
            outputs[dag_id] = _dags_test(env, dag_id)

        dbt = threading.Thread(target=run, args=("dbt_incremental",))
        dbt.start()
        # dbt's build is the long one: the sync starts once it runs (not after a fixed delay,
        # which a busy machine may not even have got dbt started within).
        _wait_task_running(env, "dbt_incremental", "dbt_build", dbt, timeout=300)
        run("cdc_to_dwh")
        dbt.join(900)
        assert set(outputs) == {"dbt_incremental", "cdc_to_dwh"}
        build = _task_times(env, "dbt_incremental", "dbt_build")
        sync = _task_times(env, "cdc_to_dwh", "sync")
        assert sync[0] < build[1] and build[0] < sync[1], f"no overlap: build {build}, sync {sync}"
        applied = re.search(r"'changes': (\d+)", _task_log(settings, "cdc_to_dwh", "sync"))
        assert applied and int(applied.group(1)) > 0
        rec = _bankde(settings, "reconcile", "--json")
        assert rec.returncode == 0, rec.stdout[-3000:] + rec.stderr[-2000:]
        assert json.loads(rec.stdout)["equal"] is True
    finally:
        assert served.stop() == 0, served.log.read_text()[-2000:]


def test_launcher_serves_the_warehouse_and_stops_cleanly_on_sigint() -> None:
    """`bankde airflow` owns the embedded warehouse and serves it while it runs: the lock file
    names its URL, clickhouse-connect queries it, and one SIGINT (Ctrl-C) stops Airflow and the
    server cleanly (exit 0, URL withdrawn, lock released)."""
    import clickhouse_connect

    home = make_home("bankde-launcher-")
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_", "AIRFLOW"))}
    # No source on this port: the unpaused DAGs' tasks fail, which is not what this test is about.
    env.update(BANKDE_HOME=str(home), BANKDE_PG_PORT=str(free_port()))
    log = open(home / "launcher.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "bankde"), "airflow", "--port", str(api_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lock_file = home / "warehouse.lock"

    def lock() -> dict:
        try:
            return json.loads(lock_file.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    try:
        deadline = time.monotonic() + 120
        while "url" not in lock():
            assert proc.poll() is None, (home / "launcher.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "bankde airflow never served the warehouse"
            time.sleep(0.5)
        record = lock()
        assert record["pid"] == proc.pid
        password = (home / "secrets" / "warehouse-reader").read_text().strip()
        host, port = record["url"].removeprefix("http://").rsplit(":", 1)
        client = clickhouse_connect.get_client(
            host=host, port=int(port), username="bankde_reader", password=password
        )
        assert client.query("SELECT 41 + 1").result_rows == [(42,)]
        client.close()
        # Airflow up too: then Ctrl-C stops standalone (scheduler, API server) and the server.
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{api_port}/api/v2/monitor/health", timeout=2
                ):
                    break
            except OSError:
                assert proc.poll() is None, (home / "launcher.log").read_text()[-3000:]
                assert time.monotonic() < deadline + 120, "Airflow never came up"
                time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, (home / "launcher.log").read_text()[-3000:]
        assert "url" not in lock(), "a stopped launcher withdraws the URL"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
