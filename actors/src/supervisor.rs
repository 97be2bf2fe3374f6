//! The supervisor: starts a partition consumer for each assigned partition, collects their commit
//! offsets and commits them every `kafka.commit_interval_ms` (and as soon as everything read has
//! been handled: see [`SupervisorActor::commit_if_drained`]), hands final offsets to the poller when
//! partitions are revoked, and runs the shutdown: stop reading, flush, wait for in-flight rows
//! (bounded by `pipeline.shutdown_timeout_ms`), commit, leave the group, stop the system with the
//! exit code (non-zero after a fatal failure).
//!
//! Partition lifecycle. Whatever the supervisor lets go of a partition (revoked, its consumer
//! dead or replaced), it lets go of completely: the partition's origin is marked revoked, so no
//! row of it is written afterwards (the next owner reads it from the final commit), and its
//! consumer is told to stop ([`Retire`]), so consumers never pile up over rebalances. How many
//! records of a partition are in flight is read from the counters the Kafka poller increments
//! *before* it delivers a chunk ([`Inflight`]), never from the consumers' asynchronous
//! [`Progress`] alone, which misses chunks still waiting in a consumer's mailbox. A partition
//! whose offsets went backwards ([`Rewound`]) is read again from there by a new consumer, and its
//! commit may move back to that offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::consumer::{ConsumerActor, Retire, Rewound};

use crate::kafka::KafkaControl;
use crate::messages::{
    Assigned, Convert, Fatal, Flush, GetStatus, PartitionReport, PauseAll, Progress, RawChunk,
    ResumeAll, Revoked, Revoking, Shutdown, StatusReport, Tp, WarmupKeys,
};
use crate::pause::OperatorPause;
use crate::stage::flow::Inflight;
use crate::stats::Stats;
use crate::writer::WriterActor;

/// What the supervisor knows of one assigned partition.
struct Partition {
    epoch: u64,
    /// Kept so the consumer lives while assigned.
    _addr: Addr<ConsumerActor>,
    /// Shared with the records' origins: set when the supervisor lets the partition go (revoked,
    /// consumer dead or replaced), so none of its rows is written afterwards.
    revoked: Arc<AtomicBool>,
    /// Records delivered to the partition and not settled, shared with the Kafka poller (which
    /// adds before it delivers) and the consumer (which subtracts what settles).
    inflight: Arc<Inflight>,
    commit_offset: Option<i64>,
    committed: Option<i64>,
    /// As the consumer last reported it (status report only; see `inflight` for decisions).
    inflight_records: usize,
    /// Restarts of a dead partition consumer so far, and when the next one may happen.
    restarts: u32,
    restart_at: Option<Instant>,
}

impl Partition {
    /// Records in flight now. A dead consumer's records are abandoned (read again): none.
    fn inflight_now(&self) -> usize {
        if self._addr.connected() {
            self.inflight.get().0
        } else {
            0
        }
    }

    /// Lets the partition go: nothing of it is written any more and its consumer stops.
    fn retire(self) {
        self.revoked.store(true, Ordering::Relaxed);
        self._addr.do_send(Retire);
    }
}

/// Delay before the `n`th restart of a dead partition consumer: 100 ms doubling up to 30 s.
pub fn restart_backoff(n: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1u64 << n.min(20))).min(Duration::from_secs(30))
}

/// Overall state, as Kafka Connect names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineState {
    Running,
    Draining { deadline: Instant },
}

