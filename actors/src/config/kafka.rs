//! `[kafka]`: where records come from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// How often handled watermarks are committed, in ms. Default 250. Also committed as soon as
    /// everything read has been handled (at most every fifth of this interval), so the records
    /// that end a burst do not wait for the interval. With exactly-once delivery
    /// (the default) rows become visible in BigQuery only with the commit that covers them (then
    /// `FlushRows`), so this bounds their latency, as Kafka Streams' `commit.interval.ms` (100 ms
    /// under exactly-once) does; each commit is one synchronous OffsetCommit to the group
    /// coordinator and, per partition written to since, one FlushRows call. At least once it only
    /// bounds how much is read again after a crash.
    pub commit_interval_ms: u64,
    /// Extra librdkafka properties, passed through as they are (e.g. `security.protocol`,
    /// `session.timeout.ms`). Default: none.
    pub properties: BTreeMap<String, String>,
    /// How long a revoke waits for the partitions' in-flight rows to be written before it commits
    /// what was handled and gives them up, in ms. Rows still unsent then are abandoned (the next
    /// owner reads them again), never written late. Keep it well under `max.poll.interval.ms`.
    /// Default 10000.
    pub revoke_timeout_ms: u64,
    /// The format of each topic's record values, by topic: `json` (the default for a topic not
    /// listed), or `avro`, `protobuf` or `json_schema` (the Schema Registry's wire format; needs
    /// `registry.url`).
    pub formats: BTreeMap<String, ValueFormat>,
    /// The format of each topic's record keys, by topic: `json` (the default for a topic not
    /// listed: the key's bytes as they are), or `avro`, `protobuf` or `json_schema` (decoded with
    /// their registered schema, as Confluent's key deserializers do; needs `registry.url`). A
    /// decoded key is what `_kafka_key` holds and what `dedup.key = "kafka_key"` compares: a
    /// string key its characters, any other key its compact JSON text.
    pub key_formats: BTreeMap<String, ValueFormat>,
}

/// The format of a topic's record values (`kafka.formats`) or keys (`kafka.key_formats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// A JSON object per record.
    #[default]
    Json,
    /// Avro in the Schema Registry's wire format (magic byte 0, schema id, Avro binary).
    Avro,
    /// Protobuf in the Schema Registry's wire format (header, message indexes, message).
    Protobuf,
    /// JSON checked against a JSON Schema, in the Schema Registry's wire format (header, JSON).
    JsonSchema,
}

impl ValueFormat {
    /// Whether values of this format name their schema in the registry.
    pub fn uses_registry(self) -> bool {
        self != ValueFormat::Json
    }
}

impl std::fmt::Display for ValueFormat {
    /// The name `kafka.formats` gives it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ValueFormat::Json => "json",
            ValueFormat::Avro => "avro",
            ValueFormat::Protobuf => "protobuf",
            ValueFormat::JsonSchema => "json_schema",
        })
    }
}

impl KafkaConfig {
    /// The value format of `topic`.
    pub fn format_of(&self, topic: &str) -> ValueFormat {
        self.formats.get(topic).copied().unwrap_or_default()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            group_id: "bqsink".into(),
            topics: Vec::new(),
            auto_offset_reset: OffsetReset::Earliest,
            commit_interval_ms: 250,
            properties: BTreeMap::new(),
            revoke_timeout_ms: 10_000,
            formats: BTreeMap::new(),
            key_formats: BTreeMap::new(),
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
