//! The converter: bytes → JSON objects, on a pool of sync threads (CPU work off the actor thread).
//! Values of registry topics (`avro`, `protobuf`, `json_schema`) are decoded with their registered
//! schema into a JSON object first, and keys in those formats decoded beside it
//! ([`RegistryTopics::read`]); the resolver saw to it that the schemas are known.

use std::sync::Arc;

use actix::prelude::*;

use crate::error_report::ErrorReportActor;
use crate::messages::{Convert, ConvertedRecord, Failed, Failure, Stage, Transform};
use crate::registry::{RecordError, RegistryTopics};
use crate::stage::convert::{parse_object, ConvertError};
use crate::stage::guard::guarded;
use crate::telemetry;
use crate::transformer::TransformActor;

pub struct ConvertActor {
    pub transformer: Addr<TransformActor>,
    pub errors: Addr<ErrorReportActor>,
    /// Topics read through the Schema Registry, and their schemas (`kafka.formats`); `None` when
    /// every topic is JSON.
    pub registered: Option<RegistryTopics>,
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
        let registered = self.registered.as_ref().and_then(|r| {
            let formats = r.of(&msg.origin.tp.topic);
            formats.uses_registry().then_some((r, formats))
        });
        for source in msg.records {
            let converted = match registered {
                Some((registered, formats)) => guarded(
                    || registered.read(formats, source.key.as_deref(), source.payload.as_deref()),
                    RecordError::class,
                ),
                None => guarded(
                    || parse_object(source.payload.as_deref()),
                    ConvertError::class,
                ),
            };
            match converted {
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
