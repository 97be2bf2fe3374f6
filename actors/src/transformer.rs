//! The transformer: `[transform]`, table routing, dedup key and row encoding, on a pool of sync
//! threads.

use std::sync::Arc;

use actix::prelude::*;

use crate::deduplicator::DedupActor;
use crate::error_report::ErrorReportActor;
use crate::messages::{ConvertedRecord, Dedup, Failed, Failure, Row, Stage, Transform};
use crate::stage::guard::guarded;
use crate::stage::transform::{TransformError, Transformer};
use crate::telemetry;

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
            tracing::debug_span!(parent: &msg.span, "transform", records = msg.records.len() as i64)
                .entered();
        let mut rows = Vec::with_capacity(msg.records.len());
        let mut failures = Vec::new();
        for rec in msg.records {
            let ConvertedRecord {
                source,
                value,
                trace,
            } = rec;
            let work = || {
                self.transformer
                    .apply_object(&msg.origin.tp, &source, &value)
            };
            match guarded(work, TransformError::class) {
                Ok(t) => rows.push(Row {
                    origin: Arc::clone(&msg.origin),
                    source,
                    table: t.table,
                    dedup_hash: t.dedup_hash,
                    body: t.body,
                    trace,
                }),
                Err((class, error)) => failures.push(Failure::new(
                    Arc::clone(&msg.origin),
                    source,
                    Stage::Transform,
                    class,
                    error,
                )),
            }
        }
        if !failures.is_empty() {
            self.errors.do_send(Failed { failures });
        }
        telemetry::count(telemetry::names::TRANSFORMED, &msg.origin.tp, rows.len());
        if !rows.is_empty() {
            self.dedup.do_send(Dedup {
                rows,
                span: msg.span,
            });
        }
    }
}
