//! Table management, as kafka-connect-bigquery users know it: a missing table (and dataset) is
//! created from its configured definition or from a schema inferred from the first batch's rows, and
//! fields that BigQuery rejected rows for are added to the table. [`send_with_retry`] drives both;
//! the writer does not know about them.
//!
//! Two parts, one above the other: [`definition`] (what a table is created with; no I/O) and
//! [`api`] (the BigQuery calls, and the [`Managed`] client). The BigQuery client trait names the
//! manager, so it sits between them. [`registered`] holds the columns the Schema Registry's schemas
//! give a table (created and extended with their types, stopped when they conflict).
//!
//! [`send_with_retry`]: crate::bigquery::send_with_retry

pub mod api;
pub mod definition;
pub mod registered;

pub use api::Managed;
pub use definition::{TableDefinition, TableManager, TimePartitioning};
