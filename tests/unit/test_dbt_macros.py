"""dbt/macros/cdc_version.sql is the render of bankde.cdc.version, and means what Python means."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from bankde.cdc.version import POS_MASK, make_version, version_lsn
from bankde.transform.macros import CDC_VERSION_MACROS, render_dbt_macros, write_dbt_macros

DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt"


def test_committed_macros_are_the_render_of_the_python_encoding() -> None:
    committed = (DBT_PROJECT / CDC_VERSION_MACROS).read_text(encoding="utf-8")
    assert committed == render_dbt_macros(), (
        f"dbt/{CDC_VERSION_MACROS} differs from bankde.cdc.version: run `bankde dbt macros`"
    )


def test_write_reports_a_change_only_when_there_is_one(tmp_path: Path) -> None:
    (tmp_path / "macros").mkdir()
    (tmp_path / CDC_VERSION_MACROS).write_text("{# hand-edited #}\n", encoding="utf-8")
    assert write_dbt_macros(tmp_path)
    assert (tmp_path / CDC_VERSION_MACROS).read_text(encoding="utf-8") == render_dbt_macros()
    assert not write_dbt_macros(tmp_path)


def _call(macro: str, *args: str) -> str:
    """SQL a dbt model gets from `{{ macro(args) }}` (dbt's own Jinja, without dbt)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    call = f"{{{{ {macro}({', '.join(repr(a) for a in args)}) }}}}"
    return env.from_string(render_dbt_macros() + call).render().strip()


CASES = [(0, 0), (0x16B3748, 1), (0x1_0000_0000_0000, POS_MASK), ((1 << 64) - 1, 7)]


def _expressions(lsn: int, pos: int) -> list[str]:
    version = make_version(lsn, pos)
    return [
        _call("cdc_make_version", f"toUInt64('{lsn}')", str(pos)),
        _call("cdc_version_lsn", f"toUInt128('{version}')"),
        _call("cdc_max_version_at", f"toUInt64('{lsn}')"),
    ]


@pytest.fixture(scope="module")
def clickhouse_values() -> dict[str, int]:
    """Every macro expression of CASES evaluated by chDB, in a process of its own: this one may
    already hold an embedded warehouse at a path, and chDB allows one per process."""
    expressions = sorted({e for lsn, pos in CASES for e in _expressions(lsn, pos)})
    query = "SELECT " + ", ".join(f"toString({e})" for e in expressions)
    script = (
        "import sys, chdb; "
        "print(chdb.query(sys.stdin.read(), 'TabSeparated').bytes().decode(), end='')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=query,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(zip(expressions, map(int, done.stdout.strip().split("\t")), strict=True))


@pytest.mark.parametrize(("lsn", "pos"), CASES)
def test_macros_compute_in_clickhouse_what_python_computes(
    lsn: int, pos: int, clickhouse_values: dict[str, int]
) -> None:
    make, lsn_of, max_at = (clickhouse_values[e] for e in _expressions(lsn, pos))
    version = make_version(lsn, pos)
    assert make == version
    assert lsn_of == version_lsn(version) == lsn
    assert max_at == make_version(lsn, POS_MASK)


def test_cli_check_fails_on_a_stale_file_and_regenerating_fixes_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bankde.cli import app

    (tmp_path / "macros").mkdir()
    (tmp_path / CDC_VERSION_MACROS).write_text("{# stale #}\n", encoding="utf-8")
    env = {"BANKDE_DBT_PROJECT_DIR": str(tmp_path), "COLUMNS": "200"}
    runner = CliRunner()
    stale = runner.invoke(app, ["dbt", "macros", "--check"], env=env)
    assert stale.exit_code == 1, stale.output
    assert "out of date" in stale.output
    assert (tmp_path / CDC_VERSION_MACROS).read_text(encoding="utf-8") == "{# stale #}\n"
    assert runner.invoke(app, ["dbt", "macros"], env=env).exit_code == 0
    fresh = runner.invoke(app, ["dbt", "macros", "--check"], env=env)
    assert fresh.exit_code == 0, fresh.output
