//! Setting up the dead-letter producer: its properties, the start-up check of the topic, and which
//! produce errors no retry can fix.
//!
//! Invariant: any record the consumer can read fits the dead-letter producer — its
//! `message.max.bytes` is the consumer's largest record plus [`CONTEXT_HEADROOM`], what the context
//! headers add at most — and a dead-letter topic that does not exist or may not be described stops
//! the start instead of freezing the first partition that fails a record.

use std::time::Duration;

use bqsink_actors::config::Config;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};

use super::CONTEXT_HEADROOM;

/// rdkafka's own tokio runtime (feature `tokio`) for its future producer: the actors run on tokio.
pub use rdkafka::util::TokioRuntime;

/// The producer type used for the dead-letter topic and by `bqsink replay`.
pub type Producer = FutureProducer<rdkafka::client::DefaultClientContext, TokioRuntime>;

/// Errors setting up the dead-letter producer.
#[derive(Debug, thiserror::Error)]
pub enum DlqSetupError {
    #[error("cannot create the dead-letter producer for topic {topic:?} (check kafka.brokers, kafka.properties and errors.deadletterqueue.properties)")]
    Create {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("errors.deadletterqueue.topic_name = {topic:?}: the topic does not exist (bqsink does not create it: create it, or correct the name)")]
    Missing { topic: String },
    #[error("errors.deadletterqueue.topic_name = {topic:?}: not authorized to use the topic (grant the producer Describe and Write on it)")]
    Unauthorized { topic: String },
    #[error(
        "errors.deadletterqueue.topic_name = {topic:?}: the brokers answered {error} for the topic"
    )]
    Unusable {
        topic: String,
        error: RDKafkaErrorCode,
    },
}

/// How long the start-up check waits for the topic's metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's `receive.message.max.bytes` default: the largest response, hence record, the
/// consumer accepts unless `kafka.properties` says otherwise.
const CONSUMER_RECORD_MAX_DEFAULT: usize = 100_000_000;

/// librdkafka's upper bound for `message.max.bytes`.
const PRODUCER_MESSAGE_MAX: usize = 1_000_000_000;

/// An idempotent `acks=all` producer over `kafka.brokers` and `kafka.properties`, with `extra`
/// properties on top.
pub fn producer_config(
    config: &Config,
    extra: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in &config.kafka.properties {
        if !is_consumer_only(k) {
            c.set(k, v);
        }
    }
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// The dead-letter producer's properties: [`producer_config`] with `errors.deadletterqueue.properties`
/// on top, and, unless those set them, `message.max.bytes` sized for the largest record the consumer
/// reads plus [`CONTEXT_HEADROOM`], and no automatic topic creation (a misspelt name is an error,
/// not a new topic).
pub fn dlq_producer_config(config: &Config) -> ClientConfig {
    let dlq = &config.errors.deadletterqueue;
    let mut c = producer_config(config, &dlq.properties);
    if !dlq.properties.contains_key("message.max.bytes") {
        let max = consumer_record_max(config)
            .saturating_add(CONTEXT_HEADROOM)
            .min(PRODUCER_MESSAGE_MAX);
        c.set("message.max.bytes", max.to_string());
    }
    if !dlq.properties.contains_key("allow.auto.create.topics") {
        c.set("allow.auto.create.topics", "false");
    }
    c
}

/// The largest record the consumer reads: its `receive.message.max.bytes` (a record larger than
/// `fetch.max.bytes` is still returned, one larger than this is not).
pub fn consumer_record_max(config: &Config) -> usize {
    config
        .kafka
        .properties
        .get("receive.message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CONSUMER_RECORD_MAX_DEFAULT)
}

/// Produce errors that no retry of the same record can fix until someone changes something (the
/// topic's or the producer's size limit, an ACL, a missing or misnamed topic, the producer's
/// configuration): the record is too large (`MessageSizeTooLarge`, `MessageBatchTooLarge` —
/// Kafka's RECORD_LIST_TOO_LARGE —, `InvalidMessageSize`), the broker rejects it (`InvalidRecord`,
/// `PolicyViolation`, `UnsupportedForMessageFormat`, `UnsupportedCompressionType`,
/// `InvalidRequiredAcks`), the topic is not there (`UnknownTopicOrPartition`, `UnknownTopic`,
/// `UnknownPartition`, `InvalidTopic`), access is denied (`TopicAuthorizationFailed`,
/// `ClusterAuthorizationFailed`, `SaslAuthenticationFailed`, `Authentication`), or the producer
/// itself is dead (`Fatal`). Everything else (time-outs, a broker down, not enough replicas,
/// `QueueFull`) may pass by itself.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        E::MessageSizeTooLarge
            | E::MessageBatchTooLarge
            | E::InvalidMessageSize
            | E::InvalidRecord
            | E::PolicyViolation
            | E::UnsupportedForMessageFormat
            | E::UnsupportedCompressionType
            | E::InvalidRequiredAcks
            | E::UnknownTopicOrPartition
            | E::UnknownTopic
            | E::UnknownPartition
            | E::InvalidTopic
            | E::TopicAuthorizationFailed
            | E::ClusterAuthorizationFailed
            | E::SaslAuthenticationFailed
            | E::Authentication
            | E::Fatal
    )
}

