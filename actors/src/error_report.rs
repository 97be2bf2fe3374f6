//! The error report: every failed record becomes one structured ERROR log line with its topic,
//! partition, offset, stage and error (and, with `errors.log_include_messages`, its key and payload).
//! Under `errors.tolerance = "all"` the record then goes to the error destinations (dead-letter topic,
//! file, Slack) and counts as handled once every store among them has delivered it; under `"none"`
//! only the alerts hear of it, it is marked stuck (its offset is never committed) and the supervisor
//! is told to stop.
//!
//! A store that cannot take the records is a sink failure (see [`crate::destinations`]): the
//! records stay unacknowledged; under `errors.sink_failure = "stop"` the supervisor is told to stop
//! once the store is failing.
//!
//! Failures of a partition that was revoked meanwhile belong to its next owner, which reads the
//! records again from the last commit and fails them again: they are neither reported, stored nor
//! acknowledged here (else they would be dead-lettered twice).

use std::sync::Arc;

use actix::prelude::*;
use base64::Engine;

use crate::config::Tolerance;
use crate::destinations::{
    deliver_until_done, Delivery, DeliveryBackoff, ErrorDestination, FailureRecord, Role,
    SinkFailurePolicy,
};
use crate::messages::{acknowledge, Failed, Failure, Fatal, HandledKind, Origin};
use crate::stats::{PartitionError, Stats};

pub struct ErrorReportActor {
    pub tolerance: Tolerance,
    pub include_messages: bool,
    pub supervisor: Recipient<Fatal>,
    pub stats: Arc<Stats>,
    pub fatal_sent: bool,
    /// Where failed records go besides the log.
    pub destinations: Vec<Arc<dyn ErrorDestination>>,
    /// Waits between attempts to deliver to a store that failed.
    pub delivery_backoff: DeliveryBackoff,
    /// When a store that fails is failing, and whether the pipeline then stops
    /// (`errors.sink_failure`, `errors.retry_timeout_ms`).
    pub sink_failure: SinkFailurePolicy,
}

/// Bytes as text for a log line: UTF-8 when they are, base64 (prefixed `base64:`) when not.
pub fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

impl ErrorReportActor {
    fn log(&self, f: &Failure) {
        let tp = &f.origin.tp;
        // The producer's trace, from the record's `traceparent` header.
        let trace_id = crate::telemetry::trace_id_of(&f.source);
        if self.include_messages {
            let key = f.source.key.as_deref().map(printable);
            let payload = f.source.payload.as_deref().map(printable);
            tracing::error!(
                topic = %tp.topic, partition = tp.partition, offset = f.source.offset,
                kind = "record_failure", stage = f.stage.as_str(), class = f.class, error = %f.error,
                key = key.as_deref().unwrap_or(""), payload = payload.as_deref().unwrap_or(""),
                trace_id, "record failed"
            );
        } else {
            tracing::error!(
                topic = %tp.topic, partition = tp.partition, offset = f.source.offset,
                kind = "record_failure", stage = f.stage.as_str(), class = f.class, error = %f.error,
                trace_id, "record failed"
            );
        }
    }

    /// Tells every alert destination, without waiting.
    fn alert(&self, records: &Arc<[FailureRecord]>, ctx: &mut Context<Self>) {
        for d in self.destinations.iter().filter(|d| d.role() == Role::Alert) {
            let name = d.name();
            let fut = d.deliver(Arc::clone(records));
            ctx.spawn(
                async move {
                    if let Err(e) = fut.await {
                        tracing::warn!(destination = name, error = %e, "alert not delivered");
                    }
                }
                .into_actor(self),
            );
        }
    }

