"""The source's roles and what each may do: superuser for creation only, owner, application, capture."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from bankde.settings import Settings
from bankde.source.catalog import SCHEMAS, captured_tables_in
from bankde.source.connection import admin_info, cdc_info, connect, owner_info
from bankde.source.scram import scram_verifier

# Serialises concurrent `db init` runs (the same key as schema.apply_schema's).
INIT_LOCK = 0x62616E6B
# Attributes a role may never carry here: a superuser can run `COPY ... TO PROGRAM`, read any
# file the server can, and replace the server's code; the others let it widen its own rights.
LIMITED = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
# The application role writes the filler's rows and reads what reconcile and status count.
APP_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE"
APP_SEQUENCE_PRIVILEGES = "USAGE, SELECT, UPDATE"  # the filler moves sequences past its ids


def set_role(
    conn: psycopg.Connection[Any], role: str, attributes: str, password: str | None
) -> None:
    """CREATE or ALTER `role`; the password goes as a SCRAM verifier computed here, so the clear
    text reaches neither the server nor its log (log_statement, a failed statement's report)."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    stmt = sql.SQL(verb + " ROLE {} WITH " + attributes).format(sql.Identifier(role))
    if password:
        stmt = stmt + sql.SQL(" PASSWORD {}").format(sql.Literal(scram_verifier(password)))
    conn.execute(stmt)


def provision_managed(settings: Settings, dbname: str) -> bool:
    """As the managed cluster's superuser: the three roles and the database, owned by the owner
    and open only to these roles. Returns True when the database was created now."""
    from bankde.source.cluster import ManagedCluster

    cluster = ManagedCluster(settings)
    owner, app, cdc = settings.owner_user, settings.db_user, settings.cdc_user
    with connect(admin_info(settings), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (INIT_LOCK,))
        try:
            owner_pw = owner_info(settings).params.get("password")
            set_role(conn, owner, f"LOGIN NOREPLICATION {LIMITED}", owner_pw)
            set_role(conn, app, f"LOGIN NOREPLICATION {LIMITED}", app_password(settings))
            set_role(
                conn, cdc, f"LOGIN REPLICATION {LIMITED}", cdc_info(settings).params.get("password")
            )
            # `cdc status` reads the walsender's lag from pg_stat_replication, which shows it
            # only to pg_read_all_stats: the owner (who holds the data anyway) may read stats.
            conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(owner)))
            if conn.info.server_version >= 150000:
                # Bulk batches skip foreign-key triggers (writer.write_batch); on 15+ that one
                # setting can be granted instead of superuser.
                conn.execute(
                    sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(
                        sql.Identifier(app)
                    )
                )
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            db = sql.Identifier(dbname)
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(db, sql.Identifier(owner))
                )
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(owner)))
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            # The filler stages balance updates in a temporary table.
            conn.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    db, sql.Identifier(app)
                )
            )
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(cdc))
            )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (INIT_LOCK,))
    cluster.allow_database(dbname)
    return not exists


def app_password(settings: Settings) -> str | None:
    from bankde.source.connection import source_info

    return source_info(settings).params.get("password")


def grant_app(conn: psycopg.Connection[Any], app: str) -> None:
    """As the owner: the application role's rights on bank/truth, for today's and later tables."""
    role = sql.Identifier(app)
    for schema in SCHEMAS:
        ident = sql.Identifier(schema)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, role))
        conn.execute(
            sql.SQL("GRANT " + APP_TABLE_PRIVILEGES + " ON ALL TABLES IN SCHEMA {} TO {}").format(
                ident, role
            )
        )
        conn.execute(
            sql.SQL(
                "GRANT " + APP_SEQUENCE_PRIVILEGES + " ON ALL SEQUENCES IN SCHEMA {} TO {}"
            ).format(ident, role)
        )
        conn.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT " + APP_TABLE_PRIVILEGES
                + " ON TABLES TO {}"
            ).format(ident, role)
        )  # fmt: skip
        conn.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT " + APP_SEQUENCE_PRIVILEGES
                + " ON SEQUENCES TO {}"
            ).format(ident, role)
        )  # fmt: skip


def grant_capture(
    conn: psycopg.Connection[Any], cdc: str, tables: Iterable[tuple[str, str]]
) -> None:
    """As the owner: SELECT on exactly the captured tables (the snapshot reads them), no more.
    Called whenever the publication changes, so the two lists stay the same."""
    role = sql.Identifier(cdc)
    for schema in SCHEMAS:
        ident = sql.Identifier(schema)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, role))
        # Older bankde granted every future table by default; take that back.
        conn.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} REVOKE SELECT ON TABLES FROM {}").format(
                ident, role
            )
        )
    for schema, table in tables:
        conn.execute(
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(sql.Identifier(schema, table), role)
        )


