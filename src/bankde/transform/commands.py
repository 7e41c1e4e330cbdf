"""`bankde dbt ...`: run the dbt project in-process on the warehouse, and print the fraud evaluation."""

from __future__ import annotations

import typer

from bankde.console import out, print_json
from bankde.settings import get_settings

app = typer.Typer(
    help="dbt models on the warehouse (raw -> stg -> ods -> marts), run in this process.",
    no_args_is_help=True,
)

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _run(command: str, ctx: typer.Context) -> None:
    from bankde.transform.runner import DbtFailed, run_dbt
    from bankde.warehouse.session import open_session

    settings = get_settings()
    with open_session(settings) as session:
        result = run_dbt([command, *ctx.args], settings, session)
    if not result.success:
        failed = [name for name, status, _ in result.nodes if status in ("error", "fail")]
        detail = f": {', '.join(failed[:10])}" if failed else ""
        raise DbtFailed(f"dbt {command} failed{detail} (see dbt's output above)")


# dbt subcommands passed through as `bankde dbt <command> [dbt args]`, with their help.
_PASSTHROUGH_COMMANDS = {
    "build": "dbt build: snapshots, models and tests in DAG order. Extra args go to dbt (e.g. -s marts).",
    "run": "dbt run: build the models only. Extra args go to dbt (e.g. --full-refresh).",
    "test": "dbt test: data tests and unit tests. Extra args go to dbt.",
    "snapshot": "dbt snapshot: record status changes of customers, accounts, cards and terminals.",
}


def _passthrough(command: str, help_text: str) -> None:
    def invoke(ctx: typer.Context) -> None:
        _run(command, ctx)

    app.command(name=command, help=help_text, context_settings=_PASSTHROUGH)(invoke)


for _command, _help in _PASSTHROUGH_COMMANDS.items():
    _passthrough(_command, _help)


@app.command(name="macros")
def macros(
    check: bool = typer.Option(
        False, "--check", help="Change nothing; exit 1 if the committed file is out of date."
    ),
) -> None:
    """Regenerate dbt/macros/cdc_version.sql from bankde.cdc.version (the version encoding)."""
    from bankde.transform.macros import CDC_VERSION_MACROS, render_dbt_macros, write_dbt_macros
    from bankde.transform.runner import project_dir

    path = project_dir() / CDC_VERSION_MACROS
    if check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != render_dbt_macros():
            out.print(f"{path} is out of date: run `bankde dbt macros`")
            raise typer.Exit(1)
        out.print(f"{path} is up to date")
        return
    changed = write_dbt_macros(project_dir())
    out.print(f"{path} {'written' if changed else 'already up to date'}")


@app.command(name="docs", context_settings=_PASSTHROUGH)
def docs(ctx: typer.Context) -> None:
    """dbt's documentation site (models, columns, tests, lineage), generated offline.

    `bankde dbt docs` (or `docs generate \\[dbt args]`) writes it and prints where; `docs serve
    \\[dbt args]` serves it (dbt's own server)."""
    from bankde.console import err
    from bankde.transform.docs import generate_docs

    args = list(ctx.args)
    if args and args[0] != "generate":
        _run("docs", ctx)
        return
    from bankde.warehouse.session import open_session

    settings = get_settings()
    with open_session(settings) as session:
        site = generate_docs(settings, session, args[1:])
    out.print(str(site.static_index), soft_wrap=True)
    err.print(
        f"dbt docs: {site.static_index} opens as a file (everything inlined); {site.index} "
        "needs an HTTP server beside manifest.json and catalog.json (`bankde dbt docs serve`)",
        soft_wrap=True,
    )


@app.command(name="eval")
def evaluate(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Precision, recall and F1 of each fraud rule against the filler's labels."""
    from rich.table import Table

    from bankde.transform.evaluation import evaluation_rows
    from bankde.warehouse.session import open_session

    settings = get_settings()
    with open_session(settings) as session:
        rows = evaluation_rows(settings, session.warehouse())
    if as_json:
        print_json([r.as_dict() for r in rows])
        return

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    table = Table(title="fraud rules (marts.fraud_<scenario>) vs truth labels")
    for col in ("scenario", "labelled", "alerted", "TP", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "scenario" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r.scenario,
            f"{r.labelled:,}",
            f"{r.alerted:,}",
            f"{r.true_positives:,}",
            pct(r.precision),
            pct(r.recall),
            pct(r.f1),
        )
    out.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dbt")
