//! The configuration tree.
//!
//! Every key has a documented default here; `config/default.toml` mirrors these values one to one
//! (a unit test in the `bqsink` crate checks that). Unknown keys are rejected everywhere
//! (`deny_unknown_fields`), so a typo is an error that names the key instead of a silently ignored
//! setting. Loading and layering (files, environment) lives in the `bqsink` binary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole configuration of one bqsink instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub bigquery: BigQueryConfig,
    pub transform: TransformConfig,
    pub dedup: DedupConfig,
    pub batch: BatchConfig,
    pub errors: ErrorsConfig,
    pub pipeline: PipelineConfig,
    pub logging: LoggingConfig,
    pub telemetry: TelemetryConfig,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
}

/// Where records come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Default `localhost:9092`.
    pub brokers: String,
    /// Consumer group; every instance of one deployment shares it. Default `bqsink`.
    pub group_id: String,
    /// Topics to consume. Default none (must be set).
    pub topics: Vec<String>,
    /// Where a partition without a committed offset starts: `earliest` (default) or `latest`.
    pub auto_offset_reset: OffsetReset,
    /// How often handled watermarks are committed, in ms. Default 5000.
    pub commit_interval_ms: u64,
    /// Extra librdkafka properties, passed through as they are (e.g. `security.protocol`,
    /// `session.timeout.ms`). Default: none.
    pub properties: BTreeMap<String, String>,
    /// How long a revoke waits for the partitions' in-flight rows to be written before it commits
    /// what was handled and gives them up, in ms. Rows still unsent then are abandoned (the next
    /// owner reads them again), never written late. Keep it well under `max.poll.interval.ms`.
    /// Default 10000.
    pub revoke_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            group_id: "bqsink".into(),
            topics: Vec::new(),
            auto_offset_reset: OffsetReset::Earliest,
            commit_interval_ms: 5_000,
            properties: BTreeMap::new(),
            revoke_timeout_ms: 10_000,
        }
    }
}

/// `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// Where rows go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BigQueryConfig {
    /// Base URL of the BigQuery REST API. Default `https://bigquery.googleapis.com`; point it at an
    /// emulator or a test server to run without Google.
    pub endpoint: String,
    /// GCP project of the tables. Default none (must be set).
    pub project: String,
    /// Default dataset of the tables. Default none (must be set).
    pub dataset: String,
    /// `[[bigquery.tables]]`: which topics go to which table, routing by a record field, and each
    /// table's definition for auto-creation (schema, partitioning, clustering). The older map form
    /// `[bigquery.tables] topic = "table"` is still accepted. A topic not listed goes to a table named
    /// after the topic, sanitized to BigQuery's rules. Default: none.
    pub tables: Tables,
    /// What is sent as each row's `insertId`: `dedup_key` (default) or `none`. BigQuery limits a table
    /// to about 100k rows/s when insertIds are used; `none` lifts that and relies on bqsink's own dedup.
    pub insert_id: InsertIdMode,
    /// Static OAuth bearer token for the API (or env `BQSINK__BIGQUERY__TOKEN`). Default none:
    /// requests carry no `Authorization` header (emulators, tests).
    pub token: Option<String>,
    /// Timeout of one insertAll request, in ms. Default 30000.
    pub request_timeout_ms: u64,
    /// insertAll requests in flight at once, over all tables. Default 4.
    pub max_concurrent_requests: usize,
    /// Where OAuth tokens come from: `auto` (default): `token` if set, else `credentials_file`, else
    /// (only when `endpoint` is Google's) `GOOGLE_APPLICATION_CREDENTIALS`, else the GCE/GKE
    /// metadata server; `none`; `token`; `service_account` (`credentials_file` or
    /// `GOOGLE_APPLICATION_CREDENTIALS`); `metadata` (`GCE_METADATA_HOST` overrides its address).
    pub auth: AuthMode,
    /// Service-account key file (JSON) for OAuth. Default none.
    pub credentials_file: Option<String>,
    /// Create a table that does not exist (insertAll answers 404) from its configured schema, or
    /// from a schema inferred from the rows of the first batch. Default false.
    pub auto_create_tables: bool,
    /// With `auto_create_tables`, also create a missing dataset. Default false.
    pub auto_create_dataset: bool,
    /// When BigQuery rejects rows for a field the table lacks, add the field (NULLABLE, type
    /// inferred from the rows; REPEATED for arrays) with tables.patch and send the rows again.
    /// Without it such rows are failures. Default false.
    pub allow_new_fields: bool,
    /// insertAll `ignoreUnknownValues`: BigQuery drops fields the table lacks instead of rejecting
    /// the row. Default false.
    pub ignore_unknown_values: bool,
    /// insertAll `skipInvalidRows`: BigQuery writes the valid rows of a request that has invalid
    /// ones (which are still reported as failures). Default false.
    pub skip_invalid_rows: bool,
    /// Rewrite field names to BigQuery's rules (characters other than `[A-Za-z0-9_]` become `_`,
    /// a leading digit gets a `_` prefix), nested ones too. Default false.
    pub sanitize_field_names: bool,
}

