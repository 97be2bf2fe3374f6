//! Flow control: records and bytes of one partition that were delivered to the pipeline and are not
//! settled yet. The Kafka poller adds what it delivers and pauses the partition at the limits (so
//! the bound holds at the source, whatever is queued in mailboxes); the partition consumer subtracts
//! what settles. The partition resumes below half the limits.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// In-flight bounds of one partition (`pipeline.max_inflight_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflightLimits {
    pub records: usize,
    pub bytes: usize,
}

/// Shared in-flight counters of one partition.
#[derive(Debug, Default)]
pub struct Inflight {
    records: AtomicUsize,
    bytes: AtomicUsize,
    /// Batches holding rows of this partition that wait to be retried (BigQuery failing).
    retrying: AtomicUsize,
}

/// What the poller should do with a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Pause,
    Resume,
    Keep,
}

impl Inflight {
    pub fn add(&self, records: usize, bytes: usize) {
        self.records.fetch_add(records, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    pub fn sub(&self, records: usize, bytes: usize) {
        // Saturating: a settlement can never push the counters below zero.
        let _ = self
            .records
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(records)));
        let _ = self
            .bytes
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(bytes)));
    }

    /// A batch with rows of this partition starts or stops waiting to be retried.
    pub fn set_retrying(&self, on: bool) {
        if on {
            self.retrying.fetch_add(1, Relaxed);
        } else {
            let _ = self
                .retrying
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        }
    }

    pub fn get(&self) -> (usize, usize) {
        (self.records.load(Relaxed), self.bytes.load(Relaxed))
    }

    /// Pause at the limits or while BigQuery retries rows of the partition; resume below half of
    /// the limits once no retry is pending.
    pub fn flow(&self, limits: InflightLimits, paused: bool) -> Flow {
        let (records, bytes) = self.get();
        let retrying = self.retrying.load(Relaxed) > 0;
        if !paused && (retrying || records >= limits.records || bytes >= limits.bytes) {
            Flow::Pause
        } else if paused && !retrying && records <= limits.records / 2 && bytes <= limits.bytes / 2
        {
            Flow::Resume
        } else {
            Flow::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InflightLimits = InflightLimits {
        records: 100,
        bytes: 1_000,
    };

    #[test]
    fn pauses_at_the_limit_and_resumes_below_half() {
        let f = Inflight::default();
        f.add(99, 10);
        assert_eq!(f.flow(LIMITS, false), Flow::Keep);
        f.add(1, 10);
        assert_eq!(f.flow(LIMITS, false), Flow::Pause);
        f.sub(49, 0);
        assert_eq!(f.flow(LIMITS, true), Flow::Keep, "51 records: above half");
        f.sub(1, 0);
        assert_eq!(f.flow(LIMITS, true), Flow::Resume);
    }

    #[test]
    fn bytes_alone_pause() {
        let f = Inflight::default();
        f.add(1, 1_000);
        assert_eq!(f.flow(LIMITS, false), Flow::Pause);
        f.sub(0, 600);
        assert_eq!(f.flow(LIMITS, true), Flow::Resume);
    }

    #[test]
    fn a_pending_retry_pauses_until_it_ends() {
        let f = Inflight::default();
        f.add(1, 1);
        f.set_retrying(true);
        assert_eq!(f.flow(LIMITS, false), Flow::Pause);
        assert_eq!(f.flow(LIMITS, true), Flow::Keep, "still retrying");
        f.set_retrying(false);
        assert_eq!(f.flow(LIMITS, true), Flow::Resume);
    }

    #[test]
    fn never_below_zero() {
        let f = Inflight::default();
        f.add(1, 1);
        f.sub(5, 5);
        assert_eq!(f.get(), (0, 0));
    }
}
