//! The consumer thread: one thread owns the rdkafka consumer.
//!
//! The thread polls (so the actors never block on librdkafka), copies records into chunks per
//! partition and delivers them to the partition consumers, and runs the commands the actors send
//! through [`super::RdKafkaControl`]: commit, pause, resume, stop reading, close. Rebalance callbacks run on
//! this thread too: on assignment it asks the supervisor for the new partitions' consumers, on
//! revocation it asks for their final offsets and commits them synchronously before the partitions
//! are given up.
//!
//! Longer than ~500 lines on purpose: the poll loop, the rebalance callbacks and the route table
//! share one locking discipline (the routes' mutex, taken by both), which reads best in one place.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::{Addr, Recipient};
use bqsink_actors::bigquery::CommitHook;
use bqsink_actors::config::{Config, SinkFailure};
use bqsink_actors::kafka::CommitError;
use bqsink_actors::messages::{Assigned, Fatal, RawChunk, RawRecord, Revoked, Revoking, Tp};
use bqsink_actors::stage::flow::{Flow, Inflight, InflightLimits, Intake, TotalFlow};
use bqsink_actors::stats::Stats;
use bqsink_actors::supervisor::SupervisorActor;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::warmup::Warmup;
use super::{consumer_config, Command, KafkaSetupError};

/// Where one assigned partition's records go, and its flow-control state.
struct Route {
    to: Recipient<RawChunk>,
    inflight: Arc<Inflight>,
    /// Paused by backpressure (resumed below half the limits).
    paused: bool,
    /// Paused on request (`KafkaControl::pause`), resumed only on request.
    held: bool,
}

/// Routes from partitions to their consumer actors, shared between the poll loop and the callbacks.
type Routes = Mutex<HashMap<(Arc<str>, i32), Route>>;

/// Rebalance hooks.
pub struct SinkContext {
    supervisor: Addr<SupervisorActor>,
    routes: Routes,
    revoke_timeout: Duration,
    /// `errors.retry_timeout_ms`: when a failing flush is reported as failing.
    retry_timeout: Duration,
    /// `errors.sink_failure = "stop"`: a flush failing past `retry_timeout` stops the pipeline.
    stop_on_sink_failure: bool,
    warmup: Option<Warmup>,
    limits: InflightLimits,
    stats: Arc<Stats>,
    /// Highest offset this consumer committed per partition: a commit queued before a revoke must
    /// never move a partition's committed offset back. The one exception is a partition whose
    /// offsets went backwards (`KafkaControl::rewind_partition`): its entry is forgotten, so its
    /// next commit moves back to where it is read again.
    committed: Mutex<HashMap<(Arc<str>, i32), i64>>,
    /// Exactly-once delivery's part in each commit (`bigquery.delivery = "exactly_once"`): the
    /// offset and metadata to commit, then the flushes the commit allows.
    hook: Option<Arc<dyn CommitHook>>,
}

