"""The main job end to end: `make demo` from a fresh clone, and `bankde demo` run twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, make_home
from tests.served import start_served

BANKDE = Path(sys.executable).parent / "bankde"


def _env(home: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_", "VIRTUAL_ENV"))
    }
    env.update({"BANKDE_HOME": str(home), "BANKDE_PG_PORT": str(port), **extra})
    return env


def _assert_good_summary(summary: dict) -> None:
    rec = summary["reconciliation"]
    assert rec["equal"] is True, [t for t in rec["tables"] if not t["equal"]]
    assert summary["dbt"]["success"] is True, summary["dbt"]
    rules = [r for r in summary["rules"] if r["scenario"] != "overall"]
    assert len(rules) >= 5, rules
    for r in rules:
        assert r["alerts"] > 0, f"rule {r['rule']} produced no alerts"
        assert r["labelled"] > 0, f"scenario {r['scenario']} has no labelled transactions"
    for table, counts in summary["rows"].items():
        assert counts["source"] == counts["raw"], table
    assert summary["rows"]["bank.transaction"]["source"] > 0
    assert summary["marts"]["fct_fraud_alerts"] > 0


def _stop_cluster(home: Path, port: int, cwd: Path, bankde: Path) -> None:
    subprocess.run([str(bankde), "db", "down"], env=_env(home, port), cwd=cwd, capture_output=True)


@pytest.fixture()
def demo_home() -> Iterator[tuple[Path, int]]:
    home, port = make_home("bankde-demo-"), free_port()
    try:
        yield home, port
    finally:
        _stop_cluster(home, port, REPO, BANKDE)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("mode", ["embedded", "served"])
def test_demo_twice_adds_events_incrementally(demo_home: tuple[Path, int], mode: str) -> None:
    """A second `bankde demo` on existing data adds new events; CDC resumes from its offset (no
    new snapshot), dbt updates, and source and warehouse are still equal. Served: `bankde wh
    serve` owns the warehouse and the demo finds it through the lock file, no flag (CDC, dbt's
    clickhouse target and the summary all over HTTP)."""
    home, port = demo_home
    served = start_served(home, free_port()) if mode == "served" else None
    try:
        runs = _demo_twice(home, port)
        if served is not None:
            _reconcile_and_status_through(served.url, home, port)
    finally:
        if served is not None:
            assert served.stop() == 0, served.log.read_text()[-2000:]
    if served is not None:
        assert "served by pid" in runs[0]["locations"]["warehouse"], runs[0]["locations"]
        lock = json.loads((home / "warehouse.lock").read_text() or "{}")
        assert "url" not in lock, "a stopped server withdraws its URL"
    first, second = runs
    assert first["fill"]["rerun"] is False and second["fill"]["rerun"] is True
    assert first["cdc"]["run"]["snapshot_rows"], "the first run snapshots"
    assert not second["cdc"]["run"]["snapshot_rows"], "a rerun streams, it does not snapshot again"
    assert second["cdc"]["run"]["changes"] > 0
    txns = [r["rows"]["bank.transaction"]["source"] for r in runs]
    assert txns[1] > txns[0]
    # The file the summary is kept in matches what was printed.
    saved = json.loads((home / "demo-summary.json").read_text())
    assert saved["rows"] == second["rows"]


def _reconcile_and_status_through(url: str, home: Path, port: int) -> None:
    """`bankde reconcile` and `bankde cdc status` from other processes, no flag, while another
    process serves the warehouse: `--wait 0` fails at once if either tried to take the lock."""
    env = _env(home, port)
    rec = subprocess.run(
        [str(BANKDE), "reconcile", "--json", "--wait", "0"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rec.returncode == 0, rec.stdout[-3000:] + rec.stderr[-2000:]
    assert json.loads(rec.stdout)["equal"] is True
    st = subprocess.run(
        [str(BANKDE), "cdc", "status", "--json", "--wait", "0"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert st.returncode == 0, st.stderr[-3000:]
    status = json.loads(st.stdout)
    assert status["warehouse"] == "ok", status
    counts = status["tables"].values()
    assert counts and all(c["warehouse"] == c["source"] for c in counts), status["tables"]
    lock = json.loads((home / "warehouse.lock").read_text() or "{}")
    assert lock.get("url") == url, "the server still owns the warehouse"


def _demo_twice(home: Path, port: int) -> list[dict]:
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [str(BANKDE), "demo", "--json"],
            env=_env(home, port),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        summary = json.loads(proc.stdout)
        _assert_good_summary(summary)
        runs.append(summary)
    return runs


def test_run_stops_cleanly_on_ctrl_c(demo_home: tuple[Path, int]) -> None:
    """`bankde run`: live filler, CDC and dbt in one process; Ctrl-C stops it with exit 0 and
    the warehouse equal to the source (nothing half-applied)."""
    home, port = demo_home
    env = _env(home, port)
    proc = subprocess.Popen(
        [str(BANKDE), "run", "--rate", "300", "--dbt-every", "5", "--quiet"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Long enough for the first snapshot, some streamed batches and a dbt build (CDC streams
    # during the build, so on a busy 2-core machine the first one can take a minute).
    # A build has finished once the report it rewrites exists (the run's builds keep dbt's
    # parsed project and write no run_results.json).
    deadline = time.monotonic() + 150
    built = False
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(2)
        built = (home / "report.html").is_file()
        if built:
            break
    time.sleep(4)
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-4000:]
    assert built, "dbt never ran"
    assert "stopped cleanly" in out
    applied = int(out.split("stopped cleanly:")[1].split("changes")[0].replace(",", "").strip())
    builds = int(out.split("batches,")[1].split("dbt builds")[0].strip())
    assert builds >= 1, out
    assert applied > 0
    rec = subprocess.run(
        [str(BANKDE), "reconcile", "--json"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert rec.returncode == 0, rec.stdout[-3000:]
    assert json.loads(rec.stdout)["equal"] is True


def _fresh_checkout(dest: Path) -> None:
    """A clone of the repository's HEAD (BANKDE_DEMO_FROM=worktree copies the working tree
    instead, to try uncommitted changes)."""
    if os.environ.get("BANKDE_DEMO_FROM") == "worktree":
        ignore = shutil.ignore_patterns(
            ".venv",
            ".bankde",
            ".git",
            "__pycache__",
            "*.egg-info",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
            "target",
            "logs",
        )
        shutil.copytree(REPO, dest, ignore=ignore)
        return
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=120)


@pytest.mark.slow
def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    """The README's first command on a fresh clone: venv, install, Postgres, fill, CDC, dbt,
    summary — reconciliation equal and every fraud rule alerting."""
    clone = tmp_path / "bankde"
    _fresh_checkout(clone)
    home, port = make_home("bankde-clone-"), free_port()
    env = _env(home, port)
    # Only the package caches are shared with this machine; the clone installs for itself.
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=900
        )
        seconds = time.monotonic() - started
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-4000:])
        print(f"make demo from a fresh clone: {seconds:.0f}s")
        assert "reconciliation: equal" in proc.stdout
        summary = json.loads((home / "demo-summary.json").read_text())
        _assert_good_summary(summary)
        assert (clone / ".venv" / "bin" / "bankde").exists(), "make demo installs into the clone"
    finally:
        _stop_cluster(home, port, clone, clone / ".venv" / "bin" / "bankde")
        shutil.rmtree(home, ignore_errors=True)
