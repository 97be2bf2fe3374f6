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
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use futures::future::BoxFuture;

    use super::*;
    use crate::destinations::DeliveryError;
    use crate::messages::{Handled, RawRecord, Stage, Tp};

    /// Collects acknowledgements, like a partition consumer.
    type Seen = Arc<Mutex<Vec<(Vec<i64>, HandledKind)>>>;
    struct Acks(Seen);
    impl Actor for Acks {
        type Context = Context<Self>;
    }
    impl Handler<Handled> for Acks {
        type Result = ();
        fn handle(&mut self, msg: Handled, _: &mut Self::Context) {
            self.0.lock().unwrap().push((msg.offsets, msg.kind));
        }
    }

    /// A supervisor that records why it was told to stop.
    struct Supervisor(Arc<Mutex<Vec<String>>>);
    impl Actor for Supervisor {
        type Context = Context<Self>;
    }
    impl Handler<Fatal> for Supervisor {
        type Result = ();
        fn handle(&mut self, msg: Fatal, _: &mut Self::Context) {
            self.0.lock().unwrap().push(msg.reason);
        }
    }

    /// A store that fails until opened, and an alert that records what it was told.
    struct Gated {
        role: Role,
        open: Arc<std::sync::atomic::AtomicBool>,
        seen: Arc<Mutex<Vec<i64>>>,
    }
    impl ErrorDestination for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }
        fn role(&self) -> Role {
            self.role
        }
        fn deliver(
            &self,
            records: Arc<[FailureRecord]>,
        ) -> BoxFuture<'static, Result<(), DeliveryError>> {
            let open = self.open.load(std::sync::atomic::Ordering::SeqCst);
            if open {
                self.seen
                    .lock()
                    .unwrap()
                    .extend(records.iter().map(|r| r.source.offset));
            }
            let n = records.len();
            Box::pin(async move {
                if open {
                    Ok(())
                } else {
                    Err(DeliveryError::all(n, "closed"))
                }
            })
        }
    }

    /// An error report with one store (delivering while `store_open`) and one alert, each
    /// recording the offsets it received.
    fn report_with(
        tolerance: Tolerance,
        stats: Arc<Stats>,
        store_open: Arc<std::sync::atomic::AtomicBool>,
        stored: Arc<Mutex<Vec<i64>>>,
        alerted: Arc<Mutex<Vec<i64>>>,
    ) -> Addr<ErrorReportActor> {
        report_stopping_into(
            tolerance,
            SinkFailurePolicy::default(),
            Arc::default(),
            stats,
            store_open,
            stored,
            alerted,
        )
    }

    /// [`report_with`], with a sink-failure policy and a supervisor recording `Fatal` reasons.
    fn report_stopping_into(
        tolerance: Tolerance,
        sink_failure: SinkFailurePolicy,
        fatal: Arc<Mutex<Vec<String>>>,
        stats: Arc<Stats>,
        store_open: Arc<std::sync::atomic::AtomicBool>,
        stored: Arc<Mutex<Vec<i64>>>,
        alerted: Arc<Mutex<Vec<i64>>>,
    ) -> Addr<ErrorReportActor> {
        ErrorReportActor {
            tolerance,
            include_messages: false,
            supervisor: Supervisor(fatal).start().recipient(),
            stats,
            fatal_sent: false,
            destinations: vec![
                Arc::new(Gated {
                    role: Role::Store,
                    open: store_open,
                    seen: stored,
                }),
                Arc::new(Gated {
                    role: Role::Alert,
                    open: Arc::new(true.into()),
                    seen: alerted,
                }),
            ],
            delivery_backoff: DeliveryBackoff {
                min_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(10),
            },
            sink_failure,
        }
        .start()
    }

    fn failures(origin: &Arc<Origin>, offsets: &[i64]) -> Failed {
        Failed {
            failures: offsets
                .iter()
                .map(|&offset| Failure {
                    origin: Arc::clone(origin),
                    source: RawRecord {
                        offset,
                        payload: Some(b"x".to_vec()),
                        ..Default::default()
                    },
                    stage: Stage::Convert,
                    class: "invalid_json",
                    error: "bad".into(),
                })
                .collect(),
        }
    }

    #[actix::test]
    async fn records_are_acknowledged_only_after_every_store_delivered_them() {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let origin = Arc::new(Origin::new(
            Tp::new("t", 0),
            Acks(Arc::clone(&acks)).start().recipient(),
            Arc::default(),
            Arc::default(),
        ));
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let alerted = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let report = report_with(
            Tolerance::All,
            Arc::clone(&stats),
            Arc::clone(&open),
            Arc::clone(&stored),
            Arc::clone(&alerted),
        );
        report.send(failures(&origin, &[3, 4])).await.unwrap();
        // The store keeps failing: the records are retried, alerted, but never acknowledged.
        while stats.snapshot().report_retries < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            acks.lock().unwrap().is_empty(),
            "acknowledged before stored"
        );
        assert_eq!(*alerted.lock().unwrap(), vec![3, 4]);
        open.store(true, std::sync::atomic::Ordering::SeqCst);
        while acks.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*acks.lock().unwrap(), vec![(vec![3, 4], HandledKind::Done)]);
        assert_eq!(*stored.lock().unwrap(), vec![3, 4], "stored exactly once");
    }

    #[actix::test]
    async fn under_sink_failure_stop_a_failing_store_stops_the_pipeline_and_acknowledges_nothing() {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let origin = Arc::new(Origin::new(
            Tp::new("t", 0),
            Acks(Arc::clone(&acks)).start().recipient(),
            Arc::default(),
            Arc::default(),
        ));
        let fatal = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let report = report_stopping_into(
            Tolerance::All,
            SinkFailurePolicy {
                on_failure: crate::config::SinkFailure::Stop,
                retry_timeout: Duration::from_millis(30),
            },
            Arc::clone(&fatal),
            Arc::clone(&stats),
            Arc::new(false.into()),
            Arc::default(),
            Arc::default(),
        );
        report.send(failures(&origin, &[3])).await.unwrap();
        report.send(failures(&origin, &[4])).await.unwrap();
        while fatal.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Both deliveries give up; the supervisor hears of it once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reasons = fatal.lock().unwrap();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("gated is failing: closed")
                && reasons[0].contains("errors.sink_failure = \"stop\""),
            "{reasons:?}"
        );
        assert!(acks.lock().unwrap().is_empty(), "acknowledged");
        assert_eq!(stats.health.failing_now()[0].sink, "gated");
    }

    #[actix::test]
    async fn failures_of_a_revoked_partition_are_left_to_its_next_owner() {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let origin = Arc::new(Origin::new(
            Tp::new("t", 0),
            Acks(Arc::clone(&acks)).start().recipient(),
            Arc::new(std::sync::atomic::AtomicBool::new(true)),
            Arc::default(),
        ));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let alerted = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let report = report_with(
            Tolerance::All,
            Arc::clone(&stats),
            Arc::new(true.into()),
            Arc::clone(&stored),
            Arc::clone(&alerted),
        );
        report.send(failures(&origin, &[7, 8])).await.unwrap();
        // An open store delivers and acknowledges within a few ms; give it ample time.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            stored.lock().unwrap().is_empty(),
            "dead-lettered by the old owner (the new owner reads and dead-letters them again)"
        );
        assert!(acks.lock().unwrap().is_empty(), "acknowledged");
        assert!(alerted.lock().unwrap().is_empty(), "alerted twice");
        assert_eq!(stats.snapshot().failed, 0, "counted twice");
    }

    #[actix::test]
    async fn under_tolerance_none_records_are_stuck_alerted_and_not_stored() {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let origin = Arc::new(Origin::new(
            Tp::new("t", 0),
            Acks(Arc::clone(&acks)).start().recipient(),
            Arc::default(),
            Arc::default(),
        ));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let alerted = Arc::new(Mutex::new(Vec::new()));
        let report = report_with(
            Tolerance::None,
            Arc::new(Stats::default()),
            Arc::new(true.into()),
            Arc::clone(&stored),
            Arc::clone(&alerted),
        );
        report.send(failures(&origin, &[7])).await.unwrap();
        while acks.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*acks.lock().unwrap(), vec![(vec![7], HandledKind::Stuck)]);
        assert_eq!(*alerted.lock().unwrap(), vec![7]);
        assert!(stored.lock().unwrap().is_empty());
    }
}
