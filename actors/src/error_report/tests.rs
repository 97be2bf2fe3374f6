//! The error report actor against fake destinations: what is logged, stored, acknowledged, stopped.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use super::*;
use crate::destinations::DeliveryError;
use crate::messages::{RawRecord, Stage, Tp};
use crate::testing::Acks;

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
