//! bqsink: moves events from Kafka topics into BigQuery tables, committing an offset only when every
//! record before it is in BigQuery or reported.
//!
//! The pipeline itself (actors and pure stage logic) is the `bqsink-actors` crate; this crate holds
//! what connects it to the world, one folder per kind of part.
//!
//! # Layout
//!
//! | module | holds | may depend on |
//! |---|---|---|
//! | [`cli`] | the `bqsink` command line and its subcommands | everything below |
//! | [`service`] | `bqsink run`: pipeline incarnations, restart loop, admin API, metrics, logs, traces | `kafka`, `destinations`, `registry` |
//! | [`replay`] | `bqsink replay`: failed records back to their topic or to BigQuery | `kafka`, `destinations` |
//! | [`kafka`] | the rdkafka adapter: consumer thread, rebalances, commits | — |
//! | [`bigquery`] | the BigQuery REST client and its credentials | — |
//! | [`destinations`] | dead-letter topic, error file, Slack alerts | — |
//! | [`registry`] | the Schema Registry over HTTP, for `avro` topics | — |
//! | [`settings`] | configuration layering: files and environment into `bqsink_actors::config::Config` | — |
//!
//! ("—": only `bqsink_actors` and external crates.)

pub mod bigquery;
pub mod cli;
pub mod destinations;
pub mod kafka;
pub mod registry;
pub mod replay;
pub mod service;
pub mod settings;
