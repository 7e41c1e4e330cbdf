"""Apply the bank schema, its roles and their grants, idempotently."""

from __future__ import annotations

from importlib import resources

from bankde.settings import Settings
from bankde.source.catalog import captured_tables_in
from bankde.source.connection import SourceInfo, cdc_info, connect, owner_info, source_info
from bankde.source.roles import (
    LIMITED,
    grant_app,
    grant_capture,
    provision_managed,
    set_role,
)

# Serialises concurrent `db init` runs against the same database.
_INIT_LOCK = 0x62616E6B


def schema_sql() -> str:
    return resources.files("bankde.source").joinpath("schema.sql").read_text(encoding="utf-8")


def apply_schema(info: SourceInfo) -> None:
    """Run schema.sql in one transaction (safe to run any number of times), as the owner."""
    with connect(info) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        conn.execute(schema_sql().encode())
        conn.commit()


def ensure_cdc_role(settings: Settings, info: SourceInfo) -> None:
    """External source: the capture role (LOGIN REPLICATION, SELECT on the captured tables, nothing
    else), made by the configured role when it may create roles; its password as a SCRAM verifier."""
    cdc = cdc_info(settings)
    with connect(info) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        set_role(
            conn, cdc.params["user"], f"LOGIN REPLICATION {LIMITED}", cdc.params.get("password")
        )
        grant_capture(conn, cdc.params["user"], captured_tables_in(conn))
        conn.commit()


def init_source(settings: Settings) -> SourceInfo:
    """Everything `bankde db init` does. Managed: roles and database as the superuser, then the
    schema and grants as the owner. External: schema and capture role as the configured role."""
    info = source_info(settings)
    if not info.managed:
        apply_schema(info)
        ensure_cdc_role(settings, info)
        return info
    provision_managed(settings, info.dbname)
    owner = owner_info(settings)
    apply_schema(owner)
    with connect(owner) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        grant_app(conn, settings.db_user)
        grant_capture(conn, settings.cdc_user, captured_tables_in(conn))
        conn.commit()
    return info
