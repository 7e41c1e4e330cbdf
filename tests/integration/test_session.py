"""The warehouse session: one per process and target, closed explicitly; read-only commands
never write schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankde.errors import ConfigError
from bankde.settings import Settings
from bankde.warehouse.client import open_warehouse
from bankde.warehouse.session import open_session


def _databases(settings: Settings) -> list[str]:
    wh = open_warehouse(settings)
    rows = wh.query(
        "SELECT name FROM system.databases WHERE startsWith(name, {p:String}) ORDER BY name",
        {"p": settings.wh_prefix},
    )
    return [str(r[0]) for r in rows]


def test_one_session_per_process_and_target(wh_settings: Settings) -> None:
    session = open_session(wh_settings)
    assert session.embedded and not session.closed
    # Code handed no session shares the one the process opened: never a second engine.
    assert open_session(wh_settings) is session
    assert open_warehouse(wh_settings).session is session
    assert session.warehouse().scalar("SELECT 41 + 1") == 42
    session.close()
    assert session.closed
    # Closed means released: the next open takes the lock again, in this process or another.
    again = open_session(wh_settings)
    assert again is not session and again.warehouse().scalar("SELECT 1") == 1


def test_a_second_data_directory_is_refused(wh_settings: Settings, tmp_path: Path) -> None:
    other = wh_settings.model_copy(update={"wh_dir": tmp_path / "other-warehouse"})
    open_session(wh_settings)
    with pytest.raises(ConfigError, match="one data directory per process"):
        open_session(other)


def test_read_only_commands_run_no_ddl(source_wh_settings: Settings) -> None:
    """`cdc status` and `reconcile` on a warehouse nothing was captured into report it, creating
    nothing."""
    from bankde.cdc.status import status
    from bankde.monitoring.reconcile import reconcile
    from bankde.warehouse.sink import load_offset

    s = source_wh_settings
    assert _databases(s) == []
    data = status(s, counts=True)
    assert data["warehouse"] == "ok"
    assert data["offset_lsn"] is None and data["last_batch_at"] is None
    assert data["tables"] and all(c["warehouse"] is None for c in data["tables"].values())
    assert load_offset(open_warehouse(s), s.cdc_slot) is None
    assert _databases(s) == []
    result = reconcile(s, open_warehouse(s))
    assert not result.equal and all("does not exist" in " ".join(t.problems) for t in result.tables)
    assert _databases(s) == []
