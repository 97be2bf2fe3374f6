//! The dead-letter topic (`errors.deadletterqueue.*`): failed records produced with their original
//! key, value, timestamp and headers, plus Kafka Connect's `__connect.errors.*` context headers.
//! The producer uses `acks=all` and idempotence; [`ErrorDestination::deliver`] resolves only when the
//! broker acknowledged every record, which is when the error report lets their offsets be committed.
//!
//! Any record the consumer can read must fit: the context headers add a bounded amount
//! ([`CONTEXT_HEADROOM`]; long values are cut at [`CONTEXT_VALUE_MAX`] bytes) and the producer's
//! `message.max.bytes` is the consumer's largest record plus that headroom ([`dlq_producer_config`]).
//! The topic must exist and be described at start ([`DeadLetterQueue::new`]), else bqsink does not
//! start. A produce error no retry can fix ([`is_permanent`]) is reported as such, so the error
//! report marks the dead-letter topic as a failing sink at once instead of retrying in silence.

use std::sync::Arc;
use std::time::Duration;

use bqsink_actors::config::Config;
use bqsink_actors::destinations::{
    connect_stage, stage_class_name, DeliveryError, ErrorDestination, FailureRecord,
};
use bqsink_actors::messages::RawRecord;
use futures::future::BoxFuture;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

/// Kafka Connect's error context headers.
pub mod headers {
    /// Prefix of every context header.
    pub const PREFIX: &str = "__connect.errors.";
    pub const TOPIC: &str = "__connect.errors.topic";
    pub const PARTITION: &str = "__connect.errors.partition";
    pub const OFFSET: &str = "__connect.errors.offset";
    pub const CONNECTOR_NAME: &str = "__connect.errors.connector.name";
    pub const TASK_ID: &str = "__connect.errors.task.id";
    pub const STAGE: &str = "__connect.errors.stage";
    pub const CLASS_NAME: &str = "__connect.errors.class.name";
    pub const EXCEPTION_CLASS_NAME: &str = "__connect.errors.exception.class.name";
    pub const EXCEPTION_MESSAGE: &str = "__connect.errors.exception.message";
    pub const EXCEPTION_STACKTRACE: &str = "__connect.errors.exception.stacktrace";
    /// bqsink's addition: the trace id of the record's W3C `traceparent` header, when it has one.
    pub const TRACE_ID: &str = "__connect.errors.trace.id";
}

mod setup;
use setup::kafka_error_is_permanent;
pub use setup::{
    check_topic, consumer_record_max, dlq_producer_config, is_permanent, producer_config,
    DlqSetupError, Producer, TokioRuntime,
};

/// Bytes a context header value keeps at most (the exception message and stack trace, which hold
/// the error text, can be long); the full text stays in the ERROR log line.
pub const CONTEXT_VALUE_MAX: usize = 4096;

/// What the context headers and their framing add to a record, at most: the copy of a record the
/// consumer could read always fits the producer's `message.max.bytes`.
pub const CONTEXT_HEADROOM: usize = 64 * 1024;

// Every context header (at most 11) with a capped value, its key and length varints, fits.
const _: () = assert!(11 * (50 + CONTEXT_VALUE_MAX + 10) <= CONTEXT_HEADROOM);

/// The dead-letter topic destination.
pub struct DeadLetterQueue {
    producer: Producer,
    topic: Arc<str>,
    context: Option<Arc<Context>>,
}

/// What the context headers say about this instance.
#[derive(Debug, Clone)]
pub struct Context {
    /// `__connect.errors.connector.name`: the consumer group.
    pub connector: String,
    /// `__connect.errors.task.id`: which instance (host and process).
    pub task_id: String,
}

impl Context {
    pub fn of(config: &Config) -> Self {
        Self {
            connector: config.kafka.group_id.clone(),
            task_id: task_id(),
        }
    }
}

/// `<hostname>-<pid>`: tells the instances of one group apart.
pub fn task_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bqsink".into());
    format!("{host}-{}", std::process::id())
}

