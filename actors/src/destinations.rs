//! The error destinations port: where the error report sends failed records besides the log (the
//! dead-letter topic, the NDJSON file, Slack). The `bqsink` crate implements them; tests plug in
//! fakes.
//!
//! A destination is a *store* or an *alert*. A record counts as handled (its offset may be committed)
//! only once every store has delivered it. Alerts are told and never waited for: an alert outage
//! must not hold up the pipeline.
//!
//! A store that cannot take records is a *sink failure* (see [`crate::health`]), never a record
//! failure: the records stay unacknowledged (nothing is committed past them) and
//! [`deliver_until_done`] reports the store to [`crate::health::SinkHealth`] — `retrying` on every
//! failed attempt, `failing` at once for an error retrying cannot fix ([`DeliveryError::permanent`]:
//! a record too large for the topic, no authorization, no such topic) or once a transient one has
//! lasted `errors.retry_timeout_ms`, `succeeded` when it delivers again. Under
//! `errors.sink_failure = "retry"` it retries for as long as it takes (an operator may fix the
//! cause: grant the ACL, raise the topic's size limit); under `"stop"` it gives up once failing and
//! the error report stops the pipeline.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::messages::{RawRecord, Stage, Tp};

pub mod delivery;
pub use delivery::{
    deliver_until_done, Delivery, DeliveryBackoff, Incident, SinkFailurePolicy, Verdict,
};

/// A failed record as the destinations see it: where it came from, its original bytes, and why it
/// failed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    pub tp: Tp,
    pub source: RawRecord,
    pub stage: Stage,
    /// Short machine-readable class, e.g. `invalid_json`, `insert_error`.
    pub class: &'static str,
    /// The full error text, with its chain of causes.
    pub error: String,
}

/// Whether the pipeline waits for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Keeps the record (dead-letter topic, file): the record is handled only once delivered.
    Store,
    /// Tells someone (Slack): fire and forget, also under `errors.tolerance = "none"`.
    Alert,
}

/// Some records were not delivered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{} of the records not delivered: {error}", undelivered.len())]
pub struct DeliveryError {
    /// Indices (into the slice given to `deliver`) of the records not delivered.
    pub undelivered: Vec<usize>,
    /// What went wrong, with context.
    pub error: String,
    /// Retrying the same records cannot succeed until someone changes something (the topic's size
    /// limit, an ACL, a missing topic, file permissions): the sink is failing at once, without
    /// waiting for `errors.retry_timeout_ms`. Still a sink failure: the records are retried (under
    /// `errors.sink_failure = "retry"`), never dropped.
    pub permanent: bool,
}

impl DeliveryError {
    /// Every one of `n` records failed for the same reason, which retrying may fix.
    pub fn all(n: usize, error: impl Into<String>) -> Self {
        Self {
            undelivered: (0..n).collect(),
            error: error.into(),
            permanent: false,
        }
    }

    /// The same error, marked as one retrying cannot fix when `permanent`.
    pub fn permanent_if(mut self, permanent: bool) -> Self {
        self.permanent = permanent;
        self
    }
}

/// One error destination.
pub trait ErrorDestination: Send + Sync + 'static {
    /// Name for logs, e.g. `dead-letter topic`.
    fn name(&self) -> &'static str;
    /// The sink's name in [`crate::health::SinkHealth`] (`/status`, metrics, alerts): which one it
    /// is, e.g. `dead-letter topic events.DLT` or `error file /var/lib/bqsink/failed.ndjson`.
    /// [`ErrorDestination::name`] unless the destination says more.
    fn sink_name(&self) -> String {
        self.name().to_owned()
    }
    /// Store or alert. A store unless it says otherwise: a store holds the commit back until it
    /// has the records, the safe side for a destination that forgets to choose.
    fn role(&self) -> Role {
        Role::Store
    }
    /// Delivers records. The future resolves when they are durably delivered (stores) or accepted
    /// for a later alert (alerts); it must not borrow `self`.
    fn deliver(
        &self,
        records: Arc<[FailureRecord]>,
    ) -> BoxFuture<'static, Result<(), DeliveryError>>;
}

/// Kafka Connect's name for the stage where a record failed (`__connect.errors.stage`).
pub fn connect_stage(stage: Stage) -> &'static str {
    match stage {
        Stage::Convert => "VALUE_CONVERTER",
        Stage::Transform => "TRANSFORMATION",
        Stage::BigQuery => "TASK_PUT",
    }
}

/// The component that failed, in the role of Kafka Connect's `__connect.errors.class.name`.
pub fn stage_class_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Convert => "bqsink.convert.JsonConverter",
        Stage::Transform => "bqsink.transform.Transformer",
        Stage::BigQuery => "bqsink.bigquery.InsertAllWriter",
    }
}

/// A stage from bqsink's name (`convert`, `transform`, `bigquery`) or Kafka Connect's
/// (`VALUE_CONVERTER`, `TRANSFORMATION`, `TASK_PUT`), case-insensitive.
pub fn parse_stage(name: &str) -> Option<Stage> {
    [Stage::Convert, Stage::Transform, Stage::BigQuery]
        .into_iter()
        .find(|s| {
            name.eq_ignore_ascii_case(s.as_str()) || name.eq_ignore_ascii_case(connect_stage(*s))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_from_either_name() {
        assert_eq!(parse_stage("convert"), Some(Stage::Convert));
        assert_eq!(parse_stage("VALUE_CONVERTER"), Some(Stage::Convert));
        assert_eq!(parse_stage("task_put"), Some(Stage::BigQuery));
        assert_eq!(parse_stage("transformation"), Some(Stage::Transform));
        assert_eq!(parse_stage("poll"), None);
    }
}
