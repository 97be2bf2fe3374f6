//! The transformer: `[transform]`, table routing, dedup key and row encoding, on a pool of sync
//! threads.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;

use crate::deduplicator::DedupActor;
use crate::error_report::ErrorReportActor;
use crate::messages::{ConvertedRecord, Dedup, Failed, Failure, Row, Stage, Transform};
use crate::model::TableRef;
use crate::registry::RegistryTopics;
use crate::stage::guard::guarded;
use crate::stage::registered::wire;
use crate::stage::transform::{TransformError, Transformer};
use crate::tables::registered::RegistryColumns;
use crate::telemetry;

pub struct TransformActor {
    pub transformer: Transformer,
    pub dedup: Addr<DedupActor>,
    pub errors: Addr<ErrorReportActor>,
    /// Registry topics: the schemas, and the columns they give each table (noted once per table
    /// and schema id, for table creation and new fields).
    pub registered: Option<(RegistryTopics, Arc<RegistryColumns>)>,
    /// (table, schema id) pairs this worker has noted, and the last one (most chunks have one
    /// table and one schema: compared by pointer, without hashing).
    pub noted: HashSet<(Arc<TableRef>, u32)>,
    pub last_noted: Option<(Arc<TableRef>, u32)>,
}

impl TransformActor {
    /// Notes the columns of the schema `payload` names for `table`, the first time this worker
    /// sees the pair.
    fn note_columns(&mut self, table: &Arc<TableRef>, payload: Option<&[u8]>) {
        let Some((topics, columns)) = &self.registered else {
            return;
        };
        let Some(id) = payload
            .and_then(|p| wire::frame(p).ok())
            .map(|f| f.schema_id)
        else {
            return;
        };
        if self
            .last_noted
            .as_ref()
            .is_some_and(|(t, i)| *i == id && Arc::ptr_eq(t, table))
        {
            return;
        }
        self.last_noted = Some((Arc::clone(table), id));
        if !self.noted.insert((Arc::clone(table), id)) || columns.knows(table, id) {
            return;
        }
        match payload.and_then(|p| topics.schemas.columns(p)) {
            Some((id, Ok(fields))) => columns.note(table, id, &fields),
            Some((id, Err(e))) => {
                tracing::warn!(table = %table, schema_id = id, error = %e, "no BigQuery columns for this schema: the table's columns are inferred from its rows")
            }
            None => {}
        }
    }
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
        let is_registered = self
            .registered
            .as_ref()
            .is_some_and(|(r, _)| r.formats.contains_key(&*msg.origin.tp.topic));
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
                Ok(t) => {
                    if is_registered {
                        self.note_columns(&t.table, source.payload.as_deref());
                    }
                    rows.push(Row {
                        origin: Arc::clone(&msg.origin),
                        source,
                        table: t.table,
                        dedup_hash: t.dedup_hash,
                        body: t.body,
                        trace,
                    })
                }
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
