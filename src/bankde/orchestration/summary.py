"""The pipeline at a glance: rows per layer, reconciliation, CDC lag, fraud rules (demo summary)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bankde.errors import BankdeError
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.client import Warehouse


@dataclass
class PipelineSummary:
    """Everything `bankde demo` prints; `as_dict()` is what it writes to demo-summary.json."""

    rows: dict[str, dict[str, int | None]] = field(default_factory=dict)  # source/raw per table
    marts: dict[str, int] = field(default_factory=dict)
    reconciliation: dict[str, Any] = field(default_factory=dict)
    cdc: dict[str, Any] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    fill: dict[str, Any] = field(default_factory=dict)
    dbt: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return bool(self.reconciliation.get("equal")) and bool(self.dbt.get("success", True))


def reconcile_dict(settings: Settings, wh: Warehouse) -> dict[str, Any]:
    """Source vs warehouse per table as plain data: {equal, differing, tables: {...}}."""
    from bankde.monitoring.reconcile import reconcile

    result = reconcile(settings, wh)
    data = result.to_dict()
    data["differing"] = [t.table for t in result.differing]
    return data


def mart_counts(settings: Settings, wh: Warehouse) -> dict[str, int]:
    """Rows of every table in the marts database (not its views: the live alerts' are
    parameterised and cannot be selected without their parameters)."""
    from bankde.warehouse.types import ident

    db = f"{settings.wh_prefix}marts"
    names = [
        str(r[0])
        for r in wh.query(
            "select name from system.tables where database = {db:String} and not is_temporary "
            "and engine != 'View' order by name",
            {"db": db},
        )
    ]
    return {n: int(wh.scalar(f"select count() from {ident(db)}.{ident(n)}") or 0) for n in names}


def alerts_by_rule(settings: Settings, wh: Warehouse) -> dict[str, int]:
    """Alerts in marts.fct_fraud_alerts per rule ({} before the first dbt build)."""
    db = f"{settings.wh_prefix}marts"
    exists = wh.scalar(
        "select count() from system.tables where database = {db:String} and name = 'fct_fraud_alerts'",
        {"db": db},
    )
    if not exists:
        return {}
    rows = wh.query(
        f"select rule, count() from `{db}`.fct_fraud_alerts group by rule order by rule"
    )
    return {str(r): int(n) for r, n in rows}


def collect(settings: Settings, wh: Warehouse) -> PipelineSummary:
    """Read the current state of source and warehouse (this process owns the warehouse; every
    read goes through `wh`)."""
    from bankde.cdc.status import status
    from bankde.transform.evaluation import evaluation_rows

    summary = PipelineSummary()
    st = status(settings, counts=True, warehouse=wh)
    summary.rows = {
        name: {"source": c.get("source"), "raw": c.get("warehouse")}
        for name, c in st.get("tables", {}).items()
    }
    summary.cdc = {
        k: st.get(k)
        for k in (
            "slot",
            "lag_bytes",
            "lag_seconds",
            "wal_retained_bytes",
            "offset_lsn",
            "current_lsn",
        )
    }
    summary.marts = mart_counts(settings, wh)
    summary.reconciliation = reconcile_dict(settings, wh)
    alerts = alerts_by_rule(settings, wh)
    try:
        scores = evaluation_rows(settings, warehouse=wh)
    except BankdeError:
        scores = []
    for s in scores:
        row = s.as_dict()
        row["alerts"] = alerts.get(s.rule, s.alerted)
        summary.rules.append(row)
    summary.locations = locations(settings, wh)
    return summary


def locations(settings: Settings, wh: Warehouse) -> dict[str, str]:
    from bankde.source.connection import source_info

    info = source_info(settings)
    where = {
        "home": str(settings.home_dir),
        "source": info.public_dsn,
        "warehouse": wh.location,
    }
    if info.managed:
        where["postgres_data"] = str(settings.home_dir / "postgres" / "data")
    return where


def render(summary: PipelineSummary) -> None:
    """Print the summary as rich tables on stdout."""
    from rich.table import Table

    from bankde.console import out

    rows = Table(title="Rows per table", title_justify="left")
    rows.add_column("table")
    rows.add_column("source", justify="right")
    rows.add_column("raw (FINAL)", justify="right")
    for name, c in summary.rows.items():
        rows.add_row(name, _n(c.get("source")), _n(c.get("raw")))
    out.print(rows)

    marts = Table(title="Marts", title_justify="left")
    marts.add_column("model")
    marts.add_column("rows", justify="right")
    for name, n in summary.marts.items():
        marts.add_row(name, _n(n))
    out.print(marts)

    rec = summary.reconciliation
    if rec.get("equal"):
        out.print("[green]reconciliation: equal[/green] (count and checksum of every table)")
    else:
        out.print(f"[red]reconciliation: DIFFERENT[/red] in {', '.join(rec.get('differing', []))}")
    cdc = summary.cdc
    out.print(
        f"CDC: slot {cdc.get('slot')}, lag {_n(cdc.get('lag_bytes'))} bytes / "
        f"{cdc.get('lag_seconds') or 0:g} s, WAL retained {_n(cdc.get('wal_retained_bytes'))} bytes"
    )

    rules = Table(title="Fraud rules vs the filler's labels", title_justify="left")
    for col in ("scenario", "rule", "labelled", "alerts", "precision", "recall", "f1"):
        rules.add_column(col, justify="left" if col in ("scenario", "rule") else "right")
    for r in summary.rules:
        rules.add_row(
            str(r["scenario"]),
            str(r["rule"]),
            _n(r["labelled"]),
            _n(r["alerts"]),
            _p(r["precision"]),
            _p(r["recall"]),
            _p(r["f1"]),
        )
    out.print(rules)

    if summary.steps:
        out.print("steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.steps.items()))
    loc = summary.locations
    out.print("\n[bold]Where the data lives[/bold]")
    for k, v in loc.items():
        out.print(f"  {k:<14} {v}")
    out.print("\n[bold]Next[/bold]")
    out.print("  bankde run --rate 200          live filler + CDC + dbt every 60 s (Ctrl-C stops)")
    out.print('  bankde wh sql "select * from marts.fraud_rule_evaluation"')
    out.print("  bankde db psql                 the source database")
    out.print("  bankde demo                    again: adds new events, updates incrementally")
    out.print("  make airflow                   the same pipeline as Airflow DAGs")


def _n(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def _p(v: Any) -> str:
    return "-" if v is None else f"{float(v):.2f}"
