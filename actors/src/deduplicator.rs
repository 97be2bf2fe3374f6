//! The deduplicator: drops rows whose dedup key was already passed on (bounded cache), counts them
//! and acknowledges their offsets as handled; passes the rest to the writer.

use std::sync::Arc;

use actix::prelude::*;

use crate::messages::{acknowledge, Dedup, Forget, HandledKind, WarmupKeys, Write};
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
        let (unique, dups): (Vec<_>, Vec<_>) =
            msg.rows.into_iter().partition(|row| match row.dedup_hash {
                None => true,
                Some(hash) => {
                    self.dedup
                        .check(hash, Position::new(&row.origin.tp, row.source.offset))
                        == Verdict::Pass
                }
            });
        if !dups.is_empty() {
            Stats::add(&self.stats.deduplicated, dups.len());
            _span.record("duplicates", dups.len() as i64);
            if let Some(first) = dups.first() {
                telemetry::count(telemetry::names::DEDUPLICATED, &first.origin.tp, dups.len());
            }
            acknowledge(
                dups.iter().map(|r| (&r.origin, r.source.offset)),
                HandledKind::Done,
            );
        }
        if !unique.is_empty() {
            self.writer.do_send(Write { rows: unique });
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

impl Handler<Forget> for DedupActor {
    type Result = ();

    fn handle(&mut self, msg: Forget, _: &mut Self::Context) {
        for (key, at) in msg.keys {
            self.dedup.forget(key, at);
        }
    }
}
