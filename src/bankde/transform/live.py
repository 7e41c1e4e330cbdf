"""Live fraud alerts: the dbt rules re-evaluated on the cards each CDC batch touched, within seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bankde.cdc.version import sql_max_version_at
from bankde.settings import Settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from bankde.warehouse.session import WarehouseSession

# The live alerts are state this module owns (dbt never drops them): one row per (rule, txn_id)
# like marts.fct_fraud_alerts, versioned by the CDC version of the evaluation that wrote it, so a
# re-evaluation replaces it and a tombstone (_is_deleted) retracts it.
# An alert's columns, as the view fraud_live_alerts returns them (live and scratch tables alike).
_ALERT_COLUMNS = """\
    rule         LowCardinality(String),
    txn_id       Int64,
    card_id      Nullable(Int64),
    customer_id  Nullable(Int64),
    occurred_at  DateTime64(6, 'UTC'),
    score        Float64,
    evidence     String,
    triggered_at DateTime64(6, 'UTC')"""
_LIVE_DDL = """
CREATE TABLE IF NOT EXISTS {db}.fraud_alerts_live
(
{columns},
    visible_at   DateTime64(3, 'UTC'),
    _version     UInt128,
    _is_deleted  UInt8
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY (rule, txn_id)
COMMENT 'Live fraud alerts (bankde.transform.live): triggered_at = oldest commit on the card among the changes of the evaluation that raised it, visible_at = when it first appeared'
"""
# The CDC version evaluated so far (the next evaluation starts above it).
_PROGRESS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.fraud_alerts_live_progress
(
    cdc_version  UInt128,
    evaluated_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(evaluated_at)
ORDER BY tuple()
"""
# One evaluation's alerts, read once from the view and then merged into the live table.
_SCRATCH_DDL = """
CREATE TABLE IF NOT EXISTS {db}.fraud_alerts_live_scratch
(
{columns}
)
ENGINE = MergeTree ORDER BY (rule, txn_id)
"""
# The dbt models an evaluation reads and fills (models/marts/fraud/live/): the views of its three
# steps over the stg views, and the scratch tables between the steps.
LIVE_MODELS = (
    "fraud_live_scope",
    "fraud_live_scope_scratch",
    "fraud_live_facts",
    "fraud_live_facts_scratch",
    "fraud_live_alerts",
)
_COLUMNS = "rule, txn_id, card_id, customer_id, occurred_at, score, evidence, triggered_at"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: CDC versions (low, high], the alerts that became visible in it (rule,
    commit-to-visible milliseconds) and how many were retracted."""

    low: int
    high: int
    seconds: float
    new_alerts: tuple[tuple[str, int], ...] = ()
    retracted: int = 0


@dataclass
class LiveAlerts:
    """Keeps `<prefix>marts.fraud_alerts_live` equal to what the batch rules would say about the
    data landed so far. `evaluate()` runs the dbt models of models/marts/fraud/live/ (the rules'
    own macros, scoped to the cards the CDC versions above the last evaluation touched) in three
    steps, upserts their alerts and retracts the scope's alerts that no longer hold. Idempotent: evaluating the same versions again changes nothing visible. One
    evaluator per warehouse prefix at a time (the run loop's thread). Needs a dbt build first
    (the views); until then `ready()` is False."""

    settings: Settings
    session: WarehouseSession
    _client: Client | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.session.embedded:
            import clickhouse_connect

            from bankde.warehouse.client import warehouse_path

            # Its own chDB handle on the shared engine: an evaluation never queues behind the
            # CDC writer's statements on the session's handle, nor they behind it.
            self._client = clickhouse_connect.get_client(
                interface="chdb", path=warehouse_path(self.settings)
            )

    @property
    def marts(self) -> str:
        return f"`{self.settings.wh_prefix}marts`"

    def _run(self, fn: Callable[[Client], Any]) -> Any:
        if self._client is not None:
            return fn(self._client)
        return self.session.with_client(fn)

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        return self._run(lambda c: [tuple(r) for r in c.query(sql).result_rows])

    def _command(self, sql: str) -> None:
        self._run(lambda c: c.command(sql))

    def ready(self) -> bool:
        """Whether dbt has created the live models (the first build does)."""
        rows = self._query(
            "select count() from system.tables where database = "
            f"'{self.settings.wh_prefix}marts' and name in {LIVE_MODELS!r}"
        )
        return bool(rows) and int(rows[0][0]) == len(LIVE_MODELS)

    def ensure_tables(self) -> None:
        self._command(f"CREATE DATABASE IF NOT EXISTS {self.marts}")
        for ddl in (_LIVE_DDL, _PROGRESS_DDL, _SCRATCH_DDL):
            self._command(ddl.format(db=self.marts, columns=_ALERT_COLUMNS))

    def evaluated_version(self) -> int:
        rows = self._query(
            f"select toString(argMax(cdc_version, evaluated_at)), count() "
            f"from {self.marts}.fraud_alerts_live_progress"
        )
        return int(rows[0][0]) if rows and int(rows[0][1]) else 0

    def landed_version(self) -> int:
        """The newest complete CDC version: capped at the newest stored offset as dbt's pin is
        (the sink writes a batch's tables, then its offset)."""
        raw, meta = f"`{self.settings.wh_prefix}raw`", f"`{self.settings.wh_prefix}meta`"
        rows = self._query(
            "select toString(least(greatest("
            f"(select coalesce(max(_version), toUInt128(0)) from {raw}.`transaction`), "
            f"(select coalesce(max(_version), toUInt128(0)) from {raw}.card)), "
            f"(select if(count() = 0, toUInt128('340282366920938463463374607431768211455'), "
            f"{sql_max_version_at('max(lsn)')}) from {meta}.cdc_offsets)))"
        )
        return int(rows[0][0])

    def evaluate(self, high: int | None = None) -> Evaluation:
        """Alerts for the changes in (last evaluated version, `high`] (default: everything landed
        and complete). Safe to repeat and to interrupt: the progress row is written last."""
        started = time.monotonic()
        low = self.evaluated_version()
        high = self.landed_version() if high is None else high
        if high <= low:
            return Evaluation(low, high, 0.0)
        m = self.marts
        # Three steps, each into a table: ClickHouse plans the query of scope, facts and rules as
        # one in seconds whatever the scope (2.4 s measured); each step alone in milliseconds.
        steps = (
            ("fraud_live_scope_scratch", f"fraud_live_scope(low = {low}, high = {high})", "*"),
            ("fraud_live_facts_scratch", "fraud_live_facts", "*"),
            ("fraud_alerts_live_scratch", "fraud_live_alerts", _COLUMNS),
        )
        for table, source, columns in steps:
            self._command(f"TRUNCATE TABLE {m}.{table}")
            into = "" if columns == "*" else f" ({columns})"
            self._command(f"INSERT INTO {m}.{table}{into} SELECT {columns} FROM {m}.{source}")
        mark = self._query("select toString(now64(3))")[0][0]
        # Upsert: an alert already visible keeps when it first appeared and what triggered it.
        self._command(
            f"INSERT INTO {m}.fraud_alerts_live ({_COLUMNS}, visible_at, _version, _is_deleted) "
            "SELECT s.rule, s.txn_id, s.card_id, s.customer_id, s.occurred_at, s.score, "
            "s.evidence, coalesce(e.triggered_at, s.triggered_at), "
            f"coalesce(e.visible_at, now64(3)), toUInt128('{high}'), 0 "
            f"FROM {m}.fraud_alerts_live_scratch AS s LEFT JOIN ("
            f"  SELECT rule, txn_id, triggered_at, visible_at FROM {m}.fraud_alerts_live FINAL"
            f"  WHERE (rule, txn_id) IN (SELECT rule, txn_id FROM {m}.fraud_alerts_live_scratch)"
            ") AS e ON s.rule = e.rule AND s.txn_id = e.txn_id "
            "SETTINGS join_use_nulls = 1"
        )
        # Retract: alerts of the scope's cards and days that this evaluation did not confirm.
        retract = (
            f"FROM {m}.fraud_alerts_live AS a FINAL "
            f"INNER JOIN {m}.fraud_live_scope_scratch AS s ON a.card_id = s.card_id "
            f"WHERE a._version < toUInt128('{high}') "
            "AND toDate(a.occurred_at) >= addDays(s.first_day, -1) "
            "AND toDate(a.occurred_at) <= addDays(s.last_day, 1)"
        )
        retracted = int(self._query(f"SELECT count() {retract}")[0][0])
        if retracted:
            self._command(
                f"INSERT INTO {m}.fraud_alerts_live ({_COLUMNS}, visible_at, _version, "
                "_is_deleted) SELECT a.rule, a.txn_id, a.card_id, a.customer_id, a.occurred_at, "
                f"a.score, a.evidence, a.triggered_at, a.visible_at, toUInt128('{high}'), 1 "
                + retract
            )
        new = self._query(
            "SELECT rule, toUnixTimestamp64Milli(visible_at) - "
            f"intDiv(toUnixTimestamp64Micro(triggered_at), 1000) FROM {m}.fraud_alerts_live FINAL "
            f"WHERE _version = toUInt128('{high}') AND visible_at >= toDateTime64('{mark}', 3, 'UTC') "
            # The keys this evaluation wrote: read by primary key, not the whole table.
            f"AND (rule, txn_id) IN (SELECT rule, txn_id FROM {m}.fraud_alerts_live_scratch)"
        )
        self._command(f"INSERT INTO {m}.fraud_alerts_live_progress (cdc_version) VALUES ('{high}')")
        return Evaluation(
            low,
            high,
            time.monotonic() - started,
            tuple((str(r), int(ms)) for r, ms in new),
            retracted,
        )

    def counts(self) -> dict[str, int]:
        """Live alerts per rule."""
        rows = self._query(
            f"SELECT rule, count() FROM {self.marts}.fraud_alerts_live FINAL GROUP BY rule"
        )
        return {str(r): int(n) for r, n in rows}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def create_live_models(settings: Settings, session: WarehouseSession) -> bool:
    """Create the live models and the stg views they read (`dbt run` of views and two empty
    tables, seconds), so detection starts without waiting for the first full build. Never
    concurrently with another dbt invocation of this process (dbt's flags are global). Whether
    it succeeded."""
    from bankde.transform.runner import run_dbt

    res = run_dbt(
        ["run", "--select", *(f"+{v}" for v in LIVE_MODELS)],
        settings,
        session,
        quiet=True,
        keep_manifest=True,
    )
    return res.success


def run_live_alerts(
    detector: LiveAlerts,
    wake: threading.Event,
    stop: threading.Event,
    on_evaluation: Callable[[Evaluation], None],
    on_error: Callable[[str], None],
) -> None:
    """The run loop's detection thread: one evaluation after each wake-up (a CDC batch sets
    `wake`); batches landing meanwhile coalesce into the next evaluation. Waits for the first
    dbt build to create the views. An error is reported and retried at the next batch."""
    ensured = False
    while not stop.is_set():
        if not wake.wait(0.5):
            continue
        wake.clear()
        try:
            if not ensured:
                if not detector.ready():
                    continue
                detector.ensure_tables()
                ensured = True
            on_evaluation(detector.evaluate())
        except Exception as exc:
            on_error(f"live alerts: {str(exc).splitlines()[0] if str(exc) else exc!r}")