impl Default for BigQueryConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://bigquery.googleapis.com".into(),
            project: String::new(),
            dataset: String::new(),
            tables: Tables::default(),
            insert_id: InsertIdMode::DedupKey,
            token: None,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 4,
            auth: AuthMode::Auto,
            credentials_file: None,
            auto_create_tables: false,
            auto_create_dataset: false,
            allow_new_fields: false,
            ignore_unknown_values: false,
            skip_invalid_rows: false,
            sanitize_field_names: false,
        }
    }
}

/// `bigquery.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Auto,
    None,
    Token,
    ServiceAccount,
    Metadata,
}

/// `bigquery.tables`: a list of [`TableConfig`]. Deserializes from an array of tables
/// (`[[bigquery.tables]]`) or, as before, from a map topic → `table` / `dataset.table`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Tables(pub Vec<TableConfig>);

impl Tables {
    /// Routes `topic` to `table` (`table` or `dataset.table`), like an entry of the map form.
    pub fn insert(&mut self, topic: String, table: String) {
        self.0.push(TableConfig {
            topics: vec![topic],
            table,
            ..TableConfig::default()
        });
    }

    pub fn iter(&self) -> std::slice::Iter<'_, TableConfig> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Tables {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Tables;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of tables ([[bigquery.tables]]) or a map topic = \"table\"")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Tables, A::Error> {
                Vec::<TableConfig>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Tables)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Tables, A::Error> {
                let legacy = BTreeMap::<String, String>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                let mut t = Tables::default();
                for (topic, table) in legacy {
                    t.insert(topic, table);
                }
                Ok(t)
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[bigquery.tables]]` entry: a table, the topics routed to it, and its definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableConfig {
    /// Topics whose records go to this table. Default none (an entry without topics only defines
    /// a table, e.g. one that `table_from` routes to).
    pub topics: Vec<String>,
    /// `table` (in `bigquery.dataset`) or `dataset.table`. Required. With `table_from`, the
    /// fallback for records without a usable value.
    pub table: String,
    /// A JSON pointer into the record as produced (e.g. `/event_type`): its value, sanitized like a
    /// topic name, names the table (in the dataset of `table`). Missing, null, empty, object or
    /// array values go to `table`. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_from: Option<String>,
    /// The schema used to create the table. Default none: inferred from the first batch's rows.
    pub schema: Vec<FieldConfig>,
    /// Column that partitions the table by time (TIMESTAMP, DATE or DATETIME). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_field: Option<String>,
    /// `DAY`, `HOUR`, `MONTH` or `YEAR`. Without `partition_field` the table is partitioned by
    /// ingestion time. Default: `DAY` when `partition_field` is set, else not partitioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_type: Option<PartitionType>,
    /// Clustering columns, at most 4. Default none.
    pub clustering: Vec<String>,
}

/// One column of a configured schema (BigQuery's TableFieldSchema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    #[serde(default)]
    pub mode: FieldMode,
    /// Sub-fields of a RECORD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A BigQuery column type (legacy and standard SQL names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FieldType {
    String,
    Bytes,
    #[serde(alias = "INT64")]
    Integer,
    #[serde(alias = "FLOAT64")]
    Float,
    Numeric,
    Bignumeric,
    #[serde(alias = "BOOL")]
    Boolean,
    Timestamp,
    Date,
    Time,
    Datetime,
    Geography,
    Json,
    #[serde(alias = "STRUCT")]
    Record,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "STRING",
            FieldType::Bytes => "BYTES",
            FieldType::Integer => "INTEGER",
            FieldType::Float => "FLOAT",
            FieldType::Numeric => "NUMERIC",
            FieldType::Bignumeric => "BIGNUMERIC",
            FieldType::Boolean => "BOOLEAN",
            FieldType::Timestamp => "TIMESTAMP",
            FieldType::Date => "DATE",
            FieldType::Time => "TIME",
            FieldType::Datetime => "DATETIME",
            FieldType::Geography => "GEOGRAPHY",
            FieldType::Json => "JSON",
            FieldType::Record => "RECORD",
        }
    }
}

/// A column's mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FieldMode {
    #[default]
    Nullable,
    Required,
    Repeated,
}

impl FieldMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldMode::Nullable => "NULLABLE",
            FieldMode::Required => "REQUIRED",
            FieldMode::Repeated => "REPEATED",
        }
    }
}

/// Time-partitioning granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PartitionType {
    Day,
    Hour,
    Month,
    Year,
}

impl PartitionType {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionType::Day => "DAY",
            PartitionType::Hour => "HOUR",
            PartitionType::Month => "MONTH",
            PartitionType::Year => "YEAR",
        }
    }
}

/// `bigquery.insert_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsertIdMode {
    DedupKey,
    None,
}

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
    pub webhook_url: Option<String>,
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

