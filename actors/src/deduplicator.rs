//! The deduplicator: drops rows whose dedup key was already passed on (bounded cache), counts them
//! and acknowledges their offsets as handled; passes the rest to the writer.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::messages::{acknowledge, Dedup, HandledKind, Settled, SettledAs, WarmupKeys, Write};
use crate::stage::dedup::{Deduplicator, Position, Verdict};
use crate::stats::Stats;
use crate::telemetry;
use crate::writer::WriterActor;

pub struct DedupActor {
    pub dedup: Deduplicator,
    pub writer: Addr<WriterActor>,
    pub stats: Arc<Stats>,
}

impl Actor for DedupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(std::time::Duration::from_secs(1), |act, _| {
            metrics::gauge!(telemetry::names::DEDUP_CACHE_KEYS).set(act.dedup.len() as f64);
        });
    }
}

impl Handler<Dedup> for DedupActor {
    type Result = ();

    fn handle(&mut self, msg: Dedup, _: &mut Self::Context) {
        let _span = tracing::debug_span!(parent: &msg.span, "dedup", rows = msg.rows.len() as i64, duplicates = tracing::field::Empty).entered();
        let mut rows = msg.rows;
        let mut dups = Vec::new();
        let mut batch = self.dedup.batch(Instant::now());
        // In place: the unique rows stay where they are, the duplicates leave their offsets.
        rows.retain(|row| {
            let Some(hash) = row.dedup_hash else {
                return true;
            };
            let at = Position::new(&row.origin.tp, row.source.offset);
            let pass = batch.check(hash, at) == Verdict::Pass;
            if !pass {
                dups.push((Arc::clone(&row.origin), row.source.offset));
            }
            pass
        });
        drop(batch);
        if !dups.is_empty() {
            Stats::add(&self.stats.deduplicated, dups.len());
            _span.record("duplicates", dups.len() as i64);
            if let Some((origin, _)) = dups.first() {
                telemetry::count(telemetry::names::DEDUPLICATED, &origin.tp, dups.len());
            }
            acknowledge(
                dups.iter().map(|(o, offset)| (o, *offset)),
                HandledKind::Done,
            );
        }
        if !rows.is_empty() {
            self.writer.do_send(Write { rows });
        }
    }
}

impl Handler<WarmupKeys> for DedupActor {
    type Result = ();

    fn handle(&mut self, msg: WarmupKeys, _: &mut Self::Context) {
        for (key, at) in msg.keys {
            self.dedup.remember(key, at);
        }
    }
}

impl Handler<Settled> for DedupActor {
    type Result = ();

    fn handle(&mut self, msg: Settled, _: &mut Self::Context) {
        if msg.how == SettledAs::Reported {
            for (key, at) in msg.keys {
                self.dedup.forget(key, at);
            }
        }
    }
}
