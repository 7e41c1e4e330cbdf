"""Test helpers for the kafka engine: the repo's connectors registered under a test's own names."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from bankde.settings import Settings
from bankde.source.connection import connect, owner_info

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stack:
    """A broker and a Connect worker the tests share."""

    bootstrap: str
    connect_url: str


def rest(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
    return json.loads(text) if text else None


@dataclass
class Connectors:
    """The repo's debezium/*.json as one test registered them (own slots, topics, group)."""

    stack: Stack
    settings: Settings  # the kafka engine's settings for this test (prefix, group, bootstrap)
    names: list[str]
    slots: list[str]
    publications: list[str]
    prefix: str

    def states(self) -> dict[str, str]:
        out = {}
        for name in self.names:
            st = rest(f"{self.stack.connect_url}/connectors/{name}/status")
            tasks = st.get("tasks") or [{"state": "NONE"}]
            out[name] = f"{st['connector']['state']}/{tasks[0]['state']}"
        return out

    def wait_running(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = self.states()
            except OSError:
                states = {}
            if states and all(v == "RUNNING/RUNNING" for v in states.values()):
                return
            time.sleep(0.5)
        raise AssertionError(f"connectors not running: {self.states()}")


def _configs(settings: Settings, tag: str, exactly_once: bool) -> list[tuple[str, dict[str, str]]]:
    from bankde.kafka.connect import write_source_properties

    # The connection comes from the worker's file provider, as for `bankde kafka connect`.
    write_source_properties(settings)
    out = []
    for path in sorted((REPO / "debezium").glob("postgres-*.json")):
        doc = json.loads(path.read_text())
        group = doc["name"].removeprefix("bankde-postgres-")
        cfg = dict(doc["config"])
        cfg.update(
            {
                "topic.prefix": tag,
                "slot.name": f"{cfg['slot.name']}_{tag}",
                "publication.name": f"{cfg['publication.name']}_{tag}",
                "heartbeat.interval.ms": "1000",
                "heartbeat.action.query": (
                    f"SELECT pg_logical_emit_message(false, '{tag}_hb_{group}', '')"
                ),
                "message.prefix.include.list": f"{tag}_hb_{group}",
                "topic.creation.default.replication.factor": "1",
                "topic.creation.default.partitions": "3",
            }
        )
        if exactly_once:
            cfg["exactly.once.support"] = "required"
            cfg["transaction.boundary"] = "poll"
        else:
            cfg.pop("exactly.once.support", None)
            cfg.pop("transaction.boundary", None)
        out.append((f"{doc['name']}-{tag}", cfg))
    return out


@contextmanager
def connectors(
    stack: Stack, settings: Settings, *, exactly_once: bool = True
) -> Iterator[Connectors]:
    """Register the connectors for this test's database; remove connectors, slots, publications
    and topics afterwards."""
    from bankde.cdc.slot import drop_slot

    tag = "k" + uuid.uuid4().hex[:8]
    configs = _configs(settings, tag, exactly_once)
    with connect(owner_info(settings)) as conn:
        for _name, cfg in configs:
            tables = [
                t.replace("\\.", ".").split(".") for t in cfg["table.include.list"].split(",")
            ]
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(cfg["publication.name"]),
                    sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables),
                )
            )
        conn.commit()
    engine_settings = settings.model_copy(
        update={
            "kafka_bootstrap": stack.bootstrap,
            "kafka_topic_prefix": tag,
            "kafka_group": f"{tag}-cdc",
        }
    )
    regs = Connectors(
        stack,
        engine_settings,
        [n for n, _ in configs],
        [c["slot.name"] for _, c in configs],
        [c["publication.name"] for _, c in configs],
        tag,
    )
    try:
        for name, cfg in configs:
            rest(f"{stack.connect_url}/connectors/{name}/config", "PUT", cfg)
        yield regs
    finally:
        for name in regs.names:
            with suppress(OSError):
                rest(f"{stack.connect_url}/connectors/{name}", "DELETE")
        for slot in regs.slots:
            drop_slot(settings.model_copy(update={"cdc_slot": slot}), wait=30)
        with connect(owner_info(settings), autocommit=True) as conn:
            for pub in regs.publications:
                conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(pub)))
        _delete_topics(stack, tag)


def _delete_topics(stack: Stack, tag: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{tag}.")]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            with suppress(Exception):  # already gone
                fut.result()
