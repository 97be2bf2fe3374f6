//! The Kafka adapter: one thread owns the rdkafka consumer.
//!
//! The thread polls (so the actors never block on librdkafka), copies records into chunks per
//! partition and delivers them to the partition consumers, and runs the commands the actors send
//! through [`KafkaControl`]: commit, pause, resume, stop reading, close. Rebalance callbacks run on
//! this thread too: on assignment it asks the supervisor for the new partitions' consumers, on
//! revocation it asks for their final offsets and commits them synchronously before the partitions
//! are given up.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use actix::{Addr, Recipient};
use bqsink_actors::config::Config;
use bqsink_actors::kafka::{CommitError, KafkaControl};
use bqsink_actors::messages::{Assigned, RawChunk, RawRecord, Revoked, Tp};
use bqsink_actors::supervisor::SupervisorActor;
use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Errors setting up the consumer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka consumer (check kafka.brokers and kafka.properties)")]
    Create(#[source] rdkafka::error::KafkaError),
    #[error("cannot subscribe to topics {topics:?}")]
    Subscribe {
        topics: Vec<String>,
        source: rdkafka::error::KafkaError,
    },
}

/// A request from the actors to the consumer thread.
pub enum Command {
    Commit(
        Vec<(Tp, i64)>,
        futures::channel::oneshot::Sender<Result<(), CommitError>>,
    ),
    Pause(Tp),
    Resume(Tp),
    StopReading,
    Close,
}

/// The actors' handle on the consumer thread.
pub struct RdKafkaControl {
    tx: Mutex<Sender<Command>>,
}

impl RdKafkaControl {
    fn send(&self, cmd: Command) {
        // The consumer thread is gone only after `close`; later commands have nothing to act on.
        let _ = self.tx.lock().map(|tx| tx.send(cmd));
    }
}

impl KafkaControl for RdKafkaControl {
    fn commit(&self, offsets: Vec<(Tp, i64)>) -> BoxFuture<'static, Result<(), CommitError>> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.send(Command::Commit(offsets, tx));
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(CommitError("the Kafka consumer thread has stopped".into()))
            })
        })
    }
    fn pause(&self, tp: &Tp) {
        self.send(Command::Pause(tp.clone()));
    }
    fn resume(&self, tp: &Tp) {
        self.send(Command::Resume(tp.clone()));
    }
    fn stop_reading(&self) {
        self.send(Command::StopReading);
    }
    fn close(&self) {
        self.send(Command::Close);
    }
}

/// Creates the command channel; the receiver goes to [`spawn_consumer`].
pub fn control() -> (Arc<RdKafkaControl>, Receiver<Command>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(RdKafkaControl { tx: Mutex::new(tx) }), rx)
}

/// librdkafka settings for the group consumer: explicit commits of handled offsets only.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("auto.offset.reset", k.auto_offset_reset.as_str())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// Routes from partitions to their consumer actors, shared between the poll loop and the callbacks.
type Routes = Mutex<HashMap<(Arc<str>, i32), Recipient<RawChunk>>>;

/// Rebalance hooks.
pub struct SinkContext {
    supervisor: Addr<SupervisorActor>,
    routes: Routes,
}

