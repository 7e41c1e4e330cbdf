"""The kafka engine's names: its offset row and the topics it reads (no Kafka client needed, so
the registry, status and bench can use them without the `kafka` extra installed)."""

from __future__ import annotations

import re

from bankde.settings import Settings

# Topic names as the repo's debezium/*.json make them: data topics <topic.prefix>.<schema>.<table>.
# Each connector's heartbeat emits a logical-decoding message with a prefix of its own, and only
# that prefix passes its message.prefix.include.list: a message event on <topic.prefix>.message
# says which connector delivered it, and at which LSN.
NAME_SUFFIX = "_kafka"


def data_topics(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}\.(bank|truth)\.[A-Za-z0-9_]+$")


def transaction_topics(prefix: str) -> re.Pattern[str]:
    """Each connector's BEGIN/END records (provide.transaction.metadata, topic.transaction):
    the END's id is '<xid>:<commit end LSN>', the only place the commit's position is."""
    return re.compile(rf"^{re.escape(prefix)}\.transaction\.[A-Za-z0-9_.-]+$")


def marker_topics(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}\.message$")


def engine_settings(settings: Settings) -> Settings:
    """Its own offset row (slot name): the connectors' slots belong to Kafka Connect."""
    slot = settings.cdc_slot
    if not slot.endswith(NAME_SUFFIX):
        slot = slot[: 63 - len(NAME_SUFFIX)] + NAME_SUFFIX
    return settings.model_copy(update={"cdc_slot": slot})
