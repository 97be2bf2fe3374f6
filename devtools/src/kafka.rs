//! Kafka for local runs: librdkafka's mock cluster and a producer that fills it fast.
//!
//! The mock cluster keeps only the newest 5 MiB per partition, so the producer writes lz4 batches
//! (a backlog of about 60,000 member events per partition fits) and waits, rather than failing,
//! while its own queue is full.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

/// The topic of the demo and the benchmark.
pub const TOPIC: &str = "member-events";

/// Starts a one-broker mock cluster with `topic` of `partitions` partitions.
pub fn mock_cluster(
    topic: &str,
    partitions: i32,
) -> anyhow::Result<MockCluster<'static, DefaultProducerContext>> {
    let cluster = MockCluster::new(1).context("starting the embedded Kafka mock cluster")?;
    cluster
        .create_topic(topic, partitions, 1)
        .with_context(|| format!("creating the topic {topic}"))?;
    Ok(cluster)
}

/// A producer for the mock cluster: lz4 batches, so a backlog fits the mock's 5 MiB per partition.
pub fn producer(bootstrap: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        .create()
        .context("creating the demo producer")
}

/// Produces one record, waiting while the producer's queue is full.
pub fn produce(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).context("producing a demo event"),
        }
    }
}
