"""A dbt pipeline per test module (own database, slot, warehouse prefix), shared by the dbt tests."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg import sql

from bankde.settings import Settings
from bankde.warehouse.session import WarehouseSession
from tests.conftest import cli_env, in_mode

REPO = Path(__file__).resolve().parents[2]
BANKDE = str(REPO / ".venv" / "bin" / "bankde")


@contextmanager
def module_pipeline(
    cluster: Settings,
    warehouse_dir: Path,
    prefix: str,
    mode: str = "embedded",
    request: pytest.FixtureRequest | None = None,
) -> Iterator[tuple[Settings, WarehouseSession]]:
    """Settings for a source database, slot, publication and warehouse prefix of their own
    (`prefix` + a random tag), the source schema applied, and the module's session (opened once,
    handed to capture, dbt and the reads); on exit all of it dropped and the session closed.
    `mode` "served" needs `request` (the session's served warehouse)."""
    from bankde.source.schema import init_source
    from bankde.warehouse.session import open_session

    tag = prefix + uuid.uuid4().hex[:8]
    settings = cluster.model_copy(
        update={
            "db_name": tag,
            "cdc_slot": f"slot_{tag}",
            "cdc_publication": f"pub_{tag}",
            "wh_dir": warehouse_dir,
            "wh_prefix": f"{tag}_",
            "clickhouse_url": None,
        }
    )
    if mode != "embedded":
        assert request is not None, "a served pipeline needs the fixture's request"
        settings = in_mode(settings, mode, request)
    init_source(settings)
    session = open_session(settings)
    try:
        yield settings, session
    finally:
        drop_pipeline(settings, session, cluster)


def drop_pipeline(settings: Settings, session: WarehouseSession, cluster: Settings) -> None:
    """Drop what a module's pipeline made: its slot, publication, warehouse layers, source
    database; then close its session."""
    from bankde.cdc.slot import drop_publication, drop_slot
    from bankde.source.connection import admin_info, connect
    from bankde.warehouse.ddl import drop_databases

    drop_slot(settings, wait=30)
    drop_publication(settings)
    wh = session.warehouse(settings)
    drop_databases(wh)
    for layer in ("stg", "ods", "marts", "dbt"):
        wh.command(f"DROP DATABASE IF EXISTS `{settings.wh_prefix}{layer}`")
    with connect(admin_info(cluster), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(settings.db_name)
            )
        )
    session.close()


def fill(settings: Settings, seed: int, as_of: str, txns: int, backfill_days: int) -> None:
    subprocess.run(
        [BANKDE, "fill", "--seed", str(seed), "--as-of", as_of, "--n-new-txns", str(txns),
         "--backfill-days", str(backfill_days), "--backfill-txns-per-day", "4000",
         "--fraud-share", "0.03", "--json"],
        env=cli_env(settings), check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def sync(settings: Settings, session: WarehouseSession) -> None:
    from bankde.cdc import api as capture

    capture.sync(settings, capture.open_sink(settings, session), show_progress=False)


def build(settings: Settings, session: WarehouseSession, *args: str) -> bool:
    from bankde.transform.runner import run_dbt

    return run_dbt(["build", *args], settings, session, quiet=True).success


def psql(settings: Settings, statement: str) -> None:
    from bankde.source.connection import connect, owner_info

    with connect(owner_info(settings), autocommit=True) as conn:  # the owner: it deletes rows
        conn.execute(statement)
