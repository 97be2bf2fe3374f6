//! The error destinations port: where the error report sends failed records besides the log (the
//! dead-letter topic, the NDJSON file, Slack). The `bqsink` crate implements them; tests plug in
//! fakes.
//!
//! A destination is a *store* or an *alert*. A record counts as handled (its offset may be committed)
//! only once every store has delivered it; stores that fail are retried, with backoff, for as long as
//! it takes. Alerts are told and never waited for: an alert outage must not hold up the pipeline.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;

use crate::messages::{RawRecord, Stage, Tp};
use crate::stats::Stats;

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
}

impl DeliveryError {
    /// Every one of `n` records failed for the same reason.
    pub fn all(n: usize, error: impl Into<String>) -> Self {
        Self {
            undelivered: (0..n).collect(),
            error: error.into(),
        }
    }
}

/// One error destination.
pub trait ErrorDestination: Send + Sync + 'static {
    /// Name for logs, e.g. `dead-letter topic`.
    fn name(&self) -> &'static str;
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

/// Waits between attempts to deliver to a store that failed (exponential with jitter).
#[derive(Debug, Clone, Copy)]
pub struct DeliveryBackoff {
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// Delivers `records` to `dest`, retrying the undelivered ones until all are delivered. Retries are
/// counted in `stats.report_retries`. It never gives up: a record that cannot be stored is never
/// acknowledged, so its offset is never committed (a restart reads it again).
pub async fn deliver_until_done(
    dest: Arc<dyn ErrorDestination>,
    records: Arc<[FailureRecord]>,
    backoff: DeliveryBackoff,
    stats: Arc<Stats>,
) {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(backoff.min_delay)
        .with_max_delay(backoff.max_delay)
        .with_jitter()
        .without_max_times()
        .build();
    let mut todo = records;
    loop {
        let error = match dest.deliver(Arc::clone(&todo)).await {
            Ok(()) => return,
            Err(e) => e,
        };
        let mut undelivered: Vec<FailureRecord> = error
            .undelivered
            .iter()
            .filter_map(|&i| todo.get(i).cloned())
            .collect();
        if undelivered.is_empty() {
            // A destination that fails without naming records: all of them are in doubt.
            undelivered = todo.to_vec();
        }
        let delay = delays.next().unwrap_or(backoff.max_delay);
        tracing::warn!(
            destination = dest.name(),
            records = undelivered.len(),
            error = %error.error,
            delay_ms = delay.as_millis() as u64,
            "delivering failed records failed; retrying (their offsets are not committed until delivered)"
        );
        Stats::add(&stats.report_retries, 1);
        todo = undelivered.into();
        tokio::time::sleep(delay).await;
    }
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
    use std::sync::Mutex;

    use super::*;

    /// Fails the records whose offset is listed, once each; records every attempt.
    struct Flaky {
        fail_once: Mutex<Vec<i64>>,
        attempts: Mutex<Vec<Vec<i64>>>,
    }

    impl ErrorDestination for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn deliver(
            &self,
            records: Arc<[FailureRecord]>,
        ) -> BoxFuture<'static, Result<(), DeliveryError>> {
            let offsets: Vec<i64> = records.iter().map(|r| r.source.offset).collect();
            self.attempts.lock().unwrap().push(offsets.clone());
            let mut fail = self.fail_once.lock().unwrap();
            let undelivered: Vec<usize> = offsets
                .iter()
                .enumerate()
                .filter(|(_, o)| fail.contains(o))
                .map(|(i, _)| i)
                .collect();
            fail.retain(|o| !offsets.contains(o));
            Box::pin(async move {
                if undelivered.is_empty() {
                    Ok(())
                } else {
                    Err(DeliveryError {
                        undelivered,
                        error: "broker said no".into(),
                    })
                }
            })
        }
    }

    fn record(offset: i64) -> FailureRecord {
        FailureRecord {
            tp: Tp::new("t", 0),
            source: RawRecord {
                offset,
                ..Default::default()
            },
            stage: Stage::Convert,
            class: "invalid_json",
            error: "bad".into(),
        }
    }

    #[tokio::test]
    async fn only_undelivered_records_are_retried_until_delivered() {
        let flaky = Arc::new(Flaky {
            fail_once: Mutex::new(vec![1, 3]),
            attempts: Mutex::default(),
        });
        let stats = Arc::new(Stats::default());
        let records: Arc<[FailureRecord]> = (0..4).map(record).collect();
        deliver_until_done(
            flaky.clone(),
            records,
            DeliveryBackoff {
                min_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            },
            Arc::clone(&stats),
        )
        .await;
        let attempts = flaky.attempts.lock().unwrap();
        assert_eq!(*attempts, vec![vec![0, 1, 2, 3], vec![1, 3]]);
        assert_eq!(stats.snapshot().report_retries, 1);
    }

    #[test]
    fn stages_parse_from_either_name() {
        assert_eq!(parse_stage("convert"), Some(Stage::Convert));
        assert_eq!(parse_stage("VALUE_CONVERTER"), Some(Stage::Convert));
        assert_eq!(parse_stage("task_put"), Some(Stage::BigQuery));
        assert_eq!(parse_stage("transformation"), Some(Stage::Transform));
        assert_eq!(parse_stage("poll"), None);
    }
}
