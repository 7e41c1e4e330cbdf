"""`bankde demo`, `bankde run` and `bankde airflow`: the whole pipeline, once, live, or scheduled."""

from __future__ import annotations

from typing import Literal

import typer

from bankde.console import out, print_json
from bankde.errors import BankdeError, ConfigError
from bankde.settings import get_settings
from bankde.warehouse.options import WaitOption, settings_with_wait

ENGINE_OPTION = typer.Option(
    "native",
    "--engine",
    help="Capture engine: native (pgoutput), debezium (in-process), kafka (the managed Kafka "
    "and Connect worker brought up, debezium/*.json registered).",
)


def _check_engine(engine: str) -> None:
    """A wrong name or a missing extra fails before anything starts (exit 2)."""
    from bankde.cdc.registry import get_engine

    spec = get_engine(engine)
    try:
        spec.engine_class()
    except BankdeError as exc:
        raise ConfigError(str(exc)) from None


class DemoFailed(BankdeError):
    """The demo ran but source and warehouse differ or dbt failed (the summary says where)."""


def demo(
    size: str = typer.Option("small", "--size", help="small | medium | large."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No step announcements or progress bars."),
    engine: str = ENGINE_OPTION,
    wait: WaitOption = None,
) -> None:
    """Run the whole pipeline: Postgres, fill, CDC into the warehouse, dbt build, summary.

    Safe to run again: it adds new events and everything updates incrementally.
    """
    from bankde.orchestration.demo import SIZES, run_demo
    from bankde.orchestration.summary import render
    from bankde.warehouse.session import open_session

    if size not in SIZES:
        raise ConfigError(f"--size {size!r}: must be one of {', '.join(SIZES)}")
    chosen: Literal["small", "medium", "large"] = size  # type: ignore[assignment]
    _check_engine(engine)
    settings = settings_with_wait(wait)
    with open_session(settings) as session:
        summary = run_demo(settings, session, chosen, quiet=quiet or as_json, engine=engine)
    if as_json:
        print_json(summary.as_dict())
    else:
        render(summary)
    if not summary.ok:
        what = []
        if not summary.reconciliation.get("equal"):
            what.append("source and warehouse differ")
        if not summary.dbt.get("success", True):
            what.append(f"dbt failed ({', '.join(summary.dbt.get('failed', [])) or 'see above'})")
        raise DemoFailed("demo finished with problems: " + "; ".join(what))


def run(
    rate: float = typer.Option(200.0, "--rate", min=0.1, help="Filler transactions per second."),
    dbt_every: float = typer.Option(
        60.0, "--dbt-every", min=1.0, help="Seconds between dbt builds of the models."
    ),
    no_fill: bool = typer.Option(
        False, "--no-fill", help="Do not generate events (an external source writes them)."
    ),
    duration: float | None = typer.Option(
        None,
        "--duration",
        min=1.0,
        help="Stop by itself after streaming this many seconds (after the first catch-up).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No live status line."),
    metrics_port: int | None = typer.Option(  # [report hook] issue 11
        None,
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics while running (off by default).",
    ),
    serve: bool = typer.Option(
        True,
        "--serve/--no-serve",
        help="Serve the warehouse over ClickHouse's HTTP interface while running.",
    ),
    live: bool = typer.Option(
        True,
        "--live/--no-live",
        help="Re-evaluate the fraud rules on the cards each CDC batch touched (live alerts).",
    ),
    engine: str = ENGINE_OPTION,
    wait: WaitOption = None,
) -> None:
    """Continuous mode: live filler, CDC streaming, dbt every --dbt-every seconds; Ctrl-C stops.

    After each dbt build, $BANKDE_HOME/report.html is rewritten (see `bankde report`)."""
    from bankde.orchestration.runloop import RunOptions, run_pipeline
    from bankde.warehouse.session import open_session

    _check_engine(engine)
    options = RunOptions(
        engine=engine,
        rate=rate,
        dbt_every=dbt_every,
        fill=not no_fill,
        status=not quiet,
        duration=duration,
        metrics_port=metrics_port,  # [report hook] issue 11
        serve=serve,
        live=live,
    )
    if metrics_port is not None:
        from bankde.console import err
        from bankde.monitoring.metrics import metrics_url

        err.print(f"metrics: {metrics_url(metrics_port)}")
    settings = settings_with_wait(wait)
    with open_session(settings) as session:
        state = run_pipeline(settings, session, options)
    out.print(
        f"stopped cleanly: {state.changes:,} changes applied in {state.batches:,} batches, "
        f"{state.dbt_runs} dbt builds ({state.dbt_failures} failed), "
        f"alerts {sum(state.alerts.values()):,}"
        + (f", live alerts {sum(state.live_alerts.values()):,}" if live else ""),
        soft_wrap=True,
    )


def airflow(
    port: int | None = typer.Option(
        None, "--port", help="API/UI port (default BANKDE_AIRFLOW_PORT)."
    ),
) -> None:
    """Airflow standalone with the project's DAGs (SQLite under $BANKDE_HOME/airflow); Ctrl-C stops."""
    from bankde.orchestration.airflow_env import standalone

    rc = standalone(get_settings(), port)
    if rc:
        raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
    app.command(name="run")(run)
    app.command(name="airflow")(airflow)
