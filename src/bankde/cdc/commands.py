"""`bankde cdc ...`: snapshot and stream the source into the warehouse; status; resync."""

from __future__ import annotations

import typer

from bankde.console import err, out, print_json
from bankde.settings import Settings
from bankde.warehouse.options import WaitOption, settings_with_wait

app = typer.Typer(
    help="Change data capture: Postgres logical replication into the warehouse.",
    no_args_is_help=True,
)


def _engine_help() -> str:
    from bankde.cdc.registry import engine_help

    return engine_help()


ENGINE_HELP = _engine_help()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cdc")


def _engine_settings(settings: Settings, engine: str) -> Settings:
    """The settings `engine` captures under (its own slot, publication and offset row)."""
    from bankde.cdc.registry import get_engine

    return get_engine(engine).settings_for(settings)


def _print_result(res: object, as_json: bool) -> None:
    from bankde.cdc.api import SyncResult

    assert isinstance(res, SyncResult)
    if as_json:
        print_json(res.to_dict())
        return
    if res.snapshot_rows:
        total = sum(res.snapshot_rows.values())
        out.print(
            f"snapshot: {total:,} rows in {res.snapshot_seconds:.1f}s "
            f"({res.snapshot_rows_per_s:,.0f} rows/s)"
        )
        for name, n in res.snapshot_rows.items():
            out.print(f"  {name:<24} {n:>12,}")
    out.print(
        f"stream: {res.changes:,} changes in {res.transactions:,} transactions, "
        f"{res.batches} batches, {res.stream_seconds:.1f}s ({res.changes_per_s:,.0f} changes/s)"
    )
    for name, n in sorted(res.tables.items()):
        out.print(f"  {name:<24} {n:>12,}")
    out.print(f"slot {res.slot} at {res.to_dict()['lsn']}")


