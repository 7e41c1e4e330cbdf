"""Debezium Postgres connector settings shared by the embedded engine and the Kafka Connect configs."""

from __future__ import annotations

from bankde.cdc.engines.debezium.convert import UNCHANGED_TOAST
from bankde.errors import ConfigError
from bankde.settings import Settings
from bankde.source.connection import SourceInfo, capture_session_options

# Slot and publication names of this engine: the native ones plus this suffix, never the same.
NAME_SUFFIX = "_dbz"
TOPIC_PREFIX = "bankde"
# Logical decoding messages with this prefix mark "the stream got this far" (snapshot end, sync).
MARKER_PREFIX = "bankde_dbz_marker"
HEARTBEAT_MS = 500


# bankde-security: every libpq parameter of the DSN reaches the connector. The ones Debezium
# names itself go as `database.*`; the rest go to the JDBC driver as `driver.<pgjdbc name>`.
_DATABASE_PARAMS = {
    "sslmode": "database.sslmode",
    "sslrootcert": "database.sslrootcert",
    "sslcert": "database.sslcert",
    "sslkey": "database.sslkey",
    "sslpassword": "database.sslpassword",
}
_DRIVER_PARAMS = {
    "application_name": "driver.ApplicationName",
    "connect_timeout": "driver.connectTimeout",
    "options": "driver.options",
    "channel_binding": "driver.channelBinding",
    "gssencmode": "driver.gssEncMode",
    "target_session_attrs": "driver.targetServerType",
    "sslnegotiation": "driver.sslNegotiation",
}
# Carried by the fixed properties below.
_BASE_PARAMS = ("host", "port", "user", "password", "dbname")


def jdbc_properties(info: SourceInfo) -> dict[str, str]:
    """The DSN's parameters beyond host/port/user/password/dbname as connector properties; a
    parameter pgjdbc has no equivalent for (hostaddr, passfile, sslcrl...) is a ConfigError:
    dropping it would quietly weaken the connection (a lost CA check, a lost channel binding)."""
    out: dict[str, str] = {}
    for key, value in info.params.items():
        if key in _BASE_PARAMS:
            continue
        name = _DATABASE_PARAMS.get(key) or _DRIVER_PARAMS.get(key)
        if name is None:
            raise ConfigError(
                f"BANKDE_PG_DSN: parameter {key}={value} has no Debezium/JDBC equivalent; "
                "remove it or use the native engine (BANKDE_CDC_ENGINE=native)"
            )
        out[name] = value
    return out


def _suffixed(name: str) -> str:
    return name if name.endswith(NAME_SUFFIX) else name[: 63 - len(NAME_SUFFIX)] + NAME_SUFFIX


def engine_settings(settings: Settings) -> Settings:
    """The settings this engine runs under: its own slot and publication (and so its own offset
    row in the warehouse), so it can run beside the native engine on the same source."""
    return settings.model_copy(
        update={
            "cdc_slot": _suffixed(settings.cdc_slot),
            "cdc_publication": _suffixed(settings.cdc_publication),
        }
    )


def connector_properties(
    settings: Settings,
    info: SourceInfo,
    tables: list[tuple[str, str]],
    *,
    snapshot: bool,
) -> dict[str, str]:
    """The embedded connector's configuration. Values are chosen so Debezium's JSON carries the
    same text forms as pgoutput: exact decimals as strings, UTC timestamps as ISO strings, dates
    as day numbers (converted back to text in convert.py)."""
    s = engine_settings(settings)
    p = info.params
    props = {
        "name": f"bankde-{s.cdc_slot}",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": p.get("host", "127.0.0.1"),
        "database.port": p.get("port", "5432"),
        "database.user": p.get("user", ""),
        "database.password": p.get("password", ""),
        "database.dbname": info.dbname,
        "database.sslmode": p.get("sslmode", "prefer"),
        **jdbc_properties(info),
        # Pinned session (pgjdbc sends the options at startup, above ALTER ROLE/DATABASE SET);
        # the DSN's own options, if any, come first and ours win.
        "driver.options": " ".join(o for o in (p.get("options"), capture_session_options()) if o),
        "topic.prefix": TOPIC_PREFIX,
        "plugin.name": "pgoutput",
        "slot.name": s.cdc_slot,
        "publication.name": s.cdc_publication,
        # The capture role owns no table, so it cannot create publications: bankde does.
        "publication.autocreate.mode": "disabled",
        "table.include.list": ",".join(f"{sc}\\.{t}" for sc, t in tables),
        "snapshot.mode": "initial" if snapshot else "no_data",
        "decimal.handling.mode": "string",
        "time.precision.mode": "adaptive_time_microseconds",
        "binary.handling.mode": "hex",
        "interval.handling.mode": "string",
        "unavailable.value.placeholder": UNCHANGED_TOAST,
        "provide.transaction.metadata": "true",
        "tombstones.on.delete": "false",
        "skipped.operations": "none",  # truncates reach the sink like in the native engine
        "message.prefix.include.list": MARKER_PREFIX,
        "heartbeat.interval.ms": str(HEARTBEAT_MS),
        "converter.schemas.enable": "false",
        # Debezium's offsets live only in memory: it resumes where the slot was confirmed, and
        # the slot is confirmed only for records the warehouse holds (see DebeziumEngine). A
        # stored offset would add nothing, and resuming from one waits for a new transaction.
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "0",
        "offset.flush.timeout.ms": "10000",
        "max.batch.size": "8192",
        "max.queue.size": "32768",
        "poll.interval.ms": "50",
        # A lost connection ends the engine; the capture loop reconnects with its own backoff.
        "errors.max.retries": "0",
        "record.processing.order": "ORDERED",
    }
    return props
