"""Apply the bank schema and the capture role, idempotently."""

from __future__ import annotations

from importlib import resources

from psycopg import sql

from bankde.settings import Settings
from bankde.source.connection import SourceInfo, cdc_info, connect, source_info

SCHEMAS = ("bank", "truth")
# Serialises concurrent `db init` runs against the same database.
_INIT_LOCK = 0x62616E6B


def schema_sql() -> str:
    return resources.files("bankde.source").joinpath("schema.sql").read_text(encoding="utf-8")


def ensure_database(info: SourceInfo) -> bool:
    """Create the source database on the managed cluster if missing. True when created."""
    admin = info.with_db("postgres")
    with connect(admin, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (info.dbname,)
        ).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(info.dbname)))
        return True


def apply_schema(info: SourceInfo) -> None:
    """Run schema.sql in one transaction (safe to run any number of times)."""
    with connect(info) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        conn.execute(schema_sql().encode())
        conn.commit()


def ensure_cdc_role(settings: Settings, info: SourceInfo) -> None:
    """The capture role: LOGIN REPLICATION, SELECT on the captured tables, nothing else."""
    cdc = cdc_info(settings)
    role = cdc.params["user"]
    password = cdc.params.get("password")
    with connect(info) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        stmt = sql.SQL(
            verb + " ROLE {} WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE"
        ).format(sql.Identifier(role))
        if password:
            stmt = stmt + sql.SQL(" PASSWORD {}").format(sql.Literal(password))
        conn.execute(stmt)
        for schema in SCHEMAS:
            ident = sql.Identifier(schema)
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, sql.Identifier(role))
            )
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                    ident, sql.Identifier(role)
                )
            )
            # Tables created later (e.g. by a newer schema) are readable too.
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}"
                ).format(ident, sql.Identifier(role))
            )
        conn.commit()


def init_source(settings: Settings) -> SourceInfo:
    """Everything `bankde db init` does: database (managed only), schema, capture role."""
    info = source_info(settings)
    if info.managed:
        ensure_database(info)
    apply_schema(info)
    ensure_cdc_role(settings, info)
    return info
