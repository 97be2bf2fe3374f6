//! The stage sections: `[transform]`, `[dedup]`, `[batch]` (with BigQuery's per-request limits)
//! and `[pipeline]` sizing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Declarative record transformation, applied in this order: drop, rename, metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    /// Top-level fields removed from every record. Default: none.
    pub drop: Vec<String>,
    /// Top-level fields renamed, old name → new name. Default: none.
    pub rename: BTreeMap<String, String>,
    /// Kafka metadata columns added to every row.
    pub metadata: MetadataConfig,
}

/// Which `_kafka_*` metadata columns are added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `_kafka_topic` (STRING). Default true.
    pub topic: bool,
    /// `_kafka_partition` (INTEGER). Default true.
    pub partition: bool,
    /// `_kafka_offset` (INTEGER). Default true.
    pub offset: bool,
    /// `_kafka_timestamp` (TIMESTAMP, RFC 3339). Default true.
    pub timestamp: bool,
    /// `_kafka_key` (STRING, UTF-8 lossy). Default false.
    pub key: bool,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            topic: true,
            partition: true,
            offset: true,
            timestamp: true,
            key: false,
        }
    }
}

/// Duplicate suppression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// What identifies a record: a JSON pointer into the record (`/event_id`, default), `kafka_key`,
    /// `payload_hash`, or `none` (no dedup, no insertId). A record without the pointed field falls
    /// back to its payload hash.
    pub key: DedupKey,
    /// Keys remembered at most (the cache evicts the least useful beyond). Default 1,000,000.
    pub max_keys: u64,
    /// How long a key is remembered, in seconds. Default 3600.
    pub ttl_secs: u64,
    /// On assignment, read back up to this many records before the partition's committed offset and
    /// load their keys, so a duplicate straddling a restart or rebalance is still dropped. Default 0.
    pub warmup_records: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            key: DedupKey::Pointer("/event_id".into()),
            max_keys: 1_000_000,
            ttl_secs: 3_600,
            warmup_records: 0,
        }
    }
}

/// `dedup.key`, written as one string in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DedupKey {
    Pointer(String),
    KafkaKey,
    PayloadHash,
    None,
}

impl TryFrom<String> for DedupKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "kafka_key" => Ok(DedupKey::KafkaKey),
            "payload_hash" => Ok(DedupKey::PayloadHash),
            "none" => Ok(DedupKey::None),
            p if p.starts_with('/') => Ok(DedupKey::Pointer(s)),
            _ => Err(format!(
                "invalid dedup key {s:?}: expected a JSON pointer such as \"/event_id\", \
                 \"kafka_key\", \"payload_hash\" or \"none\""
            )),
        }
    }
}

impl From<DedupKey> for String {
    fn from(k: DedupKey) -> String {
        match k {
            DedupKey::Pointer(p) => p,
            DedupKey::KafkaKey => "kafka_key".into(),
            DedupKey::PayloadHash => "payload_hash".into(),
            DedupKey::None => "none".into(),
        }
    }
}

/// How rows are grouped into insertAll requests (one batch per table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Rows per request, at most 50,000 (BigQuery's limit). Default 500 (Google's recommendation).
    pub max_rows: usize,
    /// Encoded bytes per request, at most 9,000,000 (BigQuery's request limit is 10 MB; the rest
    /// is headroom for the envelope). A single row larger than this is a failure. Default 5,000,000.
    pub max_bytes: usize,
    /// How long a partial batch waits for more rows, in ms. Tables with more than about 10,000 rows/s
    /// fill batches by `max_rows` before that; quieter ones get smaller requests sooner. Default 50.
    pub linger_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 500,
            max_bytes: 5_000_000,
            linger_ms: 50,
        }
    }
}

/// BigQuery's limits for one insertAll request.
pub const MAX_ROWS_PER_REQUEST: usize = 50_000;
/// Largest `batch.max_bytes` accepted: the 10 MB request limit minus headroom for the envelope.
pub const MAX_BYTES_PER_REQUEST: usize = 9_000_000;

/// Pipeline sizing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Records read from Kafka and passed between actors as one message, at most. Default 1000.
    pub chunk_records: usize,
    /// Records read but not yet handled, per partition, before the partition is paused (it resumes
    /// below half), so that one partition cannot hold the whole total. Default 20000: half the
    /// total, and above what one fetch of a partition brings (1 MiB of compressed batches can hold
    /// more than 10,000 small records). A pause costs more than the wait: librdkafka throws away
    /// what it prefetched for the partition and fetches it again after the resume.
    pub max_inflight_records: usize,
    /// Payload bytes read but not yet handled, per partition, before the partition is paused.
    /// Default 8388608 (8 MiB, half the total).
    pub max_inflight_bytes: usize,
    /// Records read but not yet handled, all partitions together, before the consumer stops taking
    /// records from librdkafka (which then stops fetching once `queued.max.messages.kbytes` is
    /// prefetched). Each costs about 0.75 KiB of memory until it is handled. Default 40000.
    pub max_total_inflight_records: usize,
    /// Payload bytes read but not yet handled, all partitions together. Default 16777216 (16 MiB).
    pub max_total_inflight_bytes: usize,
    /// Threads for each CPU stage (convert, transform); 0 means half the cores each (at least
    /// one), so the two stages together have one thread per core. Default 0.
    pub workers: usize,
    /// How long a shutdown waits for in-flight rows to be written before it commits what was
    /// handled and exits, in ms. Default 30000.
    pub shutdown_timeout_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            chunk_records: 1_000,
            max_inflight_records: 20_000,
            max_inflight_bytes: 8 * 1024 * 1024,
            max_total_inflight_records: 40_000,
            max_total_inflight_bytes: 16 * 1024 * 1024,
            workers: 0,
            shutdown_timeout_ms: 30_000,
        }
    }
}
