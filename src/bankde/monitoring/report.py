"""`bankde report`: one self-contained HTML page of plotly charts read from the warehouse."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankde.errors import BankdeError
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.monitoring.reconcile import ReconcileResult
    from bankde.warehouse.client import Warehouse

REPORT_FILE = "report.html"
# Charts read well at 1280 px: one per row, this tall.
CHART_HEIGHT = 420
# The newest day of CDC batches is plotted; older ones stay in meta.cdc_batches (30-day TTL).
CDC_WINDOW_HOURS = 24
# Most points a time series gets before its buckets widen (seconds per bucket).
MAX_RATE_POINTS = 3000
RATE_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3600)
LIFECYCLE_DAYS = 60
WRONG_ALERTS_PER_RULE = 5
RECENT_BATCHES = 15
# One colour per series name across charts (plotly's default qualitative palette).
PALETTE = (
    "#636EFA",
    "#EF553B",
    "#00CC96",
    "#AB63FA",
    "#FFA15A",
    "#19D3F3",
    "#FF6692",
    "#B6E880",
    "#FF97FF",
    "#FECB52",
)


@dataclass
class Section:
    """A titled part of the page: an intro, then charts, tables and notes in order."""

    anchor: str
    title: str
    intro: str
    blocks: list[str] = field(default_factory=list)


@dataclass
class ReportResult:
    """What `write_report` wrote: the file, how long it took, and how many charts it holds."""

    path: Path
    seconds: float
    charts: int
    notes: list[str]


class Fig:
    """A plotly figure as plain JSON (traces and layout) that plotly.js draws in the page.

    Built without plotly.py's figure classes: those validate every property and deep-copy the
    template per figure (about half a second each here), which alone broke the report's time
    budget. Keyword names follow plotly.py's (`marker_color` = {"marker": {"color": ...}}).
    """

    def __init__(self) -> None:
        self.data: list[dict[str, Any]] = []
        self.layout: dict[str, Any] = {}

    def add_bar(self, **trace: Any) -> None:
        self.add_trace("bar", **trace)

    def add_scatter(self, **trace: Any) -> None:
        self.add_trace("scatter", **trace)

    def add_trace(self, kind: str, **trace: Any) -> None:
        self.data.append({"type": kind, **_expand(trace)})

    def update_layout(self, **props: Any) -> None:
        _merge(self.layout, _expand(props))

    def update_xaxes(self, **props: Any) -> None:
        self._axes("xaxis", props)

    def update_yaxes(self, **props: Any) -> None:
        self._axes("yaxis", props)

    def _axes(self, prefix: str, props: dict[str, Any]) -> None:
        names = [k for k in self.layout if k.startswith(prefix)] or [prefix]
        for name in names:
            _merge(self.layout.setdefault(name, {}), _expand(props))


def _expand(props: dict[str, Any]) -> dict[str, Any]:
    """plotly.py's magic underscores: {"marker_color": c} -> {"marker": {"color": c}}."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if isinstance(value, dict):
            value = _expand(value)
        *path, leaf = key.split("_")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            _merge(node[leaf], value)
        else:
            node[leaf] = value
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def subplots(titles: Sequence[str], spacing: float = 0.07) -> Fig:
    """One row of len(titles) side-by-side plots; trace i of plot n takes xaxis="x<n>"."""
    fig = Fig()
    n = len(titles)
    width = (1 - spacing * (n - 1)) / n
    notes = []
    for i, title in enumerate(titles, start=1):
        lo = (i - 1) * (width + spacing)
        suffix = "" if i == 1 else str(i)
        fig.layout[f"xaxis{suffix}"] = {"domain": [lo, lo + width], "anchor": f"y{suffix}"}
        fig.layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}"}
        notes.append(
            {
                "text": title,
                "x": lo + width / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 15},
            }
        )
    fig.layout["annotations"] = notes
    return fig


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)  # a chart coordinate, never stored or summed
    raise TypeError(f"not JSON serialisable for a chart: {type(value).__name__}")


def _plotly_file(name: str) -> str:
    """A file shipped in the plotly package, read without importing plotly (an import costs
    about a second): package_data/plotly.min.js and the templates."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise BankdeError("the plotly package is missing: pip install plotly")
    root = Path(next(iter(spec.submodule_search_locations)))
    return (root / "package_data" / name).read_text(encoding="utf-8")


class _Page:
    """Collects sections and counts charts (each a plotly div)."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.charts = 0
        self.notes: list[str] = []

    def section(self, anchor: str, title: str, intro: str) -> Section:
        sec = Section(anchor, title, intro)
        self.sections.append(sec)
        return sec

    def chart(self, sec: Section, fig: Fig) -> None:
        self.charts += 1
        div = f"chart-{self.charts}"
        spec = json.dumps(
            {"data": fig.data, "layout": fig.layout}, default=_json_value, separators=(",", ":")
        )
        # "</" inside a script would end it early.
        spec = spec.replace("</", "<\\/")
        sec.blocks.append(
            f'<div class="chart"><div id="{div}" class="plotly-graph-div"></div>'
            f'<script type="text/javascript">bankdePlot("{div}", {spec});</script></div>'
        )

    def note(self, sec: Section, text: str) -> None:
        self.notes.append(f"{sec.title}: {text}")
        sec.blocks.append(f'<p class="note">{html.escape(text)}</p>')


