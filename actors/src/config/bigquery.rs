//! `[bigquery]`: where rows go, and `[[bigquery.tables]]`, the tables, the topics routed to them
//! and their definitions (schema, partitioning, clustering).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Secret;

/// Where rows go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BigQueryConfig {
    /// Base URL of the BigQuery REST API. Default `https://bigquery.googleapis.com`; point it at an
    /// emulator or a test server to run without Google.
    pub endpoint: String,
    /// GCP project of the tables. Default none (must be set).
    pub project: String,
    /// How rows are written: `storage` (default: the Storage Write API over gRPC, rows as protobuf
    /// built from the table's schema; half the price per GB, higher quotas, and exactly-once
    /// delivery) or `insert_all` (`tabledata.insertAll`, the legacy streaming API, at least once
    /// with best-effort insertId dedup). README, "Writing to BigQuery".
    pub write_api: WriteApi,
    /// `exactly_once` (default; needs `write_api = "storage"`) or `at_least_once`: a BUFFERED stream
    /// per table and partition, rows made visible by `FlushRows` only after the Kafka offset commit
    /// that covers them; no duplicate row across crashes, restarts and rebalances (README, "Exactly
    /// once"). `at_least_once` with `storage` uses each table's `_default` stream.
    pub delivery: Delivery,
    /// Base URL of the Storage Write API (gRPC). Default `https://bigquerystorage.googleapis.com`;
    /// `http://` for an emulator or a test server (plaintext HTTP/2).
    pub storage_endpoint: String,
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
    pub token: Option<Secret>,
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
            write_api: WriteApi::Storage,
            delivery: Delivery::ExactlyOnce,
            storage_endpoint: "https://bigquerystorage.googleapis.com".into(),
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

/// `bigquery.write_api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteApi {
    InsertAll,
    Storage,
}

/// `bigquery.delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
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
