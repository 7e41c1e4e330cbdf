"""`bankde kafka status`: one report of broker, worker, connectors, topics and consumer lag."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bankde.errors import BankdeError
from bankde.kafka.cluster import ManagedKafka
from bankde.settings import Settings


def gather(settings: Settings) -> dict[str, Any]:
    """What runs and what it holds; a part that cannot be read is None and its reason in errors."""
    kafka = ManagedKafka(settings)
    broker, worker = kafka.state("broker"), kafka.state("worker")
    report: dict[str, Any] = {
        "broker": {"running": broker.running, "pid": broker.pid, "address": kafka.bootstrap},
        "worker": {"running": worker.running, "pid": worker.pid, "address": kafka.connect_url},
        "connectors": None,
        "topics": None,
        "groups": None,
        "engine_group": settings.kafka_group,
        "errors": [],
    }
    if worker.running:
        from bankde.kafka.connect import connector_states

        try:
            report["connectors"] = [asdict(s) for s in connector_states(kafka.connect_url)]
        except (OSError, BankdeError) as exc:
            report["errors"].append(f"worker: {exc}")
    if broker.running:
        from bankde.kafka.admin import BrokerError, group_lag, topic_offsets

        try:
            report["topics"] = [asdict(t) for t in topic_offsets(kafka.bootstrap)]
        except BrokerError as exc:
            report["errors"].append(f"broker: {exc}")
        try:
            report["groups"] = [{**asdict(g), "lag": g.lag} for g in group_lag(kafka.bootstrap)]
        except BrokerError as exc:
            report["errors"].append(f"consumer groups: {exc}")
    return report
