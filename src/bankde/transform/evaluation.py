"""Fraud-rule evaluation rows (precision, recall, F1 per scenario) read from the warehouse."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bankde.errors import BankdeError

if TYPE_CHECKING:
    from bankde.settings import Settings
    from bankde.warehouse.client import Warehouse


class EvaluationMissing(BankdeError):
    """The evaluation model has not been built in this warehouse yet."""


@dataclass(frozen=True)
class RuleScore:
    """One row of marts.fraud_rule_evaluation: a scenario's rule against the filler's labels.

    `scenario` is a filler scenario name or 'overall' (any alert vs any label). Precision is the
    share of the rule's alerted transactions labelled with its own scenario; recall the share of
    that scenario's labelled transactions the rule alerted. None when undefined (0/0).
    """

    scenario: str
    rule: str
    labelled: int
    alerted: int
    true_positives: int
    precision: float | None
    recall: float | None
    f1: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluation_rows(
    settings: Settings, warehouse: Warehouse, prefix: str | None = None
) -> list[RuleScore]:
    """Rows of `<prefix>marts.fraud_rule_evaluation` (built by `bankde dbt build`), 'overall' last."""
    wh = warehouse
    db = f"{settings.wh_prefix if prefix is None else prefix}marts"
    exists = wh.scalar(
        "select count() from system.tables where database = {db:String} "
        "and name = 'fraud_rule_evaluation'",
        {"db": db},
    )
    if not exists:
        raise EvaluationMissing(
            f"{db}.fraud_rule_evaluation does not exist yet; run `bankde dbt build` first"
        )
    rows = wh.query(
        f"select scenario, rule, labelled, alerted, true_positives, precision, recall, f1 "
        f"from `{db}`.fraud_rule_evaluation order by scenario = 'overall', scenario"
    )

    def num(v: Any) -> float | None:
        return None if v is None else float(v)

    return [
        RuleScore(str(s), str(r), int(lab), int(al), int(tp), num(p), num(rc), num(f))
        for s, r, lab, al, tp, p, rc, f in rows
    ]
