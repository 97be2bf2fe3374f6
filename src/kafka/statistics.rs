//! librdkafka's statistics as Prometheus gauges: what an operator looks at when the consumer is
//! slow and BigQuery is not — broker round-trip times, brokers up, and how much librdkafka has
//! fetched ahead (its fetch queue) and not yet handed to the pipeline.
//!
//! librdkafka emits its statistics every `statistics.interval.ms`; [`super::consumer_config`] sets
//! that to `metrics.refresh_interval_ms` when metrics are on (a `kafka.properties` entry wins). The
//! consumer context passes each emission to [`record`]. Only brokers with a node id are labelled
//! (the bootstrap and coordinator connections have none), so the `broker` label is bounded by the
//! cluster's size.

use metrics::{describe_gauge, Unit};
use rdkafka::statistics::Statistics;

/// Names of the gauges.
pub mod names {
    pub const BROKER_RTT: &str = "bqsink_kafka_broker_rtt_seconds";
    pub const BROKER_UP: &str = "bqsink_kafka_broker_up";
    pub const FETCH_QUEUE_MESSAGES: &str = "bqsink_kafka_fetch_queue_messages";
    pub const FETCH_QUEUE_BYTES: &str = "bqsink_kafka_fetch_queue_bytes";
    pub const REPLY_QUEUE: &str = "bqsink_kafka_reply_queue_ops";
}

/// HELP lines of the gauges.
pub fn describe() {
    describe_gauge!(
        names::BROKER_RTT,
        Unit::Seconds,
        "Round-trip time to a broker over librdkafka's last statistics window, by broker id and \
         quantile (0.5, 0.99)"
    );
    describe_gauge!(
        names::BROKER_UP,
        "1 while librdkafka's connection to the broker is up, else 0"
    );
    describe_gauge!(
        names::FETCH_QUEUE_MESSAGES,
        Unit::Count,
        "Messages librdkafka fetched ahead and has not handed to the pipeline yet"
    );
    describe_gauge!(
        names::FETCH_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes librdkafka fetched ahead and has not handed to the pipeline yet"
    );
    describe_gauge!(
        names::REPLY_QUEUE,
        Unit::Count,
        "librdkafka operations (callbacks, events) waiting to be served by a poll"
    );
}

/// Sets the gauges from one statistics emission.
pub fn record(stats: &Statistics) {
    for broker in stats.brokers.values().filter(|b| b.nodeid >= 0) {
        let id = broker.nodeid.to_string();
        let up = if broker.state == "UP" { 1.0 } else { 0.0 };
        metrics::gauge!(names::BROKER_UP, "broker" => id.clone()).set(up);
        if let Some(rtt) = broker.rtt.as_ref().filter(|w| w.cnt > 0) {
            for (quantile, micros) in [("0.5", rtt.p50), ("0.99", rtt.p99)] {
                metrics::gauge!(names::BROKER_RTT, "broker" => id.clone(), "quantile" => quantile)
                    .set(micros as f64 / 1e6);
            }
        }
    }
    let (mut messages, mut bytes) = (0i64, 0u64);
    for partition in stats
        .topics
        .values()
        .flat_map(|t| t.partitions.values())
        .filter(|p| p.partition >= 0)
    {
        messages += partition.fetchq_cnt.max(0);
        bytes += partition.fetchq_size;
    }
    metrics::gauge!(names::FETCH_QUEUE_MESSAGES).set(messages as f64);
    metrics::gauge!(names::FETCH_QUEUE_BYTES).set(bytes as f64);
    metrics::gauge!(names::REPLY_QUEUE).set(stats.replyq as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// librdkafka's example statistics document (its STATISTICS.md, as rust-rdkafka's tests carry
    /// it), with a second broker (down, no round trips yet), a bootstrap connection (no node id)
    /// and fetch queues added: three partitions hold 10, 11 and 12 messages; the internal
    /// partition -1 (7) is not counted.
    const EMITTED: &str = include_str!("statistics_sample.json");

    #[test]
    fn brokers_with_an_id_and_the_fetch_queue_become_gauges() {
        let stats: Statistics = serde_json::from_str(EMITTED).expect("librdkafka's statistics");
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || record(&stats));
        let mut got: Vec<String> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels: Vec<String> = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                let DebugValue::Gauge(v) = value else {
                    panic!("not a gauge")
                };
                format!("{}{{{}}} {}", key.key().name(), labels.join(","), v)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "bqsink_kafka_broker_rtt_seconds{broker=0,quantile=0.5} 0.000193",
                "bqsink_kafka_broker_rtt_seconds{broker=0,quantile=0.99} 0.001183",
                "bqsink_kafka_broker_up{broker=0} 1",
                "bqsink_kafka_broker_up{broker=1} 0",
                "bqsink_kafka_fetch_queue_bytes{} 33000",
                "bqsink_kafka_fetch_queue_messages{} 33",
                "bqsink_kafka_reply_queue_ops{} 2",
            ]
        );
    }
}
