"""Live fraud alerts against the batch marts: same alert keys after late, out-of-order and deleted rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bankde.settings import Settings
from bankde.warehouse.session import WarehouseSession
from tests.integration.pipeline import build as _build
from tests.integration.pipeline import fill as _fill
from tests.integration.pipeline import module_pipeline
from tests.integration.pipeline import psql as _psql
from tests.integration.pipeline import sync as _sync


@dataclass
class Live:
    settings: Settings
    session: WarehouseSession
    detector: object


@pytest.fixture(scope="module")
def live(cluster_settings: Settings, warehouse_dir: Path) -> Iterator[Live]:
    from bankde.transform.live import LiveAlerts

    with module_pipeline(cluster_settings, warehouse_dir, "tlive_") as (settings, session):
        detector = LiveAlerts(settings, session)
        try:
            _fill(
                settings, seed=20250601, as_of="2025-06-01T00:00:00Z", txns=4_000, backfill_days=2
            )
            _sync(settings, session)
            assert _build(settings, session), "first dbt build failed"
            detector.ensure_tables()
            yield Live(settings, session, detector)
        finally:
            detector.close()


def _keys(live: Live, table: str, final: bool = False) -> set[tuple[str, int]]:
    wh = live.session.warehouse(live.settings)
    where = " final where _is_deleted = 0" if final else ""
    rows = wh.query(f"select rule, txn_id from `{live.settings.wh_prefix}marts`.{table}{where}")
    return {(str(r), int(t)) for r, t in rows}


def _scores(live: Live, table: str, final: bool) -> dict[str, tuple[float, float]]:
    """Precision and recall per rule, as fraud_rule_evaluation computes them."""
    p = live.settings.wh_prefix
    where = " final where _is_deleted = 0" if final else ""
    rows = live.session.warehouse(live.settings).query(
        f"with a as (select distinct rule, txn_id from `{p}marts`.{table}{where}), "
        f"l as (select txn_id, scenario from `{p}stg`.stg_fraud_labels) "
        "select a.rule, countIf(l.txn_id != 0) / count(), count() from a left join l "
        "on a.txn_id = l.txn_id and replaceRegexpOne(a.rule, '^fraud_', '') = l.scenario "
        "group by a.rule"
    )
    labelled = dict(
        live.session.warehouse(live.settings).query(
            f"select scenario, count() from `{p}stg`.stg_fraud_labels group by scenario"
        )
    )
    out = {}
    for rule, precision, alerted in rows:
        tp = precision * alerted
        out[str(rule)] = (float(precision), tp / max(1, labelled.get(rule[6:], 0)))
    return out


def _live_keys(live: Live) -> set[tuple[str, int]]:
    return _keys(live, "fraud_alerts_live", final=True)


def test_first_evaluation_equals_the_batch_marts(live: Live) -> None:
    from bankde.transform.live import LiveAlerts

    detector = live.detector
    assert isinstance(detector, LiveAlerts)
    ev = detector.evaluate()
    assert ev.high > 0 and ev.new_alerts
    batch = _keys(live, "fct_fraud_alerts")
    assert {r for r, _ in batch} == {
        "fraud_rapid_withdrawals",
        "fraud_after_card_closed",
        "fraud_amount_probing",
        "fraud_card_testing",
        "fraud_account_takeover",
    }
    assert _live_keys(live) == batch
    # Repeating changes nothing: the progress row says everything landed was evaluated.
    again = detector.evaluate()
    assert again.new_alerts == () and again.retracted == 0
    assert _live_keys(live) == batch


def test_late_out_of_order_and_deleted_rows_leave_no_stale_alert(live: Live) -> None:
    from bankde.transform.live import LiveAlerts

    s, detector = live.settings, live.detector
    assert isinstance(detector, LiveAlerts)
    wh = live.session.warehouse(s)
    detector.evaluate()

    # 1. A burst alerted by rapid_withdrawals loses half its rows: its alerts must go.
    burst_card = wh.scalar(
        f"select card_id from `{s.wh_prefix}marts`.fct_fraud_alerts "
        "where rule = 'fraud_rapid_withdrawals' group by card_id order by card_id limit 1"
    )
    burst = [
        t
        for (t,) in wh.query(
            f"select txn_id from `{s.wh_prefix}marts`.fct_fraud_alerts "
            f"where rule = 'fraud_rapid_withdrawals' and card_id = {burst_card} order by txn_id"
        )
    ]
    _psql(
        s,
        f"delete from truth.fraud_label where txn_id in ({','.join(map(str, burst[:-2]))}); "
        f"delete from bank.transaction where txn_id in ({','.join(map(str, burst[:-2]))})",
    )
    _sync(s, live.session)
    ev = detector.evaluate()
    assert ev.retracted >= 2
    assert not {k for k in _live_keys(live) if k[1] in burst}, "deleted burst still alerted"

    # 2. A backfill days earlier than everything landed: a card-testing run copied 2 days back.
    run = wh.query(
        f"select txn_id from `{s.wh_prefix}marts`.fct_fraud_alerts "
        "where rule = 'fraud_card_testing' order by card_id, occurred_at limit 5"
    )
    ids = ",".join(str(t) for (t,) in run)
    _psql(
        s,
        "insert into bank.transaction (txn_id, account_id, card_id, terminal_id, txn_type, "
        "status, decline_reason, amount, currency, balance_after, description, occurred_at) "
        "select (select max(txn_id) from bank.transaction) + row_number() over (order by txn_id), "
        "account_id, card_id, terminal_id, txn_type, status, decline_reason, amount, currency, "
        "balance_after, 'backfill', occurred_at - interval '2 days' "
        f"from bank.transaction where txn_id in ({ids})",
    )
    # 3. A card closed after its transactions were landed, with a close time before the last
    # three of them: after_card_closed fires on them only now.
    closed_card = wh.query(
        f"select card_id from `{s.wh_prefix}ods`.fct_transactions "
        f"where card_id in (select card_id from `{s.wh_prefix}ods`.ods_cards where closed_at is null) "
        "and card_id not in (select card_id from "
        f"`{s.wh_prefix}marts`.fct_fraud_alerts) "
        "group by card_id having count() >= 3 order by max(occurred_at) desc limit 1"
    )[0][0]
    first_of_three = wh.query(
        f"select occurred_at from `{s.wh_prefix}ods`.fct_transactions where card_id = {closed_card} "
        "order by occurred_at desc limit 1 offset 2"
    )[0][0]
    _psql(
        s,
        f"update bank.card set status = 'closed', closed_at = '{first_of_three.isoformat()}'::"
        f"timestamptz - interval '1 second', updated_at = now() where card_id = {closed_card}; "
        # What the bank does with a closed card's later attempts (the dbt tests check it).
        # Moved within a minute of each other, so they form a burst after the close.
        "update bank.transaction set status = 'declined', decline_reason = 'card_closed', "
        f"occurred_at = '{first_of_three.isoformat()}'::timestamptz + (txn_id % 50) * "
        "interval '1 second', "
        f"balance_after = null, updated_at = now() where card_id = {closed_card} "
        f"and occurred_at >= '{first_of_three.isoformat()}'::timestamptz",
    )
    # 4. More live data through a second fill (inserts, closes, fraud of every scenario).
    _fill(s, seed=20250602, as_of="2025-06-02T00:00:00Z", txns=3_000, backfill_days=0)
    _sync(s, live.session)
    detector.evaluate()
    assert _build(s, live.session), "incremental dbt build failed"

    batch = _keys(live, "fct_fraud_alerts")
    live_keys = _live_keys(live)
    assert live_keys == batch, (
        f"live - batch: {sorted(live_keys - batch)[:5]}, batch - live: {sorted(batch - live_keys)[:5]}"
    )
    backfilled = wh.scalar(
        f"select count() from `{s.wh_prefix}marts`.fraud_alerts_live final "
        "where _is_deleted = 0 and rule = 'fraud_card_testing' and txn_id in "
        f"(select txn_id from `{s.wh_prefix}raw`.`transaction` where description = 'backfill')"
    )
    assert backfilled >= 5
    closed_alerts = wh.scalar(
        f"select count() from `{s.wh_prefix}marts`.fraud_alerts_live final where _is_deleted = 0 "
        f"and rule = 'fraud_after_card_closed' and card_id = {closed_card}"
    )
    assert closed_alerts >= 3
    live_scores = _scores(live, "fraud_alerts_live", final=True)
    batch_scores = _scores(live, "fct_fraud_alerts", final=False)
    assert live_scores.keys() == batch_scores.keys()
    for rule, (precision, recall) in batch_scores.items():
        assert abs(live_scores[rule][0] - precision) <= 0.02, rule
        assert abs(live_scores[rule][1] - recall) <= 0.02, rule


def test_build_selects_only_what_changed_and_equals_a_full_rebuild(live: Live) -> None:
    """Issue 12.3 at test size: after transaction changes only the nodes downstream of
    bank.transaction run (no customer/card snapshot), nothing runs without changes, and the
    result equals a --full-refresh build."""
    from bankde.transform.changed import build_selection, landed_version
    from bankde.transform.runner import run_dbt
    from tests.integration.test_dbt import _fingerprints

    s, session = live.settings, live.session
    wh = session.warehouse(s)
    since = landed_version(wh)
    assert _build(s, session)
    assert build_selection(wh, since) == [], "nothing changed, yet a build was selected"
    _psql(
        s,
        "update bank.transaction set status = 'reversed', updated_at = now() where txn_id in "
        "(select txn_id from bank.transaction where status = 'approved' order by txn_id desc "
        "limit 40); delete from bank.transaction where txn_id in (select txn_id from "
        "bank.transaction t where not exists (select 1 from truth.fraud_label l where "
        "l.txn_id = t.txn_id) order by txn_id limit 30)",
    )
    _sync(s, session)
    selection = build_selection(wh, since)
    assert selection == [
        "--select",
        "source:bank.transaction+",
        "--exclude",
        "config.materialized:view",
        "resource_type:unit_test",
        "tag:live_scratch",
    ]
    res = run_dbt(["build", *selection], s, session, quiet=True)
    assert res.success, res.failed
    ran = {name for name, _, _ in res.nodes}
    assert "fct_transactions" in ran and "fct_fraud_alerts" in ran
    assert not {n for n in ran if n.startswith("snap_") or n in ("ods_customers", "ods_cards")}
    assert not {n for n in ran if n.endswith("_scratch")}, "a live scratch table was built"
    assert len(ran) < 100
    selected = _fingerprints(s, session)
    assert _build(s, session, "--full-refresh"), "full-refresh dbt build failed"
    assert _fingerprints(s, session) == selected


def test_tests_of_changed_rows_fail_on_a_bad_change_until_it_is_fixed(live: Live) -> None:
    """The data tests of fct_transactions read only the keys changed since they last passed
    (macros/changed_rows_tests.sql): a bad change fails them, and keeps failing them on the
    next build (a failed test keeps its old bound) until a new change fixes it."""
    from bankde.transform.changed import build_selection
    from bankde.transform.runner import run_dbt

    s, session = live.settings, live.session
    wh = session.warehouse(s)
    p = s.wh_prefix
    key = int(wh.scalar(f"select max(txn_id) from `{p}ods`.fct_transactions where amount > 1"))
    top = int(wh.scalar(f"select toString(max(_version)) from `{p}raw`.transaction"))
    amount = str(
        wh.scalar(f"select toString(amount) from `{p}ods`.fct_transactions where txn_id = {key}")
    )

    def land(value: str, version: int) -> list[str]:
        # A change Postgres would refuse (amount 0), landed as CDC would; the build is pinned at
        # it (these versions sit above the newest recorded offset, the usual cap of the pin).
        wh.command(
            f"insert into `{p}raw`.transaction select * replace (toDecimal64('{value}', 2) as "
            f"amount, toUInt128('{version}') as _version) from `{p}raw`.transaction final "
            f"where txn_id = {key}"
        )
        selection = build_selection(wh, version - 1)
        assert selection and "source:bank.transaction+" in selection
        return ["build", *selection, "--vars", f"{{cdc_pin_version: {version}}}"]

    # fct_transactions' row invariants are one test (tests/generic/row_checks.sql).
    args = land("0", top + 1)
    res = run_dbt(args, s, session, quiet=True)
    assert not res.success, "amount 0 passed the row checks"
    (amount_test,) = [n for n in res.failed if n.startswith("row_checks_fct_transactions")]
    res = run_dbt(args, s, session, quiet=True)
    assert amount_test in res.failed, "a failed scoped test passed on the same rows later"
    res = run_dbt(land(amount, top + 2), s, session, quiet=True)
    assert res.success, res.failed
    ran = {name: status for name, status, _ in res.nodes}
    assert ran[amount_test] == "pass"
