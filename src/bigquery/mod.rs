//! BigQuery itself: the clients that implement the pipeline's `bqsink_actors::bigquery::BigQuery`
//! port, and the credentials they send. Invariant: a client reports every answer truthfully to the
//! port — a rejected row as a row error (a record failure), anything else that kept rows out
//! (network, 5xx, 429, 401/403, a missing table) as a `BqError` (a sink failure) — and never retries
//! on its own what the writer's retry policy decides.
//!
//! | module | holds |
//! |---|---|
//! | [`rest`] | [`RestClient`]: `tabledata.insertAll` and the table calls over reqwest |
//! | [`auth`] | bearer tokens: none, static, service-account key, metadata server |
//!
//! Depends on: `bqsink_actors` (the port, the config) and external crates only; nothing else in this
//! crate. The local insertAll server used by the demo and the tests is in the `bqsink-devtools`
//! crate, not here.

pub mod auth;
pub mod rest;

pub use rest::RestClient;
