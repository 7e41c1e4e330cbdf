"""`bankde reconcile` (source vs warehouse, table by table) and `bankde report` (HTML charts)."""

from __future__ import annotations

from pathlib import Path

import typer

from bankde.console import err, out, print_json
from bankde.errors import ConfigError
from bankde.warehouse.options import WaitOption, settings_with_wait


def reconcile_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    sample: int = typer.Option(10, "--sample", min=1, help="Differing keys to show per table."),
    wait: WaitOption = None,
) -> None:
    """Source vs warehouse per table: row count and checksum of all columns (exit 1 if any differ)."""
    from bankde.monitoring.reconcile import reconcile
    from bankde.warehouse.session import open_session

    settings = settings_with_wait(wait)
    with open_session(settings) as session:
        result = reconcile(settings, session.warehouse(), sample_size=sample)
    if as_json:
        print_json(result.to_dict())
    else:
        from rich.table import Table

        table = Table(show_header=True, header_style="bold")
        table.add_column("table", no_wrap=True)
        table.add_column("source rows", justify="right")
        table.add_column("warehouse rows", justify="right")
        table.add_column("checksum", no_wrap=True)
        table.add_column("", no_wrap=True)
        data = result.to_dict()["tables"]
        for t, d in zip(result.tables, data, strict=True):
            same = d["source_checksum"] == d["warehouse_checksum"]
            checksum = (
                d["source_checksum"]
                if same
                else f"{d['source_checksum']} ≠ {d['warehouse_checksum']}"
            )
            table.add_row(
                t.table,
                f"{t.source_rows:,}",
                f"{t.warehouse_rows:,}",
                checksum,
                "[green]equal[/]" if t.equal else "[red]DIFFERENT[/]",
            )
        out.print(table)
        for t in result.differing:
            for problem in t.problems:
                out.print(f"{t.table}: {problem}")
            for diff in t.sample:
                out.print(f"{t.table}: {diff.key}: {diff.problem}")
        for t in result.tables:
            if t.quarantine_note:
                out.print(f"[yellow]{t.quarantine_note}[/yellow]", soft_wrap=True)
        verdict = "equal" if result.equal else f"{len(result.differing)} table(s) differ"
        out.print(f"{verdict} ({len(result.tables)} tables, {result.seconds:.1f}s)")
    if not result.equal:
        raise typer.Exit(1)


def report_command(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Where to write it (default $BANKDE_HOME/report.html)."
    ),
    no_source: bool = typer.Option(
        False, "--no-source", help="Read only the warehouse: no freshness, no reconciliation."
    ),
    wait: WaitOption = None,
) -> None:
    """One self-contained HTML page (opens offline) of charts: traffic, fraud, rules, CDC, lifecycle."""
    from bankde.monitoring.report import write_report
    from bankde.warehouse.session import open_session

    settings = settings_with_wait(wait)
    if output is not None and output.is_dir():
        raise ConfigError(f"--output {output}: is a directory; name the .html file to write")
    with open_session(settings) as session:
        res = write_report(settings, session.warehouse(), output, with_source=not no_source)
    out.print(str(res.path), soft_wrap=True)
    err.print(f"report: {res.charts} charts in {res.seconds:.1f}s")
    for note in res.notes:
        err.print(f"  note: {note}", soft_wrap=True)


def register(root: typer.Typer) -> None:
    root.command("reconcile")(reconcile_command)
    root.command("report")(report_command)
