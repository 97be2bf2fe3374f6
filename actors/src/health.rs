//! Sink health: which destinations cannot take anything right now.
//!
//! bqsink keeps two kinds of failure apart (README, Failures):
//! - a *record failure*: the record itself is wrong (not JSON, a transform error, oversize, a row
//!   BigQuery rejects as `invalid`). It follows `errors.tolerance` and goes to the error
//!   destinations; it never comes here.
//! - a *sink failure*: a destination (a BigQuery table, the dead-letter topic, the error file)
//!   cannot take anything right now: network, timeouts, 5xx, 429, 401/403, a missing table. It is
//!   never tolerated, dead-lettered or committed past: the write is retried while its partitions
//!   are paused, or the pipeline stops (`errors.sink_failure`).
//!
//! Whoever writes to a sink reports here: [`SinkHealth::retrying`] when a write to it fails and is
//! retried, [`SinkHealth::failing`] once the failure has lasted `errors.retry_timeout_ms`, and
//! [`SinkHealth::succeeded`] when a write goes through again. The admin API (`/status`, `/readyz`)
//! and the metrics read [`SinkHealth::snapshot`]; alerting (Slack) subscribes to the two
//! transitions, [`HealthEvent::Failing`] and [`HealthEvent::Recovered`], each sent once per
//! incident.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::messages::Tp;

/// `1` while a sink is failing (label `sink`), refreshed at every failed attempt.
pub const SINK_FAILING_METRIC: &str = "bqsink_sink_failing";
/// Sink failure incidents (a sink failing for `errors.retry_timeout_ms`), label `sink`.
pub const SINK_FAILURES_METRIC: &str = "bqsink_sink_failures_total";

/// Describes the metrics above to the recorder.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        SINK_FAILING_METRIC,
        "1 while a destination (BigQuery table, dead-letter topic, error file) has failed for errors.retry_timeout_ms"
    );
    metrics::describe_counter!(
        SINK_FAILURES_METRIC,
        "Sink failure incidents: a destination failing for errors.retry_timeout_ms"
    );
}

/// The name of a sink for `/status`, logs and metrics, e.g. `bigquery ds.events` or
/// `dead-letter topic events.DLT`.
pub type SinkName = String;

/// How a sink is doing, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkCondition {
    /// Writes fail and are retried; not yet for `errors.retry_timeout_ms`.
    Retrying,
    /// Writes have failed for at least `errors.retry_timeout_ms`: reported and alerted.
    Failing,
}

impl SinkCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkCondition::Retrying => "RETRYING",
            SinkCondition::Failing => "FAILING",
        }
    }
}

/// One sink that is not healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkState {
    pub sink: SinkName,
    pub condition: SinkCondition,
    /// When the first write of this incident failed.
    pub since: SystemTime,
    /// The latest error, with context.
    pub last_error: String,
    /// Failed attempts in this incident.
    pub attempts: u64,
    /// Partitions whose records wait for this sink.
    pub partitions: BTreeSet<Tp>,
}

/// A change worth telling someone about (Slack), sent once per incident each.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthEvent {
    /// A sink has failed for `errors.retry_timeout_ms`.
    Failing(SinkState),
    /// A sink that was failing takes writes again.
    Recovered {
        sink: SinkName,
        /// How long the incident lasted.
        after: Duration,
    },
}

type Listener = (u64, Arc<dyn Fn(&HealthEvent) + Send + Sync>);

struct Entry {
    state: SinkState,
    started: Instant,
}

/// The shared record of unhealthy sinks (held in [`crate::stats::Stats`]).
#[derive(Default)]
pub struct SinkHealth {
    sinks: Mutex<BTreeMap<SinkName, Entry>>,
    listeners: Mutex<Vec<Listener>>,
    /// Incidents that reached `Failing` since start.
    incidents: std::sync::atomic::AtomicU64,
    next_listener: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for SinkHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkHealth")
            .field("sinks", &self.snapshot())
            .finish()
    }
}