pub struct SupervisorActor {
    kafka: Arc<dyn KafkaControl>,
    converter: Recipient<Convert>,
    writer: Addr<WriterActor>,
    dedup: Recipient<WarmupKeys>,
    commit_interval: Duration,
    shutdown_timeout: Duration,
    partitions: HashMap<Tp, Partition>,
    next_epoch: u64,
    commit_running: bool,
    /// When the last commit that had offsets to send started (at first: when the pipeline started).
    last_commit: Instant,
    /// A drained pipeline waits for a fifth of the commit interval since the last commit.
    drain_check_set: bool,
    state: PipelineState,
    exit_code: i32,
    stats: Arc<Stats>,
    /// Pausing by the operator (admin API).
    operator: OperatorPause,
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
        converter: Recipient<Convert>,
        writer: Addr<WriterActor>,
        dedup: Recipient<WarmupKeys>,
        settings: SupervisorSettings,
        stats: Arc<Stats>,
    ) -> Self {
        let operator = OperatorPause::new(Arc::clone(&kafka));
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
            last_commit: Instant::now(),
            drain_check_set: false,
            state: PipelineState::Running,
            exit_code: 0,
            stats,
            operator,
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
        self.last_commit = Instant::now();
        // Which incarnation each offset is of: a partition read again from an earlier offset
        // meanwhile must not take a later offset of its previous consumer as committed.
        let sent: Vec<(Tp, u64, i64)> = offsets
            .iter()
            .filter_map(|(tp, o)| Some((tp.clone(), self.partitions.get(tp)?.epoch, *o)))
            .collect();
        let fut = self.kafka.commit(offsets);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.commit_running = false;
            let ok = result.is_ok();
            match result {
                Ok(()) => {
                    Stats::add(&act.stats.commits, 1);
                    for (tp, epoch, offset) in sent {
                        tracing::debug!(%tp, offset, "committed");
                        if let Some(p) = act.partitions.get_mut(&tp).filter(|p| p.epoch == epoch) {
                            p.committed = Some(offset);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "offset commit failed; it is retried at the next interval"),
            }
            match (then, ok) {
                (Some(then), _) => then(act, ctx),
                // What was handled while this commit ran need not wait for the interval either
                // (a failed commit does wait for it).
                (None, true) => act.commit_if_drained(ctx),
                (None, false) => {}
            }
        }));
    }

    /// Commits now if nothing read is in flight any more, instead of waiting up to
    /// `commit_interval` for the tick, so the records that end a burst (or a quiet topic's few) are
    /// committed, and with exactly once made visible, as soon as they are written. At most one such
    /// commit per fifth of `commit_interval` counted from the last commit or the start (a drain
    /// sooner than that is committed when the fifth is over); a steady stream, where something is
    /// always in flight, is committed at the interval as before.
    fn commit_if_drained(&mut self, ctx: &mut Context<Self>) {
        if self.state != PipelineState::Running || self.commit_running || self.drain_check_set {
            return;
        }
        if self.partitions.values().any(|p| p.inflight_now() > 0) {
            return;
        }
        let since = self.last_commit.elapsed();
        if since < self.commit_interval / 5 {
            self.drain_check_set = true;
            ctx.run_later(self.commit_interval / 5 - since, |act, ctx| {
                act.drain_check_set = false;
                act.commit_if_drained(ctx);
            });
        } else {
            self.commit(ctx, None);
        }
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
            let inflight: usize = act.partitions.values().map(Partition::inflight_now).sum();
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
        ctx.run_interval(Duration::from_millis(100), |act, ctx| {
            act.watch_consumers(ctx)
        });
    }
}

impl SupervisorActor {
    /// Starts a partition consumer; returns its state, its route and in-flight counters.
    fn start_consumer(
        &mut self,
        tp: &Tp,
        ctx: &mut Context<Self>,
    ) -> (Partition, Recipient<RawChunk>, Arc<Inflight>) {
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
            crate::consumer::Supervisor {
                progress: ctx.address().recipient(),
                rewound: ctx.address().recipient(),
            },
            Arc::clone(&self.stats),
        )
        .start();
        let route = consumer.clone().recipient::<RawChunk>();
        let partition = Partition {
            epoch,
            _addr: consumer,
            revoked,
            inflight: Arc::clone(&inflight),
            commit_offset: None,
            committed: None,
            inflight_records: 0,
            restarts: 0,
            restart_at: None,
        };
        (partition, route, inflight)
    }

    /// Restarts partition consumers that died (a panic), from their first unhandled offset, with
    /// backoff. Rows of the dead consumer still in flight are abandoned; they are read again.
    fn watch_consumers(&mut self, ctx: &mut Context<Self>) {
        if self.state != PipelineState::Running {
            return;
        }
        let now = Instant::now();
        let dead: Vec<Tp> = self
            .partitions
            .iter_mut()
            .filter(|(_, p)| !p._addr.connected())
            .filter_map(|(tp, p)| match p.restart_at {
                None => {
                    p.restart_at = Some(now + restart_backoff(p.restarts));
                    tracing::error!(%tp, restarts = p.restarts, "partition consumer died; restarting it");
                    None
                }
                Some(at) if at <= now => Some(tp.clone()),
                Some(_) => None,
            })
            .collect();
        for tp in dead {
            let Some(old) = self.partitions.remove(&tp) else {
                continue;
            };
            let (mut partition, route, inflight) = self.start_consumer(&tp, ctx);
            partition.restarts = old.restarts + 1;
            partition.committed = old.committed;
            let from = old.commit_offset.or(old.committed);
            old.retire();
            self.kafka.restart_partition(&tp, from, route, inflight);
            self.operator.restarted(&tp);
            Stats::add(&self.stats.restarts, 1);
            self.partitions.insert(tp, partition);
        }
    }
}

impl Handler<Assigned> for SupervisorActor {
    type Result = MessageResult<Assigned>;

