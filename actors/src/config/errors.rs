//! `[errors]`: what happens to record failures (`tolerance`, the dead-letter topic, the error file,
//! Slack alerts) and to sink failures (`sink_failure`, `retry_timeout_ms`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Secret;

/// What happens to records that fail (Kafka Connect's `errors.*` names and meanings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorsConfig {
    /// What happens to a *record failure* (the record is bad: not JSON, a transform error,
    /// oversize, a row BigQuery rejects as invalid). `none` (default): the first failed record
    /// stops the pipeline; nothing at or after it is written or committed and the process exits
    /// non-zero. `all`: report the record (log, dead-letter topic, file, Slack) and go on. Sink
    /// failures are never tolerated: see `sink_failure`.
    pub tolerance: Tolerance,
    /// Put the original key and payload into the ERROR log line. Default false.
    pub log_include_messages: bool,
    /// What happens when a destination cannot take anything right now (a *sink failure*: BigQuery
    /// or the dead-letter topic unreachable, 5xx, 429, 401/403, a missing table, exhausted retries).
    /// `retry` (default): the affected partitions stay paused and the write is retried for as long
    /// as it takes; the service stays up and reports the failure. `stop`: after
    /// `retry_timeout_ms` the pipeline stops without committing past the unwritten records and the
    /// process exits non-zero (or waits, per `admin.on_failure`). A sink failure is never tolerated,
    /// dead-lettered or committed past, whatever `tolerance` says.
    pub sink_failure: SinkFailure,
    /// How long a sink failure lasts before it is reported (status FAILING, `/readyz` 503, metric,
    /// Slack alert) under `sink_failure = "retry"`, or before the pipeline stops under `"stop"`, in
    /// ms. Default 300000.
    pub retry_timeout_ms: u64,
    /// Longest wait between two retries, in ms (backoff is exponential with jitter). Default 60000.
    pub retry_delay_max_ms: u64,
    /// The dead-letter topic (`errors.deadletterqueue.*`).
    pub deadletterqueue: DeadLetterQueueConfig,
    /// Aggregated alerts to a Slack incoming webhook (`errors.slack.*`).
    pub slack: SlackConfig,
    /// NDJSON files of failed records (`errors.file.*`).
    pub file: ErrorFileConfig,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            tolerance: Tolerance::None,
            log_include_messages: false,
            sink_failure: SinkFailure::Retry,
            retry_timeout_ms: 300_000,
            retry_delay_max_ms: 60_000,
            deadletterqueue: DeadLetterQueueConfig::default(),
            slack: SlackConfig::default(),
            file: ErrorFileConfig::default(),
        }
    }
}

/// The dead-letter topic. Under `errors.tolerance = "all"` every failed record is produced there
/// (original key, value and headers) with `acks=all` and idempotence, and counts as handled only once
/// the broker acknowledged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterQueueConfig {
    /// Topic name; empty (default) means no dead-letter topic. Must not be a consumed topic.
    pub topic_name: String,
    /// Add Kafka Connect's `__connect.errors.*` context headers (topic, partition, offset, stage,
    /// error...). Default true (Kafka Connect defaults to false; `bqsink replay` needs them to know
    /// where a record came from).
    pub context_headers_enable: bool,
    /// librdkafka properties of the dead-letter producer (and of `bqsink replay --to-source`'s),
    /// over `kafka.brokers` and `kafka.properties` (e.g. `message.timeout.ms`). Default: none.
    pub properties: BTreeMap<String, String>,
}

impl Default for DeadLetterQueueConfig {
    fn default() -> Self {
        Self {
            topic_name: String::new(),
            context_headers_enable: true,
            properties: BTreeMap::new(),
        }
    }
}

/// Slack alerts: failures aggregated over a window into one message (counts by topic, stage and
/// error class, first offsets), at most one post per window, retried on 429/5xx, never blocking
/// the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Incoming-webhook URL (or env `BQSINK__ERRORS__SLACK__WEBHOOK_URL`). Default unset: no alerts.
    pub webhook_url: Option<Secret>,
    /// Aggregation window, in seconds; at most one post per window. Default 60.
    pub window_secs: u64,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            window_secs: 60,
        }
    }
}

/// NDJSON files of failed records (original bytes base64-encoded, plus the failure context), which
/// `bqsink replay --from-file` reloads. Under `errors.tolerance = "all"` a record counts as handled
/// only once its line is written and synced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorFileConfig {
    /// File to append to; when it would grow past `max_bytes` it is renamed to `<path>.1`,
    /// `<path>.2`, ... (never deleted) and a new one is started. Default unset: no file.
    pub path: Option<std::path::PathBuf>,
    /// Size at which the file is rotated, in bytes. Default 104857600 (100 MiB).
    pub max_bytes: u64,
}

impl Default for ErrorFileConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

/// `errors.tolerance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    None,
    All,
}

/// `errors.sink_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkFailure {
    /// Retry while paused, for as long as it takes; report the failure after `retry_timeout_ms`.
    Retry,
    /// Stop the pipeline after `retry_timeout_ms`, committing nothing past the unwritten records.
    Stop,
}
