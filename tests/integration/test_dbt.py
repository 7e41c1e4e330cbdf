"""dbt on chDB for real: filler -> Postgres -> CDC -> raw -> dbt build; rules vs labels; incremental."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bankde.settings import Settings
from bankde.warehouse.session import WarehouseSession
from tests.conftest import WAREHOUSE_MODES, cli_env, make_home
from tests.integration.pipeline import build as _build
from tests.integration.pipeline import fill as _fill
from tests.integration.pipeline import module_pipeline
from tests.integration.pipeline import psql as _psql
from tests.integration.pipeline import sync as _sync

REPO = Path(__file__).resolve().parents[2]
DBT = str(REPO / ".venv" / "bin" / "dbt")
SCENARIOS = {
    "rapid_withdrawals",
    "after_card_closed",
    "amount_probing",
    "card_testing",
    "account_takeover",
}
# Models whose content must not depend on how often dbt ran (snapshots do, by design).
COMPARED = [
    ("ods", "fct_transactions"),
    ("ods", "ods_cards"),
    ("marts", "kpi_daily"),
    ("marts", "kpi_daily_declines"),
    ("marts", "kpi_daily_channel_mcc"),
    ("marts", "fct_fraud_alerts"),
    ("marts", "fraud_rule_evaluation"),
]


@dataclass
class Pipeline:
    settings: Settings
    session: WarehouseSession
    first_build_ok: bool
    evaluation: list


@pytest.fixture(scope="module", params=WAREHOUSE_MODES)
def pipeline(
    cluster_settings: Settings, warehouse_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    """One source database, slot and warehouse prefix for this module: fill, capture, build.
    Twice: embedded (dbt's chdb adapter in-process), and served by another process (dbt-clickhouse's
    own `clickhouse` target over HTTP, CDC through clickhouse-connect)."""
    from bankde.transform.evaluation import evaluation_rows

    made = module_pipeline(cluster_settings, warehouse_dir, "tdbt_", request.param, request)
    with made as (settings, session):
        wh = session.warehouse(settings)
        _fill(settings, seed=20250601, as_of="2025-06-01T00:00:00Z", txns=12_000, backfill_days=5)
        _sync(settings, session)
        ok = _build(settings, session)
        yield Pipeline(settings, session, ok, evaluation_rows(settings, wh) if ok else [])


def test_build_passes_every_model_and_test(pipeline: Pipeline) -> None:
    assert pipeline.first_build_ok, "dbt build failed on filler+CDC data (see captured output)"


def test_each_rule_meets_recall_and_precision_on_its_scenario(pipeline: Pipeline) -> None:
    rows = {r.scenario: r for r in pipeline.evaluation}
    assert set(rows) >= SCENARIOS, f"scenarios without evaluation: {SCENARIOS - set(rows)}"
    for name in sorted(SCENARIOS):
        r = rows[name]
        assert r.labelled >= 20, f"{name}: too few labelled transactions ({r.labelled}) to judge"
        assert r.recall is not None and r.recall >= 0.9, f"{name}: recall {r.recall}"
        assert r.precision is not None and r.precision >= 0.8, f"{name}: precision {r.precision}"
    overall = rows["overall"]
    assert overall.labelled == sum(rows[s].labelled for s in SCENARIOS)


def test_no_clear_pii_leaves_staging(pipeline: Pipeline) -> None:
    s = pipeline.settings
    wh = pipeline.session.warehouse(s)
    layers = [f"{s.wh_prefix}{layer}" for layer in ("stg", "ods", "marts")]
    pii_columns = wh.query(
        "select database, table, name from system.columns where database in {dbs:Array(String)} "
        "and name in ('first_name', 'last_name', 'email', 'phone', 'address', 'pan', 'iban')",
        {"dbs": layers},
    )
    assert pii_columns == []
    leaked = wh.scalar(
        f"select count() from `{s.wh_prefix}stg`.stg_customers as c "
        f"inner join `{s.wh_prefix}raw`.customer as r on c.email_hash = r.email or "
        f"c.customer_name_hash = r.first_name"
    )
    assert leaked == 0
    hashed = wh.scalar(
        f"select countIf(length(pan_hash) = 64) = count() from `{s.wh_prefix}stg`.stg_cards"
    )
    assert hashed == 1


def _fingerprints(settings: Settings, session: WarehouseSession) -> dict[str, tuple[int, int]]:
    wh = session.warehouse(settings)
    out = {}
    for layer, table in COMPARED:
        n, h = wh.query(
            f"select count(), sum(cityHash64(*)) from `{settings.wh_prefix}{layer}`.`{table}`"
        )[0]
        out[f"{layer}.{table}"] = (int(n), int(h or 0))
    return out


def test_incremental_build_equals_full_refresh(pipeline: Pipeline) -> None:
    from bankde.transform.runner import run_dbt

    s, session = pipeline.settings, pipeline.session
    assert pipeline.first_build_ok
    wh = session.warehouse(s)
    fct = f"`{s.wh_prefix}ods`.fct_transactions"
    before = wh.scalar(f"select count() from {fct}")

    # More of everything through the real capture: new rows and closes (a second fill),
    # reversals of approved transactions, deletes (their labels go with them).
    _fill(s, seed=20250602, as_of="2025-06-02T00:00:00Z", txns=3_000, backfill_days=0)
    _psql(
        s,
        "update bank.transaction set status = 'reversed', updated_at = now() where txn_id in "
        "(select txn_id from bank.transaction where status = 'approved' order by txn_id "
        "limit 200 offset 500)",
    )
    _psql(
        s,
        "delete from bank.transaction where txn_id in (select txn_id from bank.transaction t "
        "where not exists (select 1 from truth.fraud_label l where l.txn_id = t.txn_id) "
        "order by txn_id desc limit 150)",
    )
    _sync(s, session)
    # Changes that land while dbt runs, after it pinned the version it builds up to: an update
    # of a key that is otherwise unchanged and a new key, both above the pin. The build must
    # neither take them (half-applied: deleted by the pre-hook, or appended twice) nor lose them.
    raw = f"`{s.wh_prefix}raw`.`transaction`"
    pin = int(
        wh.scalar(
            f"select toString(greatest((select max(_version) from {raw}), "
            f"(select max(_version) from `{s.wh_prefix}raw`.card)))"
        )
    )
    late_key = int(
        wh.scalar(
            f"select min(txn_id) from {raw} final where _is_deleted = 0 and txn_id not in "
            f"(select txn_id from `{s.wh_prefix}truth`.fraud_label)"
        )
    )
    new_key = late_key + 10**9
    wh.command(
        f"insert into {raw} select * replace ('landed late' as description, "
        f"toUInt128('{pin + 1}') as _version) from {raw} final where txn_id = {late_key}"
    )
    wh.command(
        f"insert into {raw} select * replace ({new_key} as txn_id, generateUUIDv4() as txn_ref, "
        f"toUInt128('{pin + 2}') as _version, 'c' as _op) "
        # A subquery: in the same select, `txn_id` in WHERE would be the replaced value.
        f"from (select * from {raw} final where txn_id = {late_key})"
    )
    assert _build(s, session, "--vars", f"{{cdc_pin_version: {pin}}}"), (
        "incremental dbt build failed"
    )
    reversed_src = _count_source(
        s, "select count(*) from bank.transaction where status = 'reversed'"
    )
    assert wh.scalar(f"select countIf(status = 'reversed') from {fct}") == reversed_src
    live = _count_source(s, "select count(*) from bank.transaction")
    assert wh.scalar(f"select count() from {fct}") == live
    assert live != before
    above_pin = wh.query(
        f"select txn_id, cdc_version > {pin} from {fct} where txn_id in ({late_key}, {new_key})"
    )
    assert above_pin == [(late_key, 0)], "rows landed after the pin were taken by the build"

    # The next run takes them, exactly once.
    assert run_dbt(["run"], s, session, quiet=True).success, "catch-up dbt run failed"
    assert wh.query(
        f"select txn_id, count() from {fct} where txn_id in ({late_key}, {new_key}) "
        f"and cdc_version > {pin} group by txn_id order by txn_id"
    ) == [(late_key, 1), (new_key, 1)]
    assert wh.scalar(f"select count() - uniqExact(txn_id) from {fct}") == 0
    incremental = _fingerprints(s, session)
    assert incremental["ods.fct_transactions"][0] == live + 1

    # SCD2: cards closed by the second fill went active -> closed at their closed_at.
    hist = f"`{s.wh_prefix}ods`.ods_card_status_history"
    reclosed = wh.query(
        f"select card_id, closed_at, valid_from from {hist} where is_current and status = 'closed' "
        f"and card_id in (select card_id from {hist} where not is_inferred and status = 'active')"
    )
    assert reclosed, "no card seen active, then closed"
    assert all(valid_from == closed_at for _, closed_at, valid_from in reclosed)

    assert _build(s, session, "--full-refresh"), "full-refresh dbt build failed"
    assert _fingerprints(s, session) == incremental


def _count_source(settings: Settings, query: str) -> int:
    from bankde.source.connection import connect, source_info

    with connect(source_info(settings)) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


# Holds the warehouse the way any bankde command does, until its stdin closes.
_HOLDER = (
    "import sys; from bankde.settings import get_settings; "
    "from bankde.warehouse.session import open_session; "
    "s = open_session(get_settings()); print('held', flush=True); sys.stdin.read(); s.close()"
)


def test_plain_dbt_waits_for_the_warehouse_lock_then_names_its_holder() -> None:
    home = make_home("bankde-dbtlock-")
    env = cli_env(
        Settings(home=home), DBT_LOG_PATH=str(home / "logs"), DBT_TARGET_PATH=str(home / "target")
    )
    project = str(REPO / "dbt")
    plain_dbt = [DBT, "debug", "--project-dir", project, "--profiles-dir", project]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = subprocess.run(
            plain_dbt, env={**env, "BANKDE_WH_LOCK_WAIT": "0.5"}, capture_output=True, text=True,
            timeout=120, cwd=home,
        )  # fmt: skip
        assert refused.returncode != 0
        assert f"is in use by pid {holder.pid}" in refused.stdout, refused.stdout[-2000:]
        assert "waited 0.5s" in refused.stdout

        waiting = subprocess.Popen(
            plain_dbt, env={**env, "BANKDE_WH_LOCK_WAIT": "120"}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=home,
        )  # fmt: skip
        time.sleep(3)  # dbt starts up and reaches the lock meanwhile (on a busy machine, maybe not)
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        output, _ = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, output[-2000:]
        assert "OK connection ok" in output
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        shutil.rmtree(home, ignore_errors=True)
