-- bankde warehouse schema (ClickHouse / chDB). Applied idempotently by `bankde wh init`;
-- also valid as a ClickHouse server init script.
--
-- raw.*   one table per captured source table, landed by CDC. ReplacingMergeTree keeps, per
--         primary key, the row with the highest _version; _is_deleted = 1 hides deleted keys
--         under FINAL. _version = (commit LSN << 32) | position in transaction, so it grows per
--         key across restarts and a re-delivered change is absorbed.
-- truth.* the filler's fraud labels, captured the same way, kept apart from what models read.
-- meta.*  replication state: offsets (written after the data they cover) and per-batch metrics.

CREATE DATABASE IF NOT EXISTS raw;
CREATE DATABASE IF NOT EXISTS truth;
CREATE DATABASE IF NOT EXISTS meta;

CREATE TABLE IF NOT EXISTS raw.customer
(
    customer_id  Int64,
    first_name   String,
    last_name    String,
    email        String,
    phone        String,
    birth_date   Date32,
    address      String,
    city         String,
    country      LowCardinality(String),
    home_lat     Decimal(9, 6),
    home_lon     Decimal(9, 6),
    segment      LowCardinality(String),
    status       LowCardinality(String),
    created_at   DateTime64(6, 'UTC'),
    updated_at   DateTime64(6, 'UTC'),
    closed_at    Nullable(DateTime64(6, 'UTC')),
    _version     UInt128,
    _is_deleted  UInt8,
    _op          LowCardinality(String),
    _lsn         UInt64,
    _tx_id       UInt64,
    _source_ts   DateTime64(3, 'UTC'),
    _ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY customer_id
COMMENT 'CDC landing of bank.customer';

CREATE TABLE IF NOT EXISTS raw.account
(
    account_id      Int64,
    customer_id     Int64,
    iban            String,
    kind            LowCardinality(String),
    currency        LowCardinality(String),
    balance         Decimal(18, 2),
    overdraft_limit Decimal(18, 2),
    status          LowCardinality(String),
    created_at      DateTime64(6, 'UTC'),
    updated_at      DateTime64(6, 'UTC'),
    closed_at       Nullable(DateTime64(6, 'UTC')),
    _version        UInt128,
    _is_deleted     UInt8,
    _op             LowCardinality(String),
    _lsn            UInt64,
    _tx_id          UInt64,
    _source_ts      DateTime64(3, 'UTC'),
    _ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY account_id
COMMENT 'CDC landing of bank.account';

CREATE TABLE IF NOT EXISTS raw.card
(
    card_id      Int64,
    account_id   Int64,
    customer_id  Int64,
    pan_enc      String,
    pan_hash     String,
    pan_last4    String,
    network      LowCardinality(String),
    expires_on   Date32,
    daily_limit  Decimal(18, 2),
    status       LowCardinality(String),
    created_at   DateTime64(6, 'UTC'),
    updated_at   DateTime64(6, 'UTC'),
    closed_at    Nullable(DateTime64(6, 'UTC')),
    _version     UInt128,
    _is_deleted  UInt8,
    _op          LowCardinality(String),
    _lsn         UInt64,
    _tx_id       UInt64,
    _source_ts   DateTime64(3, 'UTC'),
    _ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY card_id
COMMENT 'CDC landing of bank.card';

CREATE TABLE IF NOT EXISTS raw.terminal
(
    terminal_id   Int64,
    kind          LowCardinality(String),
    merchant_name String,
    mcc           LowCardinality(String),
    city          String,
    country       LowCardinality(String),
    lat           Decimal(9, 6),
    lon           Decimal(9, 6),
    status        LowCardinality(String),
    created_at    DateTime64(6, 'UTC'),
    updated_at    DateTime64(6, 'UTC'),
    closed_at     Nullable(DateTime64(6, 'UTC')),
    _version      UInt128,
    _is_deleted   UInt8,
    _op           LowCardinality(String),
    _lsn          UInt64,
    _tx_id        UInt64,
    _source_ts    DateTime64(3, 'UTC'),
    _ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY terminal_id
COMMENT 'CDC landing of bank.terminal';

CREATE TABLE IF NOT EXISTS raw.transaction
(
    txn_id         Int64,
    txn_ref        UUID,
    account_id     Int64,
    card_id        Nullable(Int64),
    terminal_id    Nullable(Int64),
    txn_type       LowCardinality(String),
    status         LowCardinality(String),
    decline_reason LowCardinality(Nullable(String)),
    amount         Decimal(18, 2),
    currency       LowCardinality(String),
    balance_after  Nullable(Decimal(18, 2)),
    description    Nullable(String),
    occurred_at    DateTime64(6, 'UTC'),
    created_at     DateTime64(6, 'UTC'),
    updated_at     DateTime64(6, 'UTC'),
    _version       UInt128,
    _is_deleted    UInt8,
    _op            LowCardinality(String),
    _lsn           UInt64,
    _tx_id         UInt64,
    _source_ts     DateTime64(3, 'UTC'),
    _ingested_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY txn_id
COMMENT 'CDC landing of bank.transaction';

CREATE TABLE IF NOT EXISTS truth.fraud_episode
(
    episode_id   Int64,
    scenario     LowCardinality(String),
    customer_id  Nullable(Int64),
    card_id      Nullable(Int64),
    terminal_id  Nullable(Int64),
    started_at   DateTime64(6, 'UTC'),
    ended_at     DateTime64(6, 'UTC'),
    params       String,
    _version     UInt128,
    _is_deleted  UInt8,
    _op          LowCardinality(String),
    _lsn         UInt64,
    _tx_id       UInt64,
    _source_ts   DateTime64(3, 'UTC'),
    _ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY episode_id
COMMENT 'CDC landing of truth.fraud_episode (ground truth; evaluation only)';

CREATE TABLE IF NOT EXISTS truth.fraud_label
(
    txn_id       Int64,
    scenario     LowCardinality(String),
    episode_id   Int64,
    _version     UInt128,
    _is_deleted  UInt8,
    _op          LowCardinality(String),
    _lsn         UInt64,
    _tx_id       UInt64,
    _source_ts   DateTime64(3, 'UTC'),
    _ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version, _is_deleted)
ORDER BY txn_id
COMMENT 'CDC landing of truth.fraud_label (ground truth; evaluation only)';

-- One row per write of the offset; per slot, the row with the highest LSN wins.
-- Why LSN and not written_at: the offset that must win is the last one written by the current
-- incarnation of the slot. Within one incarnation the capture writes offsets in commit order
-- (a batch's end LSN only grows; re-delivered transactions start below it and are skipped by
-- the server), so the highest LSN is the last write, whatever the clocks of the processes that
-- wrote the rows say; a wall-clock version let a process whose clock was behind lose its newer
-- offset to an older one. A new incarnation (slot re-created for a snapshot redo, or by
-- `cdc resync`) may start below the old LSNs (e.g. a re-created source cluster), so the sink
-- deletes the slot's rows before it starts one (reset_for_snapshot, reset): rows of an old
-- incarnation never compete with the new one. written_at is kept for people, not for merges.
CREATE TABLE IF NOT EXISTS meta.cdc_offsets
(
    slot          String,
    lsn           UInt64,
    snapshot_done UInt8,
    written_at    DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(lsn)
ORDER BY slot
COMMENT 'Replication offset per slot: end LSN of the last transaction applied to raw.*';

-- Kafka engine: per slot, topic and partition, the next offset to read, written after the data
-- it covers; the highest offset wins (a consumer that lost the partition in a rebalance may still
-- write an older one). The consumer seeks here on every partition assignment.
CREATE TABLE IF NOT EXISTS meta.cdc_kafka_offsets
(
    slot       String,
    topic      String,
    partition_id UInt32,
    next_offset  UInt64,
    written_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (slot, topic, partition_id)
COMMENT 'Kafka engine: next offset per topic partition, written after the rows it covers';

-- Kafka engine: per connector (a Debezium slot), the commit LSN below which every change it
-- sent is in raw.*; the engine's offset in meta.cdc_offsets is the lowest of them (the cut dbt
-- reads up to).
CREATE TABLE IF NOT EXISTS meta.cdc_connector_lsn
(
    slot       String,
    connector  String,
    lsn        UInt64,
    written_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(lsn)
ORDER BY (slot, connector)
COMMENT 'Kafka engine: commit LSN each connector is fully applied up to';

CREATE TABLE IF NOT EXISTS meta.cdc_batches
(
    slot        String,
    batch_id    UInt64,
    started_at  DateTime64(6, 'UTC'),
    finished_at DateTime64(6, 'UTC'),
    kind        LowCardinality(String),
    first_lsn   UInt64,
    last_lsn    UInt64,
    events      UInt64,
    inserts     UInt64,
    updates     UInt64,
    deletes     UInt64,
    tables      Map(String, UInt64),
    lag_ms      Int64
)
ENGINE = MergeTree
ORDER BY (slot, finished_at)
TTL toDateTime(finished_at) + INTERVAL 30 DAY
COMMENT 'One row per applied CDC batch: sizes, LSN range, and commit-to-warehouse lag';

-- Tables to copy again while the slot streams on (a new table, a column added with values
-- Postgres filled in without WAL, `cdc resync --table`): requested, then done. Kept here, not in
-- memory, so a capture stopped halfway redoes the copy when it starts again. Versioned by the
-- writer's clock: one capture process requests and completes its own copies.
CREATE TABLE IF NOT EXISTS meta.cdc_table_snapshots
(
    source_table String,
    state        LowCardinality(String),
    reason       String,
    rows         UInt64,
    lsn          UInt64,
    at           DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(at)
ORDER BY source_table
COMMENT 'Per source table: a copy while streaming that is requested, or done at an LSN';
CREATE TABLE IF NOT EXISTS meta.cdc_rejects
(
    slot        String,
    `table`     String,
    `key`       String,
    lsn         UInt64,
    `column`    String,
    source_text Nullable(String),
    reason      String,
    topic       Nullable(String),
    `partition` Nullable(Int32),
    `offset`    Nullable(Int64),
    recorded_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(recorded_at)
ORDER BY (slot, `table`, lsn, `key`, `column`)
COMMENT 'Quarantined CDC rows: a value the warehouse type cannot hold exactly (the row is not landed)';
