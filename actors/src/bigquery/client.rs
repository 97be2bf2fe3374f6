//! The BigQuery client port: the [`BigQuery`] trait the `bqsink` crate implements over reqwest (and
//! tests over fakes), what one `tabledata.insertAll` answers, and the request-level [`BqError`].
//!
//! Invariant: every [`BqError`] is a *sink failure* (BigQuery cannot take anything right now), never
//! a record failure; bad rows come back one by one in [`InsertAllResponse::insert_errors`]. This file
//! knows nothing about retries or telemetry: those wrap the client from above
//! ([`super::retry`], `crate::telemetry::write_rows`).

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::model::{TableRef, Tp};
use crate::stage::batch::{encode_body_with, InsertOptions};
use crate::stage::proto::{RowData, RowFormats};
use crate::stage::schema::FieldSchema;
use crate::tables::definition::{TableDefinition, TableManager};

/// Sends insertAll requests and manages tables. Implemented over reqwest in the `bqsink` crate.
/// Only `insert_all` is required; the table calls default to [`BqError::Unsupported`].
pub trait BigQuery: Send + Sync + 'static {
    /// Writes `rows` (encoded insertAll entries, `{"insertId":…,"json":{…}}`) to `table` in one
    /// request and answers as insertAll does: the rows not listed in `insert_errors` are written.
    /// The default sends one `tabledata.insertAll`; the Storage Write API client (`bqsink` crate)
    /// encodes the rows as protobuf and appends them to a write stream instead.
    ///
    /// `sources` holds each row's partition and offset when the caller knows them (the pipeline's
    /// writer does; a replay does not): exactly-once delivery needs them.
    fn write_rows(
        &self,
        table: &TableRef,
        rows: &[RowData<'_>],
        _sources: &[(Tp, i64)],
        options: InsertOptions,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let entries: Vec<_> = rows.iter().map(RowData::json).collect();
        let size = entries.iter().map(|r| r.len() + 1).sum::<usize>() + 80;
        let body = encode_body_with(options, entries.iter().map(|e| &**e), size);
        self.insert_all(table, body)
    }

    /// The row formats rows may be encoded with before they reach [`BigQuery::write_rows`]
    /// (the Storage Write API client's); `None`: rows come as insertAll entries.
    fn row_formats(&self) -> Option<RowFormats> {
        None
    }

    /// POSTs an encoded insertAll body for `table`.
    fn insert_all(
        &self,
        table: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>>;

    /// `tables.get`: the table's schema, or `None` when the table does not exist.
    fn get_table(
        &self,
        _table: &TableRef,
    ) -> BoxFuture<'static, Result<Option<Vec<FieldSchema>>, BqError>> {
        Box::pin(async { Err(BqError::Unsupported("tables.get")) })
    }

    /// `tables.insert`: `Ok(false)` when the table exists already; a 404 when its dataset does not.
    fn create_table(&self, _def: &TableDefinition) -> BoxFuture<'static, Result<bool, BqError>> {
        Box::pin(async { Err(BqError::Unsupported("tables.insert")) })
    }

    /// `datasets.insert`: `Ok(false)` when the dataset exists already.
    fn create_dataset(&self, _dataset: &str) -> BoxFuture<'static, Result<bool, BqError>> {
        Box::pin(async { Err(BqError::Unsupported("datasets.insert")) })
    }

    /// `tables.patch` with a table's complete new schema.
    fn patch_schema(
        &self,
        _table: &TableRef,
        _schema: Vec<FieldSchema>,
    ) -> BoxFuture<'static, Result<(), BqError>> {
        Box::pin(async { Err(BqError::Unsupported("tables.patch")) })
    }

    /// Exactly-once delivery's part in the offset commit, when the client delivers exactly once
    /// (`bigquery.delivery = "exactly_once"`). Default none.
    fn commit_hook(&self) -> Option<std::sync::Arc<dyn CommitHook>> {
        None
    }

    /// The table management [`send_with_retry`](super::retry::send_with_retry) applies (auto-creation, new fields, insert
    /// options); see [`crate::tables::api::Managed`]. Default none.
    fn tables(&self) -> Option<&TableManager> {
        None
    }
}

/// What the Kafka poller asks of an exactly-once client around each offset commit (see
/// `crate::stage::exactly_once` for the protocol and its proof). All calls come from the poller
/// thread, one at a time, and may block it.
pub trait CommitHook: Send + Sync + 'static {
    /// `tp` was assigned; `metadata` is its committed offset's metadata (the streams a previous
    /// owner committed rows of, which this instance flushes and then finalizes).
    fn assigned(&self, tp: &Tp, metadata: Option<&str>);
    /// The offset to commit for `tp` when every record below `offset` is handled (possibly lower),
    /// and the metadata to commit with it; an error when the metadata cannot be written.
    fn prepare(&self, tp: &Tp, offset: i64) -> Result<(i64, String), String>;
    /// The commits just prepared for `tps` succeeded: flush what they name, then finalize the
    /// streams no commit names any more; with `wait` before returning (a revoke), else in the
    /// background (the poller goes on polling).
    fn committed(&self, tps: &[Tp], wait: bool);
    /// Partitions that need a commit although their offset has not moved.
    fn pending(&self) -> Vec<Tp>;
    /// `tps` were revoked: nothing more is appended for them.
    fn released(&self, tps: &[Tp]);
    /// Tables whose `FlushRows` keeps failing: rows committed in Kafka that are not visible yet.
    /// They are flushed again with every commit; the poller reports them as sink failures.
    fn flush_failures(&self) -> Vec<FlushFailure> {
        Vec::new()
    }
}

