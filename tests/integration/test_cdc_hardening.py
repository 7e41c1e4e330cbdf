"""CDC against what production does to it (issue 9): quarantine, pinned sessions, odd values, offsets."""

from __future__ import annotations

from bankde.cdc.rejects import Reject, key_text, recent_rejects, record_rejects, reject_summary
from bankde.cdc.status import status
from bankde.monitoring.reconcile import reconcile
from bankde.settings import Settings
from bankde.warehouse.session import WarehouseSession
from tests.integration import test_cdc as base

# The CDC tests' fixtures: own source database, slot, publication and warehouse prefix.
cdc_empty = base.cdc_empty
cdc_settings = base.cdc_settings
cdc_session = base.cdc_session
sync = base.sync


def test_rejects_are_recorded_once_and_reported_by_status_and_reconcile(
    cdc_settings: Settings, cdc_session: WarehouseSession
) -> None:
    s = cdc_settings
    sync(s, cdc_session)
    wh = cdc_session.warehouse(s)
    rejects = [
        Reject("bank.account", key_text({"account_id": 7}), 1234, "balance", "NaN", "NaN"),
        Reject(
            "bank.account",
            key_text({"account_id": 7}),
            1234,
            "overdraft_limit",
            "Infinity",
            "infinite",
            topic="t",
            partition=0,
            offset=42,
        ),
    ]
    assert record_rejects(wh, s.cdc_slot, rejects) == 2
    # A re-delivered batch records the same rejects again: still one each.
    record_rejects(wh, s.cdc_slot, rejects)
    summary = reject_summary(wh, s.cdc_slot)
    assert list(summary) == ["bank.account"]
    assert (summary["bank.account"].rows, summary["bank.account"].values) == (1, 2)
    assert reject_summary(wh, "another_slot") == {}
    got = sorted(recent_rejects(wh, s.cdc_slot), key=lambda r: r.column)
    assert got[0].key == '{"account_id":"7"}' and got[0].source_text == "NaN"
    assert (got[1].topic, got[1].partition, got[1].offset) == ("t", 0, 42)

    data = status(s, warehouse=wh, counts=False)
    assert data["rejects"]["bank.account"]["rows"] == 1
    res = reconcile(s, wh)
    account = next(t for t in res.tables if t.table == "bank.account")
    assert account.quarantined == 1 and "meta.cdc_rejects" in (account.quarantine_note or "")
    assert res.equal  # the rows themselves did land: quarantine is reported, not a difference
