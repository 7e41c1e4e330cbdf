"""Airflow for bankde: its environment (home, DAGs, parallelism, pool) and the standalone launcher."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bankde.errors import BankdeError, ConfigError
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.server.serve import WarehouseServer

# Tasks that open the warehouse run in this pool: one slot embedded (chDB has one owner process),
# `airflow_pool_slots` on a ClickHouse server.
WAREHOUSE_POOL = "bankde_warehouse"
# A task waits this long for the warehouse's named lock (another task or `bankde run` holding it)
# rather than failing; the pool normally makes the wait short.
TASK_LOCK_WAIT = 1800.0
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
# After Ctrl-C, standalone gets this long to stop its components before its group is killed.
STOP_GRACE_SECONDS = 60.0


class AirflowFailed(BankdeError):
    """An Airflow command the launcher runs (db migrate, pools set) failed."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def dags_folder() -> Path:
    """The project's thin DAG files (BANKDE_AIRFLOW_DAGS overrides, for installed copies)."""
    override = os.environ.get("BANKDE_AIRFLOW_DAGS")
    return Path(override).resolve() if override else repo_root() / "airflow" / "dags"


def airflow_home(settings: Settings) -> Path:
    return settings.home_dir / "airflow"


def pool_slots(settings: Settings, served: bool = False) -> int:
    """One slot for an embedded warehouse each task opens itself (one chDB owner at a time);
    `airflow_pool_slots` on a server, or when the launcher serves the warehouse to the tasks."""
    return settings.airflow_pool_slots if served or not settings.embedded_warehouse else 1


def airflow_bin() -> Path:
    """The `airflow` script installed next to this interpreter (the project's venv)."""
    path = Path(sys.executable).parent / "airflow"
    if not path.exists():
        raise ConfigError(
            "Airflow is not installed in this environment: run `.venv/bin/pip install -e '.[airflow]'`"
        )
    return path


def airflow_env(
    settings: Settings, port: int | None = None, home: Path | None = None
) -> dict[str, str]:
    """Environment for every Airflow process: SQLite under $BANKDE_HOME/airflow (or `home`), the
    repo's DAGs, a 2-core-sized scheduler, and bankde's own settings passed on to the tasks."""
    port = port or settings.airflow_port
    home = home or airflow_home(settings)
    # Settings variables come from `settings` only (below), never half from this environment.
    names = set(_setting_vars().values())
    env = {k: v for k, v in os.environ.items() if k not in names}
    # Airflow's processes (standalone's children, task runners) find each other's scripts on PATH.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    log_ports = _free_ports(2)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            # 2 cores shared with Postgres and the warehouse: few task processes at once.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
            "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            # Task runners report to the API server: must follow the port.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # Task logs are chmod-ed by Airflow itself (0o775/0o664 by default), whatever the
            # umask: $BANKDE_HOME stays private to its owner.
            "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FOLDER_PERMISSIONS": "0o700",
            "AIRFLOW__LOGGING__FILE_TASK_HANDLER_NEW_FILE_PERMISSIONS": "0o600",
            # The scheduler and the triggerer serve task logs on fixed ports (8793, 8794) by
            # default: a second Airflow on this machine (another home, a parallel test) could
            # not bind them. Free ports instead; every component gets this same environment.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_ports[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(log_ports[1]),
        }
    )
    # Task processes rebuild the same settings object from these variables.
    env.update(settings_env(settings))
    env.setdefault("BANKDE_WH_LOCK_WAIT", str(int(TASK_LOCK_WAIT)))
    return env


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports free right now (all held open together, so never the same one twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce `settings` in another process: every value that
    differs from its default, plus BANKDE_HOME made absolute (tasks start in other directories)."""
    env: dict[str, str] = {}
    for name, var in _setting_vars().items():
        value = getattr(settings, name)
        if value is not None and value != Settings.model_fields[name].default:
            env[var] = str(value)
    env["BANKDE_HOME"] = str(settings.home_dir)
    if settings.wh_dir is not None:
        env["BANKDE_WH_DIR"] = str(settings.warehouse_dir)
    return env


def _setting_vars() -> dict[str, str]:
    """Settings field -> the environment variable that sets it."""
    from pydantic import AliasChoices

    out: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        out[name] = (
            str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"BANKDE_{name.upper()}"
        )
    return out


def run_airflow(args: list[str], env: dict[str, str]) -> str:
    """Run one `airflow` CLI command to completion; raise AirflowFailed with its last error line."""
    proc = subprocess.run(
        [str(airflow_bin()), *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        tail = lines[-1] if lines else f"exit {proc.returncode}"
        raise AirflowFailed(f"`airflow {' '.join(args)}` failed: {tail}")
    return proc.stdout


def prepare(settings: Settings, env: dict[str, str], served: bool = False) -> None:
    """Create/upgrade Airflow's metadata DB and the warehouse pool (idempotent)."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    admin_password_file(home)
    run_airflow(["db", "migrate"], env)
    slots = pool_slots(settings, served)
    what = "embedded chDB: one process at a time" if slots == 1 else "ClickHouse HTTP"
    run_airflow(["pools", "set", WAREHOUSE_POOL, str(slots), f"bankde warehouse ({what})"], env)


def admin_password_file(home: Path) -> Path:
    """The UI's admin password, generated here (0600) before Airflow starts: Airflow's own first
    start would print it on standalone's output instead of only writing it."""
    path = home / PASSWORD_FILE
    if not path.exists():
        password = json.dumps({"admin": secrets.token_urlsafe(16)})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)
    os.chmod(path, 0o600)
    return path