class _Data:
    """Warehouse reads for the report; table names under the settings' prefix."""

    def __init__(self, settings: Settings, wh: Warehouse) -> None:
        from bankde.warehouse.ddl import DbNames
        from bankde.warehouse.types import ident

        self.settings = settings
        self.wh = wh
        prefix = settings.wh_prefix
        self.stg = ident(f"{prefix}stg")
        self.ods = ident(f"{prefix}ods")
        self.marts = ident(f"{prefix}marts")
        self.batches = DbNames(prefix).batches
        self._present = {
            (str(d), str(n))
            for d, n in wh.query(
                "SELECT database, name FROM system.tables WHERE database IN "
                "({s:String}, {o:String}, {m:String}, {meta:String})",
                {
                    "s": f"{prefix}stg",
                    "o": f"{prefix}ods",
                    "m": f"{prefix}marts",
                    "meta": f"{prefix}meta",
                },
            )
        }
        self.prefix = prefix
        # Started first, on its own thread: it mostly waits for the source's checksums, the
        # longest part of the report on a large source, while the charts read the warehouse.
        self.reconciled: Future[ReconcileResult] | None = None

    def has(self, layer: str, *tables: str) -> bool:
        return all((f"{self.prefix}{layer}", t) in self._present for t in tables)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.wh.query(sql)