impl SinkHealth {
    fn sinks(&self) -> MutexGuard<'_, BTreeMap<SinkName, Entry>> {
        // Each update leaves the map consistent; a panic elsewhere does not corrupt it.
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, event: HealthEvent) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (_, l) in listeners {
            l(&event);
        }
    }

    /// Calls `listener` on every [`HealthEvent`] from now on, until [`Self::unsubscribe`] with the
    /// id returned.
    pub fn subscribe(&self, listener: impl Fn(&HealthEvent) + Send + Sync + 'static) -> u64 {
        let id = self
            .next_listener
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, Arc::new(listener)));
        id
    }

    pub fn unsubscribe(&self, id: u64) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }

    fn update(
        &self,
        sink: &str,
        partitions: &[Tp],
        error: &str,
    ) -> MutexGuard<'_, BTreeMap<SinkName, Entry>> {
        let mut sinks = self.sinks();
        let entry = sinks.entry(sink.to_owned()).or_insert_with(|| Entry {
            state: SinkState {
                sink: sink.to_owned(),
                condition: SinkCondition::Retrying,
                since: SystemTime::now(),
                last_error: String::new(),
                attempts: 0,
                partitions: BTreeSet::new(),
            },
            started: Instant::now(),
        });
        entry.state.last_error = error.to_owned();
        entry.state.attempts += 1;
        entry.state.partitions.extend(partitions.iter().cloned());
        sinks
    }

    /// A write to `sink` failed and will be retried; `partitions` wait for it.
    pub fn retrying(&self, sink: &str, partitions: &[Tp], error: &str) {
        drop(self.update(sink, partitions, error));
    }

    /// A write to `sink` has failed for `errors.retry_timeout_ms`. The first call of an incident
    /// makes it `Failing` and tells the listeners; returns whether this call did.
    pub fn failing(&self, sink: &str, partitions: &[Tp], error: &str) -> bool {
        let mut sinks = self.update(sink, partitions, error);
        metrics::gauge!(SINK_FAILING_METRIC, "sink" => sink.to_owned()).set(1.0);
        let Some(entry) = sinks.get_mut(sink) else {
            return false;
        };
        if entry.state.condition == SinkCondition::Failing {
            return false;
        }
        entry.state.condition = SinkCondition::Failing;
        let state = entry.state.clone();
        drop(sinks);
        self.incidents
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(SINK_FAILURES_METRIC, "sink" => state.sink.clone()).increment(1);
        tracing::error!(
            sink = %state.sink, kind = "sink_failure", error = %state.last_error,
            attempts = state.attempts, partitions = state.partitions.len(),
            "sink failing: nothing is committed past the records waiting for it"
        );
        self.notify(HealthEvent::Failing(state));
        true
    }

    /// A write to `sink` went through: the incident, if any, is over.
    pub fn succeeded(&self, sink: &str) {
        let mut sinks = self.sinks();
        // Fast path: nothing is wrong with this sink (the common case, on every batch).
        if sinks.is_empty() || !sinks.contains_key(sink) {
            return;
        }
        let Some(entry) = sinks.remove(sink) else {
            return;
        };
        drop(sinks);
        let after = entry.started.elapsed();
        if entry.state.condition == SinkCondition::Failing {
            metrics::gauge!(SINK_FAILING_METRIC, "sink" => sink.to_owned()).set(0.0);
            tracing::warn!(
                sink,
                kind = "sink_failure",
                after_ms = after.as_millis() as u64,
                "sink recovered"
            );
            self.notify(HealthEvent::Recovered {
                sink: sink.to_owned(),
                after,
            });
        } else {
            tracing::info!(
                sink,
                after_ms = after.as_millis() as u64,
                attempts = entry.state.attempts,
                "sink takes writes again after retries"
            );
        }
    }

    /// Reports sinks that a background task retries on its own (exactly once's `FlushRows`, tried
    /// again with every offset commit), called periodically with those failing `now` — each
    /// `(sink, partitions, error, failing since)` — and the names returned by the previous call:
    /// each is retrying, or failing once it has failed for `retry_timeout`; a sink of `before` not
    /// in `now` succeeded. Returns the names reported.
    pub fn report_background<'a>(
        &self,
        now: impl IntoIterator<Item = (String, &'a [Tp], &'a str, Instant)>,
        retry_timeout: Duration,
        before: &[String],
    ) -> Vec<String> {
        let mut reported = Vec::new();
        for (sink, partitions, error, since) in now {
            if since.elapsed() >= retry_timeout {
                self.failing(&sink, partitions, error);
            } else {
                self.retrying(&sink, partitions, error);
            }
            reported.push(sink);
        }
        for sink in before.iter().filter(|s| !reported.contains(s)) {
            self.succeeded(sink);
        }
        reported
    }

    /// Forgets partitions that are no longer assigned (their records wait for nothing here).
    pub fn release(&self, partitions: &[Tp]) {
        for entry in self.sinks().values_mut() {
            for tp in partitions {
                entry.state.partitions.remove(tp);
            }
        }
    }

    /// Every sink that is not healthy now, by name.
    pub fn snapshot(&self) -> Vec<SinkState> {
        self.sinks().values().map(|e| e.state.clone()).collect()
    }

    /// Sinks failing now (past `errors.retry_timeout_ms`).
    pub fn failing_now(&self) -> Vec<SinkState> {
        self.snapshot()
            .into_iter()
            .filter(|s| s.condition == SinkCondition::Failing)
            .collect()
    }

    /// Incidents that reached `Failing` since start.
    pub fn incidents(&self) -> u64 {
        self.incidents.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(h: &SinkHealth) -> Arc<Mutex<Vec<HealthEvent>>> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = Arc::clone(&events);
        h.subscribe(move |ev| e.lock().unwrap().push(ev.clone()));
        events
    }

    #[test]
    fn an_incident_is_alerted_once_when_failing_and_once_when_recovered() {
        let h = SinkHealth::default();
        let events = recorder(&h);
        let (p0, p1) = (Tp::new("t", 0), Tp::new("t", 1));
        h.retrying("bigquery ds.t", std::slice::from_ref(&p0), "HTTP 503");
        assert_eq!(h.snapshot()[0].condition, SinkCondition::Retrying);
        assert!(h.failing_now().is_empty());
        assert!(
            events.lock().unwrap().is_empty(),
            "retries alone are not alerted"
        );
        assert!(h.failing("bigquery ds.t", std::slice::from_ref(&p1), "HTTP 503 again"));
        assert!(!h.failing(
            "bigquery ds.t",
            std::slice::from_ref(&p1),
            "HTTP 503 once more"
        ));
        let now = h.failing_now();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].last_error, "HTTP 503 once more");
        assert_eq!(now[0].attempts, 3);
        assert_eq!(now[0].partitions, [p0, p1].into_iter().collect());
        h.succeeded("bigquery ds.t");
        h.succeeded("bigquery ds.t");
        assert!(h.snapshot().is_empty());
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(&events[0], HealthEvent::Failing(s) if s.sink == "bigquery ds.t"));
        assert!(
            matches!(&events[1], HealthEvent::Recovered { sink, .. } if sink == "bigquery ds.t")
        );
        assert_eq!(h.incidents(), 1);
    }

    #[test]
    fn a_retry_that_succeeds_before_the_timeout_is_not_an_incident() {
        let h = SinkHealth::default();
        let events = recorder(&h);
        h.retrying("dead-letter topic t.DLT", &[], "broker down");
        h.succeeded("dead-letter topic t.DLT");
        assert!(h.snapshot().is_empty());
        assert!(events.lock().unwrap().is_empty());
        assert_eq!(h.incidents(), 0);
    }

    #[test]
    fn sinks_are_kept_apart_and_revoked_partitions_released() {
        let h = SinkHealth::default();
        let p0 = Tp::new("t", 0);
        h.failing("bigquery ds.a", std::slice::from_ref(&p0), "404");
        h.retrying("bigquery ds.b", std::slice::from_ref(&p0), "503");
        h.succeeded("bigquery ds.b");
        assert_eq!(h.snapshot().len(), 1);
        h.release(&[p0]);
        assert!(h.snapshot()[0].partitions.is_empty());
    }
}
