//! The converter: bytes → JSON objects, on a pool of sync threads (CPU work off the actor thread).

use std::sync::Arc;

use actix::prelude::*;

use crate::error_report::ErrorReportActor;
use crate::messages::{Convert, ConvertedRecord, Failed, Failure, Stage, Transform};
use crate::stage::convert::{parse_object, ConvertError};
use crate::stage::guard::guarded;
use crate::telemetry;
use crate::transformer::TransformActor;

pub struct ConvertActor {
    pub transformer: Addr<TransformActor>,
    pub errors: Addr<ErrorReportActor>,
}

impl Actor for ConvertActor {
    type Context = SyncContext<Self>;
}

impl Handler<Convert> for ConvertActor {
    type Result = ();

    fn handle(&mut self, msg: Convert, _: &mut Self::Context) {
        let _span =
            tracing::debug_span!(parent: &msg.span, "convert", records = msg.records.len() as i64)
                .entered();
        let mut records = Vec::with_capacity(msg.records.len());
        let mut failures = Vec::new();
        for source in msg.records {
            match guarded(
                || parse_object(source.payload.as_deref()),
                ConvertError::class,
            ) {
                Ok(value) => records.push(ConvertedRecord {
                    trace: telemetry::record_span(&msg.origin.tp, &source),
                    source,
                    value,
                }),
                Err((class, error)) => failures.push(Failure::new(
                    Arc::clone(&msg.origin),
                    source,
                    Stage::Convert,
                    class,
                    error,
                )),
            }
        }
        if !failures.is_empty() {
            self.errors.do_send(Failed { failures });
        }
        telemetry::count(telemetry::names::CONVERTED, &msg.origin.tp, records.len());
        if !records.is_empty() {
            self.transformer.do_send(Transform {
                origin: msg.origin,
                records,
                span: msg.span,
            });
        }
    }
}
