//! Reading failed records back from a dead-letter topic: from the replay group's committed offsets to
//! the end offsets it had when the replay started, each dead letter rebuilt into its original record
//! with its origin from the context headers. (Error files are read by `files`.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bqsink_actors::config::Config;
use bqsink_actors::destinations::parse_stage;
use bqsink_actors::messages::{RawRecord, Tp};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::Item;
use crate::destinations::dlq::headers;

/// Reads a dead-letter topic from the replay group's committed offsets to the end offsets it had
/// when the replay started.
pub(super) struct DlqReader {
    consumer: BaseConsumer,
    topic: String,
    /// Partition → (next offset to read, end offset).
    partitions: HashMap<i32, (i64, i64)>,
}

impl DlqReader {
    pub(super) fn open(config: &Config, topic: &str, group: &str) -> anyhow::Result<Self> {
        let mut cc = crate::kafka::consumer_config(config);
        cc.set("group.id", group)
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = cc
            .create()
            .context("creating the replay consumer (check kafka.brokers)")?;
        let timeout = Duration::from_secs(30);
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("reading the metadata of {topic}"))?;
        let parts: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!parts.is_empty(), "topic {topic:?} does not exist");
        let mut tpl = TopicPartitionList::new();
        for &p in &parts {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .with_context(|| format!("reading the committed offsets of group {group:?}"))?;
        let mut partitions = HashMap::new();
        let mut assign = TopicPartitionList::new();
        for &p in &parts {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .with_context(|| format!("reading the end offsets of {topic}[{p}]"))?;
            let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => low,
            };
            if start < high {
                assign.add_partition_offset(topic, p, Offset::Offset(start))?;
                partitions.insert(p, (start, high));
            }
        }
        consumer
            .assign(&assign)
            .with_context(|| format!("assigning {topic}"))?;
        tracing::info!(
            topic,
            group,
            to_read = partitions.values().map(|(s, e)| e - s).sum::<i64>(),
            "replaying from the dead-letter topic"
        );
        Ok(Self {
            consumer,
            topic: topic.into(),
            partitions,
        })
    }

    pub(super) fn remaining(&self) -> u64 {
        self.partitions.values().map(|(s, e)| (e - s) as u64).sum()
    }

    pub(super) fn done(&self) -> bool {
        self.partitions.values().all(|(next, end)| next >= end)
    }

    pub(super) fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut idle = Instant::now();
        while items.len() < max && !self.done() {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => {
                    idle = Instant::now();
                    let Some((next, end)) = self.partitions.get_mut(&msg.partition()) else {
                        continue;
                    };
                    if msg.offset() >= *end {
                        *next = (*next).max(*end);
                        continue;
                    }
                    *next = msg.offset() + 1;
                    items.push(item_from_dlq(&msg));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading the dead-letter topic"),
                None => {
                    // Offsets that hold no record (transaction markers, compaction) are never
                    // delivered: take the consumer's position for them.
                    if let Ok(pos) = self.consumer.position() {
                        for e in pos.elements_for_topic(&self.topic) {
                            if let (Offset::Offset(o), Some((next, _))) =
                                (e.offset(), self.partitions.get_mut(&e.partition()))
                            {
                                *next = (*next).max(o);
                            }
                        }
                    }
                    anyhow::ensure!(
                        idle.elapsed() < Duration::from_secs(60),
                        "no record from {} for 60 s before its end offsets",
                        self.topic
                    );
                }
            }
        }
        Ok(items)
    }

    /// Commits what was read (and sent) so far.
    pub(super) fn commit(&self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (&p, &(next, _)) in &self.partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .context("committing the replay progress")
    }
}

/// An original record rebuilt from a dead-letter record: context headers give its origin, the
/// other headers are its own.
pub(super) fn item_from_dlq(msg: &rdkafka::message::BorrowedMessage<'_>) -> Item {
    let mut own = Vec::new();
    let mut context: HashMap<&str, String> = HashMap::new();
    if let Some(hs) = msg.headers() {
        for h in hs.iter() {
            if h.key.starts_with(headers::PREFIX) {
                if let Some(v) = h.value {
                    context.insert(h.key, String::from_utf8_lossy(v).into_owned());
                }
            } else {
                own.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
            }
        }
    }
    let origin = match (
        context.get(headers::TOPIC),
        context
            .get(headers::PARTITION)
            .and_then(|p| p.parse::<i32>().ok()),
    ) {
        (Some(t), Some(p)) => Some(Tp::new(t.as_str(), p)),
        _ => None,
    };
    Item {
        origin,
        raw: RawRecord {
            offset: context
                .get(headers::OFFSET)
                .and_then(|o| o.parse().ok())
                .unwrap_or(msg.offset()),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: own,
        },
        stage: context.get(headers::STAGE).and_then(|s| parse_stage(s)),
    }
}
