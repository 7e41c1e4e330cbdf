"""The Kafka Connect connector configs in debezium/: valid, credential-free, covering every table once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bankde.cdc.engines.debezium.config import connector_properties
from bankde.settings import Settings
from bankde.source.connection import SourceInfo

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "debezium"
SCHEMA_SQL = REPO / "src" / "bankde" / "source" / "schema.sql"

REQUIRED = {
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "plugin.name": "pgoutput",
    "publication.autocreate.mode": "disabled",
    "provide.transaction.metadata": "true",
    "decimal.handling.mode": "string",
}
# Options that shape values: must equal the in-process engine's so both land the same text.
SHAPING = (
    "decimal.handling.mode",
    "time.precision.mode",
    "binary.handling.mode",
    "interval.handling.mode",
    "unavailable.value.placeholder",
    "provide.transaction.metadata",
    "tombstones.on.delete",
    "skipped.operations",
    "plugin.name",
    "topic.prefix",
)
PLACEHOLDER = re.compile(r"^\$\{(file|env):[^}]+\}$")


def _configs() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("postgres-*.json"))}


def _captured_tables() -> set[str]:
    """Every table schema.sql creates in the captured schemas."""
    sql = SCHEMA_SQL.read_text()
    return set(re.findall(r"CREATE TABLE IF NOT EXISTS ((?:bank|truth)\.\w+)", sql))


def test_expected_files_exist() -> None:
    names = set(_configs())
    assert {"postgres-card.json", "postgres-transaction.json", "postgres-customer.json"} <= names
    assert len(names) >= 4


@pytest.mark.parametrize("name", sorted(_configs()))
def test_config_shape_and_no_credentials(name: str) -> None:
    doc = _configs()[name]
    assert set(doc) == {"name", "config"}
    assert doc["name"] == "bankde-" + name.removesuffix(".json")
    cfg = doc["config"]
    assert all(isinstance(v, str) for v in cfg.values()), "Kafka Connect wants string values"
    for key, value in REQUIRED.items():
        assert cfg.get(key) == value, key
    for key in ("database.hostname", "database.port", "database.dbname", "database.user"):
        assert PLACEHOLDER.match(cfg[key]), f"{key} must be a config-provider placeholder"
    assert cfg["database.password"].startswith("${file:"), "password from a secrets file only"
    for key, value in cfg.items():
        if "password" in key or "secret" in key:
            assert PLACEHOLDER.match(value), f"{key} holds a literal credential"


def test_tables_covered_exactly_once() -> None:
    seen: list[str] = []
    for cfg in (d["config"] for d in _configs().values()):
        seen += [t.replace("\\.", ".") for t in cfg["table.include.list"].split(",")]
    assert len(seen) == len(set(seen)), f"a table is in two connectors: {sorted(seen)}"
    assert set(seen) == _captured_tables()


def test_slots_and_publications_unique_and_not_the_engines() -> None:
    cfgs = [d["config"] for d in _configs().values()]
    slots = [c["slot.name"] for c in cfgs]
    pubs = [c["publication.name"] for c in cfgs]
    topics = [c.get("topic.transaction", "transaction") for c in cfgs]
    assert len(set(slots)) == len(slots) and len(set(pubs)) == len(pubs)
    assert len(set(topics)) == len(topics), "transaction topics of two connectors would mix"
    settings = Settings(pg_dsn=None, db_host=None)
    embedded = connector_properties(
        settings, SourceInfo({"user": "u", "dbname": "bank"}, managed=False), [], snapshot=True
    )
    taken = {settings.cdc_slot, embedded["slot.name"], settings.cdc_publication}
    taken.add(embedded["publication.name"])
    assert not (set(slots) | set(pubs)) & taken
    for s in slots:
        assert re.fullmatch(r"[a-z0-9_]{1,63}", s)


def test_value_shaping_matches_embedded_engine() -> None:
    embedded = connector_properties(
        Settings(pg_dsn=None, db_host=None),
        SourceInfo({"user": "u", "dbname": "bank"}, managed=False),
        [],
        snapshot=True,
    )
    for doc in _configs().values():
        for key in SHAPING:
            assert doc["config"][key] == embedded[key], key


@pytest.mark.parametrize("name", sorted(_configs()))
def test_exactly_once_heartbeats_and_the_managed_workers_secrets_file(name: str) -> None:
    cfg = _configs()[name]["config"]
    group = cfg["slot.name"].removeprefix("bankde_kc_")
    assert cfg["exactly.once.support"] == "required"
    assert cfg["transaction.boundary"] == "poll"
    # Heartbeats every second, and a logical message only this connector includes: its LSN on
    # bankde.message says the connector has emitted everything before it, idle or not.
    assert int(cfg["heartbeat.interval.ms"]) <= 1000
    prefix = f"bankde_kc_heartbeat_{group}"
    assert cfg["message.prefix.include.list"] == prefix
    assert cfg["heartbeat.action.query"] == f"SELECT pg_logical_emit_message(false, '{prefix}', '')"
    # JMX names: every connector shares topic.prefix, so each needs its own tag.
    assert cfg["custom.metric.tags"] == f"connector={group}"
    for key in ("hostname", "port", "dbname", "user", "password", "sslmode", "sslrootcert"):
        value = cfg[f"database.{key}"]
        assert value.startswith("${file:secrets/bankde-source.properties:"), key
