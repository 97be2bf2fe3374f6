//! The supervisor: starts a partition consumer for each assigned partition, collects their commit
//! offsets and commits them every `kafka.commit_interval_ms`, hands final offsets to the poller when
//! partitions are revoked, and runs the shutdown: stop reading, flush, wait for in-flight rows
//! (bounded by `pipeline.shutdown_timeout_ms`), commit, leave the group, stop the system with the
//! exit code (non-zero after a fatal failure).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::consumer::ConsumerActor;
use crate::converter::ConvertActor;
use crate::kafka::KafkaControl;
use crate::messages::{
    Assigned, Fatal, Flush, Progress, RawChunk, Revoked, Revoking, Shutdown, Tp, WarmupKeys,
};
use crate::stage::flow::Inflight;
use crate::stats::Stats;
use crate::writer::WriterActor;

/// What the supervisor knows of one assigned partition.
struct Partition {
    epoch: u64,
    /// Kept so the consumer lives while assigned.
    _addr: Addr<ConsumerActor>,
    /// Shared with the records' origins: set when the partition is revoked with rows in flight.
    revoked: Arc<AtomicBool>,
    commit_offset: Option<i64>,
    committed: Option<i64>,
    inflight_records: usize,
}

/// Overall state, as Kafka Connect names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineState {
    Running,
    Draining { deadline: Instant },
}

pub struct SupervisorActor {
    kafka: Arc<dyn KafkaControl>,
    converter: Addr<ConvertActor>,
    writer: Addr<WriterActor>,
    dedup: Recipient<WarmupKeys>,
    commit_interval: Duration,
    shutdown_timeout: Duration,
    partitions: HashMap<Tp, Partition>,
    next_epoch: u64,
    commit_running: bool,
    state: PipelineState,
    exit_code: i32,
    stats: Arc<Stats>,
}

/// Supervisor settings.
#[derive(Debug, Clone, Copy)]
pub struct SupervisorSettings {
    pub commit_interval: Duration,
    pub shutdown_timeout: Duration,
}

impl SupervisorActor {
    pub fn new(
        kafka: Arc<dyn KafkaControl>,
        converter: Addr<ConvertActor>,
        writer: Addr<WriterActor>,
        dedup: Recipient<WarmupKeys>,
        settings: SupervisorSettings,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            kafka,
            converter,
            writer,
            dedup,
            commit_interval: settings.commit_interval,
            shutdown_timeout: settings.shutdown_timeout,
            partitions: HashMap::new(),
            next_epoch: 0,
            commit_running: false,
            state: PipelineState::Running,
            exit_code: 0,
            stats,
        }
    }

    /// Offsets that moved since they were last committed.
    fn uncommitted(&self) -> Vec<(Tp, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, p)| match (p.commit_offset, p.committed) {
                (Some(o), Some(c)) if o <= c => None,
                (Some(o), _) => Some((tp.clone(), o)),
                (None, _) => None,
            })
            .collect()
    }

    /// Commits what moved; `then` runs after the broker answered (or right away if nothing moved).
    fn commit(&mut self, ctx: &mut Context<Self>, then: Option<fn(&mut Self, &mut Context<Self>)>) {
        let offsets = self.uncommitted();
        if offsets.is_empty() {
            if let Some(then) = then {
                then(self, ctx);
            }
            return;
        }
        self.commit_running = true;
        let fut = self.kafka.commit(offsets.clone());
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.commit_running = false;
            match result {
                Ok(()) => {
                    Stats::add(&act.stats.commits, 1);
                    for (tp, offset) in offsets {
                        tracing::debug!(%tp, offset, "committed");
                        if let Some(p) = act.partitions.get_mut(&tp) {
                            p.committed = Some(offset);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "offset commit failed; it is retried at the next interval"),
            }
            if let Some(then) = then {
                then(act, ctx);
            }
        }));
    }

    fn begin_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.state != PipelineState::Running {
            return;
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        self.state = PipelineState::Draining { deadline };
        self.kafka.stop_reading();
        self.writer.do_send(Flush);
        ctx.run_interval(Duration::from_millis(20), |act, ctx| {
            let PipelineState::Draining { deadline } = act.state else { return };
            let inflight: usize = act.partitions.values().map(|p| p.inflight_records).sum();
            let timed_out = Instant::now() >= deadline;
            if (inflight == 0 || timed_out) && !act.commit_running {
                if timed_out && inflight > 0 {
                    tracing::warn!(inflight, "shutdown timeout reached; records still in flight are not committed and will be read again");
                }
                // Stop ticking: the final commit runs once.
                act.state = PipelineState::Draining { deadline: Instant::now() + Duration::from_secs(3600) };
                act.commit_running = true;
                act.commit(ctx, Some(|act, _| {
                    act.kafka.close();
                    tracing::info!(exit_code = act.exit_code, "pipeline stopped");
                    System::current().stop_with_code(act.exit_code);
                }));
            }
        });
    }
}