impl SinkContext {
    /// Commits synchronously what moves forward; with `assigned_only`, only partitions still
    /// assigned (a periodic commit that raced with a revoke is dropped).
    ///
    /// With exactly-once delivery every commit goes through the hook: partitions whose streams
    /// await a flush are committed again at their offset, each offset may be lowered and carries
    /// the metadata naming the rows it covers, and only after the broker accepted the commit are
    /// those rows flushed (`bqsink_actors::stage::exactly_once` has the proof).
    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        offsets: &[(Tp, i64)],
        assigned_only: bool,
    ) -> KafkaResult<()> {
        let result = match &self.hook {
            Some(hook) => self.commit_hooked(hook.as_ref(), consumer, offsets, assigned_only),
            None => self.commit_plain(consumer, offsets, assigned_only),
        };
        if let Err(e) = &result {
            let code = e.rdkafka_error_code().map_or_else(
                || "client".to_owned(),
                |c| format!("{c:?}").to_ascii_lowercase(),
            );
            metrics::counter!(super::COMMIT_FAILURES, "error" => code).increment(1);
        }
        result
    }

    /// [`Self::commit`] with exactly-once delivery.
    fn commit_hooked(
        &self,
        hook: &dyn CommitHook,
        consumer: &BaseConsumer<Self>,
        offsets: &[(Tp, i64)],
        assigned_only: bool,
    ) -> KafkaResult<()> {
        let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let routes = if assigned_only {
            Some(self.routes.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            None
        };
        let assigned = |key: &(Arc<str>, i32)| routes.as_ref().is_none_or(|r| r.contains_key(key));
        let mut wanted: Vec<(Tp, i64)> = offsets
            .iter()
            .filter(|(tp, o)| {
                let key = (tp.topic.clone(), tp.partition);
                assigned(&key) && committed.get(&key).is_none_or(|c| o > c)
            })
            .cloned()
            .collect();
        for tp in hook.pending() {
            let key = (tp.topic.clone(), tp.partition);
            if let (true, Some(&c)) = (assigned(&key), committed.get(&key)) {
                if !wanted.iter().any(|(t, _)| *t == tp) {
                    wanted.push((tp, c));
                }
            }
        }
        drop(routes);
        let mut plan: Vec<(Tp, i64, String)> = Vec::new();
        for (tp, o) in wanted {
            match hook.prepare(&tp, o) {
                Ok((o, metadata)) => {
                    let key = (tp.topic.clone(), tp.partition);
                    if committed.get(&key).is_none_or(|c| o >= *c) {
                        plan.push((tp, o, metadata));
                    }
                }
                Err(e) => tracing::error!(%tp, error = %e, "offset not committed"),
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, offset, metadata) in &plan {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))?;
            if let Some(mut e) = tpl.find_partition(&tp.topic, tp.partition) {
                e.set_metadata(metadata);
            }
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
        let tps: Vec<Tp> = plan.iter().map(|(tp, _, _)| tp.clone()).collect();
        for (tp, o, _) in plan {
            committed.insert((tp.topic, tp.partition), o);
        }
        drop(committed);
        // Flushes wait only when the partitions are being given up (revoke, close).
        hook.committed(&tps, !assigned_only);
        Ok(())
    }

    /// [`Self::commit`] without exactly-once delivery.
    fn commit_plain(
        &self,
        consumer: &BaseConsumer<Self>,
        offsets: &[(Tp, i64)],
        assigned_only: bool,
    ) -> KafkaResult<()> {
        let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let routes = if assigned_only {
            Some(self.routes.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            None
        };
        let fresh: Vec<(Tp, i64)> = offsets
            .iter()
            .filter(|(tp, o)| {
                let key = (tp.topic.clone(), tp.partition);
                routes.as_ref().is_none_or(|r| r.contains_key(&key))
                    && committed.get(&key).is_none_or(|c| o > c)
            })
            .cloned()
            .collect();
        drop(routes);
        if fresh.is_empty() {
            return Ok(());
        }
        commit_sync(consumer, &fresh)?;
        for (tp, o) in fresh {
            committed.insert((tp.topic, tp.partition), o);
        }
        Ok(())
    }
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        super::statistics::record(&statistics);
    }
}