/// `value`, cut to at most [`CONTEXT_VALUE_MAX`] bytes (at a character boundary, saying so).
fn capped(mut value: String) -> String {
    if value.len() <= CONTEXT_VALUE_MAX {
        return value;
    }
    let note = format!(" ... (truncated, {} bytes)", value.len());
    let mut end = CONTEXT_VALUE_MAX - note.len();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value.truncate(end);
    value.push_str(&note);
    value
}

/// The context headers of one failed record, in Kafka Connect's names and formats (UTF-8 strings),
/// each value at most [`CONTEXT_VALUE_MAX`] bytes.
pub fn context_headers(r: &FailureRecord, ctx: &Context) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (headers::TOPIC, r.tp.topic.to_string()),
        (headers::PARTITION, r.tp.partition.to_string()),
        (headers::OFFSET, r.source.offset.to_string()),
        (headers::CONNECTOR_NAME, ctx.connector.clone()),
        (headers::TASK_ID, ctx.task_id.clone()),
        (headers::STAGE, connect_stage(r.stage).to_owned()),
        (headers::CLASS_NAME, stage_class_name(r.stage).to_owned()),
        (headers::EXCEPTION_CLASS_NAME, r.class.to_owned()),
        (headers::EXCEPTION_MESSAGE, r.error.clone()),
        (
            headers::EXCEPTION_STACKTRACE,
            format!("{}: {}\n\tat stage {}", r.class, r.error, r.stage.as_str()),
        ),
    ];
    if let Some(id) = bqsink_actors::telemetry::trace_id_of(&r.source) {
        h.push((headers::TRACE_ID, id));
    }
    h.into_iter().map(|(k, v)| (k, capped(v))).collect()
}

impl DeadLetterQueue {
    /// Creates the producer for `errors.deadletterqueue.topic_name` (which must be set) and checks
    /// that the topic exists and may be described ([`check_topic`]). Blocks for up to 10 s.
    pub fn new(config: &Config) -> Result<Self, DlqSetupError> {
        let dlq = &config.errors.deadletterqueue;
        let producer: Producer =
            dlq_producer_config(config)
                .create()
                .map_err(|source| DlqSetupError::Create {
                    topic: dlq.topic_name.clone(),
                    source,
                })?;
        check_topic(&producer, &dlq.topic_name)?;
        Ok(Self {
            producer,
            topic: dlq.topic_name.as_str().into(),
            context: dlq
                .context_headers_enable
                .then(|| Arc::new(Context::of(config))),
        })
    }
}

impl ErrorDestination for DeadLetterQueue {
    fn name(&self) -> &'static str {
        "dead-letter topic"
    }

    fn sink_name(&self) -> String {
        format!("dead-letter topic {}", self.topic)
    }

    fn deliver(
        &self,
        records: Arc<[FailureRecord]>,
    ) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (producer, topic, context) = (
            self.producer.clone(),
            Arc::clone(&self.topic),
            self.context.clone(),
        );
        Box::pin(async move {
            let mut pending = Vec::with_capacity(records.len());
            let mut undelivered = Vec::new();
            let mut errors = Vec::new();
            // Whether any record failed for a reason no retry can fix.
            let mut permanent = false;
            for (i, r) in records.iter().enumerate() {
                let mut hdrs = OwnedHeaders::new_with_capacity(r.source.headers.len() + 10);
                for (key, value) in &r.source.headers {
                    hdrs = hdrs.insert(Header {
                        key,
                        value: value.as_deref(),
                    });
                }
                if let Some(ctx) = &context {
                    for (key, value) in context_headers(r, ctx) {
                        hdrs = hdrs.insert(Header {
                            key,
                            value: Some(value.as_str()),
                        });
                    }
                }
                let mut record = original_record(&topic, &r.source, hdrs);
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push((i, delivery));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err((e, _)) => {
                            undelivered.push(i);
                            permanent |= kafka_error_is_permanent(&e);
                            errors.push(format!("producing to {topic}: {e}"));
                            break;
                        }
                    }
                }
            }
            for (i, delivery) in pending {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        undelivered.push(i);
                        permanent |= kafka_error_is_permanent(&e);
                        errors.push(format!("delivery to {topic} failed: {e}"));
                    }
                    Err(_) => {
                        undelivered.push(i);
                        errors.push(format!("delivery to {topic}: the producer was closed"));
                    }
                }
            }
            if undelivered.is_empty() {
                return Ok(());
            }
            undelivered.sort_unstable();
            errors.sort_unstable();
            errors.dedup();
            Err(DeliveryError {
                undelivered,
                error: errors.join("; "),
                permanent,
            })
        })
    }
}