impl Actor for SupervisorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.commit_interval, |act, ctx| {
            if act.state == PipelineState::Running && !act.commit_running {
                act.commit(ctx, None);
            }
        });
    }
}

impl Handler<Assigned> for SupervisorActor {
    type Result = MessageResult<Assigned>;

    fn handle(&mut self, msg: Assigned, ctx: &mut Self::Context) -> Self::Result {
        if !msg.warmup.is_empty() {
            tracing::info!(keys = msg.warmup.len(), "dedup warm-up keys loaded");
            self.dedup.do_send(WarmupKeys { keys: msg.warmup });
        }
        let mut routes = Vec::with_capacity(msg.tps.len());
        for tp in msg.tps {
            self.next_epoch += 1;
            let epoch = self.next_epoch;
            let revoked = Arc::new(AtomicBool::new(false));
            let inflight = Arc::new(Inflight::default());
            let consumer = ConsumerActor::new(
                tp.clone(),
                epoch,
                Arc::clone(&revoked),
                Arc::clone(&inflight),
                self.converter.clone(),
                ctx.address().recipient(),
                Arc::clone(&self.stats),
            )
            .start();
            tracing::info!(%tp, "partition assigned");
            Stats::add(&self.stats.assigned, 1);
            routes.push((consumer.clone().recipient::<RawChunk>(), inflight));
            self.partitions.insert(
                tp,
                Partition {
                    epoch,
                    _addr: consumer,
                    revoked,
                    commit_offset: None,
                    committed: None,
                    inflight_records: 0,
                },
            );
        }
        MessageResult(routes)
    }
}

impl Handler<Revoking> for SupervisorActor {
    type Result = usize;

    fn handle(&mut self, msg: Revoking, _: &mut Self::Context) -> usize {
        self.writer.do_send(Flush);
        msg.tps
            .iter()
            .filter_map(|tp| self.partitions.get(tp))
            .map(|p| p.inflight_records)
            .sum()
    }
}

impl Handler<Revoked> for SupervisorActor {
    type Result = MessageResult<Revoked>;

    fn handle(&mut self, msg: Revoked, _: &mut Self::Context) -> Self::Result {
        let mut finals = Vec::new();
        for tp in msg.tps {
            if let Some(p) = self.partitions.remove(&tp) {
                Stats::add(&self.stats.revoked, 1);
                if p.inflight_records > 0 {
                    // Rows not yet sent are abandoned: the next owner reads them from the commit.
                    p.revoked.store(true, Ordering::Relaxed);
                    tracing::warn!(%tp, inflight = p.inflight_records, "revoke timeout: in-flight rows of the partition are abandoned");
                }
                tracing::info!(%tp, commit_offset = ?p.commit_offset, inflight = p.inflight_records, "partition revoked");
                if let Some(o) = p
                    .commit_offset
                    .filter(|o| p.committed.is_none_or(|c| *o > c))
                {
                    finals.push((tp, o));
                }
            }
        }
        MessageResult(finals)
    }
}

impl Handler<Progress> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: Progress, _: &mut Self::Context) {
        if let Some(p) = self
            .partitions
            .get_mut(&msg.tp)
            .filter(|p| p.epoch == msg.epoch)
        {
            p.commit_offset = msg.commit_offset;
            p.inflight_records = msg.inflight_records;
        }
    }
}

impl Handler<Fatal> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: Fatal, ctx: &mut Self::Context) {
        tracing::error!(reason = %msg.reason, "pipeline FAILED; stopping without committing past the failed record");
        self.exit_code = 1;
        self.begin_shutdown(ctx);
    }
}

impl Handler<Shutdown> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        tracing::info!("shutting down: draining in-flight records");
        self.begin_shutdown(ctx);
    }
}
