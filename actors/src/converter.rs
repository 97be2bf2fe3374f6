//! The converter: bytes → JSON objects, on a pool of sync threads (CPU work off the actor thread).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;

use crate::error_report::ErrorReportActor;
use crate::messages::{Convert, ConvertedRecord, Failed, Failure, Stage, Transform};
use crate::stage::convert::{parse_object, ConvertError};
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

/// Runs one record's stage work. Its error, or a panic on some input (which must not take the
/// stage down), becomes that record's failure: `(class, text)`.
pub fn guarded<T, E: std::fmt::Display>(
    work: impl FnOnce() -> Result<T, E>,
    class_of: impl Fn(&E) -> &'static str,
) -> Result<T, (&'static str, String)> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err((class_of(&e), e.to_string())),
        Err(panic) => Err(("internal_panic", panic_text(&panic))),
    }
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (panic) while processing the record: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_panics_become_a_class_and_a_text() {
        let ok: Result<u8, _> = guarded(|| Ok::<u8, std::fmt::Error>(7), |_| "never");
        assert_eq!(ok, Ok(7));
        let err = guarded(|| Err::<u8, _>(std::fmt::Error), |_| "fmt");
        assert_eq!(
            err,
            Err((
                "fmt",
                "an error occurred when formatting an argument".into()
            ))
        );
        let panicked = guarded(
            || -> Result<u8, std::fmt::Error> { panic!("boom {}", 1) },
            |_| "never",
        );
        let (class, text) = panicked.unwrap_err();
        assert_eq!(class, "internal_panic");
        assert!(text.contains("boom 1"), "{text}");
    }
}
