//! Actor-level tests of the supervisor and its partition consumers, on the whole pipeline
//! ([`crate::pipeline::start`]) with a fake Kafka port and fake BigQuery.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use super::*;
use crate::bigquery::{BigQuery, BqError, InsertAllResponse};
use crate::consumer::Die;
use crate::kafka::CommitError;
use crate::messages::RawRecord;
use crate::stage::transform::TableRef;
use futures::future::BoxFuture;

type Route = (Recipient<RawChunk>, Arc<Inflight>);

/// Records commits and restarts (with the new route, so a test can play the re-read).
#[derive(Default)]
struct FakeKafka {
    restarts: Mutex<Vec<(Tp, Option<i64>)>>,
    restarted_routes: Mutex<Vec<Route>>,
    commits: Mutex<Vec<(Tp, i64)>>,
}

impl FakeKafka {
    fn last_commit(&self, tp: &Tp) -> Option<i64> {
        let commits = self.commits.lock().unwrap();
        commits.iter().rev().find(|(t, _)| t == tp).map(|(_, o)| *o)
    }
}

impl KafkaControl for FakeKafka {
    fn commit(&self, offsets: Vec<(Tp, i64)>) -> BoxFuture<'static, Result<(), CommitError>> {
        self.commits.lock().unwrap().extend(offsets);
        Box::pin(async { Ok(()) })
    }
    fn pause(&self, _: &Tp) {}
    fn resume(&self, _: &Tp) {}
    fn restart_partition(
        &self,
        tp: &Tp,
        from: Option<i64>,
        to: Recipient<RawChunk>,
        inflight: Arc<Inflight>,
    ) {
        self.restarts.lock().unwrap().push((tp.clone(), from));
        self.restarted_routes.lock().unwrap().push((to, inflight));
    }
    fn stop_reading(&self) {}
    fn close(&self) {}
}

/// Accepts every row and keeps each row's `json` object.
#[derive(Default, Clone)]
struct Recording(Arc<Mutex<Vec<serde_json::Value>>>);

