//! The partition consumer: one per assigned partition. It registers every record it is given as in
//! flight, passes the chunk on to the converter, and counts acknowledgements back into its offset
//! tracker, releasing the partition's in-flight budget (see [`crate::stage::flow`]), and reports its
//! commit offset to the supervisor whenever it moves.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::prelude::*;

use crate::converter::ConvertActor;
use crate::messages::{Convert, Handled, HandledKind, Origin, Progress, RawChunk, Tp};
use crate::stage::flow::Inflight;
use crate::stage::offsets::OffsetTracker;
use crate::stats::Stats;
use crate::telemetry;

pub struct ConsumerActor {
    tp: Tp,
    epoch: u64,
    tracker: OffsetTracker,
    origin: Option<Arc<Origin>>,
    revoked: Arc<AtomicBool>,
    /// Shared with the poller, which adds what it delivers and pauses the partition at the limits.
    inflight: Arc<Inflight>,
    converter: Addr<ConvertActor>,
    supervisor: Recipient<Progress>,
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
        converter: Addr<ConvertActor>,
        supervisor: Recipient<Progress>,
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
            self.supervisor.do_send(progress.clone());
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
        let Some(origin) = self.origin.clone() else {
            return;
        };
        let mut records = chunk.records;
        records.retain(|r| match self.tracker.read(r.offset, r.size()) {
            Ok(()) => true,
            Err(e) => {
                // A record delivered twice to the same consumer: the first copy is already in flight.
                tracing::warn!(tp = %self.tp, error = %e, "skipping record delivered twice");
                self.inflight.sub(1, r.size());
                false
            }
        });
        if records.is_empty() {
            return;
        }
        Stats::add(&self.stats.consumed, records.len());
        telemetry::count(telemetry::names::CONSUMED, &self.tp, records.len());
        let span = telemetry::poll_span(&self.tp, &records);
        self.converter.do_send(Convert {
            origin,
            records,
            span,
        });
        self.after_change();
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
