"""`bankde wh ...`: create the warehouse schema and query the warehouse."""

from __future__ import annotations

import csv
import enum
import sys
from typing import Any

import typer

from bankde.console import out, print_json
from bankde.warehouse.options import WaitOption, settings_with_wait

app = typer.Typer(
    help="The ClickHouse warehouse (embedded chDB, or a server via BANKDE_CLICKHOUSE_URL).",
    no_args_is_help=True,
)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def init(wait: WaitOption = None) -> None:
    """Create the warehouse databases and tables (clickhouse_init/01_schema_dwh.sql); idempotent."""
    from bankde.warehouse.ddl import apply_schema, db_names
    from bankde.warehouse.session import open_session

    settings = settings_with_wait(wait)
    with open_session(settings) as session:
        wh = session.warehouse()
        count = apply_schema(wh)
    names = db_names(settings)
    out.print(
        f"warehouse {wh.location}: schema applied ({count} statements; databases "
        f"{names.raw}, {names.truth}, {names.meta})"
    )


@app.command("sql")
def run_sql(
    query: str = typer.Argument(
        ..., help='A ClickHouse SQL statement, e.g. "SELECT count() FROM raw.transaction FINAL".'
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
    wait: WaitOption = None,
) -> None:
    """Run a query in the warehouse and print the result."""
    from bankde.warehouse.session import open_session

    with open_session(settings_with_wait(wait)) as session:
        columns, rows = session.warehouse().query_with_names(query)
    if fmt is OutputFormat.json:
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif fmt is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_plain(v) for v in row] for row in rows)
    else:
        from rich.table import Table

        table = Table(show_header=True, header_style="bold")
        for name in columns:
            table.add_column(name)
        for row in rows:
            table.add_row(*(("NULL" if v is None else str(_plain(v))) for v in row))
        out.print(table)
        out.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")


@app.command()
def serve(
    port: int | None = typer.Option(
        None,
        "--port",
        min=0,
        max=65535,
        help="Port on 127.0.0.1 (default BANKDE_WH_HTTP_PORT, 8123); taken: exit 2.",
    ),
    wait: WaitOption = None,
) -> None:
    """Serve the embedded warehouse over ClickHouse's HTTP interface until Ctrl-C; every other
    bankde command, dbt and any ClickHouse client then connect to it."""
    from bankde.warehouse.server.serve import serve_until_signal

    serve_until_signal(settings_with_wait(wait), port)


def _plain(value: Any) -> Any:
    return "" if value is None else value


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="wh")
