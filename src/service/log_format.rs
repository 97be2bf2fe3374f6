//! `logging.format = "json"`: one JSON object per line that Google Cloud Logging (and any other log
//! shipper) reads as a structured entry.
//!
//! Each line has `timestamp`, `level`, `target`, `message` and the event's own fields at the top
//! level, as `tracing-subscriber`'s flattened JSON has them, plus what Cloud Logging acts on:
//!
//! | field | value |
//! |---|---|
//! | `severity` | `DEBUG`, `INFO`, `WARNING`, `ERROR` (Cloud Logging's names; TRACE is DEBUG) |
//! | `logging.googleapis.com/trace` | `projects/<logging.trace_project>/traces/<trace id>` |
//! | `logging.googleapis.com/spanId` | the span's 16 hex digits |
//! | `logging.googleapis.com/trace_sampled` | whether the span is sampled |
//!
//! The trace fields come from the exported span the line was written in (`telemetry.otlp_endpoint`
//! set); a line outside any span that names a record's producer trace (`trace_id`, e.g. "record
//! failed") links to that trace. Hand-written rather than `tracing-stackdriver`, whose latest
//! release (0.10) is built on opentelemetry 0.22; bqsink uses 0.33.

use std::fmt;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Cloud Logging's key for the trace a line belongs to.
pub const TRACE_KEY: &str = "logging.googleapis.com/trace";
/// Cloud Logging's key for the span a line was written in.
pub const SPAN_KEY: &str = "logging.googleapis.com/spanId";
/// Cloud Logging's key for whether that span is sampled.
pub const SAMPLED_KEY: &str = "logging.googleapis.com/trace_sampled";

/// The JSON line format.
pub struct JsonLines {
    /// The Google Cloud project of the traces (`projects/<project>/traces/<id>`); empty: the bare
    /// trace id.
    pub project: String,
}

/// Cloud Logging's severity for a level.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("severity".into(), severity(meta.level()).into());
        let span = bqsink_actors::telemetry::current_span_context();
        let trace = match &span {
            Some((trace, _, _)) => Some(trace.to_string()),
            None => fields
                .0
                .get("trace_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if let Some(trace) = trace {
            let value = if self.project.is_empty() {
                trace
            } else {
                format!("projects/{}/traces/{trace}", self.project)
            };
            line.insert(TRACE_KEY.into(), value.into());
        }
        if let Some((_, span_id, sampled)) = span {
            line.insert(SPAN_KEY.into(), span_id.to_string().into());
            line.insert(SAMPLED_KEY.into(), sampled.into());
        }
        for (k, v) in fields.0 {
            line.entry(k).or_insert(v);
        }
        line.insert("target".into(), meta.target().into());
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// An event's fields as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().into(), v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(project: &str, f: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines {
                project: project.into(),
            })
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    #[test]
    fn lines_carry_cloud_logging_severity_and_the_fields() {
        let got = lines("", || {
            tracing::warn!(partition = 3, error = "boom", "commit failed");
            tracing::error!(ok = false, ratio = 0.5, "record failed");
        });
        assert_eq!(got[0]["severity"], "WARNING");
        assert_eq!(got[0]["level"], "WARN");
        assert_eq!(got[0]["message"], "commit failed");
        assert_eq!(got[0]["partition"], 3);
        assert_eq!(got[0]["error"], "boom");
        assert!(got[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(got[1]["severity"], "ERROR");
        assert_eq!(got[1]["ok"], false);
        assert_eq!(got[1]["ratio"], 0.5);
        assert!(got[1].get(TRACE_KEY).is_none(), "no trace, no trace field");
    }

    #[test]
    fn a_record_failure_links_to_its_producer_trace() {
        let got = lines("my-project", || {
            tracing::error!(
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                "record failed"
            );
        });
        assert_eq!(
            got[0][TRACE_KEY],
            "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(got[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