/// A table whose flushes fail (see [`CommitHook::flush_failures`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FlushFailure {
    /// `dataset.table`.
    pub table: String,
    /// The partitions whose rows wait for the flush.
    pub partitions: Vec<Tp>,
    /// The last error.
    pub error: String,
    /// When the first flush of this run of failures failed.
    pub since: std::time::Instant,
}

/// The 200 response of insertAll: rows not listed were inserted.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InsertAllResponse {
    #[serde(default)]
    pub insert_errors: Vec<RowErrors>,
}

/// The errors of one row, by its index in the request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RowErrors {
    pub index: usize,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

/// BigQuery's ErrorProto.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ErrorProto {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub message: String,
}

impl std::fmt::Display for ErrorProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reason)?;
        if !self.location.is_empty() {
            write!(f, " at {}", self.location)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// A request that failed as a whole. Every one of these is a *sink failure* (BigQuery cannot take
/// anything right now), never a record failure: BigQuery reports bad rows one by one, in
/// `insertErrors` ([`RowErrors`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BqError {
    #[error("HTTP {status} from BigQuery ({reason}): {message}")]
    Http {
        status: u16,
        reason: String,
        message: String,
        /// The answer's `Retry-After`, honoured by the retry loop.
        retry_after: Option<Duration>,
    },
    #[error("request to BigQuery timed out")]
    Timeout,
    #[error("cannot reach BigQuery: {0}")]
    Transport(String),
    /// A 2xx answer whose body cannot be read: whether the rows went in is unknown, so they are
    /// sent again with the same insertIds.
    #[error("unreadable response from BigQuery: {0}")]
    Decode(String),
    #[error("cannot get an OAuth token for BigQuery: {message}")]
    Auth { message: String, retryable: bool },
    #[error("the BigQuery client does not implement {0}")]
    Unsupported(&'static str),
    /// A gRPC call of the Storage Write API failed: its status code (`UNAVAILABLE`, …) and message.
    #[error("{code} from the BigQuery Storage Write API: {message}")]
    Grpc { code: GrpcCode, message: String },
    /// The table's registered schemas disagree on a column's type
    /// ([`RegistryColumns`](crate::tables::registered::RegistryColumns)): not sent.
    #[error(
        "the table's registered schemas conflict: {0}; migrate the table, then restart bqsink"
    )]
    SchemaConflict(String),
}

/// The gRPC status codes a Storage Write API call can end with (google.rpc.Code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl GrpcCode {
    /// The code of a numeric gRPC status (`None` for OK).
    pub fn from_i32(code: i32) -> Option<Self> {
        use GrpcCode::*;
        Some(match code {
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            0 => return None,
            _ => Unknown,
        })
    }

    /// Transient by Google's guidance for the Storage Write API: retry with backoff.
    pub fn is_transient(self) -> bool {
        use GrpcCode::*;
        matches!(
            self,
            Cancelled
                | Unknown
                | DeadlineExceeded
                | ResourceExhausted
                | Aborted
                | Internal
                | Unavailable
        )
    }
}

impl std::fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        };
        f.write_str(name)
    }
}

/// Error reasons BigQuery documents as transient (its error-message table).
pub(crate) const RETRYABLE_REASONS: &[&str] = &[
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "quotaExceeded",
    "timeout",
];

impl BqError {
    /// A plain HTTP error, without `Retry-After`.
    pub fn http(status: u16, reason: impl Into<String>, message: impl Into<String>) -> Self {
        BqError::Http {
            status,
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Transient by nature: timeouts, connection failures, 5xx, 429, the transient reasons and an
    /// unreadable 2xx. The others (400, 401/403 after a token refresh, 404) need someone to act;
    /// both kinds are sink failures and are retried (`errors.sink_failure`), this only tells the
    /// operator which kind it is and lets table management decide whether to try again at once.
    pub fn is_retryable(&self) -> bool {
        match self {
            BqError::Timeout | BqError::Transport(_) | BqError::Decode(_) => true,
            BqError::Unsupported(_) | BqError::SchemaConflict(_) => false,
            BqError::Grpc { code, .. } => code.is_transient(),
            BqError::Auth { retryable, .. } => *retryable,
            BqError::Http { status, reason, .. } => {
                *status >= 500 || *status == 429 || RETRYABLE_REASONS.contains(&reason.as_str())
            }
        }
    }

    /// Short class for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            BqError::Timeout => "timeout",
            BqError::Transport(_) => "transport",
            BqError::Decode(_) => "decode",
            BqError::Http { .. } => "http",
            BqError::Auth { .. } => "auth",
            BqError::Unsupported(_) => "unsupported",
            BqError::Grpc { .. } => "grpc",
            BqError::SchemaConflict(_) => "schema_conflict",
        }
    }

    /// HTTP 404 or gRPC `NOT_FOUND`: the table (or its dataset) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            BqError::Http { status: 404, .. }
                | BqError::Grpc {
                    code: GrpcCode::NotFound,
                    ..
                }
        )
    }
}
