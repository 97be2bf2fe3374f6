//! The partition consumer: one per assigned partition. It registers every record it is given as in
//! flight, passes the chunk on to the converter, and counts acknowledgements back into its offset
//! tracker. It pauses its partition when too much is in flight and reports its commit offset to the
//! supervisor whenever it moves.

use std::sync::Arc;

use actix::prelude::*;

use crate::converter::ConvertActor;
use crate::kafka::KafkaControl;
use crate::messages::{Convert, Handled, HandledKind, Origin, Progress, RawChunk, Tp};
use crate::stage::offsets::OffsetTracker;
use crate::stats::Stats;

/// In-flight bounds of one partition (`pipeline.max_inflight_*`).
#[derive(Debug, Clone, Copy)]
pub struct InflightLimits {
    pub records: usize,
    pub bytes: usize,
}

pub struct ConsumerActor {
    tp: Tp,
    epoch: u64,
    tracker: OffsetTracker,
    origin: Option<Arc<Origin>>,
    converter: Addr<ConvertActor>,
    supervisor: Recipient<Progress>,
    kafka: Arc<dyn KafkaControl>,
    limits: InflightLimits,
    paused: bool,
    last_report: Option<Progress>,
    stats: Arc<Stats>,
}

impl ConsumerActor {
    pub fn new(
        tp: Tp,
        epoch: u64,
        converter: Addr<ConvertActor>,
        supervisor: Recipient<Progress>,
        kafka: Arc<dyn KafkaControl>,
        limits: InflightLimits,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            tp,
            epoch,
            tracker: OffsetTracker::new(),
            origin: None,
            converter,
            supervisor,
            kafka,
            limits,
            paused: false,
            last_report: None,
            stats,
        }
    }

    /// Pauses above the limits, resumes below half of them, and reports progress when it changed.
    fn after_change(&mut self) {
        let (records, bytes) = (
            self.tracker.inflight_records(),
            self.tracker.inflight_bytes(),
        );
        if !self.paused && (records >= self.limits.records || bytes >= self.limits.bytes) {
            tracing::debug!(tp = %self.tp, records, bytes, "in-flight limit reached, pausing");
            self.kafka.pause(&self.tp);
            self.paused = true;
        } else if self.paused
            && records <= self.limits.records / 2
            && bytes <= self.limits.bytes / 2
        {
            tracing::debug!(tp = %self.tp, records, bytes, "below half the in-flight limit, resuming");
            self.kafka.resume(&self.tp);
            self.paused = false;
        }
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
        self.origin = Some(Arc::new(Origin {
            tp: self.tp.clone(),
            ack: ctx.address().recipient(),
        }));
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
                false
            }
        });
        if records.is_empty() {
            return;
        }
        Stats::add(&self.stats.consumed, records.len());
        self.converter.do_send(Convert { origin, records });
        self.after_change();
    }
}

impl Handler<Handled> for ConsumerActor {
    type Result = ();

    fn handle(&mut self, msg: Handled, _: &mut Self::Context) {
        for offset in msg.offsets {
            match msg.kind {
                HandledKind::Done => self.tracker.handled(offset),
                HandledKind::Stuck => self.tracker.stuck(offset),
            };
        }
        self.after_change();
    }
}