def _default_signals() -> None:
    """In the child: SIGINT handled again even when we were started with it ignored (a
    background job of a script), or standalone could not be stopped."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def standalone(settings: Settings, port: int | None = None) -> int:
    """`airflow standalone` in the foreground until Ctrl-C (or SIGTERM), then a clean stop."""
    port = port or settings.airflow_port
    env = airflow_env(settings, port)
    server = _serve(settings)
    try:
        prepare(settings, env, served=server is not None)
        return _standalone(settings, port, env)
    finally:
        if server is not None:
            server.stop()
            server.session.close()


def _serve(settings: Settings) -> WarehouseServer | None:
    """The launcher owns the embedded warehouse and serves it: every task reaches it over HTTP
    (no lock waits), so the warehouse pool gets `airflow_pool_slots` slots, not one."""
    if not settings.embedded_warehouse:
        return None
    from bankde.console import out
    from bankde.warehouse.server.serve import WarehouseServer
    from bankde.warehouse.session import open_session

    server = WarehouseServer(settings, open_session(settings), strict_port=False)
    out.print(f"warehouse served at {server.start()} to the tasks (ClickHouse HTTP)")
    return server


def _standalone(settings: Settings, port: int, env: dict[str, str]) -> int:
    from bankde.console import out

    home = airflow_home(settings)
    out.print(f"Airflow UI: http://127.0.0.1:{port}  (user admin)")
    out.print(f"admin password: {home / PASSWORD_FILE} (mode 0600)")
    out.print(f"DAGs: {dags_folder()}   logs: {home / 'logs'}   Ctrl-C stops everything")
    # Own session: we forward one SIGINT (standalone's clean shutdown) whatever signal we get;
    # SIGTERM to standalone would leave its scheduler and API server running.
    proc = subprocess.Popen(
        [str(airflow_bin()), "standalone"],
        env=env,
        start_new_session=True,
        preexec_fn=_default_signals,
    )

    asked: list[float] = []  # when each stop signal arrived
    killed = False

    def forward(signum: int, frame: FrameType | None) -> None:
        asked.append(time.monotonic())
        if proc.poll() is None and len(asked) == 1:
            proc.send_signal(signal.SIGINT)
        elif proc.poll() is None:  # a second Ctrl-C: the user does not want to wait
            nonlocal killed
            killed = True
            _kill_group(proc.pid)

    old_int = signal.signal(signal.SIGINT, forward)
    old_term = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                rc = proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0] > STOP_GRACE_SECONDS:
                    # standalone joins each component's output thread, which waits for every
                    # process holding that pipe: one straggler would block the stop for ever.
                    left = _group_members(proc.pid)
                    out.print(
                        f"Airflow did not stop within {STOP_GRACE_SECONDS:.0f}s; killing what "
                        f"is left: {'; '.join(left) or 'nothing'}"
                    )
                    killed = True
                    _kill_group(proc.pid)
                    asked.clear()  # killed: wait for the exit without a second report
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    # A component's child that outlived standalone (same process group) is stopped too.
    _kill_group(proc.pid)
    out.print("Airflow stopped")
    # Interrupted by us is a clean stop, and so is one we had to finish with SIGKILL.
    return 0 if rc in (0, -signal.SIGINT, 130) or (killed and rc == -signal.SIGKILL) else rc


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in it
        os.killpg(pgid, signal.SIGKILL)


def _group_members(pgid: int) -> list[str]:
    """'pid command' of each process still in the group, read from /proc (names only)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # Fields after the ')' that closes the command name: state, ppid, pgrp, ...
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if int(rest.split()[2]) == pgid:
            members.append(f"{stat.parent.name} {name}")
    return sorted(members)
