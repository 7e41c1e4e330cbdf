"""`bankde demo|run --engine`: a wrong engine name fails in one line (exit 2) before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BANKDE = str(Path(sys.executable).with_name("bankde"))


@pytest.mark.parametrize("command", ["demo", "run"])
def test_an_unknown_engine_is_refused_before_anything_starts(command: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_"))}
    res = subprocess.run(
        [BANKDE, command, "--engine", "kafkaa"],
        env={**env, "BANKDE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "unknown capture engine 'kafkaa'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (home / "postgres").exists(), "nothing started"
