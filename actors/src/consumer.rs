//! The partition consumer: one per assigned partition. It registers every record it is given as in
//! flight, passes the chunk on to the converter, and counts acknowledgements back into its offset
//! tracker, releasing the partition's in-flight budget (see [`crate::stage::flow`]), and reports its
//! commit offset to the supervisor whenever it moves.
//!
//! Lifecycle. A consumer lives exactly as long as the supervisor holds its partition: when the
//! partition is revoked or its consumer replaced, the supervisor marks the origin revoked (nothing
//! of it is written any more) and sends [`Retire`], and the consumer stops, even though records in
//! flight still hold its address in their [`Origin`]; their acknowledgements are then dropped,
//! which is right, as their rows are abandoned. A chunk that arrives once the origin is revoked is
//! dropped, and a chunk that goes backwards (the log changed under the reader, see
//! [`crate::stage::offsets`]) is never skipped: the consumer stops taking records and asks the
//! supervisor ([`Rewound`]) to read the partition again from where it must.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::messages::{Convert, Handled, HandledKind, Origin, Progress, RawChunk, RawRecord, Tp};
use crate::stage::flow::Inflight;
use crate::stage::offsets::OffsetTracker;
use crate::stats::Stats;
use crate::telemetry;

/// Where a partition consumer reports to (its supervisor).
pub struct Supervisor {
    pub progress: Recipient<Progress>,
    pub rewound: Recipient<Rewound>,
}

pub struct ConsumerActor {
    tp: Tp,
    epoch: u64,
    tracker: OffsetTracker,
    origin: Option<Arc<Origin>>,
    revoked: Arc<AtomicBool>,
    /// Shared with the poller, which adds what it delivers and pauses the partition at the limits.
    inflight: Arc<Inflight>,
    converter: Recipient<Convert>,
    supervisor: Supervisor,
    last_report: Option<Progress>,
    stats: Arc<Stats>,
    live: Option<Live>,
}

impl ConsumerActor {
    pub fn new(
        tp: Tp,
        epoch: u64,
        revoked: Arc<AtomicBool>,
        inflight: Arc<Inflight>,
        converter: Recipient<Convert>,
        supervisor: Supervisor,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            tp,
            epoch,
            tracker: OffsetTracker::new(),
            origin: None,
            revoked,
            inflight,
            converter,
            supervisor,
            last_report: None,
            stats,
            live: None,
        }
    }

    /// Reports progress to the supervisor when it changed.
    fn after_change(&mut self) {
        let (records, bytes) = (
            self.tracker.inflight_records(),
            self.tracker.inflight_bytes(),
        );
        self.stats
            .peak_inflight_records
            .fetch_max(records as u64, std::sync::atomic::Ordering::Relaxed);
        let progress = Progress {
            tp: self.tp.clone(),
            epoch: self.epoch,
            commit_offset: self.tracker.commit_offset(),
            inflight_records: records,
            inflight_bytes: bytes,
        };
        if self.last_report.as_ref() != Some(&progress) {
            self.supervisor.progress.do_send(progress.clone());
            self.last_report = Some(progress);
        }
    }
}

impl Actor for ConsumerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.origin = Some(Arc::new(Origin::new(
            self.tp.clone(),
            ctx.address().recipient(),
            Arc::clone(&self.revoked),
            Arc::clone(&self.inflight),
        )));
        self.live = Some(Live::new(Arc::clone(&self.stats)));
    }
}

/// Counts a running partition consumer in [`Stats::live_consumers`] from `started` until the actor
/// is dropped (stopped, or unwound by a panic).
struct Live(Arc<Stats>);

impl Live {
    fn new(stats: Arc<Stats>) -> Self {
        Stats::add(&stats.live_consumers, 1);
        Self(stats)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        Stats::dec(&self.0.live_consumers);
    }
}

impl Handler<RawChunk> for ConsumerActor {
    type Result = ();

    fn handle(&mut self, chunk: RawChunk, _: &mut Self::Context) {
        let records = chunk.records;
        let origin = match &self.origin {
            Some(origin) if !origin.is_revoked() => Arc::clone(origin),
            // Revoked (or being read again elsewhere): the next owner reads these records.
            _ => return self.drop_chunk(&records),
        };
        if let Some(from) = self.tracker.rewind_point(records.iter().map(|r| r.offset)) {
            tracing::warn!(
                tp = %self.tp,
                from,
                offset = records.first().map(|r| r.offset),
                commit_offset = ?self.tracker.commit_offset(),
                "partition offsets went backwards (log truncated or offset reset): it is read again from {from}"
            );
            // Nothing more of this consumer is written; the supervisor starts the next one.
            self.revoked.store(true, Ordering::Relaxed);
            self.drop_chunk(&records);
            self.supervisor.rewound.do_send(Rewound {
                tp: self.tp.clone(),
                epoch: self.epoch,
                from,
            });
            return;
        }
        let mut bytes = 0;
        for r in &records {
            bytes += r.size();
            // `rewind_point` found the chunk increasing: registering cannot fail.
            if let Err(e) = self.tracker.read(r.offset, r.size()) {
                tracing::error!(tp = %self.tp, error = %e, "offset tracking out of step");
            }
        }
        if records.is_empty() {
            return;
        }
        Stats::add(&self.stats.consumed, records.len());
        telemetry::count(telemetry::names::CONSUMED, &self.tp, records.len());
        metrics::counter!(telemetry::names::BYTES_CONSUMED, "topic" => Arc::clone(&self.tp.topic))
            .increment(bytes as u64);
        let span = telemetry::poll_span(&self.tp, &records);
        self.converter.do_send(Convert {
            origin,
            records,
            span,
        });
        self.after_change();
    }
}

impl ConsumerActor {
    /// Takes a chunk that will not be read here out of the partition's in-flight budget.
    fn drop_chunk(&self, records: &[RawRecord]) {
        let bytes = records.iter().map(RawRecord::size).sum();
        self.inflight.sub(records.len(), bytes);
    }
}

impl Handler<Handled> for ConsumerActor {
    type Result = ();

    fn handle(&mut self, msg: Handled, _: &mut Self::Context) {
        let before = (
            self.tracker.inflight_records(),
            self.tracker.inflight_bytes(),
        );
        for offset in msg.offsets {
            match msg.kind {
                HandledKind::Done => self.tracker.handled(offset),
                HandledKind::Stuck => self.tracker.stuck(offset),
            };
        }
        let after = (
            self.tracker.inflight_records(),
            self.tracker.inflight_bytes(),
        );
        self.inflight.sub(before.0 - after.0, before.1 - after.1);
        self.after_change();
    }
}

/// The partition is no longer this consumer's (revoked, or its consumer replaced): stop
/// (supervisor → partition consumer).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for ConsumerActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        tracing::debug!(tp = %self.tp, epoch = self.epoch, "partition consumer stops");
        ctx.stop();
    }
}

/// The partition's offsets went backwards: read it again from `from` with a new consumer, and let
/// its commit move back there (partition consumer → supervisor).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Rewound {
    pub tp: Tp,
    /// The incarnation that saw it (a later one ignores it).
    pub epoch: u64,
    pub from: i64,
}

/// Makes the consumer panic, to test supervision.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Die;

#[cfg(test)]
impl Handler<Die> for ConsumerActor {
    type Result = ();

    fn handle(&mut self, _: Die, _: &mut Self::Context) {
        panic!("injected partition consumer failure");
    }
}
