"""One settings object: environment, `.env`, and the seed's DB_* names; embedded vs server is chosen here."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bankde.errors import ConfigError

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class Settings(BaseSettings):
    """Every knob of bankde. `BANKDE_*` variables, plus `DB_*` as the original filler named them."""

    model_config = SettingsConfigDict(
        env_prefix="BANKDE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # All local state (managed Postgres, chDB warehouse, logs, secrets) lives under home.
    home: Path = Path(".bankde")

    # --- source Postgres -------------------------------------------------------------
    pg_port: int = Field(54329, ge=1, le=65535)
    pg_dsn: str | None = None
    # OS user that runs the managed server when bankde itself runs as root.
    pg_os_user: str | None = None
    db_name: str = Field("bank", validation_alias=AliasChoices("DB_NAME", "BANKDE_DB_NAME"))
    db_user: str = Field("bankde", validation_alias=AliasChoices("DB_USER", "BANKDE_DB_USER"))
    db_password: str | None = Field(
        None, validation_alias=AliasChoices("DB_PASSWORD", "BANKDE_DB_PASSWORD"), repr=False
    )
    db_host: str | None = Field(None, validation_alias=AliasChoices("DB_HOST", "BANKDE_DB_HOST"))
    db_port: int | None = Field(
        None, ge=1, le=65535, validation_alias=AliasChoices("DB_PORT", "BANKDE_DB_PORT")
    )
    db_sslmode: SslMode | None = Field(
        None, validation_alias=AliasChoices("DB_SSLMODE", "BANKDE_DB_SSLMODE")
    )
    # Roles of the managed cluster (docs/security.md): a superuser only for creating the cluster
    # and the roles, a non-superuser owner of bank/truth, the application role db_user.
    admin_user: str = Field("bankde_admin", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    owner_user: str = Field("bankde_owner", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # Managed cluster: generated under $BANKDE_HOME/secrets unless given (e.g. to another home).
    owner_password: str | None = Field(None, repr=False)
    # Card numbers: a file holding the 32-byte key (64 hex digits). Unset: $BANKDE_HOME/secrets/pan_key.
    pan_key_file: Path | None = None
    # Capture role (REPLICATION + SELECT only). On the managed cluster its password is generated.
    cdc_user: str = "bankde_cdc"
    cdc_password: str | None = Field(None, repr=False)
    # Capture: slot and publication names (tests isolate them), batch bounds of `cdc run`.
    cdc_slot: str = Field("bankde_slot", pattern=r"^[a-z0-9_]{1,63}$")
    cdc_publication: str = Field("bankde_pub", pattern=r"^[a-z0-9_]{1,63}$")
    cdc_batch_rows: int = Field(50_000, ge=1)
    cdc_batch_seconds: float = Field(0.5, gt=0)
    # A transaction with more row changes than this is written in parts as it arrives and made
    # visible at its commit (memory stays bounded however large it is).
    cdc_txn_part_rows: int = Field(100_000, ge=1)
    # The kafka engine: brokers holding the Debezium topics (unset: the managed broker on
    # 127.0.0.1:kafka_port) and the connectors' topic.prefix (debezium/*.json). Several
    # `cdc run --engine kafka` processes in one consumer group (kafka_group) share the partitions.
    kafka_bootstrap: str | None = None
    kafka_topic_prefix: str = Field("bankde", pattern=r"^[A-Za-z0-9_-]{1,100}$")
    # Adaptive batching: write a batch as soon as the stream has caught up and the writer is
    # free (low latency at a steady rate); full batches still form while catching up.
    cdc_batch_adaptive: bool = True
    # Adaptive batches come this far apart at least, and a stream of them records its offset
    # this often at most: each batch is a part per table, each offset row one more, and parts
    # replaced by merges are deleted in the background, which costs a steady stream its p99
    # where deleting files is slow (docs/cdc.md, "Latency"). 0 turns either off.
    cdc_batch_min_seconds: float = Field(0.05, ge=0)
    cdc_offset_seconds: float = Field(0.25, ge=0)
    # Creating a slot waits for every transaction open at that moment to end: how long at most
    # (it names the blocking pid and transaction age meanwhile).
    cdc_slot_wait_seconds: float = Field(300.0, gt=0)

    # --- warehouse --------------------------------------------------------------------
    # Unset: embedded chDB under $BANKDE_HOME/warehouse. Set: a ClickHouse server.
    clickhouse_url: str | None = None
    # Embedded warehouse directory when not $BANKDE_HOME/warehouse (tests share one per process).
    wh_dir: Path | None = None
    # Prefix of the warehouse databases ("t1_" -> t1_raw, t1_truth, t1_meta): isolates tests/pipelines.
    wh_prefix: str = Field("", pattern=r"^[A-Za-z0-9_]*$", max_length=40)
    # Seconds a process waits for another one to release the embedded warehouse (--wait overrides).
    wh_lock_wait: float = Field(5.0, ge=0)
    # Landing tables, offsets and rejects fsync each insert (files and part directory) before it
    # returns, so the slot is acknowledged only for what is on disk. Off only to measure the
    # cost (bench/cdc.py) or on a throwaway warehouse.
    wh_fsync: bool = True
    # Port of the served warehouse (ClickHouse HTTP interface on 127.0.0.1); `wh serve --port`.
    wh_http_port: int = Field(8123, ge=0, le=65535)

    # --- Kafka (`bankde kafka up`): broker, its KRaft controller and the Connect worker's REST
    # port, all on 127.0.0.1; the consumer group whose lag `kafka status` shows.
    kafka_port: int = Field(19092, ge=1, le=65535)
    kafka_controller_port: int = Field(19093, ge=1, le=65535)
    connect_port: int = Field(18083, ge=1, le=65535)
    kafka_group: str = Field("bankde", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    # The broker's, worker's and Debezium plugin's jars (a cache shared by every home, like
    # ~/.m2). Unset: $XDG_CACHE_HOME/bankde/kafka-jars (~/.cache/bankde/kafka-jars).
    kafka_jars_dir: Path | None = None
    # The worker's exactly.once.source.support (read by each `kafka up`): records and source
    # offsets in one transaction. Off, a killed worker re-sends what followed its last offset
    # flush (the versions absorb it); connectors saying exactly.once.support=required then fail.
    kafka_exactly_once: bool = True

    # --- transform (dbt) --------------------------------------------------------------
    # Salt of the PII tokens in stg_ models. Unset: the public development salt (with a warning).
    pii_salt: str | None = Field(None, repr=False)

    # --- orchestration ----------------------------------------------------------------
    # `cdc_monitoring` (and `bankde demo`'s summary) fail a check above these thresholds.
    monitor_max_lag_bytes: int = Field(256 * 1024**2, ge=0)
    monitor_max_wal_retained_bytes: int = Field(2 * 1024**3, ge=0)
    # Per table: how far the warehouse's newest change trails the source's newest updated_at.
    monitor_max_staleness_seconds: float = Field(900.0, ge=0)
    # Airflow pool for tasks that open the warehouse: 1 slot embedded (one chDB owner), this on a server.
    airflow_pool_slots: int = Field(4, ge=1, le=128)
    airflow_port: int = Field(8080, ge=1, le=65535)

    @field_validator(
        "pg_dsn",
        "db_host",
        "clickhouse_url",
        "db_password",
        "cdc_password",
        "pii_salt",
        "owner_password",
    )
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    @property
    def external_source(self) -> bool:
        """True when the user points at their own Postgres instead of the managed cluster."""
        return bool(self.pg_dsn or self.db_host)

    @property
    def sslmode(self) -> str:
        if self.db_sslmode:
            return self.db_sslmode
        # The original filler talked to a remote server with verify-full; the local cluster has no TLS.
        return "verify-full" if self.external_source else "disable"

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def warehouse_dir(self) -> Path:
        if self.wh_dir is not None:
            return self.wh_dir.expanduser().resolve()
        return self.home_dir / "warehouse"

    @property
    def embedded_warehouse(self) -> bool:
        return not self.clickhouse_url


# Which environment variable feeds each field, for error messages.
def _env_name(field: str) -> str:
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return str(first)
    return f"BANKDE_{field.upper()}"


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else "?"
        name = _env_name(field) if field in Settings.model_fields else field
        value = os.environ.get(name, e.get("input"))
        parts.append(f"{name}={value!s}: {e['msg']}")
    return "invalid setting " + "; ".join(parts)


def load_settings() -> Settings:
    """Read settings once; bad values raise ConfigError naming the variable."""
    try:
        return Settings()
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
