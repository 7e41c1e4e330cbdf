"""`bankde db ...`: manage the local source cluster and its schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import typer

from bankde.console import out, print_json
from bankde.errors import ConfigError
from bankde.settings import get_settings

# libpq's connection parameters and the environment variables psql reads them from.
LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
    "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE",
    "channel_binding": "PGCHANNELBINDING", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "sslmode": "PGSSLMODE", "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL", "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER", "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB", "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS", "service": "PGSERVICE",
    "require_auth": "PGREQUIREAUTH", "sslpassword": "PGSSLPASSWORD",
}  # fmt: skip

app = typer.Typer(
    help="The source Postgres: managed local cluster and the bank schema.", no_args_is_help=True
)


@app.command()
def up(
    tls: bool = typer.Option(
        False, "--tls", help="Make a local CA and server certificate and turn on ssl (verify-full)."
    ),
) -> None:
    """Create (first time) and start the managed Postgres cluster."""
    from bankde.source.cluster import ManagedCluster

    cluster = ManagedCluster(get_settings())
    created = cluster.init()
    if tls and cluster.enable_tls():
        out.print(f"TLS on: CA {cluster.tls_dir / 'ca.crt'}; connections use sslmode=verify-full")
    started = cluster.start()
    if started:
        verb = "created and started" if created else "started"
        out.print(f"Postgres {verb} on 127.0.0.1:{cluster.port} (data: {cluster.data_dir})")
    else:
        out.print(
            f"Postgres already running on 127.0.0.1:{cluster.port} (data: {cluster.data_dir})"
        )


@app.command()
def down() -> None:
    """Stop the managed Postgres cluster (data is kept)."""
    from bankde.source.cluster import ManagedCluster

    cluster = ManagedCluster(get_settings())
    if cluster.stop():
        out.print("Postgres stopped")
    else:
        out.print("Postgres was not running")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show whether the source is up, its port and DSN (never the password)."""
    from bankde.source.cluster import ManagedCluster
    from bankde.source.connection import source_info

    settings = get_settings()
    info = source_info(settings)
    if info.managed:
        st = ManagedCluster(settings).status()
        data = {
            "mode": "managed",
            "state": st.state,
            "port": st.port,
            "pid": st.pid,
            "data_dir": str(st.data_dir),
            "dsn": info.public_dsn,
        }
    else:
        data = {
            "mode": "external",
            "state": _probe(info),
            "port": int(info.params.get("port", 5432)),
            "dsn": info.public_dsn,
        }
    if as_json:
        print_json(data)
    else:
        for k, v in data.items():
            out.print(f"{k:>9}: {v}")
    if data["state"] != "running":
        raise typer.Exit(1)


def _probe(info: object) -> str:
    from bankde.errors import SourceUnavailable
    from bankde.source.connection import SourceInfo, connect

    assert isinstance(info, SourceInfo)
    try:
        with connect(info) as conn:
            conn.execute("SELECT 1")
        return "running"
    except SourceUnavailable:
        return "unreachable"


@app.command()
def init(
    external: bool = typer.Option(
        False,
        "--external",
        help="Change nothing: check the application and capture roles of an external source "
        "and list what is missing or too much (docs/security.md has the SQL).",
    ),
) -> None:
    """Create the roles and database, apply schema.sql and the grants (idempotent)."""
    settings = get_settings()
    if external:
        from bankde.source.roles import check_external

        if not settings.external_source:
            raise ConfigError("--external checks a server named by BANKDE_PG_DSN or DB_HOST")
        report = check_external(settings)
        for line in report.fine:
            out.print(f"  ok  {line}")
        for line in report.problems:
            out.print(f"  MISSING  {line}")
        if report.problems:
            out.print(f"{len(report.problems)} problem(s): see docs/security.md for the SQL")
            raise typer.Exit(1)
        out.print("external source: roles have what they need and no more")
        return
    from bankde.source.schema import init_source

    info = init_source(settings)
    out.print(f"schema applied to {info.public_dsn}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(ctx: typer.Context) -> None:
    """Run psql connected to the source; extra arguments are passed through."""
    from bankde.source.connection import source_info

    info = source_info(get_settings())
    exe = shutil.which("psql")
    if exe is None:
        from bankde.source.cluster import find_pg_bin

        candidate = find_pg_bin() / "psql"
        exe = str(candidate) if candidate.exists() else None
    if exe is None:
        raise ConfigError("psql not found: install the Debian package postgresql-client")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # Every parameter of the DSN (TLS files included) and the password travel in the
    # environment, never on the command line.
    for key, value in info.params.items():
        var = LIBPQ_ENV.get(key)
        if var is None:
            raise ConfigError(f"BANKDE_PG_DSN: parameter {key!r} cannot be passed to psql")
        env[var] = value
    sys.stdout.flush()
    raise typer.Exit(subprocess.call([exe, *ctx.args], env=env))


@app.command()
def reset(yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Drop the bank and truth schemas and apply the schema again (all source data is lost)."""
    from bankde.source.connection import connect, owner_info, source_info
    from bankde.source.schema import init_source

    settings = get_settings()
    info = source_info(settings)
    if not yes and not typer.confirm(f"Drop all data in {info.public_dsn}?"):
        raise typer.Exit(1)
    with connect(owner_info(settings)) as conn:
        conn.execute("DROP SCHEMA IF EXISTS truth CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS bank CASCADE")
        conn.commit()
    init_source(settings)
    out.print("source reset: schemas dropped and re-created")
