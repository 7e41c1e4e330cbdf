"""`bankde fill`: run the event filler once, or as a live stream."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

import typer

from bankde.console import err, out, print_json

if TYPE_CHECKING:
    from bankde.generator.runner import FillSummary


def fill_command(
    n_new_txns: int | None = typer.Option(None, "--n-new-txns", help="Current transactions (env N_NEW_TXNS, default 10000)."),
    backfill_days: int | None = typer.Option(None, "--backfill-days", help="Days of history before the current window (env BACKFILL_DAYS, default 0)."),
    backfill_txns_per_day: int | None = typer.Option(None, "--backfill-txns-per-day", help="Transactions per backfill day (env BACKFILL_TXNS_PER_DAY, default 10000)."),
    fraud_share: float | None = typer.Option(None, "--fraud-share", help="Share of fraudulent transactions, 0..1 (env FRAUD_SHARE, default 0.02)."),
    seed: int | None = typer.Option(None, "--seed", help="RNG seed; same seed + config + --as-of on an empty database = same rows (env BANKDE_SEED)."),
    as_of: str | None = typer.Option(None, "--as-of", help="ISO timestamp all times are anchored to (default: now) (env BANKDE_AS_OF)."),
    customers: int | None = typer.Option(None, "--customers", help="New customers this run (env BANKDE_FILL_CUSTOMERS, default 1000)."),
    terminals: int | None = typer.Option(None, "--terminals", help="New terminals this run (env BANKDE_FILL_TERMINALS, default 400)."),
    card_close_rate: float | None = typer.Option(None, "--card-close-rate", help="Share of open cards closed per run (env BANKDE_FILL_CARD_CLOSE_RATE, default 0.02)."),
    account_close_rate: float | None = typer.Option(None, "--account-close-rate", help="Share of open accounts closed per run (env BANKDE_FILL_ACCOUNT_CLOSE_RATE, default 0.01)."),
    customer_close_rate: float | None = typer.Option(None, "--customer-close-rate", help="Share of customers closed per run (env BANKDE_FILL_CUSTOMER_CLOSE_RATE, default 0.005)."),
    terminal_close_rate: float | None = typer.Option(None, "--terminal-close-rate", help="Share of terminals closed per run (env BANKDE_FILL_TERMINAL_CLOSE_RATE, default 0.01)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Transactions per database transaction (env BANKDE_FILL_BATCH_SIZE, default 100000)."),
    live: bool = typer.Option(False, "--live", help="Keep producing transactions and closes until Ctrl-C (close rates are then per hour)."),
    rate: float = typer.Option(50.0, "--rate", help="With --live: transactions per second."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:  # fmt: skip
    """Generate customers, accounts, cards, terminals, transactions, closes and labelled fraud."""
    from bankde.errors import ConfigError
    from bankde.generator.config import load_fill_config
    from bankde.settings import get_settings

    flags: dict[str, Any] = {
        "n_new_txns": n_new_txns, "backfill_days": backfill_days,
        "backfill_txns_per_day": backfill_txns_per_day, "fraud_share": fraud_share, "seed": seed,
        "as_of": as_of, "customers": customers, "terminals": terminals,
        "card_close_rate": card_close_rate, "account_close_rate": account_close_rate,
        "customer_close_rate": customer_close_rate, "terminal_close_rate": terminal_close_rate,
        "batch_size": batch_size,
    }  # fmt: skip
    config = load_fill_config(flags)
    if live and not (0 < rate <= 1_000_000):
        raise ConfigError(f"--rate={rate:g}: must be a number in (0, 1000000]")
    settings = get_settings()
    summary = _live(settings, config, rate, as_json) if live else _once(settings, config, as_json)
    if as_json:
        print_json(summary.as_dict())
    else:
        show_summary(summary)
        if not live and summary.transactions and not summary.fk_triggers_skipped:
            out.print(
                "foreign keys were checked row by row: this role may not set"
                " session_replication_role (not a superuser), so bulk loads are slower"
            )


def _once(settings: Any, config: Any, quiet: bool) -> FillSummary:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from bankde.generator.runner import fill

    total = config.total_txns
    if quiet or total < 200_000:
        return fill(settings, config)
    columns = (TextColumn("filling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("fill", total=total)
        return fill(
            settings, config, progress=lambda done, _total: bar.update(task, completed=done)
        )


def _live(settings: Any, config: Any, rate: float, quiet: bool) -> FillSummary:
    from bankde.generator.runner import run_live

    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    # Ctrl-C / SIGTERM end the stream between two commits instead of interrupting one.
    old_int = signal.signal(signal.SIGINT, _stop)
    old_term = signal.signal(signal.SIGTERM, _stop)
    try:
        if not quiet:
            err.print(f"streaming about {rate:g} transactions/s; Ctrl-C stops")
        return run_live(settings, config, rate, stop)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def show_summary(summary: FillSummary) -> None:
    """The summary as tables: rows per table, closes, fraud per scenario, speed."""
    from rich.table import Table

    rows = Table(title="rows written", title_justify="left")
    rows.add_column("table")
    rows.add_column("inserted", justify="right")
    rows.add_column("closed", justify="right")
    tables = sorted(set(summary.rows) | set(summary.closed))
    for t in tables:
        rows.add_row(t, f"{summary.rows.get(t, 0):,}", f"{summary.closed.get(t, 0):,}")
    out.print(rows)
    fraud = Table(title="fraud (truth.fraud_label)", title_justify="left")
    fraud.add_column("scenario")
    fraud.add_column("episodes", justify="right")
    fraud.add_column("transactions", justify="right")
    for name, n in summary.fraud_txns.items():
        fraud.add_row(name, f"{summary.fraud_episodes.get(name, 0):,}", f"{n:,}")
    fraud.add_row(
        "total",
        f"{sum(summary.fraud_episodes.values()):,}",
        f"{sum(summary.fraud_txns.values()):,}",
    )
    out.print(fraud)
    declined = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.declined.items())) or "none"
    out.print(f"declined: {declined}")
    out.print(
        f"{summary.transactions:,} transactions in {summary.seconds:.2f} s "
        f"({summary.txns_per_second:,.0f} txns/s), fraud share {summary.fraud_share:.2%}, "
        f"seed {summary.seed}, as-of {summary.as_of.isoformat()}"
    )
    if summary.fk_triggers_skipped:
        out.print("foreign-key triggers skipped for bulk batches (rows valid by construction)")
    if summary.transactions < summary.requested:
        err.print(
            f"warning: {summary.transactions:,} of {summary.requested:,} transactions written:"
            " usually the customers ran out of open cards (raise --customers or lower the close rates"
            " and FRAUD_SHARE; every after_card_closed episode closes a card)"
        )


def register(app: typer.Typer) -> None:
    app.command("fill")(fill_command)
