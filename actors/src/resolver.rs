//! The schema resolver: between the partition consumers and the converters, for registry topics
//! (`avro`, `protobuf`, `json_schema` in `kafka.formats` or `kafka.key_formats`).
//! A chunk goes on to the converters once every schema id its records' values and keys name is in
//! the [`SchemaCache`]; chunks of other topics go on at once.
//!
//! Chunks wait in arrival order (so a partition's records stay in order) while the missing ids are
//! fetched, one lookup at a time. The records stay in flight meanwhile, so a registry outage holds
//! their partitions back through the usual in-flight limits (the poller pauses them) and nothing
//! past them is committed. A registry that cannot answer is a sink failure reported in
//! [`crate::health`] like any other: retried with backoff for as long as it takes under
//! `errors.sink_failure = "retry"`, the pipeline stopped once it has failed for
//! `errors.retry_timeout_ms` under `"stop"`. Chunks of a partition revoked meanwhile are dropped
//! here (the next owner reads them).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::destinations::{DeliveryBackoff, Incident, SinkFailurePolicy, Verdict};
use crate::messages::{Convert, Fatal, Tp};
use crate::registry::{RegistryError, RegistryTopics, SchemaCache, SchemaRegistry};
use crate::stats::Stats;

pub struct ResolverActor {
    registry: Arc<dyn SchemaRegistry>,
    /// Topics read through the registry, and the cache this actor fills.
    registered: RegistryTopics,
    next: Recipient<Convert>,
    fatal: Recipient<Fatal>,
    stats: Arc<Stats>,
    policy: SinkFailurePolicy,
    backoff: DeliveryBackoff,
    waiting: VecDeque<Convert>,
    fetching: bool,
}

impl ResolverActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        registry: Arc<dyn SchemaRegistry>,
        registered: RegistryTopics,
        next: Recipient<Convert>,
        fatal: Recipient<Fatal>,
        stats: Arc<Stats>,
        policy: SinkFailurePolicy,
        backoff: DeliveryBackoff,
    ) -> Self {
        Self {
            registry,
            registered,
            next,
            fatal,
            stats,
            policy,
            backoff,
            waiting: VecDeque::new(),
            fetching: false,
        }
    }

    fn missing(&self, chunk: &Convert) -> Vec<u32> {
        let records = chunk.records.iter();
        self.registered.missing(
            &chunk.origin.tp.topic,
            records.map(|r| (r.key.as_deref(), r.payload.as_deref())),
        )
    }

    /// Passes on every waiting chunk whose schemas are known; fetches the first one's missing ids.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(front) = self.waiting.front() {
            if front.origin.is_revoked() {
                self.waiting.pop_front();
                continue;
            }
            let missing = self.missing(front);
            if missing.is_empty() {
                if let Some(chunk) = self.waiting.pop_front() {
                    self.next.do_send(chunk);
                }
                continue;
            }
            if !self.fetching {
                self.fetching = true;
                let fetch = fetch_all(
                    Arc::clone(&self.registry),
                    Arc::clone(&self.registered.schemas),
                    missing,
                    self.waiting_partitions(),
                    Arc::clone(&self.stats),
                    self.policy,
                    self.backoff,
                );
                ctx.spawn(fetch.into_actor(self).map(|outcome, act, ctx| {
                    act.fetching = false;
                    match outcome {
                        Ok(()) => act.pump(ctx),
                        Err(reason) => {
                            // Stopped: the chunks stay unacknowledged; nothing past them is committed.
                            act.waiting.clear();
                            act.fatal.do_send(Fatal { reason });
                        }
                    }
                }));
            }
            return;
        }
    }

    fn waiting_partitions(&self) -> Vec<Tp> {
        let tps: BTreeSet<Tp> = self.waiting.iter().map(|c| c.origin.tp.clone()).collect();
        tps.into_iter().collect()
    }
}

/// Fetches `ids` into `cache`, retrying while the registry cannot answer; `Err` with the reason
/// when `errors.sink_failure = "stop"` gives up.
async fn fetch_all(
    registry: Arc<dyn SchemaRegistry>,
    cache: Arc<SchemaCache>,
    ids: Vec<u32>,
    partitions: Vec<Tp>,
    stats: Arc<Stats>,
    policy: SinkFailurePolicy,
    backoff: DeliveryBackoff,
) -> Result<(), String> {
    let sink = registry.name();
    let mut incident = Incident::new(policy);
    let mut delays = backoff.delays();
    for id in ids {
        loop {
            let answer = match registry.fetch(id).await {
                Err(RegistryError::Unavailable(error)) => error,
                answer => {
                    if incident.is_open() {
                        stats.health.succeeded(&sink);
                        incident = Incident::new(policy);
                    }
                    if let Err(e) = cache.insert(id, answer) {
                        tracing::warn!(schema_id = id, error = %e, class = e.class(), "schema unusable: the records naming it fail");
                    }
                    break;
                }
            };
            let verdict = incident.failed(false, Instant::now());
            match verdict {
                Verdict::Retry { failing: false } => {
                    stats.health.retrying(&sink, &partitions, &answer);
                }
                Verdict::Retry { failing: true } | Verdict::Stop => {
                    stats.health.failing(&sink, &partitions, &answer);
                }
            }
            if verdict == Verdict::Stop {
                tracing::error!(sink = %sink, kind = "sink_failure", schema_id = id, error = %answer,
                    "the schema registry failed for errors.retry_timeout_ms; errors.sink_failure = \"stop\": stopping, nothing past the waiting records is committed");
                return Err(format!("{sink}: {answer}"));
            }
            let delay = delays.next().unwrap_or(backoff.max_delay);
            tracing::warn!(sink = %sink, kind = "sink_failure", schema_id = id, error = %answer,
                delay_ms = delay.as_millis() as u64, "schema lookup failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }
    Ok(())
}

impl Actor for ResolverActor {
    type Context = Context<Self>;
}

impl Handler<Convert> for ResolverActor {
    type Result = ();

    fn handle(&mut self, chunk: Convert, ctx: &mut Self::Context) {
        if !self.registered.of(&chunk.origin.tp.topic).uses_registry() {
            self.next.do_send(chunk);
            return;
        }
        self.waiting.push_back(chunk);
        self.pump(ctx);
    }
}
