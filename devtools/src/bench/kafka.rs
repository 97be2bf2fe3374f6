//! The bench's own Kafka clients: watermarks and committed offsets for its checks, and the bare
//! consumer whose rate the pipeline is compared with.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{FETCH_WAIT_MS, GROUP};
use crate::kafka::TOPIC;
use crate::measure::{own_cpu, Rate};

fn client(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating a Kafka client")
}

/// (low, high) watermark of each partition.
pub(super) fn watermarks(bootstrap: &str, partitions: i32) -> anyhow::Result<Vec<(i64, i64)>> {
    let c = client(bootstrap, "bench-admin")?;
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .with_context(|| format!("watermarks of partition {p}"))
        })
        .collect()
}

/// Committed offset of each partition for the pipeline's group.
pub(super) fn committed(bootstrap: &str, partitions: i32) -> anyhow::Result<Vec<Option<i64>>> {
    let c = client(bootstrap, GROUP)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(TOPIC, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect())
}

/// Reads `n` records from offsets `from` on with a bare consumer that drops them: librdkafka's own
/// rate on this data, from the first record to the last.
///
/// It fetches with the worker's librdkafka settings (bqsink's fetch defaults and the bench's
/// `fetch.wait.max.ms`), so the ratio is the pipeline's cost over the same client.
pub(super) fn raw_consume(
    bootstrap: &str,
    fetch_defaults: &[(String, String)],
    from: &[i64],
    n: u64,
) -> anyhow::Result<Rate> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS);
    for (key, value) in fetch_defaults {
        config.set(key, value);
    }
    let c: BaseConsumer = config.create().context("creating the raw consumer")?;
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in from.iter().enumerate() {
        tpl.add_partition_offset(TOPIC, p as i32, Offset::Offset(*offset))?;
    }
    c.assign(&tpl)?;
    let cpu = own_cpu();
    let (mut records, mut bytes, mut first, mut last) = (0u64, 0u64, None, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(600);
    while records < n {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                bytes += m.payload_len() as u64;
                records += 1;
                last = Instant::now();
            }
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None if Instant::now() > deadline => bail!("raw consumer read {records} of {n}"),
            None => {}
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(Rate {
        records,
        bytes,
        secs,
        cpu_secs: own_cpu() - cpu,
    })
}