impl Recording {
    /// The `event_id` of every row written, in order (one entry per row: duplicates show).
    fn ids(&self) -> Vec<String> {
        let rows = self.0.lock().unwrap();
        rows.iter()
            .filter_map(|r| r["event_id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl BigQuery for Recording {
    fn insert_all(
        &self,
        _: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(rows) = parsed["rows"].as_array() {
            let mut kept = self.0.lock().unwrap();
            kept.extend(rows.iter().map(|r| r["json"].clone()));
        }
        Box::pin(async { Ok(InsertAllResponse::default()) })
    }
}

#[derive(Message)]
#[rtype(result = "Option<Addr<ConsumerActor>>")]
struct ConsumerOf(Tp);

impl Handler<ConsumerOf> for SupervisorActor {
    type Result = Option<Addr<ConsumerActor>>;
    fn handle(&mut self, msg: ConsumerOf, _: &mut Self::Context) -> Self::Result {
        self.partitions.get(&msg.0).map(|p| p._addr.clone())
    }
}

fn config() -> crate::config::Config {
    let mut config = crate::config::Config::default();
    config.kafka.topics = vec!["t".into()];
    config.kafka.commit_interval_ms = 20;
    config.bigquery.project = "p".into();
    config.bigquery.dataset = "d".into();
    config.batch.linger_ms = 5;
    config
}

/// Records at `offsets` with payloads `{"event_id":"<prefix><offset>"}`.
fn records(offsets: std::ops::Range<i64>, prefix: &str) -> Vec<RawRecord> {
    offsets
        .map(|o| RawRecord {
            offset: o,
            payload: Some(format!(r#"{{"event_id":"{prefix}{o}"}}"#).into_bytes()),
            ..Default::default()
        })
        .collect()
}

/// Delivers a chunk as the Kafka poller does: counted in flight first, then sent.
fn deliver(route: &Route, records: Vec<RawRecord>) {
    let bytes = records.iter().map(RawRecord::size).sum();
    route.1.add(records.len(), bytes);
    route.0.do_send(RawChunk { records });
}

/// Waits up to `ms` for `done`; returns whether it happened.
async fn wait_for(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        actix_rt_sleep(10).await;
    }
    true
}

async fn actix_rt_sleep(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[test]
fn restart_backoff_doubles_and_is_capped() {
    assert_eq!(restart_backoff(0), Duration::from_millis(100));
    assert_eq!(restart_backoff(3), Duration::from_millis(800));
    assert_eq!(restart_backoff(40), Duration::from_secs(30));
}

#[test]
fn a_dead_partition_consumer_is_restarted_from_its_first_unhandled_offset() {
    let system = System::new();
    let kafka = Arc::new(FakeKafka::default());
    let stats = Arc::new(Stats::default());
    let config = config();
    let (k, s) = (Arc::clone(&kafka), Arc::clone(&stats));
    system.block_on(async move {
        let sup = crate::pipeline::start(&config, k, Arc::new(Recording::default()), s.clone());
        let tp = Tp::new("t", 0);
        let routes = sup
            .send(Assigned {
                tps: vec![tp.clone()],
                warmup: vec![],
            })
            .await
            .unwrap();
        deliver(&routes[0], records(0..3, "e"));
        while s.written.load(Relaxed) < 3 {
            actix_rt_sleep(10).await;
        }
        actix_rt_sleep(50).await;
        let first = sup.send(ConsumerOf(tp.clone())).await.unwrap().unwrap();
        first.do_send(Die);
        // Detection, then the first restart after 100 ms of backoff.
        let deadline = Instant::now() + Duration::from_secs(3);
        let second = loop {
            actix_rt_sleep(50).await;
            let now = sup.send(ConsumerOf(tp.clone())).await.unwrap().unwrap();
            if now.connected() || Instant::now() >= deadline {
                break now;
            }
        };
        assert!(!first.connected(), "the first consumer died");
        assert!(second.connected(), "a new consumer runs");
    });
    assert_eq!(
        *kafka.restarts.lock().unwrap(),
        vec![(Tp::new("t", 0), Some(3))],
        "restarted from offset 3"
    );
    assert_eq!(stats.snapshot().restarts, 1);
}

#[test]
fn consumers_of_revoked_partitions_stop() {
    let system = System::new();
    let stats = Arc::new(Stats::default());
    let s = Arc::clone(&stats);
    system.block_on(async move {
        let kafka = Arc::new(FakeKafka::default());
        let sup =
            crate::pipeline::start(&config(), kafka, Arc::new(Recording::default()), s.clone());
        let kept = Tp::new("t", 1);
        let _kept_routes = sup
            .send(Assigned {
                tps: vec![kept],
                warmup: vec![],
            })
            .await
            .unwrap();
        let tp = Tp::new("t", 0);
        for round in 0..20 {
            let tps = vec![tp.clone()];
            let routes = sup
                .send(Assigned {
                    tps: tps.clone(),
                    warmup: vec![],
                })
                .await
                .unwrap();
            deliver(&routes[0], records(round * 2..round * 2 + 2, "e"));
            // As the poller does: wait (bounded) until nothing is in flight, then let go.
            let drained = wait_for(2_000, || routes[0].1.get().0 == 0).await;
            assert!(drained, "round {round}: the records were handled");
            assert_eq!(sup.send(Revoking { tps: tps.clone() }).await.unwrap(), 0);
            sup.send(Revoked { tps }).await.unwrap();
            drop(routes); // The poller forgets the route in pre_rebalance.
        }
        wait_for(2_000, || s.live_consumers.load(Relaxed) == 1).await;
        assert_eq!(
            s.live_consumers.load(Relaxed),
            1,
            "only the consumer of the one partition still assigned runs (20 assign/revoke rounds)"
        );
        assert_eq!(s.written.load(Relaxed), 40, "every record was written");
    });
}

#[test]
fn a_revoke_counts_records_still_in_a_consumer_mailbox_and_writes_none_of_them_later() {
    let system = System::new();
    let bq = Recording::default();
    let finals = system.block_on({
        let bq = bq.clone();
        async move {
            let kafka = Arc::new(FakeKafka::default());
            let stats = Arc::new(Stats::default());
            let sup = crate::pipeline::start(&config(), kafka, Arc::new(bq), stats);
            let tp = Tp::new("t", 0);
            let tps = vec![tp.clone()];
            let routes = sup
                .send(Assigned {
                    tps: tps.clone(),
                    warmup: vec![],
                })
                .await
                .unwrap();
            // Delivered (counted by the poller) but not yet handled by the consumer.
            deliver(&routes[0], records(0..3, "e"));
            let inflight = sup.send(Revoking { tps: tps.clone() }).await.unwrap();
            assert_eq!(
                inflight, 3,
                "Revoking counts the chunk still in the mailbox"
            );
            // The revoke timeout passed: the partition is let go now.
            let finals = sup.send(Revoked { tps }).await.unwrap();
            actix_rt_sleep(300).await;
            finals
        }
    });
    let covered = finals.iter().map(|(_, o)| *o).max().unwrap_or(0);
    let late: Vec<String> = bq
        .ids()
        .into_iter()
        .filter(|id| id[1..].parse::<i64>().is_ok_and(|o| o >= covered))
        .collect();
    assert!(
        late.is_empty(),
        "rows written after Revoked returned without a final commit covering them \
         (final commit {finals:?}): {late:?}; the next owner writes them again"
    );
}

#[test]
fn a_partition_read_again_from_an_earlier_offset_is_written_again_and_committed_from_there() {
    let system = System::new();
    let bq = Recording::default();
    let kafka = Arc::new(FakeKafka::default());
    let stats = Arc::new(Stats::default());
    let tp = Tp::new("t", 0);
    system.block_on({
        let (bq, kafka, tp) = (bq.clone(), Arc::clone(&kafka), tp.clone());
        async move {
            let k: Arc<dyn KafkaControl> = Arc::clone(&kafka) as _;
            let sup = crate::pipeline::start(&config(), k, Arc::new(bq.clone()), stats);
            let routes = sup
                .send(Assigned {
                    tps: vec![tp.clone()],
                    warmup: vec![],
                })
                .await
                .unwrap();
            deliver(&routes[0], records(0..10, "e"));
            let committed = wait_for(3_000, || kafka.last_commit(&tp) == Some(10)).await;
            assert!(committed, "offsets 0..9 written and committed");
            // The log was truncated at 3 (unclean leader election) and new records written
            // there: the partition is read again from 3.
            deliver(&routes[0], records(3..6, "n"));
            // The poller seeks a restarted partition to its new start: play that re-read.
            let restarted =
                wait_for(1_000, || !kafka.restarted_routes.lock().unwrap().is_empty()).await;
            if restarted {
                let route = kafka.restarted_routes.lock().unwrap()[0].clone();
                deliver(&route, records(3..6, "n"));
            }
            wait_for(2_000, || bq.ids().len() >= 13).await;
            wait_for(1_000, || kafka.last_commit(&tp) == Some(6)).await;
        }
    });
    let mut ids = bq.ids();
    ids.sort();
    let mut expected: Vec<String> = (0..10).map(|o| format!("e{o}")).collect();
    expected.extend((3..6).map(|o| format!("n{o}")));
    expected.sort();
    assert_eq!(
        ids, expected,
        "each old record once, and the new records at 3..5 once"
    );
    assert_eq!(
        kafka.last_commit(&tp),
        Some(6),
        "the commit moved back to the new records"
    );
    assert_eq!(*kafka.restarts.lock().unwrap(), vec![(tp, Some(3))]);
}

/// Per partition, how many write requests were in flight at once; each request is held 30 ms.
#[derive(Default, Clone)]
struct Lanes(Arc<Mutex<LaneCounts>>);

#[derive(Default)]
struct LaneCounts {
    now: HashMap<i32, usize>,
    most_per_partition: usize,
    most_partitions: usize,
}

impl BigQuery for Lanes {
    fn write_rows(
        &self,
        _: &TableRef,
        _: &[crate::stage::proto::RowData<'_>],
        sources: &[(Tp, i64)],
        _: crate::stage::batch::InsertOptions,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let mut partitions: Vec<i32> = sources.iter().map(|(tp, _)| tp.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        {
            let mut c = self.0.lock().unwrap();
            for p in &partitions {
                *c.now.entry(*p).or_default() += 1;
            }
            let per_partition = c.now.values().copied().max().unwrap_or(0);
            let busy = c.now.values().filter(|n| **n > 0).count();
            c.most_per_partition = c.most_per_partition.max(per_partition);
            c.most_partitions = c.most_partitions.max(busy);
        }
        let counts = Arc::clone(&self.0);
        Box::pin(async move {
            actix_rt_sleep(30).await;
            let mut c = counts.lock().unwrap();
            for p in partitions {
                *c.now.entry(p).or_default() -= 1;
            }
            Ok(InsertAllResponse::default())
        })
    }

    fn insert_all(
        &self,
        _: &TableRef,
        _: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        Box::pin(async { Err(BqError::Unsupported("insertAll")) })
    }
}

/// Exactly once appends one batch per (table, partition) at a time; the writer's other request
/// slots go to other partitions meanwhile instead of waiting behind a run of one partition's
/// batches (which made the storage path 5× slower).
#[test]
fn per_partition_batches_go_one_at_a_time_per_partition_and_fill_the_slots_with_others() {
    let system = System::new();
    let stats = Arc::new(Stats::default());
    let mut config = config();
    config.bigquery.write_api = crate::config::WriteApi::Storage;
    config.bigquery.delivery = crate::config::Delivery::ExactlyOnce;
    config.bigquery.max_concurrent_requests = 4;
    config.batch.max_rows = 10;
    let bq = Lanes::default();
    let (k, s, b) = (
        Arc::new(FakeKafka::default()),
        Arc::clone(&stats),
        bq.clone(),
    );
    system.block_on(async move {
        let sup = crate::pipeline::start(&config, k, Arc::new(b), Arc::clone(&s));
        let tps: Vec<Tp> = (0..4).map(|p| Tp::new("t", p)).collect();
        let routes = sup
            .send(Assigned {
                tps: tps.clone(),
                warmup: vec![],
            })
            .await
            .unwrap();
        for (i, route) in routes.iter().enumerate() {
            deliver(route, records(0..100, &format!("p{i}-")));
        }
        assert!(
            wait_for(5_000, || s.written.load(Relaxed) == 400).await,
            "every row written"
        );
    });
    let counts = bq.0.lock().unwrap();
    assert_eq!(counts.most_per_partition, 1, "one request per partition");
    assert_eq!(counts.most_partitions, 4, "four partitions at once");
}

#[test]
fn records_are_committed_as_soon_as_everything_read_is_handled_not_at_the_next_interval() {
    let system = System::new();
    let kafka = Arc::new(FakeKafka::default());
    let stats = Arc::new(Stats::default());
    let mut config = config();
    // The first commit after a drain may come a fifth of the interval after the start: 1 s.
    config.kafka.commit_interval_ms = 5_000;
    let (k, s) = (Arc::clone(&kafka), Arc::clone(&stats));
    let tp = Tp::new("t", 0);
    let t = tp.clone();
    let committed = system.block_on(async move {
        let sup = crate::pipeline::start(&config, k.clone(), Arc::new(Recording::default()), s);
        let routes = sup
            .send(Assigned {
                tps: vec![t.clone()],
                warmup: vec![],
            })
            .await
            .unwrap();
        deliver(&routes[0], records(0..3, "e"));
        // Sooner than the 5 s interval.
        wait_for(3_000, || k.last_commit(&t) == Some(3)).await
    });
    assert!(
        committed,
        "offset 3 committed once the 3 records were written"
    );
    assert_eq!(stats.snapshot().written, 3);
}
