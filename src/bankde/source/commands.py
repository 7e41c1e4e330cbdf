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

app = typer.Typer(
    help="The source Postgres: managed local cluster and the bank schema.", no_args_is_help=True
)


@app.command()
def up() -> None:
    """Create (first time) and start the managed Postgres cluster."""
    from bankde.source.cluster import ManagedCluster

    cluster = ManagedCluster(get_settings())
    created = cluster.init()
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
def init() -> None:
    """Create the database, apply schema.sql and the capture role (idempotent)."""
    from bankde.source.schema import init_source

    info = init_source(get_settings())
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
    env = dict(os.environ)
    # The password travels in the environment, never on the command line.
    mapping = {
        "host": "PGHOST",
        "port": "PGPORT",
        "dbname": "PGDATABASE",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "sslmode": "PGSSLMODE",
    }
    for key, var in mapping.items():
        if key in info.params:
            env[var] = info.params[key]
    sys.stdout.flush()
    raise typer.Exit(subprocess.call([exe, *ctx.args], env=env))


@app.command()
def reset(yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Drop the bank and truth schemas and apply the schema again (all source data is lost)."""
    from bankde.source.connection import connect, source_info
    from bankde.source.schema import init_source

    settings = get_settings()
    info = source_info(settings)
    if not yes and not typer.confirm(f"Drop all data in {info.public_dsn}?"):
        raise typer.Exit(1)
    with connect(info) as conn:
        conn.execute("DROP SCHEMA IF EXISTS truth CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS bank CASCADE")
        conn.commit()
    init_source(settings)
    out.print("source reset: schemas dropped and re-created")
