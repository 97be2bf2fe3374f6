//! The converter: bytes → JSON objects, on a pool of sync threads (CPU work off the actor thread).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;

use crate::error_report::ErrorReportActor;
use crate::messages::{Convert, ConvertedRecord, Failed, Failure, Stage, Transform};
use crate::stage::convert::parse_object;
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
            // A panic on some input must not take the stage down: it is that record's failure.
            let result = catch_unwind(AssertUnwindSafe(|| parse_object(source.payload.as_deref())));
            let (class, error) = match result {
                Ok(Ok(value)) => {
                    records.push(ConvertedRecord {
                        trace: telemetry::record_span(&msg.origin.tp, &source),
                        source,
                        value,
                    });
                    continue;
                }
                Ok(Err(e)) => (e.class(), e.to_string()),
                Err(panic) => ("internal_panic", panic_text(&panic)),
            };
            failures.push(Failure {
                origin: Arc::clone(&msg.origin),
                class,
                error,
                stage: Stage::Convert,
                source,
            });
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

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (panic) while processing the record: {text}")
}
