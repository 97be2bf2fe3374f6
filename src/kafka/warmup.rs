//! Dedup warm-up (`dedup.warmup_records`), on the consumer thread during an assignment.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bqsink_actors::config::{Config, DedupKey};
use bqsink_actors::messages::{RawRecord, Tp};
use bqsink_actors::stage::convert::convert;
use bqsink_actors::stage::dedup::Position;
use bqsink_actors::stage::transform::Transformer;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{consumer_config, KafkaSetupError};

/// Dedup warm-up (`dedup.warmup_records`): reads back the records just before each newly assigned
/// partition's committed offset with a group-less consumer and derives their dedup keys exactly as
/// the transform stage does.
pub(super) struct Warmup {
    reader: BaseConsumer,
    transformer: Mutex<Transformer>,
    records: i64,
}

impl Warmup {
    pub(super) fn new(config: &Config) -> Result<Option<Self>, KafkaSetupError> {
        if config.dedup.warmup_records == 0 || config.dedup.key == DedupKey::None {
            return Ok(None);
        }
        let mut c = consumer_config(config);
        c.set("group.id", format!("{}-warmup", config.kafka.group_id));
        let reader = c.create().map_err(KafkaSetupError::Create)?;
        Ok(Some(Self {
            reader,
            transformer: Mutex::new(Transformer::new(config)),
            records: i64::try_from(config.dedup.warmup_records).unwrap_or(i64::MAX),
        }))
    }

    pub(super) fn keys_before_committed<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) -> Vec<(u64, Position)> {
        let timeout = Duration::from_secs(10);
        let committed = match consumer.committed_offsets(tpl.clone(), timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dedup warm-up skipped: cannot read committed offsets");
                return Vec::new();
            }
        };
        let mut keys = Vec::new();
        for e in committed.elements() {
            let Offset::Offset(end) = e.offset() else {
                continue;
            };
            let tp = Tp::new(e.topic(), e.partition());
            match self.read_range(&tp, end, &mut keys) {
                Ok(n) => tracing::info!(%tp, records = n, before = end, "dedup warm-up read"),
                Err(err) => tracing::warn!(%tp, error = %err, "dedup warm-up of partition failed"),
            }
        }
        let _ = self.reader.unassign();
        keys
    }

    /// Reads `[max(low, end - records), end)` of one partition and pushes the records' keys.
    fn read_range(&self, tp: &Tp, end: i64, keys: &mut Vec<(u64, Position)>) -> KafkaResult<usize> {
        let (low, _) =
            self.reader
                .fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(10))?;
        let start = low.max(end - self.records);
        if start >= end {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(start))?;
        self.reader.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut read = 0;
        let Ok(mut transformer) = self.transformer.lock() else {
            return Ok(0);
        };
        while Instant::now() < deadline {
            let Some(msg) = self.reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            let msg = msg?;
            if msg.offset() >= end {
                break;
            }
            read += 1;
            let source = RawRecord {
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                ..RawRecord::default()
            };
            let Ok(value) = convert(source.payload.as_deref()) else {
                continue;
            };
            if let Ok(row) = transformer.apply(tp, &source, value) {
                if let Some(hash) = row.dedup_hash {
                    keys.push((hash, Position::new(tp, msg.offset())));
                }
            }
            if msg.offset() + 1 >= end {
                break;
            }
        }
        Ok(read)
    }
}
