//! Delivering failed records to a store until it takes them: the backoff between attempts, the
//! [`Incident`] that decides when a store is *failing*, and [`deliver_until_done`].
//!
//! Invariant: a record a store did not take is never acknowledged, so its offset is never
//! committed; the store's health is in `stats.health` on every attempt (see the parent module).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use super::{ErrorDestination, FailureRecord};
use crate::config::SinkFailure;
use crate::model::Tp;
use crate::stats::Stats;
use crate::telemetry;

/// Waits between attempts to deliver to a store that failed (exponential with jitter).
#[derive(Debug, Clone, Copy)]
pub struct DeliveryBackoff {
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl DeliveryBackoff {
    /// The waits between attempts: exponential from `min_delay` to `max_delay`, with jitter,
    /// without end.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// What a store's failure leads to: `errors.sink_failure` and `errors.retry_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkFailurePolicy {
    pub on_failure: SinkFailure,
    /// How long a transient failure lasts before the sink is failing.
    pub retry_timeout: Duration,
}

impl Default for SinkFailurePolicy {
    /// The configuration's defaults: retry, failing after 5 minutes.
    fn default() -> Self {
        Self {
            on_failure: SinkFailure::Retry,
            retry_timeout: Duration::from_millis(300_000),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Retry after the backoff; `failing` says whether the sink is to be reported failing.
    Retry { failing: bool },
    /// Give up (the sink is failing and `errors.sink_failure = "stop"`): the records stay
    /// unacknowledged and the pipeline is to stop.
    Stop,
}

/// The failed attempts of one delivery, from its first failure: decides when the sink is failing
/// and whether to go on (pure: the caller passes the time).
#[derive(Debug, Clone)]
pub struct Incident {
    policy: SinkFailurePolicy,
    since: Option<Instant>,
}

impl Incident {
    pub fn new(policy: SinkFailurePolicy) -> Self {
        Self {
            policy,
            since: None,
        }
    }

    /// Whether an attempt has failed (since the incident began).
    pub fn is_open(&self) -> bool {
        self.since.is_some()
    }

    /// An attempt failed at `now`: failing at once when `permanent`, else once failures have lasted
    /// the retry timeout; then retry, or stop under `"stop"`.
    pub fn failed(&mut self, permanent: bool, now: Instant) -> Verdict {
        let since = *self.since.get_or_insert(now);
        let failing =
            permanent || now.saturating_duration_since(since) >= self.policy.retry_timeout;
        if failing && self.policy.on_failure == SinkFailure::Stop {
            Verdict::Stop
        } else {
            Verdict::Retry { failing }
        }
    }
}

/// How [`deliver_until_done`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Every record was delivered.
    Delivered,
    /// The store is failing and `errors.sink_failure = "stop"`: not every record was delivered.
    Stopped {
        /// The sink's name.
        sink: String,
        /// The last error.
        error: String,
    },
}

/// Delivers `records` to `dest`, retrying the undelivered ones, reporting the store's health in
/// `stats.health` (see the module docs) and counting retries in `stats.report_retries`. Under
/// `errors.sink_failure = "retry"` it never gives up: a record that cannot be stored is never
/// acknowledged, so its offset is never committed (a restart reads it again). Under `"stop"` it
/// returns [`Delivery::Stopped`] once the store is failing.
pub async fn deliver_until_done(
    dest: Arc<dyn ErrorDestination>,
    records: Arc<[FailureRecord]>,
    backoff: DeliveryBackoff,
    policy: SinkFailurePolicy,
    stats: Arc<Stats>,
) -> Delivery {
    let mut delays = backoff.delays();
    let sink = dest.sink_name();
    let mut incident = Incident::new(policy);
    let mut todo = records;
    loop {
        let error = match dest.deliver(Arc::clone(&todo)).await {
            Ok(()) => {
                telemetry::destination_outcome(dest.name(), "delivered", todo.len() as u64);
                // Only a delivery that failed ends an incident: another delivery to the same sink
                // that went through says nothing about the records this one waits with.
                if incident.is_open() {
                    stats.health.succeeded(&sink);
                }
                return Delivery::Delivered;
            }
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
        let delivered = todo.len().saturating_sub(undelivered.len()) as u64;
        telemetry::destination_outcome(dest.name(), "delivered", delivered);
        telemetry::destination_outcome(dest.name(), "failed", undelivered.len() as u64);
        let partitions: Vec<Tp> = undelivered
            .iter()
            .map(|r| r.tp.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let verdict = incident.failed(error.permanent, Instant::now());
        match verdict {
            Verdict::Retry { failing: false } => {
                stats.health.retrying(&sink, &partitions, &error.error);
            }
            Verdict::Retry { failing: true } | Verdict::Stop => {
                stats.health.failing(&sink, &partitions, &error.error);
            }
        }
        if verdict == Verdict::Stop {
            tracing::error!(
                sink = %sink, kind = "sink_failure", records = undelivered.len(),
                permanent = error.permanent, error = %error.error,
                "delivering failed records failed; errors.sink_failure = \"stop\": giving up, \
                 their offsets are not committed"
            );
            return Delivery::Stopped {
                sink,
                error: error.error,
            };
        }
        let delay = delays.next().unwrap_or(backoff.max_delay);
        tracing::warn!(
            destination = dest.name(),
            sink = %sink,
            records = undelivered.len(),
            permanent = error.permanent,
            error = %error.error,
            delay_ms = delay.as_millis() as u64,
            "delivering failed records failed; retrying (their offsets are not committed until delivered)"
        );
        Stats::add(&stats.report_retries, 1);
        todo = undelivered.into();
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use futures::future::BoxFuture;

    use crate::destinations::DeliveryError;
    use crate::messages::{RawRecord, Stage};

    /// Fails the records whose offset is listed, `failures` times each (permanently or not);
    /// records every attempt.
    struct Flaky {
        failing: Mutex<Vec<(i64, u32)>>,
        permanent: bool,
        attempts: Mutex<Vec<Vec<i64>>>,
    }

    impl Flaky {
        fn new(fail: &[i64], times: u32, permanent: bool) -> Arc<Self> {
            Arc::new(Self {
                failing: Mutex::new(fail.iter().map(|&o| (o, times)).collect()),
                permanent,
                attempts: Mutex::default(),
            })
        }
    }

    impl ErrorDestination for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn sink_name(&self) -> String {
            "flaky store".into()
        }
        fn deliver(
            &self,
            records: Arc<[FailureRecord]>,
        ) -> BoxFuture<'static, Result<(), DeliveryError>> {
            let offsets: Vec<i64> = records.iter().map(|r| r.source.offset).collect();
            self.attempts.lock().unwrap().push(offsets.clone());
            let mut failing = self.failing.lock().unwrap();
            let mut undelivered = Vec::new();
            for (i, o) in offsets.iter().enumerate() {
                if let Some((_, left)) = failing.iter_mut().find(|(f, n)| f == o && *n > 0) {
                    *left -= 1;
                    undelivered.push(i);
                }
            }
            let permanent = self.permanent;
            Box::pin(async move {
                if undelivered.is_empty() {
                    Ok(())
                } else {
                    Err(DeliveryError {
                        undelivered,
                        error: "broker said no".into(),
                        permanent,
                    })
                }
            })
        }
    }

    fn record(offset: i64) -> FailureRecord {
        FailureRecord {
            tp: Tp::new("t", (offset % 2) as i32),
            source: RawRecord {
                offset,
                ..Default::default()
            },
            stage: Stage::Convert,
            class: "invalid_json",
            error: "bad".into(),
        }
    }

    const FAST: DeliveryBackoff = DeliveryBackoff {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };

    fn policy(on_failure: SinkFailure, retry_timeout_ms: u64) -> SinkFailurePolicy {
        SinkFailurePolicy {
            on_failure,
            retry_timeout: Duration::from_millis(retry_timeout_ms),
        }
    }

    #[tokio::test]
    async fn only_undelivered_records_are_retried_until_delivered() {
        let flaky = Flaky::new(&[1, 3], 1, false);
        let stats = Arc::new(Stats::default());
        let records: Arc<[FailureRecord]> = (0..4).map(record).collect();
        let done = deliver_until_done(
            flaky.clone(),
            records,
            FAST,
            SinkFailurePolicy::default(),
            Arc::clone(&stats),
        )
        .await;
        assert_eq!(done, Delivery::Delivered);
        let attempts = flaky.attempts.lock().unwrap();
        assert_eq!(*attempts, vec![vec![0, 1, 2, 3], vec![1, 3]]);
        assert_eq!(stats.snapshot().report_retries, 1);
        // One transient failure, then delivered: retried, never failing, healthy again.
        assert!(stats.health.snapshot().is_empty());
        assert_eq!(stats.health.incidents(), 0);
    }

    #[test]
    fn an_incident_is_failing_at_once_when_permanent_else_after_the_retry_timeout() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut transient = Incident::new(policy(SinkFailure::Retry, 1_000));
        assert!(!transient.is_open());
        assert_eq!(
            transient.failed(false, t0),
            Verdict::Retry { failing: false }
        );
        assert!(transient.is_open());
        assert_eq!(
            transient.failed(false, t0 + ms(999)),
            Verdict::Retry { failing: false }
        );
        assert_eq!(
            transient.failed(false, t0 + ms(1_000)),
            Verdict::Retry { failing: true }
        );

        let mut permanent = Incident::new(policy(SinkFailure::Retry, 1_000));
        assert_eq!(permanent.failed(true, t0), Verdict::Retry { failing: true });

        let mut stop = Incident::new(policy(SinkFailure::Stop, 1_000));
        assert_eq!(stop.failed(false, t0), Verdict::Retry { failing: false });
        assert_eq!(stop.failed(false, t0 + ms(1_000)), Verdict::Stop);
        let mut stop = Incident::new(policy(SinkFailure::Stop, 1_000));
        assert_eq!(stop.failed(true, t0), Verdict::Stop);
    }

    #[tokio::test]
    async fn a_permanent_error_is_failing_at_once_and_retried_until_it_clears() {
        let flaky = Flaky::new(&[1, 2], 3, true);
        let stats = Arc::new(Stats::default());
        let health = Arc::clone(&stats);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        stats
            .health
            .subscribe(move |e| s.lock().unwrap().push(e.clone()));
        let records: Arc<[FailureRecord]> = (0..4).map(record).collect();
        // Watch the health while the delivery runs: failing from the first failure on.
        let watch = tokio::spawn(async move {
            loop {
                if let Some(s) = health.health.failing_now().into_iter().next() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let done = deliver_until_done(
            flaky.clone(),
            records,
            DeliveryBackoff {
                min_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(20),
            },
            policy(SinkFailure::Retry, 3_600_000),
            Arc::clone(&stats),
        )
        .await;
        assert_eq!(done, Delivery::Delivered);
        let state = watch.await.unwrap();
        assert_eq!(state.sink, "flaky store");
        assert_eq!(state.last_error, "broker said no");
        assert_eq!(
            state.partitions,
            [Tp::new("t", 0), Tp::new("t", 1)].into_iter().collect()
        );
        assert_eq!(
            flaky.attempts.lock().unwrap().len(),
            4,
            "retried until delivered"
        );
        assert!(stats.health.snapshot().is_empty(), "recovered");
        let events = seen.lock().unwrap();
        assert_eq!(events.len(), 2, "one FAILING, one Recovered: {events:?}");
        assert_eq!(stats.health.incidents(), 1);
    }

    #[tokio::test]
    async fn under_stop_a_failing_store_is_given_up_and_stays_failing() {
        let stats = Arc::new(Stats::default());
        // Permanent: stopped at the first failure.
        let flaky = Flaky::new(&[0], 100, true);
        let done = deliver_until_done(
            flaky.clone(),
            (0..2).map(record).collect(),
            FAST,
            policy(SinkFailure::Stop, 3_600_000),
            Arc::clone(&stats),
        )
        .await;
        assert_eq!(
            done,
            Delivery::Stopped {
                sink: "flaky store".into(),
                error: "broker said no".into()
            }
        );
        assert_eq!(flaky.attempts.lock().unwrap().len(), 1);
        assert_eq!(stats.health.failing_now().len(), 1);
        // Transient: retried until the retry timeout, then stopped.
        let stats = Arc::new(Stats::default());
        let flaky = Flaky::new(&[0], 1_000_000, false);
        let started = Instant::now();
        let done = deliver_until_done(
            flaky.clone(),
            (0..2).map(record).collect(),
            FAST,
            policy(SinkFailure::Stop, 50),
            Arc::clone(&stats),
        )
        .await;
        assert!(matches!(done, Delivery::Stopped { .. }));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(flaky.attempts.lock().unwrap().len() > 1, "retried first");
        assert_eq!(stats.health.failing_now()[0].sink, "flaky store");
    }
}