@app.command()
def sync(
    engine: str = typer.Option("native", "--engine", help=ENGINE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Snapshot progress bars."),
    wait: WaitOption = None,
) -> None:
    """Snapshot if needed, apply every change committed before now, then exit."""
    from bankde.cdc.api import open_sink
    from bankde.cdc.api import sync as do_sync
    from bankde.cdc.registry import make_engine
    from bankde.warehouse.session import open_session

    settings = settings_with_wait(wait)
    make_engine(settings, engine)  # a wrong engine name fails before the warehouse opens
    with open_session(settings) as session:
        sink = open_sink(settings, session)
        res = do_sync(settings, sink, engine=engine, show_progress=progress and not as_json)
    _print_result(res, as_json)


@app.command()
def run(
    engine: str = typer.Option("native", "--engine", help=ENGINE_HELP),
    batch_rows: int | None = typer.Option(
        None, "--batch-rows", min=1, help="Max changes per batch."
    ),
    batch_seconds: float | None = typer.Option(
        None,
        "--batch-seconds",
        min=0.01,
        help="Max seconds a change waits in a batch (default 0.5).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Snapshot progress bars."),
    metrics_port: int | None = typer.Option(  # [report hook] issue 11: live metrics
        None,
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics while streaming (off by default).",
    ),
    wait: WaitOption = None,
) -> None:
    """Stream until Ctrl-C or SIGTERM; the last complete batch is written before exit."""
    import signal
    import threading

    from bankde.cdc.api import open_sink
    from bankde.cdc.api import run as do_run
    from bankde.cdc.registry import make_engine
    from bankde.monitoring.metrics import metrics_url, serving
    from bankde.warehouse.session import open_session

    settings = settings_with_wait(wait)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        err.print(f"{signal.Signals(signum).name}: finishing the current batch, then stopping")
        stop.set()

    slot = _engine_settings(settings, engine).cdc_slot
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    err.print(f"streaming slot {slot} with the {engine} engine (Ctrl-C to stop)")
    # [report hook] issue 11: metrics served for the stream's lifetime, fed per batch.
    make_engine(settings, engine)  # a wrong engine name fails before the warehouse opens
    with (
        open_session(settings) as session,
        serving(metrics_port, _engine_settings(settings, engine)) as metrics,
    ):
        if metrics_port is not None:
            err.print(f"metrics: {metrics_url(metrics_port)}")
        res = do_run(
            settings,
            stop,
            open_sink(settings, session),
            engine=engine,
            batch_rows=batch_rows,
            batch_seconds=batch_seconds,
            on_batch=metrics.on_batch if metrics is not None else None,
            show_progress=progress,
        )
    _print_result(res, False)


@app.command()
def status(
    engine: str = typer.Option("native", "--engine", help=ENGINE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    wait: WaitOption = None,
) -> None:
    """Slot, lag, WAL retained, last batch, changes/s, row counts source vs warehouse."""
    from bankde.cdc.status import status as get_status
    from bankde.errors import BankdeError
    from bankde.warehouse.session import open_session

    settings = _engine_settings(settings_with_wait(wait), engine)
    try:
        session = open_session(settings)
    except BankdeError as exc:
        # Another process owns the embedded warehouse: the slot part is still worth printing.
        data = get_status(settings, warehouse=exc)
    else:
        with session:
            warehouse = session.warehouse(settings)
            data = get_status(settings, warehouse=warehouse)
            from bankde.cdc.registry import get_engine

            spec = get_engine(engine)
            if spec.status is not None:
                part = spec.status(settings_with_wait(wait), warehouse)
                if part.get("problem") and not data.get("problem"):
                    data["problem"] = part["problem"]
                data[engine] = part
    if as_json:
        print_json(data)
    else:
        tables = data.pop("tables")
        rejects = data.pop("rejects", {})
        stopped = data.pop("stopped", {})
        for k, v in data.items():
            out.print(f"{k:>20}: {v}")
        out.print(f"{'stopped':>20}: {len(stopped)}")
        for reason in stopped.values():
            out.print(f"  [yellow]{reason}[/yellow]", soft_wrap=True)
        out.print(f"{'rejects':>20}: {sum(r['rows'] for r in rejects.values())}")
        for name, r in rejects.items():
            out.print(
                f"  [yellow]{name}: {r['rows']:,} row(s) quarantined in meta.cdc_rejects "
                f"(last: {r['last_column']}: {r['last_reason']})[/yellow]",
                soft_wrap=True,
            )
        if tables:
            out.print(f"{'table':<24} {'source':>12} {'warehouse':>12}")
            for name, c in tables.items():
                wh = "-" if c["warehouse"] is None else f"{c['warehouse']:,}"
                flag = "" if c["warehouse"] == c["source"] else "  [yellow]differs[/yellow]"
                out.print(f"{name:<24} {c['source']:>12,} {wh:>12}{flag}")
    if data.get("problem"):
        # One line, never wrapped to the terminal's width (a connector's error line is long).
        err.print(f"[red]{data['problem']}[/red]", soft_wrap=True, highlight=False)
        raise typer.Exit(1)


@app.command()
def resync(
    engine: str = typer.Option("native", "--engine", help=ENGINE_HELP),
    table: list[str] = typer.Option(
        [],
        "--table",
        "-t",
        help="Re-snapshot only this table (schema.table; repeat for more) while the slot "
        "streams on: nothing is dropped.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Snapshot progress bars."),
    wait: WaitOption = None,
) -> None:
    """Recreate the slot and snapshot every table again; the landing tables are replaced at once
    when the new snapshot is complete."""
    from bankde.cdc.api import open_sink
    from bankde.cdc.api import resync as do_resync
    from bankde.cdc.registry import make_engine
    from bankde.warehouse.session import open_session

    settings = settings_with_wait(wait)
    if table:
        _resync_tables(settings, table, as_json)
        return
    slot_settings = _engine_settings(settings, engine)
    make_engine(settings, engine)  # an engine that cannot run fails before anything is dropped
    if not yes and not typer.confirm(
        f"drop slot {slot_settings.cdc_slot} and snapshot every table again (the landing "
        "tables are replaced when it is complete)?",
        err=True,
    ):
        raise typer.Exit(1)
    with open_session(settings) as session:
        sink = open_sink(settings, session)
        res = do_resync(settings, sink, engine=engine, show_progress=progress and not as_json)
    _print_result(res, as_json)


def _resync_tables(settings: Settings, names: list[str], as_json: bool) -> None:
    """`cdc resync --table`: the tables copied again at one consistent point, nothing dropped."""
    from bankde.cdc.api import open_sink
    from bankde.cdc.tablesnap import snapshot_tables_live
    from bankde.errors import ConfigError
    from bankde.warehouse.session import open_session

    tables = []
    for name in names:
        schema, dot, tbl = name.partition(".")
        if not dot or not schema or not tbl:
            raise ConfigError(f"--table {name!r}: write it as schema.table (e.g. bank.card)")
        tables.append((schema, tbl))
    with open_session(settings) as session:
        done = snapshot_tables_live(settings, open_sink(settings, session), tables)
    if as_json:
        print_json({"tables": done.rows, "lsn": done.lsn, "seconds": round(done.seconds, 3)})
        return
    for name, rows in done.rows.items():
        out.print(f"{name}: {rows:,} rows copied again at LSN {done.lsn:X}")
    out.print(f"done in {done.seconds:.1f}s; the slot streamed on meanwhile")
