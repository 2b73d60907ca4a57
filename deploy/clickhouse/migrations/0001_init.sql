-- meterline warehouse, version 1: raw events, breaches and dead letters.
-- Applied by `meterline migrate` inside the configured database. Statements are
-- separated by a semicolon at the end of a line.

-- Every accepted usage event, one row per billable model response.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id          String,
    ts                DateTime64(3, 'UTC') COMMENT 'event time',
    ingested_at       DateTime64(3, 'UTC') COMMENT 'when the worker accepted it',
    org               LowCardinality(String),
    team              LowCardinality(String),
    agent             String,
    session           String,
    user              String,
    harness           LowCardinality(String),
    provider          LowCardinality(String),
    model             LowCardinality(String),
    in_uncached       UInt64,
    in_cache_read     UInt64,
    in_cache_write    UInt64 COMMENT 'cache writes, 5-minute or unknown TTL',
    in_cache_write_1h UInt64,
    out_visible       UInt64,
    out_reasoning     UInt64,
    tokens_total      UInt64 COMMENT 'sum of the six buckets',
    cost_usd          Nullable(Decimal(38, 12)) COMMENT 'NULL when the price is unknown',
    cost_source       LowCardinality(String) COMMENT 'provider, override, catalog or unknown',
    price_model       LowCardinality(String),
    price_provider    LowCardinality(String),
    flags             Array(LowCardinality(String)),
    tags              Map(String, String),
    raw_usage         String COMMENT 'the provider usage object, JSON',
    usage_schema      LowCardinality(String),
    extra             String COMMENT 'fields outside the contract, JSON',
    source_partition  UInt32,
    source_offset     UInt64,
    INDEX idx_event_id event_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (team, ts, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Budget events as published on the breaches topic.
CREATE TABLE IF NOT EXISTS budget_breaches
(
    breach_id           String,
    kind                LowCardinality(String),
    budget_id           LowCardinality(String),
    team                LowCardinality(String),
    period              LowCardinality(String),
    timezone            LowCardinality(String),
    period_start        DateTime64(3, 'UTC'),
    period_end          DateTime64(3, 'UTC'),
    measure             LowCardinality(String),
    threshold           Decimal(18, 6),
    limit_value         Decimal(38, 12),
    used                Decimal(38, 12),
    ratio               Decimal(38, 12),
    severity            LowCardinality(String),
    triggering_event_id String,
    event_ts            DateTime64(3, 'UTC'),
    detected_at         DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(period_start)
ORDER BY (team, budget_id, period_start, breach_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Records the worker rejected, with the original bytes.
CREATE TABLE IF NOT EXISTS dead_letters
(
    failed_at      DateTime64(3, 'UTC'),
    reason         LowCardinality(String),
    detail         String,
    topic          LowCardinality(String),
    partition      UInt32,
    offset         UInt64,
    event_id       String,
    team           String,
    key_b64        String,
    payload_b64    String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (topic, partition, offset)
SETTINGS non_replicated_deduplication_window = 10000;
