//! [`Config::validate`]: the checks serde cannot make (limits, required keys, cross-field rules,
//! `[[bigquery.tables]]` names, pointers and schemas).
//!
//! Invariant: a `Config` that passes is one the pipeline can run; every rejection names its key.

use super::*;
use crate::model::TableRef;

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
        if !(self.bigquery.storage_endpoint.starts_with("http://")
            || self.bigquery.storage_endpoint.starts_with("https://"))
        {
            return bad(
                "bigquery.storage_endpoint",
                "must be an http:// or https:// URL",
            );
        }
        if self.bigquery.delivery == super::Delivery::ExactlyOnce
            && self.bigquery.write_api != super::WriteApi::Storage
        {
            return bad(
                "bigquery.delivery",
                "\"exactly_once\" needs bigquery.write_api = \"storage\" (insertAll's insertId \
                 dedup is best effort)",
            );
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
            && self.bigquery.token.as_ref().is_none_or(Secret::is_empty)
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
        let formats = [
            ("kafka.formats", &self.kafka.formats),
            ("kafka.key_formats", &self.kafka.key_formats),
        ];
        for (key, formats) in formats {
            for (topic, format) in formats {
                if !self.kafka.topics.contains(topic) {
                    return bad(key, format!("{topic:?} is not in kafka.topics"));
                }
                if format.uses_registry() && self.registry.url.is_empty() {
                    return bad(
                        "registry.url",
                        format!("must be set: topic {topic:?} is {format} ({key})"),
                    );
                }
            }
        }
        let url = &self.registry.url;
        let web = url.starts_with("http://") || url.starts_with("https://");
        if !url.is_empty() && !web {
            return bad("registry.url", "must be an http:// or https:// URL");
        }
        if self.registry.timeout_ms == 0 {
            return bad("registry.timeout_ms", "must be > 0");
        }
        let dlq = &self.errors.deadletterqueue.topic_name;
        if !dlq.is_empty() && self.kafka.topics.contains(dlq) {
            return bad(
                "errors.deadletterqueue.topic_name",
                format!("{dlq:?} is also in kafka.topics: failed records would be read again"),
            );
        }
        if let Some(url) = self.errors.slack.webhook_url.as_ref().map(Secret::expose) {
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
        if self.admin.enabled {
            let Ok(listen) = self.admin.listen.parse::<std::net::SocketAddr>() else {
                return bad(
                    "admin.listen",
                    format!(
                        "{:?} is not an address such as 127.0.0.1:8083",
                        self.admin.listen
                    ),
                );
            };
            // Pause, resume and restart must not be open to whatever reaches the address.
            let token = self.admin.token.as_ref().map_or("", Secret::expose);
            if !listen.ip().is_loopback() && token.trim().is_empty() {
                return bad(
                    "admin.token",
                    format!(
                        "is required when admin.listen ({listen}) is not a loopback address: set \
                         admin.token (BQSINK__ADMIN__TOKEN), or listen on 127.0.0.1"
                    ),
                );
            }
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