impl ClientContext for SinkContext {}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| Tp::new(e.topic(), e.partition()))
        .collect()
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let tps = tps_of(tpl);
        if let Ok(mut routes) = self.routes.lock() {
            for tp in &tps {
                routes.remove(&(tp.topic.clone(), tp.partition));
            }
        }
        // The supervisor answers with the partitions' last handled offsets; commit them before
        // another instance takes over.
        match futures::executor::block_on(self.supervisor.send(Revoked { tps })) {
            Ok(finals) if !finals.is_empty() => {
                if let Err(e) = commit_sync(consumer, &finals) {
                    tracing::warn!(error = %e, "commit of revoked partitions failed; their records will be read again");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "supervisor gone during revoke"),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl);
                match futures::executor::block_on(
                    self.supervisor.send(Assigned { tps: tps.clone() }),
                ) {
                    Ok(recipients) => {
                        if let Ok(mut routes) = self.routes.lock() {
                            for (tp, r) in tps.into_iter().zip(recipients) {
                                routes.insert((tp.topic, tp.partition), r);
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "supervisor gone during assign"),
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn commit_sync(consumer: &BaseConsumer<SinkContext>, offsets: &[(Tp, i64)]) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in offsets {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

fn tpl_of(tp: &Tp) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.topic, tp.partition);
    tpl
}

/// Creates the consumer, subscribes, and starts the thread that polls it.
pub fn spawn_consumer(
    config: &Config,
    supervisor: Addr<SupervisorActor>,
    commands: Receiver<Command>,
) -> Result<JoinHandle<()>, KafkaSetupError> {
    let context = SinkContext {
        supervisor,
        routes: Mutex::new(HashMap::new()),
    };
    let consumer: BaseConsumer<SinkContext> = consumer_config(config)
        .create_with_context(context)
        .map_err(KafkaSetupError::Create)?;
    let topics: Vec<&str> = config.kafka.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| KafkaSetupError::Subscribe {
            topics: config.kafka.topics.clone(),
            source,
        })?;
    let chunk_records = config.pipeline.chunk_records;
    Ok(std::thread::Builder::new()
        .name("kafka-poller".into())
        .spawn(move || poll_loop(consumer, commands, chunk_records))
        .expect("spawning a thread"))
}

fn poll_loop(
    consumer: BaseConsumer<SinkContext>,
    commands: Receiver<Command>,
    chunk_records: usize,
) {
    let mut reading = true;
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let mut chunks: HashMap<(Arc<str>, i32), Vec<RawRecord>> = HashMap::new();
    loop {
        loop {
            let cmd = match commands.try_recv() {
                Ok(cmd) => cmd,
                Err(mpsc::TryRecvError::Empty) => break,
                // The actors are gone (the system stopped without a close): leave the group.
                Err(mpsc::TryRecvError::Disconnected) => Command::Close,
            };
            match cmd {
                Command::Commit(offsets, reply) => {
                    let result =
                        commit_sync(&consumer, &offsets).map_err(|e| CommitError(e.to_string()));
                    let _ = reply.send(result);
                }
                Command::Pause(tp) => {
                    if let Err(e) = consumer.pause(&tpl_of(&tp)) {
                        tracing::warn!(%tp, error = %e, "pause failed");
                    }
                }
                Command::Resume(tp) => {
                    if reading {
                        if let Err(e) = consumer.resume(&tpl_of(&tp)) {
                            tracing::warn!(%tp, error = %e, "resume failed");
                        }
                    }
                }
                Command::StopReading => {
                    reading = false;
                    if let Ok(assigned) = consumer.assignment() {
                        let _ = consumer.pause(&assigned);
                    }
                }
                Command::Close => {
                    tracing::info!("leaving the consumer group");
                    consumer.unsubscribe();
                    // Serve the revoke callback that the unsubscribe triggers, then close.
                    for _ in 0..5 {
                        let _ = consumer.poll(Duration::from_millis(20));
                    }
                    return;
                }
            }
        }

        // Gather up to a chunk's worth of records (waiting only for the first), then deliver.
        let mut gathered = 0;
        let mut timeout = Duration::from_millis(50);
        while gathered < chunk_records {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    break;
                }
                Some(Ok(msg)) => {
                    timeout = Duration::ZERO;
                    if !reading {
                        continue; // Draining: records not delivered are not committed.
                    }
                    let topic = match topics.get(msg.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = msg.topic().into();
                            topics.insert(msg.topic().to_owned(), t.clone());
                            t
                        }
                    };
                    let record = RawRecord {
                        offset: msg.offset(),
                        timestamp_ms: msg.timestamp().to_millis(),
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().map(<[u8]>::to_vec),
                        headers: msg
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    };
                    chunks
                        .entry((topic, msg.partition()))
                        .or_default()
                        .push(record);
                    gathered += 1;
                }
            }
        }
        if chunks.is_empty() {
            continue;
        }
        let routes = consumer
            .context()
            .routes
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        for ((topic, partition), records) in chunks.drain() {
            match routes.get(&(topic.clone(), partition)) {
                Some(r) => r.do_send(RawChunk { records }),
                None => {
                    tracing::debug!(%topic, partition, n = records.len(), "records of a partition no longer assigned dropped")
                }
            }
        }
    }
}