    /// Delivers to every store (retrying until they take them), then acknowledges the records.
    fn store_then_ack(&self, records: Arc<[FailureRecord]>, acks: Acks, ctx: &mut Context<Self>) {
        let stores: Vec<_> = self
            .destinations
            .iter()
            .filter(|d| d.role() == Role::Store)
            .cloned()
            .collect();
        if stores.is_empty() {
            acknowledge(acks.iter().map(|(o, off)| (o, *off)), HandledKind::Done);
            return;
        }
        let deliveries = stores.into_iter().map(|d| {
            deliver_until_done(
                d,
                Arc::clone(&records),
                self.delivery_backoff,
                self.sink_failure,
                Arc::clone(&self.stats),
            )
        });
        let all = futures::future::join_all(deliveries);
        ctx.spawn(all.into_actor(self).map(move |outcomes, act, _| {
            let stopped = outcomes.into_iter().find_map(|o| match o {
                Delivery::Delivered => None,
                Delivery::Stopped { sink, error } => Some((sink, error)),
            });
            match stopped {
                None => acknowledge(acks.iter().map(|(o, off)| (o, *off)), HandledKind::Done),
                // Not acknowledged: the commit stays at the first of these records.
                Some((sink, error)) => act.fatal(format!(
                    "{sink} is failing: {error}; errors.sink_failure = \"stop\""
                )),
            }
        }));
    }

    /// Tells the supervisor to stop, once.
    fn fatal(&mut self, reason: String) {
        if !self.fatal_sent {
            self.fatal_sent = true;
            self.supervisor.do_send(Fatal { reason });
        }
    }
}

/// Records to acknowledge: their partition consumer and offset.
type Acks = Vec<(Arc<Origin>, i64)>;

/// Splits failures into what is acknowledged and what the destinations get.
fn split(failures: Vec<Failure>) -> (Acks, Arc<[FailureRecord]>) {
    let mut acks = Vec::with_capacity(failures.len());
    let mut records = Vec::with_capacity(failures.len());
    for f in failures {
        acks.push((Arc::clone(&f.origin), f.source.offset));
        records.push(FailureRecord {
            tp: f.origin.tp.clone(),
            source: f.source,
            stage: f.stage,
            class: f.class,
            error: f.error,
        });
    }
    (acks, records.into())
}

impl Actor for ErrorReportActor {
    type Context = Context<Self>;
}

impl Handler<Failed> for ErrorReportActor {
    type Result = ();

    fn handle(&mut self, mut msg: Failed, ctx: &mut Self::Context) {
        let before = msg.failures.len();
        msg.failures.retain(|f| !f.origin.is_revoked());
        if msg.failures.len() < before {
            tracing::info!(
                failures = before - msg.failures.len(),
                "failures of revoked partitions are left to their next owner (it reads them again)"
            );
        }
        if msg.failures.is_empty() {
            return;
        }
        Stats::add(&self.stats.failed, msg.failures.len());
        crate::telemetry::failed(&msg.failures);
        for f in &msg.failures {
            self.log(f);
            self.stats.note_error(
                &f.origin.tp,
                PartitionError {
                    offset: f.source.offset,
                    error: format!("{} ({}): {}", f.stage.as_str(), f.class, f.error),
                    at: std::time::SystemTime::now(),
                    fatal: self.tolerance == Tolerance::None,
                },
            );
        }
        match self.tolerance {
            Tolerance::All => {
                let (acks, records) = split(msg.failures);
                self.alert(&records, ctx);
                self.store_then_ack(records, acks, ctx);
            }
            Tolerance::None => {
                let records = msg.failures.iter().map(|f| (&f.origin, f.source.offset));
                acknowledge(records, HandledKind::Stuck);
                if let Some(f) = msg.failures.first() {
                    let reason =
                        format!(
                        "record {} offset {} failed at {} ({}): {}; errors.tolerance = \"none\"",
                        f.origin.tp, f.source.offset, f.stage.as_str(), f.class, f.error
                    );
                    self.fatal(reason);
                }
                // Not dead-lettered (the record is read again after a restart), but alerted.
                let (_, records) = split(msg.failures);
                self.alert(&records, ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests;
