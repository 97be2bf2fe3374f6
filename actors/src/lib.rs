//! The bqsink pipeline: pure stage logic ([`stage`]) and the actix actors around it, one per file.
//!
//! Kafka and BigQuery are reached only through the small traits in [`kafka`] and [`bigquery`], so
//! the `bqsink` binary plugs in rdkafka and reqwest while tests plug in fakes.

pub mod bigquery;
pub mod config;
pub mod destinations;
pub mod health;
pub mod kafka;
pub mod messages;
pub mod model;
pub mod pipeline;
pub mod stage;
pub mod stats;
pub mod telemetry;

pub mod consumer;
pub mod converter;
pub mod deduplicator;
pub mod error_report;
pub mod pause;
pub mod supervisor;
pub mod tables;
pub mod transformer;
pub mod writer;