def _layout(fig: Fig, title: str, x_title: str, y_title: str, **extra: Any) -> Fig:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 17}},
        height=CHART_HEIGHT,
        margin={"l": 70, "r": 30, "t": 70, "b": 60},
        font={"size": 13},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hoverlabel={"namelength": -1},
        **extra,
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _pivot(
    rows: Iterable[tuple[Any, Any, Any]],
) -> tuple[list[Any], dict[str, dict[Any, float]]]:
    """(x, series, value) rows -> sorted xs and {series: {x: value}}."""
    xs: set[Any] = set()
    series: dict[str, dict[Any, float]] = defaultdict(dict)
    for x, name, value in rows:
        xs.add(x)
        series[str(name)][x] = float(value)
    return sorted(xs), dict(sorted(series.items()))


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int] | None = None
) -> str:
    numeric = numeric or set()
    head = "".join(
        f'<th class="{"num" if i in numeric else ""}">{html.escape(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = "num" if i in numeric else ""
            text = v if isinstance(v, _Html) else html.escape(_fmt(v))
            cells.append(f'<td class="{cls}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


class _Html(str):
    """Trusted markup for a table cell (built here, never from data)."""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


# --- sections --------------------------------------------------------------------------------
def _traffic(page: _Page, data: _Data) -> None:
    sec = page.section(
        "traffic",
        "Traffic",
        "Transactions the filler wrote, as the warehouse has them (ods.fct_transactions, UTC): "
        "the daily and weekly rhythm by type and status, and why authorisations were declined.",
    )
    if not data.has("ods", "fct_transactions"):
        page.note(sec, "ods.fct_transactions is not built yet: run `bankde dbt build`.")
        return
    fct = f"{data.ods}.fct_transactions"
    for column, label in (("txn_type", "type"), ("status", "status")):
        xs, series = _pivot(
            data.rows(
                f"SELECT toStartOfHour(occurred_at) AS h, {column}, count() FROM {fct} "
                "GROUP BY h, " + column
            )
        )
        if not xs:
            page.note(sec, "no transactions in the warehouse yet.")
            return
        fig = Fig()
        for i, (name, values) in enumerate(series.items()):
            fig.add_bar(x=xs, y=[values.get(x, 0) for x in xs], name=name, marker_color=_colour(i))
        page.chart(
            sec,
            _layout(
                fig,
                f"Transactions per hour by {label}",
                "hour (UTC)",
                "transactions per hour",
                barmode="stack",
                bargap=0.05,
            ),
        )
    weekdays = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    rhythm = data.rows(
        f"SELECT toDayOfWeek(occurred_at) AS d, toHour(occurred_at) AS h, count(), "
        f"uniqExact(toDate(occurred_at)) FROM {fct} GROUP BY d, h ORDER BY d, h"
    )
    fig = Fig()
    by_day: dict[int, dict[int, float]] = defaultdict(dict)
    for d, h, n, days in rhythm:
        by_day[int(d)][int(h)] = int(n) / max(int(days), 1)
    for d in sorted(by_day):
        fig.add_scatter(
            x=list(range(24)),
            # An hour outside the data's window is a gap, not a zero (partial first/last day).
            y=[by_day[d].get(h) for h in range(24)],
            mode="lines+markers",
            name=weekdays[d - 1],
            marker_color=_colour(d - 1),
        )
    fig.update_xaxes(dtick=2)
    page.chart(
        sec,
        _layout(
            fig,
            "Daily rhythm: mean transactions per hour of day, by weekday",
            "hour of day (UTC)",
            "transactions per hour (mean over days)",
        ),
    )
    xs, series = _pivot(
        data.rows(
            f"SELECT occurred_on, ifNull(decline_reason, 'unknown'), count() FROM {fct} "
            "WHERE is_declined GROUP BY occurred_on, decline_reason"
        )
    )
    if not xs:
        page.note(sec, "no declined transactions yet.")
        return
    fig = Fig()
    for i, (name, values) in enumerate(series.items()):
        fig.add_bar(x=xs, y=[values.get(x, 0) for x in xs], name=name, marker_color=_colour(i))
    page.chart(
        sec,
        _layout(
            fig, "Declines per day by reason", "day (UTC)", "declined transactions", barmode="stack"
        ),
    )


def _fraud(page: _Page, data: _Data) -> None:
    sec = page.section(
        "fraud",
        "Fraud in the data",
        "The filler's ground truth (stg_fraud_episodes, stg_fraud_labels; evaluation only): when "
        "each scenario struck, and how fraudulent transactions compare with legitimate ones. "
        "Overlapping distributions mean the rules cannot separate them by amount or hour alone.",
    )
    if not data.has("stg", "stg_fraud_episodes", "stg_fraud_labels") or not data.has(
        "ods", "fct_transactions"
    ):
        page.note(sec, "the fraud truth models are not built yet: run `bankde dbt build`.")
        return
    labels = f"{data.stg}.stg_fraud_labels"
    episodes = data.rows(
        f"SELECT e.scenario, e.episode_id, e.started_at, e.ended_at, ifNull(n.labelled, 0) "
        f"FROM {data.stg}.stg_fraud_episodes e LEFT JOIN (SELECT episode_id, count() AS labelled "
        f"FROM {labels} GROUP BY episode_id) n ON n.episode_id = e.episode_id "
        "ORDER BY e.scenario, e.started_at"
    )
    if not episodes:
        page.note(sec, "no fraud episodes yet (the filler's --fraud-share is 0?).")
    else:
        fig = Fig()
        scenarios = sorted({str(r[0]) for r in episodes})
        for i, scen in enumerate(scenarios):
            rows = [r for r in episodes if str(r[0]) == scen]
            # Each episode a bar from its start to its end, a marker at its start.
            line_x: list[Any] = []
            line_y: list[Any] = []
            for _s, _e, start, end, _n in rows:
                line_x += [start, end, None]
                line_y += [scen, scen, None]
            fig.add_scatter(
                x=line_x,
                y=line_y,
                mode="lines",
                line={"width": 10, "color": _colour(i)},
                hoverinfo="skip",
                showlegend=False,
            )
            fig.add_scatter(
                x=[r[2] for r in rows],
                y=[scen] * len(rows),
                mode="markers",
                name=scen,
                marker={"color": _colour(i), "size": 7, "line": {"width": 1, "color": "#333"}},
                customdata=[
                    [int(r[1]), round((r[3] - r[2]).total_seconds() / 60, 1), int(r[4])]
                    for r in rows
                ],
                hovertemplate="episode %{customdata[0]}<br>start %{x}<br>"
                "%{customdata[1]} min, %{customdata[2]} labelled transactions<extra></extra>",
            )
        page.chart(
            sec,
            _layout(
                fig,
                f"Fraud episodes over time per scenario ({len(episodes):,} episodes; bar = start to end)",
                "time (UTC)",
                "scenario",
                showlegend=False,
            ),
        )
    fct = f"{data.ods}.fct_transactions"
    is_fraud = f"txn_id IN (SELECT txn_id FROM {labels})"
    # Amount bins of a quarter decade: 1, 1.78, 3.16, 5.62, 10, ... (log scale).
    amounts = data.rows(
        f"SELECT {is_fraud} AS fraud, floor(log10(toFloat64(amount)) * 4) AS b, count() "
        f"FROM {fct} WHERE amount > 0 GROUP BY fraud, b ORDER BY b"
    )
    hours = data.rows(
        f"SELECT {is_fraud} AS fraud, toHour(occurred_at) AS h, count() FROM {fct} "
        "GROUP BY fraud, h ORDER BY h"
    )
    for rows, title, x_title, x_of, log_x in (
        (
            amounts,
            "Amount distribution: fraud vs legitimate",
            "amount (EUR, log scale; bins of ¼ decade)",
            lambda b: 10 ** (float(b) / 4),
            True,
        ),
        (
            hours,
            "Hour-of-day distribution: fraud vs legitimate",
            "hour of day (UTC)",
            int,
            False,
        ),
    ):
        totals: dict[bool, int] = defaultdict(int)
        for fraud, _b, n in rows:
            totals[bool(fraud)] += int(n)
        fig = Fig()
        for i, (fraud, name) in enumerate(((False, "legitimate"), (True, "fraud (labelled)"))):
            pts = [(x_of(b), int(n)) for f, b, n in rows if bool(f) == fraud]
            if not pts:
                continue
            fig.add_scatter(
                x=[p[0] for p in pts],
                y=[100.0 * p[1] / totals[fraud] for p in pts],
                mode="lines+markers",
                line_shape="hv" if log_x else "linear",
                name=f"{name} ({totals[fraud]:,})",
                marker_color=_colour(i),
            )
        if log_x:
            fig.update_xaxes(type="log")
        else:
            fig.update_xaxes(dtick=2)
        page.chart(sec, _layout(fig, title, x_title, "% of the class's transactions"))


def _rules(page: _Page, data: _Data) -> None:
    from bankde.transform.evaluation import EvaluationMissing, evaluation_rows

    sec = page.section(
        "rules",
        "Fraud rules vs the labels",
        "Each rule (marts.fraud_<scenario>) against the transactions the filler labelled with its "
        "scenario (marts.fraud_rule_evaluation). Precision: share of its alerts that carry its "
        "label; recall: share of its label it alerted.",
    )
    try:
        scores = evaluation_rows(data.settings, data.wh)
    except EvaluationMissing as exc:
        page.note(sec, str(exc))
        return
    if not scores:
        page.note(sec, "the evaluation has no rows yet.")
        return
    fig = Fig()
    names = [s.scenario for s in scores]
    for i, metric in enumerate(("precision", "recall", "f1")):
        values = [getattr(s, metric) for s in scores]
        fig.add_bar(
            x=names,
            y=values,
            name=metric.upper() if metric == "f1" else metric,
            marker_color=_colour(i),
            text=[("–" if v is None else f"{v:.2f}") for v in values],
            textposition="outside",
            customdata=[[s.labelled, s.alerted, s.true_positives] for s in scores],
            hovertemplate="%{x}: %{y:.3f}<br>labelled %{customdata[0]:,}, alerted "
            "%{customdata[1]:,}, true positives %{customdata[2]:,}<extra></extra>",
        )
    fig.update_yaxes(range=[0, 1.12], tickformat=".1f")
    page.chart(
        sec,
        _layout(
            fig,
            "Precision, recall and F1 per rule",
            "scenario (rule fraud_<scenario>)",
            "score (0–1)",
            barmode="group",
        ),
    )
    sec.blocks.append(
        _table(
            (
                "scenario",
                "rule",
                "labelled",
                "alerted",
                "true positives",
                "precision",
                "recall",
                "F1",
            ),
            [
                (
                    s.scenario,
                    s.rule,
                    s.labelled,
                    s.alerted,
                    s.true_positives,
                    s.precision,
                    s.recall,
                    s.f1,
                )
                for s in scores
            ],
            numeric={2, 3, 4, 5, 6, 7},
        )
    )
    if not data.has("marts", "fct_fraud_alerts") or not data.has("ods", "fct_transactions"):
        return
    alerts = f"{data.marts}.fct_fraud_alerts"
    labels = f"{data.stg}.stg_fraud_labels"
    wrong_where = (
        f"FROM {alerts} a LEFT JOIN {labels} l ON l.txn_id = a.txn_id "
        "WHERE concat('fraud_', l.scenario) != a.rule"
    )
    counts = data.rows(f"SELECT a.rule, count() {wrong_where} GROUP BY a.rule ORDER BY a.rule")
    sample = data.rows(
        "SELECT w.rule, w.txn_id, w.occurred_at, t.txn_type, t.status, t.amount, w.score, "
        "w.labelled_as, w.evidence FROM ("
        f"SELECT a.rule AS rule, a.txn_id AS txn_id, a.occurred_at AS occurred_at, a.score AS score, "
        f"a.evidence AS evidence, l.scenario AS labelled_as {wrong_where} "
        f"ORDER BY a.rule, a.occurred_at DESC LIMIT {WRONG_ALERTS_PER_RULE} BY a.rule) w "
        f"LEFT JOIN {data.ods}.fct_transactions t ON t.txn_id = w.txn_id ORDER BY w.rule, w.occurred_at DESC"
    )
    total = sum(int(n) for _r, n in counts)
    sec.blocks.append(
        f"<h3>Wrong alerts ({total:,}): alerted transactions without the rule's label</h3>"
    )
    if not sample:
        sec.blocks.append('<p class="note">none: every alert carries its rule\'s label.</p>')
        return
    sec.blocks.append(
        "<p>Per rule: "
        + ", ".join(f"{html.escape(str(r))} {int(n):,}" for r, n in counts)
        + f". The newest {WRONG_ALERTS_PER_RULE} per rule:</p>"
    )
    sec.blocks.append(
        _table(
            (
                "rule",
                "txn_id",
                "occurred at (UTC)",
                "type",
                "status",
                "amount (EUR)",
                "score",
                "labelled as",
                "evidence",
            ),
            [
                (
                    r,
                    int(t),
                    at,
                    typ,
                    st,
                    _Html(html.escape(f"{amt:,.2f}")) if amt is not None else None,
                    None if sc is None else float(sc),
                    lab or "legitimate",
                    _Html(f"<code>{html.escape(str(ev)[:160])}</code>"),
                )
                for r, t, at, typ, st, amt, sc, lab, ev in sample
            ],
            numeric={1, 5, 6},
        )
    )


def _live_alerts(page: _Page, data: _Data) -> None:
    """Commit-to-visible latency of the live alerts (bankde run, bankde.transform.live)."""
    if not data.has("marts", "fraud_alerts_live"):
        return
    sec = page.section(
        "live-alerts",
        "Live alerts: commit to visible",
        "Alerts of marts.fraud_alerts_live, which bankde run re-evaluates after CDC batches: the "
        "time from the source commit of the change that decided an alert to the alert being "
        "visible, per minute of visibility (p50, p95, p99).",
    )
    rows = data.rows(
        "SELECT toStartOfMinute(visible_at) AS minute, count(), "
        "quantilesExact(0.5, 0.95, 0.99)((toUnixTimestamp64Milli(visible_at) - "
        "intDiv(toUnixTimestamp64Micro(triggered_at), 1000)) / 1000) "
        f"FROM {data.marts}.fraud_alerts_live FINAL WHERE _is_deleted = 0 "
        "AND visible_at >= now() - INTERVAL 1 DAY GROUP BY minute ORDER BY minute"
    )
    if not rows:
        page.note(sec, "no live alert in the last day.")
        return
    fig = Fig()
    minutes = [r[0] for r in rows]
    for i, name in enumerate(("p50", "p95", "p99")):
        fig.add_scatter(
            x=minutes,
            y=[max(float(r[2][i]), 0.0) for r in rows],
            name=name,
            mode="lines+markers",
            marker_color=_colour(i),
        )
    page.chart(
        sec,
        _layout(fig, "Live alert latency (commit → visible)", "minute (UTC)", "seconds"),
    )
    per_rule = data.rows(
        "SELECT rule, count(), quantilesExact(0.5, 0.95, 0.99)((toUnixTimestamp64Milli("
        "visible_at) - intDiv(toUnixTimestamp64Micro(triggered_at), 1000)) / 1000) "
        f"FROM {data.marts}.fraud_alerts_live FINAL WHERE _is_deleted = 0 GROUP BY rule "
        "ORDER BY rule"
    )
    sec.blocks.append(
        _table(
            ("rule", "live alerts", "p50 (s)", "p95 (s)", "p99 (s)"),
            [(r, n, *(round(float(q), 2) for q in qs)) for r, n, qs in per_rule],
            numeric={1, 2, 3, 4},
        )
    )


def _bucket_seconds(span_s: float) -> int:
    for width in RATE_BUCKETS:
        if span_s / width <= MAX_RATE_POINTS:
            return width
    return RATE_BUCKETS[-1]


def _cdc(page: _Page, data: _Data, with_source: bool, with_reconcile: bool) -> None:
    from bankde.cdc.envelope import format_lsn

    sec = page.section(
        "cdc",
        "CDC: throughput, lag, freshness, reconciliation",
        f"Every applied batch is recorded in meta.cdc_batches (time, changes per table, LSN range, "
        f"commit-to-warehouse lag, duration). Charts show the newest {CDC_WINDOW_HOURS} h of "
        "streamed batches; snapshot loads are listed in the table below.",
    )
    batches = data.batches
    window = f"finished_at >= (SELECT max(finished_at) FROM {batches}) - INTERVAL {CDC_WINDOW_HOURS} HOUR"
    span = data.rows(
        f"SELECT dateDiff('second', min(finished_at), max(finished_at)), count() FROM {batches} "
        f"WHERE kind = 'stream' AND {window}"
    )
    n_stream = int(span[0][1]) if span else 0
    if n_stream == 0:
        page.note(
            sec,
            "no streamed batches yet: a first `bankde demo` only snapshots; run `bankde demo` "
            "again or `bankde run` to stream changes.",
        )
    else:
        width = _bucket_seconds(float(span[0][0] or 0))
        rate = data.rows(
            f"SELECT toStartOfInterval(finished_at, INTERVAL {width} SECOND) AS b, sum(events) "
            f"FROM {batches} WHERE kind = 'stream' AND {window} GROUP BY b ORDER BY b"
        )
        xs: list[Any] = []
        ys: list[Any] = []
        prev: datetime | None = None
        for b, n in rate:
            if prev is not None and (b - prev).total_seconds() > width:
                # A gap: no batch in between; draw a break, not a line across it.
                xs.append(None)
                ys.append(None)
            xs.append(b)
            ys.append(int(n) / width)
            prev = b
        fig = Fig()
        fig.add_scatter(x=xs, y=ys, mode="lines+markers", name="changes/s", marker_color=_colour(0))
        page.chart(
            sec,
            _layout(
                fig,
                f"Applied changes per second ({n_stream:,} streamed batches, {width} s buckets)",
                "time (UTC)",
                "changes applied per second",
                showlegend=False,
            ),
        )
        lag = data.rows(
            f"SELECT finished_at, lag_ms / 1000, dateDiff('microsecond', started_at, finished_at) / 1e6, "
            f"events FROM {batches} WHERE kind = 'stream' AND {window} ORDER BY finished_at DESC "
            "LIMIT 20000"
        )[::-1]
        fig = Fig()
        fig.add_scatter(
            x=[r[0] for r in lag],
            y=[float(r[1]) for r in lag],
            mode="lines+markers",
            name="lag: source commit to warehouse (s)",
            marker_color=_colour(1),
        )
        fig.add_scatter(
            x=[r[0] for r in lag],
            y=[float(r[2]) for r in lag],
            mode="markers",
            name="batch write duration (s)",
            marker_color=_colour(2),
            customdata=[int(r[3]) for r in lag],
            hovertemplate="%{x}<br>%{y:.3f} s for %{customdata:,} changes<extra></extra>",
        )
        page.chart(
            sec,
            _layout(fig, "Lag and batch duration per streamed batch", "time (UTC)", "seconds"),
        )
    recent = data.rows(
        "SELECT finished_at, kind, events, first_lsn, last_lsn, lag_ms, "
        "dateDiff('microsecond', started_at, finished_at) / 1000, tables "
        f"FROM {batches} ORDER BY finished_at DESC LIMIT {RECENT_BATCHES}"
    )
    if recent:
        sec.blocks.append(f"<h3>The newest {len(recent)} batches (meta.cdc_batches)</h3>")
        sec.blocks.append(
            _table(
                (
                    "finished (UTC)",
                    "kind",
                    "changes",
                    "LSN range",
                    "lag (s)",
                    "duration (ms)",
                    "per table",
                ),
                [
                    (
                        at,
                        kind,
                        int(ev),
                        f"{format_lsn(int(lo))} – {format_lsn(int(hi))}",
                        int(lag_ms) / 1000,
                        round(float(dur)),
                        ", ".join(f"{k} {int(v):,}" for k, v in sorted(dict(tables).items())),
                    )
                    for at, kind, ev, lo, hi, lag_ms, dur, tables in recent
                ],
                numeric={2, 4, 5},
            )
        )
    if with_source:
        _freshness(page, sec, data)
    else:
        page.note(sec, "freshness and reconciliation need the source database; skipped.")
        return
    if with_reconcile:
        _reconcile(page, sec, data)
    else:
        page.note(
            sec,
            "reconciliation is not computed while `bankde run` writes (the source moves on "
            "between the two reads); run `bankde reconcile` or `bankde report` after stopping.",
        )


def _freshness(page: _Page, sec: Section, data: _Data) -> None:
    from bankde.monitoring.freshness import freshness

    try:
        rows = freshness(data.settings, data.wh)
    except BankdeError as exc:
        page.note(sec, f"freshness: {exc}")
        return
    now = datetime.now(UTC)

    def age_min(ts: datetime | None) -> float | None:
        if ts is None:
            return None
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return max((now - ts).total_seconds() / 60, 0.01)

    fig = Fig()
    tables = [f.table for f in rows]
    for i, (side, attr) in enumerate(
        (("source", "source_latest"), ("warehouse", "warehouse_latest"))
    ):
        fig.add_bar(
            x=tables,
            y=[age_min(getattr(f, attr)) for f in rows],
            name=f"{side}: newest updated_at",
            marker_color=_colour(i),
        )
    fig.update_yaxes(type="log")
    page.chart(
        sec,
        _layout(
            fig,
            "Freshness per table: age of the newest change, source vs warehouse",
            "table (bank.*)",
            "minutes since the newest change (log)",
            barmode="group",
        ),
    )
    sec.blocks.append(
        _table(
            ("table", "source newest (UTC)", "warehouse newest (UTC)", "warehouse behind by (s)"),
            [
                (
                    f.table,
                    f.source_latest,
                    f.warehouse_latest,
                    "never loaded" if f.staleness_s == float("inf") else f.staleness_s,
                )
                for f in rows
            ],
            numeric={3},
        )
    )


def _reconcile(page: _Page, sec: Section, data: _Data) -> None:
    assert data.reconciled is not None
    try:
        result = data.reconciled.result()
    except BankdeError as exc:
        page.note(sec, f"reconciliation: {exc}")
        return
    verdict = "equal" if result.equal else f"{len(result.differing)} table(s) DIFFER"
    sec.blocks.append(
        f"<h3>Reconciliation per table: {html.escape(verdict)} ({result.seconds:.1f} s)</h3>"
    )
    sec.blocks.append(
        _table(
            ("table", "warehouse table", "source rows", "warehouse rows", "checksum", "verdict"),
            [
                (
                    t.table,
                    t.warehouse_table,
                    t.source_rows,
                    t.warehouse_rows,
                    f"{t.source_checksum % (1 << 64):016x}"
                    + (
                        ""
                        if t.source_checksum == t.warehouse_checksum
                        else f" ≠ {t.warehouse_checksum % (1 << 64):016x}"
                    ),
                    _Html('<span class="ok">equal</span>')
                    if t.equal
                    else _Html(
                        '<span class="bad">DIFFERENT</span> '
                        + html.escape(
                            "; ".join(t.problems + [f"{d.key}: {d.problem}" for d in t.sample])
                        )
                    ),
                )
                for t in result.tables
            ],
            numeric={2, 3},
        )
    )


def _lifecycle(page: _Page, data: _Data) -> None:

    sec = page.section(
        "lifecycle",
        "Lifecycle",
        f"Cards, accounts and customers opened and closed per day over the last {LIFECYCLE_DAYS} "
        "days, from the SCD2 status history (ods_*_status_history): opened = the first state's "
        "valid_from, closed = valid_from of a closed state.",
    )
    entities = [
        e for e in ("card", "account", "customer") if data.has("ods", f"ods_{e}_status_history")
    ]
    if not entities:
        page.note(sec, "the status history models are not built yet: run `bankde dbt build`.")
        return
    fig = subplots([f"{e}s" for e in entities])
    points = 0
    for col, entity in enumerate(entities, start=1):
        hist = f"{data.ods}.ods_{entity}_status_history"
        rows = data.rows(
            f"SELECT toDate(d) AS day, countIf(k = 'opened'), countIf(k = 'closed') FROM ("
            f"SELECT min(valid_from) AS d, 'opened' AS k FROM {hist} GROUP BY {entity}_id "
            f"UNION ALL SELECT valid_from, 'closed' FROM {hist} WHERE is_closed) "
            f"WHERE d >= (SELECT max(valid_from) FROM {hist}) - INTERVAL {LIFECYCLE_DAYS} DAY "
            "GROUP BY day ORDER BY day"
        )
        points += len(rows)
        for i, (kind, idx) in enumerate((("opened", 1), ("closed", 2))):
            fig.add_bar(
                x=[r[0] for r in rows],
                y=[int(r[idx]) for r in rows],
                name=kind,
                marker_color=_colour(2 if i == 0 else 1),
                legendgroup=kind,
                showlegend=col == 1,
                xaxis=f"x{col if col > 1 else ''}",
                yaxis=f"y{col if col > 1 else ''}",
            )
    if not points:
        page.note(sec, f"no opens or closes in the last {LIFECYCLE_DAYS} days.")
        return
    _layout(fig, "Opened and closed per day", "", "", barmode="group")
    # Above the subplot titles, not over them.
    fig.update_layout(margin={"t": 110}, legend={"y": 1.12})
    fig.update_xaxes(title_text="day (UTC)")
    fig.layout["yaxis"]["title"] = {"text": "count per day"}
    for name, axis in fig.layout.items():
        if name.startswith("yaxis") and name != "yaxis":
            axis["title"] = {"text": ""}
    page.chart(sec, fig)


# --- the page --------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;
color:#1f2933;background:#f5f7fa}
header{background:#1f2933;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:24px} header p{margin:0;color:#cbd2d9;font-size:14px}
nav{padding:8px 32px;background:#e4e7eb;font-size:14px} nav a{margin-right:18px;color:#1f2933}
main{max-width:1240px;margin:0 auto;padding:8px 20px 40px}
section{background:#fff;border-radius:6px;padding:8px 20px 16px;margin:18px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:20px;margin:14px 0 6px} h3{font-size:16px;margin:18px 0 6px}
p.intro{color:#52606d;font-size:14px;margin:0 0 8px} p.note{color:#8d2b0b;font-size:14px}
.chart{margin:10px 0 18px}
table.data{border-collapse:collapse;font-size:13px;margin:6px 0 12px;width:100%}
table.data th,table.data td{border-bottom:1px solid #e4e7eb;padding:4px 8px;text-align:left;
vertical-align:top} table.data th{background:#f5f7fa} .num{text-align:right!important}
code{font-size:11px;color:#52606d;word-break:break-all}
.ok{color:#0b7d3e;font-weight:600} .bad{color:#b42318;font-weight:700}
dl.kpi{display:flex;flex-wrap:wrap;gap:10px 28px;margin:10px 0 0}
dl.kpi div{min-width:120px} dl.kpi dt{font-size:12px;color:#cbd2d9} dl.kpi dd{margin:0;font-size:18px}
"""


def _kpis(data: _Data) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if data.has("ods", "fct_transactions"):
        n, lo, hi = data.rows(
            f"SELECT count(), min(occurred_at), max(occurred_at) FROM {data.ods}.fct_transactions"
        )[0]
        out.append(("transactions", f"{int(n):,}"))
        if n:
            out.append(("from", _fmt(lo)[:16]))
            out.append(("to", _fmt(hi)[:16]))
    if data.has("marts", "fct_fraud_alerts"):
        out.append(
            (
                "fraud alerts",
                f"{int(data.wh.scalar(f'SELECT count() FROM {data.marts}.fct_fraud_alerts') or 0):,}",
            )
        )
    n_b, last = data.rows(f"SELECT count(), max(finished_at) FROM {data.batches}")[0]
    out.append(("CDC batches recorded", f"{int(n_b):,}"))
    if n_b:
        out.append(("last batch (UTC)", _fmt(last)))
    return out


# Draws one chart: the figure's JSON with the shared template, responsive to the page width.
_PLOT_JS = """
function bankdePlot(id, fig) {
  fig.layout.template = BANKDE_TEMPLATE;
  Plotly.newPlot(id, fig.data, fig.layout, {displaylogo: false, responsive: true});
}
"""


def render(page: _Page, kpis: list[tuple[str, str]], generated: datetime, location: str) -> str:
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in page.sections)
    body = "".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>'
        f'<p class="intro">{html.escape(s.intro)}</p>{"".join(s.blocks)}</section>'
        for s in page.sections
    )
    kpi = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in kpis)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>bankde report</title>"
        f"<style>{_CSS}</style>"
        # plotly.js inlined: the file opens with no network.
        f'<script type="text/javascript">{_plotly_file("plotly.min.js")}</script>'
        '<script type="text/javascript">const BANKDE_TEMPLATE = '
        f"{_plotly_file('templates/plotly_white.json')};{_PLOT_JS}</script>"
        "</head><body>"
        "<header><h1>bankde pipeline report</h1>"
        f"<p>generated {generated:%Y-%m-%d %H:%M:%S} UTC from {html.escape(location)}</p>"
        f'<dl class="kpi">{kpi}</dl></header>'
        f"<nav>{nav}</nav><main>{body}</main></body></html>"
    )


def build_report(
    settings: Settings,
    wh: Warehouse,
    *,
    with_source: bool = True,
    with_reconcile: bool = True,
) -> tuple[str, _Page]:
    """The page's HTML and what went into it. `with_source=False` reads only the warehouse
    (no freshness, no reconciliation); `with_reconcile=False` skips the reconciliation only."""
    data = _Data(settings, wh)
    page = _Page()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bankde-report")
    if with_source and with_reconcile:
        from bankde.monitoring.reconcile import reconcile

        reading = threading.Event()
        data.reconciled = pool.submit(reconcile, settings, wh, 3, reading)
        # The reconciliation is the longest part: let it plan (a few warehouse lookups) and
        # start its scans before the charts' queries queue on the warehouse ahead of it.
        while not reading.wait(0.05) and not data.reconciled.done():
            pass
    parts: list[Callable[[], None]] = [
        lambda: _traffic(page, data),
        lambda: _fraud(page, data),
        lambda: _rules(page, data),
        lambda: _live_alerts(page, data),
        lambda: _cdc(page, data, with_source, with_reconcile),
        lambda: _lifecycle(page, data),
    ]
    try:
        for part in parts:
            part()
    finally:
        pool.shutdown(wait=True)
    generated = datetime.now(UTC)
    return render(page, _kpis(data), generated, wh.location), page


def report_path(settings: Settings) -> Path:
    return settings.home_dir / REPORT_FILE


def write_report(
    settings: Settings,
    warehouse: Warehouse,
    path: Path | None = None,
    *,
    with_source: bool = True,
    with_reconcile: bool = True,
) -> ReportResult:
    """Write the report (default $BANKDE_HOME/report.html) atomically: a reader never sees half
    a file, and a failure leaves the previous report in place."""
    started = time.monotonic()
    target = path or report_path(settings)
    text, page = build_report(
        settings, warehouse, with_source=with_source, with_reconcile=with_reconcile
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        # mkstemp's 0600 is kept: the report shows the bank's figures (issue 10: everything
        # under $BANKDE_HOME is its owner's only).
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ReportResult(target, time.monotonic() - started, page.charts, page.notes)