/// Pipeline sizing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Records read from Kafka and passed between actors as one message, at most. Default 1000.
    pub chunk_records: usize,
    /// Records read but not yet handled, per partition, before the partition is paused (it resumes
    /// below half), so that one partition cannot hold the whole total. Default 10000.
    pub max_inflight_records: usize,
    /// Payload bytes read but not yet handled, per partition, before the partition is paused.
    /// Default 4194304 (4 MiB).
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
            max_inflight_records: 10_000,
            max_inflight_bytes: 4 * 1024 * 1024,
            max_total_inflight_records: 40_000,
            max_total_inflight_bytes: 16 * 1024 * 1024,
            workers: 0,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `pretty` (default, for terminals) or `json` (one object per line, for log shippers).
    pub format: LogFormat,
    /// Level filter in `RUST_LOG` syntax; `RUST_LOG` wins when set. Default `info`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// `logging.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Trace export with OpenTelemetry (OTLP), e.g. to Jaeger. Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of the OTLP receiver, e.g. `http://jaeger:4318` (HTTP) or `http://jaeger:4317`
    /// (gRPC). Empty (default): no spans are exported and the pipeline's spans cost nothing.
    pub otlp_endpoint: String,
    /// `http` (default: protobuf over HTTP, `/v1/traces` is appended to the endpoint) or `grpc`
    /// (needs a binary built with the `otlp-grpc` cargo feature).
    pub protocol: OtlpProtocol,
    /// `service.name` of the exported spans. Default `bqsink`.
    pub service_name: String,
    /// Share of new traces that are sampled, 0.0 to 1.0. Records carrying a W3C `traceparent`
    /// header follow the producer's sampling decision instead. Default 1.0.
    pub sampling_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            protocol: OtlpProtocol::Http,
            service_name: "bqsink".into(),
            sampling_ratio: 1.0,
        }
    }
}

/// `telemetry.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    Http,
    Grpc,
}

/// The admin HTTP API: health, readiness, status, pause/resume/restart and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API (`bqsink run` only). Default true.
    pub enabled: bool,
    /// Address to bind. Default `127.0.0.1:8083`; use `0.0.0.0:8083` in a container so probes and
    /// Prometheus can reach it.
    pub listen: String,
    /// Bearer token required by every endpoint except `/healthz`, `/readyz` and `/metrics`
    /// (or env `BQSINK__ADMIN__TOKEN`). Default none: no authentication.
    pub token: Option<String>,
    /// What the process does when the pipeline stops on a failure (a failed record under
    /// `errors.tolerance = "none"`, or a sink failure under `errors.sink_failure = "stop"`): `exit`
    /// (default; exit code 1, the orchestrator restarts it) or `wait` (stay up with status FAILED
    /// until `POST /restart` or SIGTERM).
    pub on_failure: OnFailure,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8083".into(),
            token: None,
            on_failure: OnFailure::Exit,
        }
    }
}

/// `admin.on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    Exit,
    Wait,
}

/// Prometheus metrics, served at `GET /metrics` of the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record metrics (needs `admin.enabled`). Default true.
    pub enabled: bool,
    /// How often consumer lag (high watermark minus committed offset, per partition) and the
    /// process metrics are refreshed, in ms. Default 10000.
    pub refresh_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            refresh_interval_ms: 10_000,
        }
    }
}

