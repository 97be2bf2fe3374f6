//! Flow control: records and bytes that were delivered to the pipeline and are not settled yet.
//!
//! Two bounds hold at the source, whatever is queued in mailboxes:
//! - all partitions together ([`Intake`]): at the total limits the Kafka poller stops taking records
//!   from librdkafka, whose prefetch queue is bounded (`queued.max.messages.kbytes`) and simply
//!   stops fetching. Nothing is paused, so nothing prefetched is thrown away and fetched again.
//!   Should that last (the pipeline is stuck), every partition is paused instead, so the poller can
//!   keep serving the group (rebalances, `max.poll.interval.ms`) without taking records;
//! - each partition ([`Inflight`]): at its limits, or while BigQuery retries its rows, the poller
//!   pauses it, so one partition cannot hold the whole budget. It resumes below half the limits.
//!
//! The poller adds what it delivers; the partition consumer subtracts what settles.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

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

/// What the poller does next, by the records in flight of all partitions together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Take records.
    Poll,
    /// At the total limits: take nothing for now (serve commands, look again shortly).
    Wait,
    /// At the total limits for too long: pause every partition, then poll (nothing arrives).
    PauseAll,
    /// Below half the total limits again after [`Intake::PauseAll`]: partitions may resume.
    ResumeAll,
}

/// The process-wide bound (`pipeline.max_total_inflight_*`), see the module doc.
#[derive(Debug)]
pub struct TotalFlow {
    limits: InflightLimits,
    /// How long the limits may be reached before every partition is paused.
    stall: Duration,
    full_since: Option<Instant>,
    paused_all: bool,
}

impl TotalFlow {
    pub fn new(limits: InflightLimits, stall: Duration) -> Self {
        Self {
            limits,
            stall,
            full_since: None,
            paused_all: false,
        }
    }

    /// Every partition is paused by this bound (a partition must not resume on its own counts).
    pub fn paused_all(&self) -> bool {
        self.paused_all
    }

    /// The next step, given the `(records, bytes)` in flight over all partitions.
    pub fn step(&mut self, (records, bytes): (usize, usize), now: Instant) -> Intake {
        let l = self.limits;
        if self.paused_all {
            if records <= l.records / 2 && bytes <= l.bytes / 2 {
                self.paused_all = false;
                self.full_since = None;
                return Intake::ResumeAll;
            }
            return Intake::Poll;
        }
        if records < l.records && bytes < l.bytes {
            self.full_since = None;
            return Intake::Poll;
        }
        let since = *self.full_since.get_or_insert(now);
        if now.duration_since(since) >= self.stall {
            self.paused_all = true;
            Intake::PauseAll
        } else {
            Intake::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_limits_wait_then_pause_everything_until_below_half() {
        let stall = Duration::from_secs(1);
        let mut t = TotalFlow::new(LIMITS, stall);
        let t0 = Instant::now();
        assert_eq!(t.step((99, 999), t0), Intake::Poll);
        assert_eq!(t.step((100, 0), t0), Intake::Wait, "records at the limit");
        assert_eq!(t.step((0, 1_000), t0), Intake::Wait, "bytes at the limit");
        assert_eq!(
            t.step((60, 0), t0),
            Intake::Poll,
            "below again: take records"
        );
        assert_eq!(t.step((100, 0), t0), Intake::Wait, "the wait starts over");
        let later = t0 + stall / 2;
        assert_eq!(t.step((100, 0), later), Intake::Wait);
        assert!(!t.paused_all());
        assert_eq!(t.step((100, 0), t0 + stall), Intake::PauseAll);
        assert!(t.paused_all());
        assert_eq!(t.step((51, 0), t0 + stall), Intake::Poll, "above half");
        assert_eq!(t.step((50, 500), t0 + stall), Intake::ResumeAll);
        assert!(!t.paused_all());
        assert_eq!(t.step((50, 500), t0 + stall), Intake::Poll);
    }

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
