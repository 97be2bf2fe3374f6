//! Counters shared by the actors, read by the demo summary and tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::messages::Tp;

/// Pipeline-wide counters (monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    /// Records read from Kafka.
    pub consumed: AtomicU64,
    /// Rows BigQuery accepted.
    pub written: AtomicU64,
    /// Records dropped as duplicates.
    pub deduplicated: AtomicU64,
    /// Records reported as failed (any stage).
    pub failed: AtomicU64,
    /// insertAll requests that completed (each may have been retried).
    pub batches: AtomicU64,
    /// insertAll requests retried.
    pub retries: AtomicU64,
    /// Successful offset commits.
    pub commits: AtomicU64,
    /// Partitions assigned to this instance (over all rebalances).
    pub assigned: AtomicU64,
    /// Partitions revoked from this instance.
    pub revoked: AtomicU64,
    /// Rows of revoked partitions dropped unsent (read again by the next owner).
    pub abandoned: AtomicU64,
    /// Highest number of records in flight seen in one partition.
    pub peak_inflight_records: AtomicU64,
    /// Highest number of records in flight seen over all partitions (by the Kafka poller).
    pub peak_total_inflight_records: AtomicU64,
    /// Partition consumers restarted after they died or after their partition was rewound.
    pub restarts: AtomicU64,
    /// Partition consumers alive now (a gauge: started minus stopped). Once revoked partitions
    /// are let go it equals the number of assigned partitions.
    pub live_consumers: AtomicU64,
    /// Partitions paused (in-flight limit reached or BigQuery retrying) and resumed.
    pub pauses: AtomicU64,
    pub resumes: AtomicU64,
    /// Deliveries of failed records to an error destination (dead-letter topic, file) retried.
    pub report_retries: AtomicU64,
    /// The last failed record of each partition (for the admin API's status).
    pub last_errors: Mutex<HashMap<Tp, PartitionError>>,
    /// Destinations that cannot take anything right now (sink failures; see [`crate::health`]).
    pub health: crate::health::SinkHealth,
}

/// The last failure of a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionError {
    pub offset: i64,
    /// Stage, class and error text.
    pub error: String,
    pub at: SystemTime,
    /// The failure stopped the pipeline (`errors.tolerance = "none"`).
    pub fatal: bool,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub consumed: u64,
    pub written: u64,
    pub deduplicated: u64,
    pub failed: u64,
    pub batches: u64,
    pub retries: u64,
    pub commits: u64,
    pub assigned: u64,
    pub revoked: u64,
    pub abandoned: u64,
    pub peak_inflight_records: u64,
    pub peak_total_inflight_records: u64,
    pub restarts: u64,
    pub live_consumers: u64,
    pub pauses: u64,
    pub resumes: u64,
    pub report_retries: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    /// Lowers a gauge by one, never below zero.
    pub fn dec(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// Remembers a partition's latest failure.
    pub fn note_error(&self, tp: &Tp, error: PartitionError) {
        let mut errors = self.last_errors.lock().unwrap_or_else(|e| e.into_inner());
        // A fatal error stays: it explains why the pipeline stopped.
        if errors.get(tp).is_some_and(|e| e.fatal) {
            return;
        }
        errors.insert(tp.clone(), error);
    }

    /// Every partition's latest failure.
    pub fn errors(&self) -> HashMap<Tp, PartitionError> {
        self.last_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets failures (a restarted pipeline starts clean).
    pub fn clear_errors(&self) {
        self.last_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            consumed: self.consumed.load(Relaxed),
            written: self.written.load(Relaxed),
            deduplicated: self.deduplicated.load(Relaxed),
            failed: self.failed.load(Relaxed),
            batches: self.batches.load(Relaxed),
            retries: self.retries.load(Relaxed),
            commits: self.commits.load(Relaxed),
            assigned: self.assigned.load(Relaxed),
            revoked: self.revoked.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            peak_inflight_records: self.peak_inflight_records.load(Relaxed),
            peak_total_inflight_records: self.peak_total_inflight_records.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            live_consumers: self.live_consumers.load(Relaxed),
            pauses: self.pauses.load(Relaxed),
            resumes: self.resumes.load(Relaxed),
            report_retries: self.report_retries.load(Relaxed),
        }
    }
}
