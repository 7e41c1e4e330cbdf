"""The warehouse session: opened by the owner and passed down, one embedded per process,
closed explicitly; read-only commands never write schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankde.errors import ConfigError
from bankde.settings import Settings
from bankde.warehouse.client import Warehouse
from bankde.warehouse.session import WarehouseSession, open_session


def _databases(wh: Warehouse, settings: Settings) -> list[str]:
    rows = wh.query(
        "SELECT name FROM system.databases WHERE startsWith(name, {p:String}) ORDER BY name",
        {"p": settings.wh_prefix},
    )
    return [str(r[0]) for r in rows]


def test_one_session_per_process_and_target(wh_settings: Settings) -> None:
    with open_session(wh_settings) as session:
        assert session.embedded and not session.closed
        # No registry hands it out again: a second open in this process is refused, naming
        # the open one; the owner passes its session down instead.
        with pytest.raises(ConfigError, match="pass that session down") as exc:
            open_session(wh_settings)
        assert session.location in str(exc.value)
        assert session.warehouse(wh_settings).session is session
        assert session.warehouse().scalar("SELECT 41 + 1") == 42
    assert session.closed
    # Closed means released: the next open takes the lock again, in this process or another.
    with open_session(wh_settings) as again:
        assert again is not session and again.warehouse().scalar("SELECT 1") == 1


def test_a_second_data_directory_is_refused(wh_settings: Settings, tmp_path: Path) -> None:
    other = wh_settings.model_copy(update={"wh_dir": tmp_path / "other-warehouse"})
    with open_session(wh_settings) as session:
        with pytest.raises(ConfigError, match="one data directory per process") as exc:
            open_session(other)
        # The message names both directories.
        assert session.location in str(exc.value)
        assert str(tmp_path / "other-warehouse") in str(exc.value)
    assert not (tmp_path / "other-warehouse").exists()


def test_read_only_commands_run_no_ddl(
    source_wh_settings: Settings, source_wh_session: WarehouseSession
) -> None:
    """`cdc status` and `reconcile` on a warehouse nothing was captured into report it, creating
    nothing."""
    from bankde.cdc.status import status
    from bankde.monitoring.reconcile import reconcile
    from bankde.warehouse.sink import load_offset

    s = source_wh_settings
    wh = source_wh_session.warehouse(s)
    assert _databases(wh, s) == []
    data = status(s, warehouse=wh, counts=True)
    assert data["warehouse"] == "ok"
    assert data["offset_lsn"] is None and data["last_batch_at"] is None
    assert data["tables"] and all(c["warehouse"] is None for c in data["tables"].values())
    assert load_offset(wh, s.cdc_slot) is None
    assert _databases(wh, s) == []
    result = reconcile(s, wh)
    assert not result.equal and all("does not exist" in " ".join(t.problems) for t in result.tables)
    assert _databases(wh, s) == []
