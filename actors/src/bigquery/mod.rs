//! The BigQuery port: the client trait and its errors ([`client`]), and the retry loop that turns
//! a batch into an outcome per row ([`retry`]).
//!
//! Direction: `client` ← `crate::tables` (table management calls the client) ← `crate::telemetry`
//! (wraps one insertAll call) ← `retry` (drives all three). The re-exports below keep the
//! `crate::bigquery::X` paths the `bqsink` crate and the tests use.

pub mod client;
pub mod retry;

pub use client::{
    BigQuery, BqError, CommitHook, ErrorProto, FlushFailure, GrpcCode, InsertAllResponse, RowErrors,
};
pub use retry::{
    is_unknown_field, retry_delay, send_with_retry, Outcome, RetryHooks, RetryPolicy, RowFailure,
    SinkFailed,
};
