"""Which dbt nodes a build needs: those downstream of the landing tables changed since the last build."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bankde.warehouse.client import Warehouse

# Landing table -> the dbt source that declares it (models/staging/*/__sources.yml).
SOURCES: dict[tuple[str, str], str] = {
    ("raw", "customer"): "bank.customer",
    ("raw", "account"): "bank.account",
    ("raw", "card"): "bank.card",
    ("raw", "terminal"): "bank.terminal",
    ("raw", "transaction"): "bank.transaction",
    ("truth", "fraud_episode"): "truth.fraud_episode",
    ("truth", "fraud_label"): "truth.fraud_label",
}


# What a selected build leaves out (dbt selectors): views, which a changed row never changes;
# unit tests, which check the SQL on fixed inputs, so a data change cannot change their result
# (they run in every build that builds everything: a process's first, a full one).
VIEWS = "config.materialized:view"
UNIT_TESTS = "resource_type:unit_test"
# The live evaluation's scratch tables (models/marts/fraud/live/): a build appends nothing to them.
LIVE_SCRATCH = "tag:live_scratch"


def last_pin(wh: Warehouse) -> int | None:
    """The CDC version the newest dbt run pinned at its start (on-run-start, '__run__' in
    marts.dbt_cdc_watermarks), None before the first run."""
    table = f"`{wh.settings.wh_prefix}marts`.dbt_cdc_watermarks"
    exists = wh.scalar(
        "select count() from system.tables where database = {d:String} and "
        "name = 'dbt_cdc_watermarks'",
        {"d": f"{wh.settings.wh_prefix}marts"},
    )
    if not exists:
        return None
    rows = wh.query(
        f"select toString(argMaxIf(cdc_version, written_at, model = '__run__')), "
        f"countIf(model = '__run__') from {table}"
    )
    return int(rows[0][0]) if rows and int(rows[0][1]) else None


def landed_version(wh: Warehouse) -> int:
    """The highest version in any landing table a dbt source declares. Read before choosing what
    to build: every change at or below it is either selected or already built, so it is the
    `since` of the next build once this one succeeds."""
    prefix = wh.settings.wh_prefix
    parts = [f"select max(_version) as v from `{prefix}{db}`.`{table}`" for db, table in SOURCES]
    return int(wh.scalar(f"select toString(max(v)) from ({' union all '.join(parts)})") or 0)


def changed_sources(wh: Warehouse, since: int) -> list[str]:
    """The dbt sources whose landing table holds a version above `since` (a build's pin: what
    it read is at or below it), as `source:` names. Every version counts, deletes included."""
    prefix = wh.settings.wh_prefix
    parts = [
        f"select '{name}', count() from `{prefix}{db}`.`{table}` "
        f"where _version > toUInt128('{since}')"
        for (db, table), name in SOURCES.items()
    ]
    rows = wh.query(" union all ".join(parts))
    return sorted(str(name) for name, n in rows if int(n) > 0)


def build_selection(wh: Warehouse, since: int | None) -> list[str] | None:
    """`dbt build` arguments that select only the nodes downstream of the sources changed since
    the build that pinned `since` (its models, snapshots and their tests; dbt's eager indirect
    selection adds a test that touches any of them), views, unit tests and the live scratch tables
    excluded: [] when nothing changed (no build needed), None when there is no earlier build to compare with (build everything)."""
    if since is None:
        return None
    changed = changed_sources(wh, since)
    if not changed:
        return []
    # Views hold no rows: one that the first build of the process (None above) or a full build
    # created needs no new CREATE for changed data (fraud_live_alerts' takes ~1 s on 10M rows).
    # Their tests go with them: fct_transactions' tests cover the same transaction keys.
    return [
        "--select",
        *(f"source:{name}+" for name in changed),
        "--exclude",
        VIEWS,
        UNIT_TESTS,
        LIVE_SCRATCH,
    ]