/// A record to produce with `raw`'s key, value and timestamp, and the given headers.
pub fn original_record<'a>(
    topic: &'a str,
    raw: &'a RawRecord,
    headers: OwnedHeaders,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(key) = &raw.key {
        record = record.key(key.as_slice());
    }
    if let Some(payload) = &raw.payload {
        record = record.payload(payload.as_slice());
    }
    if let Some(ts) = raw.timestamp_ms {
        record = record.timestamp(ts);
    }
    record
}

#[cfg(test)]
mod tests {
    use bqsink_actors::messages::{RawRecord, Stage, Tp};

    use super::*;

    #[test]
    fn context_headers_use_kafka_connect_names() {
        let r = FailureRecord {
            tp: Tp::new("events", 3),
            source: RawRecord {
                offset: 42,
                ..Default::default()
            },
            stage: Stage::BigQuery,
            class: "insert_error",
            error: "table ds.t: BigQuery rejected the row: invalid at x: no such field".into(),
        };
        let ctx = Context {
            connector: "g".into(),
            task_id: "h-1".into(),
        };
        let h = context_headers(&r, &ctx);
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("__connect.errors.topic"), Some("events"));
        assert_eq!(get("__connect.errors.partition"), Some("3"));
        assert_eq!(get("__connect.errors.offset"), Some("42"));
        assert_eq!(get("__connect.errors.connector.name"), Some("g"));
        assert_eq!(get("__connect.errors.task.id"), Some("h-1"));
        assert_eq!(get("__connect.errors.stage"), Some("TASK_PUT"));
        assert_eq!(
            get("__connect.errors.exception.class.name"),
            Some("insert_error")
        );
        assert!(get("__connect.errors.exception.message")
            .unwrap()
            .contains("no such field"));
        assert!(get("__connect.errors.class.name").is_some());
        assert!(get("__connect.errors.exception.stacktrace").is_some());
        assert_eq!(h.len(), 10);
        assert!(h.iter().all(|(k, _)| k.starts_with(headers::PREFIX)));
        // A record with a W3C traceparent header also names its trace.
        let traced = FailureRecord {
            source: RawRecord {
                headers: vec![(
                    "traceparent".into(),
                    Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()),
                )],
                ..r.source.clone()
            },
            ..r
        };
        let h = context_headers(&traced, &ctx);
        assert_eq!(h.len(), 11);
        assert!(h.contains(&(headers::TRACE_ID, "4bf92f3577b34da6a3ce929d0e0e4736".into())));
    }

    #[test]
    fn context_headers_add_a_bounded_amount_whatever_the_error_text() {
        // A 1 MB error text (e.g. a BigQuery reply quoting the row), with multi-byte characters.
        let huge = "é".repeat(500_000);
        let r = FailureRecord {
            tp: Tp::new("events", 3),
            source: RawRecord {
                offset: 42,
                headers: vec![(
                    "traceparent".into(),
                    Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()),
                )],
                ..Default::default()
            },
            stage: Stage::Transform,
            class: "transform_error",
            error: huge.clone(),
        };
        let ctx = Context {
            connector: "g".into(),
            task_id: "h-1".into(),
        };
        let h = context_headers(&r, &ctx);
        // Each header costs its key, its value and a few bytes of varint lengths.
        let added: usize = h.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
        assert!(added <= 64 * 1024, "context headers add {added} bytes");
        assert!(h.iter().all(|(_, v)| v.len() <= CONTEXT_VALUE_MAX));
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        let message = get(headers::EXCEPTION_MESSAGE).unwrap();
        assert!(message.starts_with("éé"), "cut at a character boundary");
        assert!(message.contains("truncated"), "says it was cut");
        let trace = get(headers::EXCEPTION_STACKTRACE).unwrap();
        assert!(trace.starts_with("transform_error: éé"));
        assert!(trace.contains("truncated"));
        // Short values are kept whole.
        assert_eq!(get(headers::TOPIC), Some("events"));
    }
}
