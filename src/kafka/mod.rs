//! The Kafka adapter (rdkafka): the group consumer behind the pipeline's
//! `bqsink_actors::kafka::KafkaControl` port.
//!
//! Invariant: an offset reaches the broker only through [`Command::Commit`] from the actors (which
//! send it once every record before it is in BigQuery or a dead-letter destination) or through the
//! synchronous commit on revocation of what the partition's consumer reports as handled; librdkafka
//! never commits or stores offsets by itself (`enable.auto.commit` and `enable.auto.offset.store`
//! are off in [`consumer_config`]).
//!
//! | module | holds |
//! |---|---|
//! | [`control`](mod@control) | [`RdKafkaControl`]: the actors' commands to the consumer thread |
//! | [`consumer`] | the consumer thread: polling, chunks per partition, rebalance callbacks, commits |
//! | [`statistics`] | librdkafka's statistics as gauges |
//! | this file | the consumer's librdkafka settings, set-up errors |
//!
//! Depends on: `bqsink_actors` and rdkafka only; nothing else in this crate (the replay consumer and
//! the admin API's lag client reuse [`consumer_config`]).

use bqsink_actors::config::Config;
use rdkafka::config::ClientConfig;

pub mod consumer;
pub mod control;
pub mod statistics;
mod warmup;

pub use consumer::{spawn_consumer, SinkContext};
pub use control::{control, Command, RdKafkaControl};

/// Offset commits the broker refused or that failed, by error (a counter).
pub const COMMIT_FAILURES: &str = "bqsink_offset_commit_failures_total";
/// Rebalance callbacks, by kind: assigned, revoked (a counter).
pub const REBALANCES: &str = "bqsink_rebalances_total";
/// Partitions assigned or revoked by rebalances, by kind (a counter).
pub const REBALANCE_PARTITIONS: &str = "bqsink_rebalance_partitions_total";

/// HELP lines of the consumer's metrics.
pub fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        COMMIT_FAILURES,
        "Offset commits that failed (the records are committed by a later commit or read again), \
         by librdkafka error code"
    );
    describe_counter!(
        REBALANCES,
        "Consumer group rebalances seen, by kind: assigned, revoked"
    );
    describe_counter!(
        REBALANCE_PARTITIONS,
        "Partitions assigned to or revoked from this instance, by kind"
    );
    statistics::describe();
}

/// Errors setting up the consumer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka consumer (check kafka.brokers and kafka.properties)")]
    Create(#[source] rdkafka::error::KafkaError),
    #[error("cannot subscribe to topics {topics:?}")]
    Subscribe {
        topics: Vec<String>,
        source: rdkafka::error::KafkaError,
    },
}

/// librdkafka fetch settings bqsink changes (README, Performance); `kafka.properties` overrides
/// them. Prefetch at most 4 MiB (librdkafka: 64 MiB): records wait in the pipeline's in-flight
/// budget instead. With a queue that small, librdkafka's 1 s back-off when it is full stalls the
/// pipeline; 20 ms does not.
pub const FETCH_DEFAULTS: [(&str, &str); 2] = [
    ("queued.max.messages.kbytes", "4096"),
    ("fetch.queue.backoff.ms", "20"),
];

/// librdkafka settings for the group consumer: explicit commits of handled offsets only.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("auto.offset.reset", k.auto_offset_reset.as_str())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    for (key, value) in FETCH_DEFAULTS {
        c.set(key, value);
    }
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}