/// Whether a produce error is [permanent](is_permanent).
pub(super) fn kafka_error_is_permanent(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(is_permanent)
}

/// Consumer properties librdkafka would warn about on a producer.
fn is_consumer_only(key: &str) -> bool {
    key.starts_with("session.timeout")
        || key.starts_with("max.poll")
        || key.starts_with("heartbeat")
        || key.starts_with("fetch.")
        || key.starts_with("group.")
        || key.starts_with("auto.offset")
        || key.starts_with("enable.auto")
        || key.starts_with("partition.assignment")
        || key == "isolation.level"
}

/// Asks the brokers about `topic`: an unknown topic or a denied authorization is an error. Brokers
/// that do not answer in time are not (the consumer has the same wait ahead of it; a produce that
/// fails later is a sink failure): that is logged and the start goes on.
pub fn check_topic(producer: &Producer, topic: &str) -> Result<(), DlqSetupError> {
    let metadata = match producer
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
    {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(
                topic, error = %e,
                "cannot check the dead-letter topic at start (no metadata); going on"
            );
            return Ok(());
        }
    };
    let topic_err = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| (t.error(), t.partitions().is_empty()));
    let owned = || topic.to_owned();
    match topic_err {
        None
        | Some((Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), _))
        | Some((None, true)) => Err(DlqSetupError::Missing { topic: owned() }),
        Some((
            Some(
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED
                | RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED,
            ),
            _,
        )) => Err(DlqSetupError::Unauthorized { topic: owned() }),
        Some((Some(error), _)) => Err(DlqSetupError::Unusable {
            topic: owned(),
            error: error.into(),
        }),
        Some((None, false)) => Ok(()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_producer_takes_any_record_the_consumer_reads_plus_headers() {
        let mut config = Config::default();
        config.errors.deadletterqueue.topic_name = "t.DLT".into();
        let c = dlq_producer_config(&config);
        let max = |c: &ClientConfig| {
            c.get("message.max.bytes")
                .unwrap()
                .parse::<usize>()
                .unwrap()
        };
        // librdkafka's consumer default (receive.message.max.bytes), not its producer's 1000000.
        assert_eq!(max(&c), 100_000_000 + CONTEXT_HEADROOM);
        assert_eq!(c.get("allow.auto.create.topics"), Some("false"));
        assert_eq!(c.get("acks"), Some("all"));
        // A consumer limit set in kafka.properties is followed.
        config
            .kafka
            .properties
            .insert("receive.message.max.bytes".into(), "5000000".into());
        assert_eq!(
            max(&dlq_producer_config(&config)),
            5_000_000 + CONTEXT_HEADROOM
        );
        // The producer's limit never exceeds what librdkafka accepts.
        config
            .kafka
            .properties
            .insert("receive.message.max.bytes".into(), "2147483647".into());
        assert_eq!(max(&dlq_producer_config(&config)), 1_000_000_000);
        // The user's own settings win.
        let props = &mut config.errors.deadletterqueue.properties;
        props.insert("message.max.bytes".into(), "2000000".into());
        props.insert("allow.auto.create.topics".into(), "true".into());
        let c = dlq_producer_config(&config);
        assert_eq!(max(&c), 2_000_000);
        assert_eq!(c.get("allow.auto.create.topics"), Some("true"));
    }

    #[test]
    fn errors_no_retry_can_fix_are_permanent() {
        use RDKafkaErrorCode as E;
        for e in [
            E::MessageSizeTooLarge,
            E::MessageBatchTooLarge,
            E::InvalidRecord,
            E::TopicAuthorizationFailed,
            E::UnknownTopicOrPartition,
            E::UnknownTopic,
        ] {
            assert!(is_permanent(e), "{e:?}");
            assert!(kafka_error_is_permanent(&KafkaError::MessageProduction(e)));
        }
        for e in [
            E::MessageTimedOut,
            E::NotEnoughReplicas,
            E::QueueFull,
            E::AllBrokersDown,
            E::RequestTimedOut,
            E::NotLeaderForPartition,
        ] {
            assert!(!is_permanent(e), "{e:?}");
        }
        assert!(!kafka_error_is_permanent(&KafkaError::Canceled));
    }

    #[test]
    fn consumer_properties_are_not_passed_to_the_producer() {
        let mut config = Config::default();
        config
            .kafka
            .properties
            .insert("session.timeout.ms".into(), "6000".into());
        config
            .kafka
            .properties
            .insert("security.protocol".into(), "SSL".into());
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("message.timeout.ms".into(), "1000".into());
        let c = producer_config(&config, &extra);
        assert_eq!(c.get("session.timeout.ms"), None);
        assert_eq!(c.get("security.protocol"), Some("SSL"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("message.timeout.ms"), Some("1000"));
    }
}
