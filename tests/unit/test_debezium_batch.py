"""The Debezium engine's batch sorting: a marker never overtakes the snapshot rows before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bankde.cdc.engines.debezium.engine import DebeziumEngine
from bankde.settings import Settings


class Records(list[Any]):
    """Debezium's batch (a java.util.List): records by index."""

    def get(self, index: int) -> Any:
        return self[index]


def _snap(table: str, n: int, flag: str = "true") -> dict[str, Any]:
    src = {"schema": "bank", "table": table, "lsn": 100, "snapshot": flag}
    return {"op": "r", "source": src, "after": {"id": n}}


def test_snapshot_rows_are_queued_before_a_marker_of_the_same_batch(tmp_path: Path) -> None:
    engine = DebeziumEngine(Settings(home=tmp_path))
    marker = {"op": "m", "source": {"lsn": 200, "schema": "", "table": ""}}
    # Under load one batch holds the end of the snapshot and the first streamed records.
    values = [
        _snap("account", 1),
        _snap("card", 1),
        _snap("card", 2, "last"),
        marker,
    ]
    engine._take_batch(Records(values), values)
    queued = []
    while not engine._out.empty():
        kind, item = engine._out.get()
        queued.append(
            (kind, item[0] if kind == "snap" else item, len(item[1]) if kind == "snap" else 0)
        )
    assert queued == [
        ("snap", ("bank", "account"), 1),
        ("snap", ("bank", "card"), 2),
        ("marker", 200, 0),
    ]