/// A configuration value that is well-formed TOML but unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid value for `{key}`: {reason}")]
pub struct InvalidConfig {
    pub key: &'static str,
    pub reason: String,
}

impl Config {
    /// Checks values serde cannot: limits, required keys, cross-field rules.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        fn bad(key: &'static str, reason: impl Into<String>) -> Result<(), InvalidConfig> {
            Err(InvalidConfig {
                key,
                reason: reason.into(),
            })
        }
        if self.kafka.topics.is_empty() {
            return bad("kafka.topics", "at least one topic is required");
        }
        if self.kafka.group_id.is_empty() {
            return bad("kafka.group_id", "must not be empty");
        }
        if self.kafka.commit_interval_ms == 0 {
            return bad("kafka.commit_interval_ms", "must be > 0");
        }
        if self.bigquery.project.is_empty() {
            return bad("bigquery.project", "must be set");
        }
        if self.bigquery.dataset.is_empty() {
            return bad("bigquery.dataset", "must be set");
        }
        if !(self.bigquery.endpoint.starts_with("http://")
            || self.bigquery.endpoint.starts_with("https://"))
        {
            return bad("bigquery.endpoint", "must be an http:// or https:// URL");
        }
        if self.bigquery.max_concurrent_requests == 0 {
            return bad("bigquery.max_concurrent_requests", "must be > 0");
        }
        if let Err(reason) = validate_tables(&self.bigquery) {
            return bad("bigquery.tables", reason);
        }
        if self.bigquery.allow_new_fields && self.bigquery.ignore_unknown_values {
            return bad(
                "bigquery.allow_new_fields",
                "has no effect with bigquery.ignore_unknown_values (unknown fields are dropped)",
            );
        }
        if self.bigquery.auto_create_dataset && !self.bigquery.auto_create_tables {
            return bad(
                "bigquery.auto_create_dataset",
                "needs bigquery.auto_create_tables",
            );
        }
        if self.bigquery.auth == AuthMode::Token
            && self.bigquery.token.as_deref().unwrap_or("").is_empty()
        {
            return bad(
                "bigquery.token",
                "must be set with bigquery.auth = \"token\"",
            );
        }
        if self.batch.max_rows == 0 || self.batch.max_rows > MAX_ROWS_PER_REQUEST {
            return bad(
                "batch.max_rows",
                format!("must be in 1..={MAX_ROWS_PER_REQUEST}"),
            );
        }
        if self.batch.max_bytes < 1024 || self.batch.max_bytes > MAX_BYTES_PER_REQUEST {
            return bad(
                "batch.max_bytes",
                format!("must be in 1024..={MAX_BYTES_PER_REQUEST}"),
            );
        }
        if self.dedup.max_keys == 0 {
            return bad("dedup.max_keys", "must be > 0");
        }
        if self.dedup.ttl_secs == 0 {
            return bad("dedup.ttl_secs", "must be > 0");
        }
        if self.pipeline.chunk_records == 0 {
            return bad("pipeline.chunk_records", "must be > 0");
        }
        if self.pipeline.max_inflight_records < self.pipeline.chunk_records {
            return bad(
                "pipeline.max_inflight_records",
                "must be >= pipeline.chunk_records",
            );
        }
        if self.pipeline.max_inflight_bytes == 0 {
            return bad("pipeline.max_inflight_bytes", "must be > 0");
        }
        if self.pipeline.max_total_inflight_records < self.pipeline.chunk_records {
            return bad(
                "pipeline.max_total_inflight_records",
                "must be >= pipeline.chunk_records",
            );
        }
        if self.pipeline.max_total_inflight_bytes == 0 {
            return bad("pipeline.max_total_inflight_bytes", "must be > 0");
        }
        let dlq = &self.errors.deadletterqueue.topic_name;
        if !dlq.is_empty() && self.kafka.topics.contains(dlq) {
            return bad(
                "errors.deadletterqueue.topic_name",
                format!("{dlq:?} is also in kafka.topics: failed records would be read again"),
            );
        }
        if let Some(url) = &self.errors.slack.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(
                    "errors.slack.webhook_url",
                    "must be an http:// or https:// URL",
                );
            }
        }
        if self.errors.slack.window_secs == 0 {
            return bad("errors.slack.window_secs", "must be > 0");
        }
        if self
            .errors
            .file
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return bad(
                "errors.file.path",
                "must not be empty (leave it unset for no file)",
            );
        }
        if self.errors.file.max_bytes < 4096 {
            return bad("errors.file.max_bytes", "must be >= 4096");
        }
        let endpoint = &self.telemetry.otlp_endpoint;
        let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !is_url {
            return bad(
                "telemetry.otlp_endpoint",
                "must be empty (off) or an http:// or https:// URL",
            );
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return bad("telemetry.sampling_ratio", "must be in 0.0..=1.0");
        }
        if self.admin.enabled && self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "admin.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8083",
                    self.admin.listen
                ),
            );
        }
        if self.metrics.refresh_interval_ms == 0 {
            return bad("metrics.refresh_interval_ms", "must be > 0");
        }
        Ok(())
    }

    /// Threads per CPU stage after resolving `pipeline.workers = 0`: half the cores each, so the
    /// two stages together have one thread per core.
    pub fn workers(&self) -> usize {
        match self.pipeline.workers {
            0 => std::thread::available_parallelism()
                .map(|n| (n.get() / 2).max(1))
                .unwrap_or(1),
            n => n,
        }
    }
}

