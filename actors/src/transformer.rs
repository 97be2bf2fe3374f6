//! The transformer: `[transform]`, table routing, dedup key and row encoding, on a pool of sync
//! threads.

use std::sync::Arc;

use actix::prelude::*;

use crate::deduplicator::DedupActor;
use crate::error_report::ErrorReportActor;
use crate::messages::{Dedup, Failed, Failure, Row, Stage, Transform};
use crate::stage::transform::Transformer;

pub struct TransformActor {
    pub transformer: Transformer,
    pub dedup: Addr<DedupActor>,
    pub errors: Addr<ErrorReportActor>,
}

impl Actor for TransformActor {
    type Context = SyncContext<Self>;
}

impl Handler<Transform> for TransformActor {
    type Result = ();

    fn handle(&mut self, msg: Transform, _: &mut Self::Context) {
        let _span =
            tracing::debug_span!("transform", tp = %msg.origin.tp, records = msg.records.len())
                .entered();
        let mut rows = Vec::with_capacity(msg.records.len());
        let mut failures = Vec::new();
        for rec in msg.records {
            match self
                .transformer
                .apply(&msg.origin.tp, &rec.source, rec.value)
            {
                Ok(t) => rows.push(Row {
                    origin: Arc::clone(&msg.origin),
                    source: rec.source,
                    table: t.table,
                    dedup_hash: t.dedup_hash,
                    entry: t.entry,
                }),
                Err(e) => failures.push(Failure {
                    origin: Arc::clone(&msg.origin),
                    class: e.class(),
                    error: e.to_string(),
                    stage: Stage::Transform,
                    source: rec.source,
                }),
            }
        }
        if !failures.is_empty() {
            self.errors.do_send(Failed { failures });
        }
        if !rows.is_empty() {
            self.dedup.do_send(Dedup { rows });
        }
    }
}
