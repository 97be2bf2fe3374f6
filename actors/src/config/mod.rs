//! The configuration tree.
//!
//! Every key has a documented default here; `config/default.toml` mirrors these values one to one
//! (a unit test in the `bqsink` crate checks that). Unknown keys are rejected everywhere
//! (`deny_unknown_fields`), so a typo is an error that names the key instead of a silently ignored
//! setting. Loading and layering (files, environment) lives in the `bqsink` binary.
//!
//! One file per group of sections ([`kafka`], [`bigquery`], [`stages`], [`errors`],
//! [`operations`], [`registry`]) and the checks across them ([`validate`]); every type is re-exported here, so
//! `crate::config::X` names it wherever it lives.

use serde::{Deserialize, Serialize};

pub mod bigquery;
pub mod errors;
pub mod kafka;
pub mod operations;
pub mod registry;
pub mod secret;
pub mod stages;
pub mod validate;

pub use bigquery::{
    AuthMode, BigQueryConfig, Delivery, FieldConfig, FieldMode, FieldType, InsertIdMode,
    PartitionType, TableConfig, Tables, WriteApi,
};
pub use errors::{
    DeadLetterQueueConfig, ErrorFileConfig, ErrorsConfig, SinkFailure, SlackConfig, Tolerance,
};
pub use kafka::{KafkaConfig, OffsetReset, ValueFormat};
pub use operations::{
    AdminConfig, LogFormat, LoggingConfig, MetricsConfig, OnFailure, OtlpProtocol, TelemetryConfig,
};
pub use registry::RegistryConfig;
pub use secret::Secret;
pub use stages::{
    BatchConfig, DedupConfig, DedupKey, MetadataConfig, PipelineConfig, TransformConfig,
    MAX_BYTES_PER_REQUEST, MAX_ROWS_PER_REQUEST,
};
pub use validate::InvalidConfig;

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
    pub registry: RegistryConfig,
}