/// Checks `[[bigquery.tables]]`: table names, pointers, schemas, partitioning, clustering, and that
/// no topic or table is listed twice.
fn validate_tables(bq: &BigQueryConfig) -> Result<(), String> {
    use crate::model::TableRef;
    let mut topics = std::collections::HashSet::new();
    let mut tables = std::collections::HashSet::new();
    for (i, t) in bq.tables.iter().enumerate() {
        let Some(table) = TableRef::parse(&t.table, &bq.dataset) else {
            return Err(format!(
                "entry {i}: table {:?} is not `table` or `dataset.table`",
                t.table
            ));
        };
        if !tables.insert(table.clone()) {
            return Err(format!("entry {i}: table {table} is listed twice"));
        }
        for topic in &t.topics {
            if !topics.insert(topic.as_str()) {
                return Err(format!("entry {i}: topic {topic:?} is routed twice"));
            }
        }
        if let Some(p) = &t.table_from {
            if !p.starts_with('/') {
                return Err(format!(
                    "entry {i} ({table}): table_from {p:?} is not a JSON pointer such as \"/event_type\""
                ));
            }
        }
        validate_schema(&t.schema, "").map_err(|e| format!("entry {i} ({table}): {e}"))?;
        if let (Some(field), false) = (&t.partition_field, t.schema.is_empty()) {
            match t.schema.iter().find(|f| &f.name == field) {
                Some(f)
                    if matches!(
                        f.field_type,
                        FieldType::Timestamp | FieldType::Date | FieldType::Datetime
                    ) && f.mode != FieldMode::Repeated => {}
                Some(_) => {
                    return Err(format!(
                        "entry {i} ({table}): partition_field {field:?} must be a TIMESTAMP, DATE or DATETIME column"
                    ))
                }
                None => {
                    return Err(format!(
                        "entry {i} ({table}): partition_field {field:?} is not in the schema"
                    ))
                }
            }
        }
        if t.clustering.len() > 4 {
            return Err(format!("entry {i} ({table}): at most 4 clustering fields"));
        }
        if !t.schema.is_empty() {
            if let Some(c) = t
                .clustering
                .iter()
                .find(|c| !t.schema.iter().any(|f| &&f.name == c))
            {
                return Err(format!(
                    "entry {i} ({table}): clustering field {c:?} is not in the schema"
                ));
            }
        }
    }
    Ok(())
}

fn validate_schema(fields: &[FieldConfig], prefix: &str) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for f in fields {
        let path = format!("{prefix}{}", f.name);
        let valid = !f.name.is_empty()
            && f.name.len() <= 300
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !f.name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!(
                "field name {path:?} is not a valid BigQuery column name"
            ));
        }
        if !names.insert(f.name.to_ascii_lowercase()) {
            return Err(format!("field {path:?} is defined twice"));
        }
        match (f.field_type, f.fields.is_empty()) {
            (FieldType::Record, true) => return Err(format!("RECORD field {path:?} needs fields")),
            (FieldType::Record, false) => validate_schema(&f.fields, &format!("{path}."))?,
            (_, false) => return Err(format!("field {path:?} has fields but is not a RECORD")),
            (_, true) => {}
        }
    }
    Ok(())
}