# --- checks for an external source (`bankde db init --external`) -------------------------


@dataclass
class Report:
    """What a role may do that it should not, and what it lacks."""

    problems: list[str] = field(default_factory=list)
    fine: list[str] = field(default_factory=list)

    def check(self, ok: bool, good: str, bad: str) -> None:
        (self.fine if ok else self.problems).append(good if ok else bad)


def _attrs(conn: psycopg.Connection[Any]) -> tuple[str, bool, bool, bool, bool, bool]:
    row = conn.execute(
        "SELECT current_user::text, rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
        "rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    return (str(row[0]), bool(row[1]), bool(row[2]), bool(row[3]), bool(row[4]), bool(row[5]))


def _server_program(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT pg_has_role(current_user, 'pg_execute_server_program', 'USAGE') "
        "OR pg_has_role(current_user, 'pg_read_server_files', 'USAGE') "
        "OR pg_has_role(current_user, 'pg_write_server_files', 'USAGE')"
    ).fetchone()
    return bool(row and row[0])


def check_external(settings: Settings) -> Report:
    """Connect as the application and the capture role and list every missing or excess right
    (docs/security.md has the SQL that sets them up). Changes nothing."""
    from bankde.source.connection import source_info

    report = Report()
    with connect(source_info(settings)) as conn:
        user, sup, crole, cdb, repl, bypass = _attrs(conn)
        report.check(
            not sup,
            f"{user}: not a superuser",
            f"{user}: is a superuser (ALTER ROLE {user} NOSUPERUSER)",
        )
        report.check(
            not (crole or cdb or repl or bypass),
            f"{user}: no CREATEROLE/CREATEDB/REPLICATION/BYPASSRLS",
            f"{user}: has CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS (ALTER ROLE {user} {LIMITED} NOREPLICATION)",
        )
        report.check(
            not _server_program(conn),
            f"{user}: no server file or program access",
            f"{user}: member of pg_execute_server_program/pg_read_server_files/pg_write_server_files (REVOKE it)",
        )
        tables = captured_tables_in(conn)
        report.check(
            bool(tables),
            "schemas bank/truth exist",
            "no bank/truth tables: run `bankde db init` as the owner",
        )
        for schema, table in tables:
            rel = f"{schema}.{table}"
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'SELECT'), has_table_privilege(%s, 'INSERT'), "
                "has_table_privilege(%s, 'UPDATE'), pg_get_userbyid(relowner) = current_user "
                "FROM pg_class WHERE oid = %s::regclass",
                (rel, rel, rel, rel),
            ).fetchone()
            assert row is not None
            report.check(
                all(row[:3]),
                f"{user}: SELECT, INSERT, UPDATE on {rel}",
                f"{user}: lacks SELECT, INSERT or UPDATE on {rel} (GRANT {APP_TABLE_PRIVILEGES} ON {rel} TO {user})",
            )
    try:
        with connect(cdc_info(settings)) as conn:
            user, sup, crole, cdb, repl, bypass = _attrs(conn)
            report.check(
                repl,
                f"{user}: REPLICATION",
                f"{user}: lacks REPLICATION (ALTER ROLE {user} REPLICATION)",
            )
            report.check(
                not (sup or crole or cdb or bypass),
                f"{user}: not a superuser, no CREATEROLE/CREATEDB/BYPASSRLS",
                f"{user}: has SUPERUSER, CREATEROLE, CREATEDB or BYPASSRLS (ALTER ROLE {user} {LIMITED})",
            )
            for schema, table in tables:
                rel = f"{schema}.{table}"
                row = conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (rel,)).fetchone()
                report.check(
                    bool(row and row[0]),
                    f"{user}: SELECT on {rel}",
                    f"{user}: lacks SELECT on {rel} (GRANT SELECT ON {rel} TO {user})",
                )
            extra = conn.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT n.nspname = ANY(%s) "
                "AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1",
                (list(SCHEMAS),),
            ).fetchall()
            names = [str(r[0]) for r in extra]
            report.check(
                not names,
                f"{user}: reads nothing outside bank/truth",
                f"{user}: may read tables outside the captured ones: {', '.join(names[:5])} (REVOKE SELECT)",
            )
    except Exception as exc:  # reported as one finding, not a traceback
        report.problems.append(f"capture role cannot connect: {str(exc).splitlines()[0]}")
    return report