/// Counts a rebalance callback and its partitions (`kind`: assigned or revoked).
fn count_rebalance(kind: &'static str, partitions: usize) {
    metrics::counter!(super::REBALANCES, "kind" => kind).increment(1);
    metrics::counter!(super::REBALANCE_PARTITIONS, "kind" => kind).increment(partitions as u64);
}

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
        count_rebalance("revoked", tps.len());
        // No more records of these partitions reach the pipeline.
        if let Ok(mut routes) = self.routes.lock() {
            for tp in &tps {
                routes.remove(&(tp.topic.clone(), tp.partition));
            }
        }
        // Let their in-flight rows be written (bounded), so the next owner starts where this one
        // stopped; the supervisor abandons what is still unsent after the timeout.
        let deadline = Instant::now() + self.revoke_timeout;
        loop {
            match futures::executor::block_on(self.supervisor.send(Revoking { tps: tps.clone() })) {
                Ok(0) | Err(_) => break,
                Ok(inflight) if Instant::now() >= deadline => {
                    tracing::warn!(inflight, "revoke timeout reached with records in flight");
                    break;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        // The supervisor answers with the partitions' last handled offsets; commit them before
        // another instance takes over.
        match futures::executor::block_on(self.supervisor.send(Revoked { tps: tps.clone() })) {
            Ok(finals) if !finals.is_empty() => {
                if let Err(e) = self.commit(consumer, &finals, false) {
                    tracing::warn!(error = %e, "commit of revoked partitions failed; their records will be read again");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "supervisor gone during revoke"),
        }
        if let Some(hook) = &self.hook {
            // Nothing more is appended for them; a commit that no longer names the streams whose
            // flush was confirmed lets them be finalized. The next owner flushes the others.
            hook.released(&tps);
            if let Err(e) = self.commit(consumer, &[], false) {
                tracing::debug!(error = %e, "commit after releasing the revoked partitions' streams failed");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl);
                count_rebalance("assigned", tps.len());
                if let Some(hook) = &self.hook {
                    self.take_over(consumer, hook.as_ref(), tpl);
                }
                let warmup = match &self.warmup {
                    Some(w) => w.keys_before_committed(consumer, tpl),
                    None => Vec::new(),
                };
                let assigned = Assigned {
                    tps: tps.clone(),
                    warmup,
                };
                match futures::executor::block_on(self.supervisor.send(assigned)) {
                    Ok(recipients) => {
                        // A partition paused by this consumer before (then revoked) may come back
                        // paused: start every assigned partition fetching.
                        if let Err(e) = consumer.resume(tpl) {
                            tracing::warn!(error = %e, "resume of assigned partitions failed");
                        }
                        if let Ok(mut routes) = self.routes.lock() {
                            for (tp, (to, inflight)) in tps.into_iter().zip(recipients) {
                                let route = Route {
                                    to,
                                    inflight,
                                    paused: false,
                                    held: false,
                                };
                                routes.insert((tp.topic, tp.partition), route);
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

impl SinkContext {
    /// Exactly once: hands the assigned partitions' committed metadata to the hook (the streams a
    /// previous owner committed rows of) and remembers their committed offsets, at which those
    /// streams are committed again before they are finalized.
    fn take_over(
        &self,
        consumer: &BaseConsumer<Self>,
        hook: &dyn CommitHook,
        tpl: &TopicPartitionList,
    ) {
        let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
            Ok(c) => c,
            Err(e) => {
                // Without the metadata, a previous owner's committed rows that were not flushed yet
                // would stay invisible: say so loudly; they are flushed once the partition is
                // assigned again with the metadata readable.
                tracing::error!(error = %e, "cannot read the committed offsets' metadata of the assigned partitions");
                return;
            }
        };
        let mut known = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        for e in committed.elements() {
            let tp = Tp::new(e.topic(), e.partition());
            if let Offset::Offset(o) = e.offset() {
                known.insert((tp.topic.clone(), tp.partition), o);
            }
            hook.assigned(&tp, Some(e.metadata()).filter(|m| !m.is_empty()));
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
    stats: Arc<Stats>,
    hook: Option<Arc<dyn CommitHook>>,
) -> Result<JoinHandle<()>, KafkaSetupError> {
    let context = SinkContext {
        supervisor,
        routes: Mutex::new(HashMap::new()),
        revoke_timeout: Duration::from_millis(config.kafka.revoke_timeout_ms),
        retry_timeout: Duration::from_millis(config.errors.retry_timeout_ms),
        stop_on_sink_failure: config.errors.sink_failure == SinkFailure::Stop,
        warmup: Warmup::new(config)?,
        limits: InflightLimits {
            records: config.pipeline.max_inflight_records,
            bytes: config.pipeline.max_inflight_bytes,
        },
        committed: Mutex::new(HashMap::new()),
        stats,
        hook,
    };
    let mut client_config = consumer_config(config);
    let metrics_on = config.metrics.enabled && config.admin.enabled;
    if metrics_on
        && !config
            .kafka
            .properties
            .contains_key("statistics.interval.ms")
    {
        // librdkafka's statistics, as gauges (super::statistics), as often as lag is refreshed.
        let interval = config.metrics.refresh_interval_ms.clamp(1_000, 86_400_000);
        client_config.set("statistics.interval.ms", interval.to_string());
    }
    let consumer: BaseConsumer<SinkContext> = client_config
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
    let total = TotalFlow::new(
        InflightLimits {
            records: config.pipeline.max_total_inflight_records,
            bytes: config.pipeline.max_total_inflight_bytes,
        },
        TOTAL_STALL,
    );
    Ok(std::thread::Builder::new()
        .name("kafka-poller".into())
        .spawn(move || poll_loop(consumer, commands, chunk_records, total))
        .expect("spawning a thread"))
}

/// How long the total in-flight limits may be reached (the poller taking no records, and serving
/// no rebalance meanwhile) before every partition is paused and polling goes on.
const TOTAL_STALL: Duration = Duration::from_secs(1);

/// How often the poller checks whether exactly-once streams need a commit of their own.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long the poller sleeps while the total in-flight limits are reached.
const TOTAL_WAIT: Duration = Duration::from_millis(2);

fn poll_loop(
    consumer: BaseConsumer<SinkContext>,
    commands: Receiver<Command>,
    chunk_records: usize,
    mut total: TotalFlow,
) {
    let mut reading = true;
    // Records arrive in runs of one partition (a fetched batch): the run's chunk is found by
    // comparing with the previous record's partition, without hashing anything per record.
    let mut chunks = Chunks::default();
    // Exactly once: streams awaiting a flush or a finalize after a rebalance are committed again
    // at their offset, even when no offset moves.
    let mut next_upkeep = Instant::now();
    // Tables whose flushes failed at the last upkeep (reported as sink failures).
    let mut flush_failing = Vec::new();
    // Under `errors.sink_failure = "stop"`: the supervisor was told to stop for a failing flush.
    let mut stopping = false;
    loop {
        if let (Some(hook), true) = (&consumer.context().hook, Instant::now() >= next_upkeep) {
            next_upkeep = Instant::now() + UPKEEP_INTERVAL;
            if let Err(e) = consumer.context().commit(&consumer, &[], true) {
                tracing::warn!(error = %e, "commit for the exactly-once streams' upkeep failed; tried again");
            }
            let failures = hook.flush_failures();
            flush_failing = consumer.context().stats.health.report_background(
                failures.iter().map(|f| {
                    let sink = format!("bigquery {} (FlushRows)", f.table);
                    (sink, &f.partitions[..], f.error.as_str(), f.since)
                }),
                consumer.context().retry_timeout,
                &flush_failing,
            );
            let ctx = consumer.context();
            let past = failures
                .iter()
                .find(|f| f.since.elapsed() >= ctx.retry_timeout);
            if let (true, false, Some(f)) = (ctx.stop_on_sink_failure, stopping, past) {
                // The rows are committed in Kafka and not visible: stopping leaves them to the next
                // owner, which flushes the committed stream before it writes anything.
                stopping = true;
                ctx.supervisor.do_send(Fatal {
                    reason: format!(
                        "sink failure: bigquery {} (FlushRows) failed for {:.1?}: {}; \
                         errors.sink_failure = \"stop\": stopping; the committed rows are \
                         flushed by the partition's next owner",
                        f.table,
                        f.since.elapsed(),
                        f.error
                    ),
                });
            }
        }
        loop {
            let cmd = match commands.try_recv() {
                Ok(cmd) => cmd,
                Err(mpsc::TryRecvError::Empty) => break,
                // The actors are gone (the system stopped without a close): leave the group.
                Err(mpsc::TryRecvError::Disconnected) => Command::Close,
            };
            match cmd {
                Command::Commit(offsets, reply) => {
                    let result = consumer
                        .context()
                        .commit(&consumer, &offsets, true)
                        .map_err(|e| CommitError(e.to_string()));
                    let _ = reply.send(result);
                }
                Command::Pause(tp) => {
                    if let Some(route) =
                        lock_routes(&consumer).get_mut(&(tp.topic.clone(), tp.partition))
                    {
                        route.held = true;
                    }
                    if let Err(e) = consumer.pause(&tpl_of(&tp)) {
                        tracing::warn!(%tp, error = %e, "pause failed");
                    }
                }
                Command::Resume(tp) => {
                    let mut routes = lock_routes(&consumer);
                    if let Some(route) = routes.get_mut(&(tp.topic.clone(), tp.partition)) {
                        route.held = false;
                        if reading && !route.paused {
                            if let Err(e) = consumer.resume(&tpl_of(&tp)) {
                                tracing::warn!(%tp, error = %e, "resume failed");
                            }
                        }
                    }
                }
                Command::Restart {
                    tp,
                    from,
                    to,
                    inflight,
                    rewind,
                } => restart_partition(&consumer, tp, from, to, inflight, rewind),
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

        // Backpressure over all partitions: at the total limits take nothing for a while (without
        // pausing, librdkafka keeps its prefetch), then pause everything (see `stage::flow`).
        let in_flight = lock_routes(&consumer)
            .values()
            .map(|r| r.inflight.get())
            .fold((0, 0), |(r, b), (r2, b2)| (r + r2, b + b2));
        let intake = if reading {
            total.step(in_flight, Instant::now())
        } else {
            Intake::Poll
        };
        match intake {
            Intake::Wait => {
                std::thread::sleep(TOTAL_WAIT);
                continue;
            }
            Intake::PauseAll => {
                tracing::info!(
                    records = in_flight.0,
                    bytes = in_flight.1,
                    "total in-flight limit reached for {TOTAL_STALL:?}: pausing every partition"
                );
                pause_all(&consumer);
            }
            Intake::ResumeAll => {
                tracing::info!("below half the total in-flight limit: resuming partitions");
            }
            Intake::Poll => {}
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
                        .of(msg.topic_ptr() as usize, || msg.topic(), msg.partition())
                        .push(record);
                    gathered += 1;
                }
            }
        }
        let limits = consumer.context().limits;
        let mut routes = lock_routes(&consumer);
        for (topic, partition, records) in chunks.drain() {
            match routes.get_mut(&(topic.clone(), partition)) {
                Some(route) => {
                    let bytes = records.iter().map(RawRecord::size).sum();
                    route.inflight.add(records.len(), bytes);
                    route.to.do_send(RawChunk { records });
                }
                None => {
                    tracing::debug!(%topic, partition, n = records.len(), "records of a partition no longer assigned dropped")
                }
            }
        }
        let total_records: usize = routes.values().map(|r| r.inflight.get().0).sum();
        consumer
            .context()
            .stats
            .peak_total_inflight_records
            .fetch_max(total_records as u64, std::sync::atomic::Ordering::Relaxed);
        // Backpressure per partition: pause at the in-flight limits, resume below half (unless
        // the total limits hold every partition).
        for ((topic, partition), route) in routes.iter_mut() {
            let flow = match route.inflight.flow(limits, route.paused) {
                Flow::Resume if total.paused_all() => Flow::Keep,
                // Assigned after everything was paused.
                Flow::Keep if total.paused_all() && !route.paused => Flow::Pause,
                flow => flow,
            };
            let tp = Tp::new(topic.clone(), *partition);
            match flow {
                Flow::Pause => {
                    Stats::add(&consumer.context().stats.pauses, 1);
                    tracing::debug!(%tp, inflight = ?route.inflight.get(), "in-flight limit reached, pausing");
                    route.paused = true;
                    if let Err(e) = consumer.pause(&tpl_of(&tp)) {
                        tracing::warn!(%tp, error = %e, "pause failed");
                    }
                }
                Flow::Resume => {
                    Stats::add(&consumer.context().stats.resumes, 1);
                    route.paused = false;
                    if reading && !route.held {
                        tracing::debug!(%tp, "below half the in-flight limit, resuming");
                        if let Err(e) = consumer.resume(&tpl_of(&tp)) {
                            tracing::warn!(%tp, error = %e, "resume failed");
                        }
                    }
                }
                Flow::Keep => {}
            }
        }
    }
}

/// Pauses every assigned partition not paused yet, as backpressure (resumed by the flow checks).
fn pause_all(consumer: &BaseConsumer<SinkContext>) {
    let mut routes = lock_routes(consumer);
    for ((topic, partition), route) in routes.iter_mut().filter(|(_, r)| !r.paused) {
        route.paused = true;
        Stats::add(&consumer.context().stats.pauses, 1);
        let tp = Tp::new(topic.clone(), *partition);
        if let Err(e) = consumer.pause(&tpl_of(&tp)) {
            tracing::warn!(%tp, error = %e, "pause failed");
        }
    }
}

/// The records of one poll round, per partition, in the order the partitions were first seen.
#[derive(Default)]
struct Chunks {
    chunks: Vec<(Arc<str>, i32, Vec<RawRecord>)>,
    /// Index of the previous record's chunk, and the librdkafka topic handle of its record.
    last: usize,
    last_topic: usize,
}

impl Chunks {
    /// The chunk of `topic`/`partition`, created empty if this round has none yet. `handle`
    /// identifies the topic (librdkafka's topic handle, shared by its records): a record of the
    /// previous record's topic and partition, the usual case, is placed without reading the topic's
    /// name (a C string, measured and UTF-8-checked by rdkafka on each call).
    fn of<'a>(
        &mut self,
        handle: usize,
        topic: impl FnOnce() -> &'a str,
        partition: i32,
    ) -> &mut Vec<RawRecord> {
        if handle != 0
            && handle == self.last_topic
            && self.chunks.get(self.last).is_some_and(|c| c.1 == partition)
        {
            return &mut self.chunks[self.last].2;
        }
        let topic = topic();
        self.last_topic = handle;
        let is = |(t, p, _): &(Arc<str>, i32, Vec<RawRecord>)| *p == partition && &**t == topic;
        if !self.chunks.get(self.last).is_some_and(is) {
            self.last = match self.chunks.iter().position(is) {
                Some(i) => i,
                None => {
                    // The topic's name is shared with the other chunks of the topic.
                    let name = match self.chunks.iter().find(|(t, _, _)| &**t == topic) {
                        Some((t, _, _)) => Arc::clone(t),
                        None => topic.into(),
                    };
                    self.chunks.push((name, partition, Vec::new()));
                    self.chunks.len() - 1
                }
            };
        }
        &mut self.chunks[self.last].2
    }

    fn drain(&mut self) -> std::vec::Drain<'_, (Arc<str>, i32, Vec<RawRecord>)> {
        self.last = 0;
        self.last_topic = 0;
        self.chunks.drain(..)
    }
}

/// Routes a partition to a new consumer and reads it again from `from`, or from its committed
/// offset (the beginning if nothing is committed). With `rewind`, the partition's commit may move
/// back to `from`.
fn restart_partition(
    consumer: &BaseConsumer<SinkContext>,
    tp: Tp,
    from: Option<i64>,
    to: Recipient<RawChunk>,
    inflight: Arc<Inflight>,
    rewind: bool,
) {
    let key = (tp.topic.clone(), tp.partition);
    if !lock_routes(consumer).contains_key(&key) {
        return; // Revoked meanwhile.
    }
    if rewind {
        let mut committed = consumer
            .context()
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(old) = committed.remove(&key) {
            tracing::warn!(%tp, old_committed = old, new = ?from,
                "partition rewound: its committed offset moves back from {old} to {from:?}");
        }
    }
    let offset = match from {
        Some(o) => Offset::Offset(o),
        None => consumer
            .committed_offsets(tpl_of(&tp), Duration::from_secs(10))
            .ok()
            .and_then(|c| {
                c.find_partition(&tp.topic, tp.partition)
                    .map(|e| e.offset())
            })
            .filter(|o| matches!(o, Offset::Offset(_)))
            .unwrap_or(Offset::Beginning),
    };
    // Records of the dead consumer still queued are dropped: the seek reads them again.
    lock_routes(consumer).insert(
        key,
        Route {
            to,
            inflight,
            paused: false,
            held: false,
        },
    );
    if let Err(e) = consumer.seek(&tp.topic, tp.partition, offset, Duration::from_secs(10)) {
        tracing::error!(%tp, error = %e, "seek for the restarted partition consumer failed");
    }
    if let Err(e) = consumer.resume(&tpl_of(&tp)) {
        tracing::warn!(%tp, error = %e, "resume of the restarted partition failed");
    }
    tracing::info!(%tp, ?offset, "partition consumer restarted");
}

fn lock_routes(
    consumer: &BaseConsumer<SinkContext>,
) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, i32), Route>> {
    // The routes hold no invariant a panicking holder could break half-way; keep going.
    consumer
        .context()
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> RawRecord {
        RawRecord {
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn chunks_place_records_by_topic_and_partition_whatever_the_handle_says() {
        let mut chunks = Chunks::default();
        // Two topics (handles 1 and 2), partitions interleaved; handle 0 means unknown.
        let arrivals = [
            (1, "a", 0, 0),
            (1, "a", 0, 1),
            (1, "a", 1, 0),
            (2, "b", 1, 0),
            (2, "b", 1, 1),
            (1, "a", 0, 2),
            (0, "a", 1, 1),
        ];
        for (handle, topic, partition, offset) in arrivals {
            chunks.of(handle, || topic, partition).push(record(offset));
        }
        let got: Vec<(String, i32, Vec<i64>)> = chunks
            .drain()
            .map(|(t, p, r)| (t.to_string(), p, r.iter().map(|r| r.offset).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 0, vec![0, 1, 2]),
                ("a".into(), 1, vec![0, 1]),
                ("b".into(), 1, vec![0, 1]),
            ]
        );
    }
}
