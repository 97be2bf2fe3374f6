//! BigQuery itself: the clients that implement the pipeline's `bqsink_actors::bigquery::BigQuery`
//! port, and the credentials they send. Invariant: a client reports every answer truthfully to the
//! port — a rejected row as a row error (a record failure), anything else that kept rows out
//! (network, 5xx, 429, 401/403, a missing table) as a `BqError` (a sink failure) — and never retries
//! on its own what the writer's retry policy decides.
//!
//! | module | holds |
//! |---|---|
//! | [`rest`] | [`RestClient`]: `tabledata.insertAll` and the table calls over reqwest |
//! | [`storage`] | [`StorageWriteClient`]: the Storage Write API over gRPC (tonic), table calls over REST |
//! | [`auth`] | bearer tokens: none, static, service-account key, metadata server |
//!
//! Depends on: `bqsink_actors` (the port, the config) and external crates only; nothing else in this
//! crate. The local insertAll server used by the demo and the tests is in the `bqsink-devtools`
//! crate, not here.

pub mod auth;
pub mod rest;
pub mod storage;

pub use rest::RestClient;
pub use storage::StorageWriteClient;

use std::sync::Arc;

use bqsink_actors::bigquery::BigQuery;
use bqsink_actors::config::{BigQueryConfig, WriteApi};

/// The client `bigquery.write_api` names, and what its tokens come from (for the log).
pub fn from_config(
    config: &BigQueryConfig,
) -> Result<(Arc<dyn BigQuery>, String), rest::ClientError> {
    Ok(match config.write_api {
        WriteApi::InsertAll => {
            let c = RestClient::new(config)?;
            let auth = c.auth_description();
            (Arc::new(c), auth)
        }
        WriteApi::Storage => {
            let c = StorageWriteClient::new(config)?;
            let auth = c.auth_description();
            (Arc::new(c), auth)
        }
    })
}
