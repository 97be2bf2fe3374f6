//! The converter: bytes → JSON objects, on a pool of sync threads (CPU work off the actor thread).

use std::sync::Arc;

use actix::prelude::*;

use crate::error_report::ErrorReportActor;
use crate::messages::{Convert, ConvertedRecord, Failed, Failure, Stage, Transform};
use crate::stage::convert::convert;
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
            tracing::debug_span!("convert", tp = %msg.origin.tp, records = msg.records.len())
                .entered();
        let mut records = Vec::with_capacity(msg.records.len());
        let mut failures = Vec::new();
        for source in msg.records {
            match convert(source.payload.as_deref()) {
                Ok(value) => records.push(ConvertedRecord { source, value }),
                Err(e) => failures.push(Failure {
                    origin: Arc::clone(&msg.origin),
                    class: e.class(),
                    error: e.to_string(),
                    stage: Stage::Convert,
                    source,
                }),
            }
        }
        if !failures.is_empty() {
            self.errors.do_send(Failed { failures });
        }
        if !records.is_empty() {
            self.transformer.do_send(Transform {
                origin: msg.origin,
                records,
            });
        }
    }
}