    fn handle(&mut self, msg: Assigned, ctx: &mut Self::Context) -> Self::Result {
        self.operator.assigned(&msg.tps);
        if !msg.warmup.is_empty() {
            tracing::info!(keys = msg.warmup.len(), "dedup warm-up keys loaded");
            self.dedup.do_send(WarmupKeys { keys: msg.warmup });
        }
        let mut routes = Vec::with_capacity(msg.tps.len());
        for tp in msg.tps {
            let (partition, route, inflight) = self.start_consumer(&tp, ctx);
            tracing::info!(%tp, "partition assigned");
            Stats::add(&self.stats.assigned, 1);
            routes.push((route, inflight));
            if let Some(old) = self.partitions.insert(tp, partition) {
                // Assigned again without a revoke in between: the new consumer takes over.
                old.retire();
            }
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
            .map(Partition::inflight_now)
            .sum()
    }
}

impl Handler<Revoked> for SupervisorActor {
    type Result = MessageResult<Revoked>;

    fn handle(&mut self, msg: Revoked, _: &mut Self::Context) -> Self::Result {
        let mut finals = Vec::new();
        self.stats.health.release(&msg.tps);
        for tp in msg.tps {
            if let Some(p) = self.partitions.remove(&tp) {
                Stats::add(&self.stats.revoked, 1);
                let inflight = p.inflight_now();
                if inflight > 0 {
                    // Rows not yet sent are abandoned: the next owner reads them from the commit.
                    tracing::warn!(%tp, inflight, "revoke timeout: in-flight rows of the partition are abandoned");
                }
                tracing::info!(%tp, commit_offset = ?p.commit_offset, inflight, "partition revoked");
                if let Some(o) = p
                    .commit_offset
                    .filter(|o| p.committed.is_none_or(|c| *o > c))
                {
                    finals.push((tp, o));
                }
                p.retire();
            }
        }
        MessageResult(finals)
    }
}

impl Handler<Progress> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: Progress, ctx: &mut Self::Context) {
        if let Some(p) = self
            .partitions
            .get_mut(&msg.tp)
            .filter(|p| p.epoch == msg.epoch)
        {
            p.commit_offset = msg.commit_offset.or(p.commit_offset);
            p.inflight_records = msg.inflight_records;
            if msg.inflight_records == 0 {
                self.commit_if_drained(ctx);
            }
        }
    }
}

impl Handler<Rewound> for SupervisorActor {
    type Result = ();

    /// Restarts the partition's consumer from `from`: the old consumer's rows are abandoned, and
    /// the commit offset starts at `from` (everything before it was handled), so the next commit
    /// moves the partition's committed offset back there.
    fn handle(&mut self, msg: Rewound, ctx: &mut Self::Context) {
        let Rewound { tp, epoch, from } = msg;
        if self.partitions.get(&tp).is_none_or(|p| p.epoch != epoch) {
            return; // Revoked or restarted meanwhile: its new owner reads from its own start.
        }
        let Some(old) = self.partitions.remove(&tp) else {
            return;
        };
        tracing::warn!(%tp, from, commit_offset = ?old.commit_offset, committed = ?old.committed,
            "partition read again from an earlier offset: new consumer, commit moves back to {from}");
        let (mut partition, route, inflight) = self.start_consumer(&tp, ctx);
        partition.restarts = old.restarts;
        partition.commit_offset = Some(from);
        old.retire();
        // While draining the poller delivers nothing more; the final commit still moves back.
        self.kafka.rewind_partition(&tp, from, route, inflight);
        self.operator.restarted(&tp);
        Stats::add(&self.stats.restarts, 1);
        self.partitions.insert(tp, partition);
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

impl Handler<GetStatus> for SupervisorActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let paused = self.operator.is_paused();
        let mut partitions: Vec<PartitionReport> = self
            .partitions
            .iter()
            .map(|(tp, p)| PartitionReport {
                tp: tp.clone(),
                commit_offset: p.commit_offset,
                committed: p.committed,
                inflight_records: p.inflight_records,
                paused,
            })
            .collect();
        partitions.sort_by(|a, b| a.tp.cmp(&b.tp));
        MessageResult(StatusReport {
            draining: self.state != PipelineState::Running,
            joined: self.operator.joined(),
            paused,
            partitions,
        })
    }
}

impl Handler<PauseAll> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, _: PauseAll, _: &mut Self::Context) {
        tracing::info!(partitions = self.partitions.len(), "paused by the operator");
        self.operator.pause_all(self.partitions.keys());
    }
}

impl Handler<ResumeAll> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, _: ResumeAll, _: &mut Self::Context) {
        tracing::info!(
            partitions = self.partitions.len(),
            "resumed by the operator"
        );
        if self.state == PipelineState::Running {
            self.operator.resume_all(self.partitions.keys());
        }
    }
}

#[cfg(test)]
mod tests;
