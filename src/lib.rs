//! bqsink: moves events from Kafka topics into BigQuery tables, committing an offset only when every
//! record before it is in BigQuery or reported.
//!
//! The pipeline itself (actors and pure stage logic) is the `bqsink-actors` crate; this crate holds
//! the adapters (rdkafka, reqwest), configuration loading, the CLI's subcommands, and the local
//! insertAll sink used by the demo and the tests.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod bigquery;
pub mod demo;
pub mod destinations;
pub mod dlq;
pub mod error_file;
pub mod generator;
pub mod kafka;
pub mod logging;
pub mod prometheus;
pub mod replay;
pub mod run;
pub mod service;
pub mod settings;
pub mod sink;
pub mod slack;
pub mod telemetry;
