//! Where replayed records go: back to their source topic and partition (`--to-source`, through the
//! dead-letter producer) or straight to BigQuery (`--to-bigquery`: convert, transform, dedup and
//! insertAll with the pipeline's own stages). A BigQuery sink failure that outlasts
//! `errors.retry_timeout_ms` ends the replay with an error, its progress not committed past the
//! batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bqsink_actors::bigquery::{send_with_retry, BigQuery, RetryPolicy};
use bqsink_actors::config::Config;
use bqsink_actors::stage::batch::{BatchItem, Batcher};
use bqsink_actors::stage::convert::convert;
use bqsink_actors::stage::dedup::{Deduplicator, Position, Verdict};
use bqsink_actors::stage::transform::{TableRef, Transformer};
use rdkafka::message::{Header, OwnedHeaders};

use super::{Item, Sent};
use crate::destinations::dlq;

pub(super) enum Target {
    Source(dlq::Producer),
    BigQuery(Box<BqTarget>),
}

/// Produces each record to its original topic and partition; returns (replayed, 0, failures).
pub(super) fn send_to_source(
    runtime: &tokio::runtime::Runtime,
    producer: &dlq::Producer,
    items: &[Item],
) -> (u64, u64, Vec<(usize, String)>) {
    let mut failures = Vec::new();
    let mut pending = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(tp) = &item.origin else { continue };
        let mut hdrs = OwnedHeaders::new_with_capacity(item.raw.headers.len());
        for (key, value) in &item.raw.headers {
            hdrs = hdrs.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut record = dlq::original_record(&tp.topic, &item.raw, hdrs).partition(tp.partition);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push((i, delivery));
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    failures.push((i, format!("producing to {tp}: {e}")));
                    break;
                }
            }
        }
    }
    let mut replayed = 0;
    runtime.block_on(async {
        for (i, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => replayed += 1,
                Ok(Err((e, _))) => {
                    failures.push((i, format!("producing to the source topic: {e}")))
                }
                Err(_) => failures.push((i, "the producer was closed".into())),
            }
        }
    });
    (replayed, 0, failures)
}

/// The BigQuery path: the pipeline's own convert, transform and dedup, then insertAll with retries.
pub(super) struct BqTarget {
    bq: Arc<dyn BigQuery>,
    transformer: Transformer,
    dedup: Deduplicator,
    policy: RetryPolicy,
    max_rows: usize,
    max_bytes: usize,
}

struct ReplayRow {
    item: usize,
    table: Arc<TableRef>,
    entry: Vec<u8>,
}

impl BatchItem for ReplayRow {
    fn table(&self) -> &Arc<TableRef> {
        &self.table
    }
    fn size(&self) -> usize {
        self.entry.len()
    }
}

impl BqTarget {
    pub(super) fn new(config: &Config, bq: Arc<dyn BigQuery>) -> Self {
        Self {
            bq,
            transformer: Transformer::new(config),
            dedup: Deduplicator::new(
                config.dedup.max_keys,
                Duration::from_secs(config.dedup.ttl_secs),
            ),
            policy: RetryPolicy {
                timeout: Duration::from_millis(config.errors.retry_timeout_ms),
                max_delay: Duration::from_millis(config.errors.retry_delay_max_ms),
                min_delay: Duration::from_millis(100)
                    .min(Duration::from_millis(config.errors.retry_delay_max_ms)),
                // A replay is a command that ends: when BigQuery cannot take rows for
                // errors.retry_timeout_ms it stops (without committing its progress past them).
                give_up: true,
            },
            max_rows: config.batch.max_rows,
            max_bytes: config.batch.max_bytes,
        }
    }

    /// Returns (written, duplicates, failures by item index); an error when BigQuery could not
    /// take rows for `errors.retry_timeout_ms` (a sink failure: nothing of this batch counts as
    /// replayed or still failing, and the progress is not committed past it).
    pub(super) fn send(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        items: &[Item],
    ) -> anyhow::Result<Sent> {
        let mut failures = Vec::new();
        let mut duplicates = 0;
        let mut batcher = Batcher::new(self.max_rows, self.max_bytes);
        let mut batches = Vec::new();
        let now = Instant::now();
        for (i, item) in items.iter().enumerate() {
            let Some(tp) = &item.origin else { continue };
            let value = match convert(item.raw.payload.as_deref()) {
                Ok(v) => v,
                Err(e) => {
                    failures.push((i, format!("convert ({}): {e}", e.class())));
                    continue;
                }
            };
            let row = match self.transformer.apply(tp, &item.raw, value) {
                Ok(r) => r,
                Err(e) => {
                    failures.push((i, format!("transform ({}): {e}", e.class())));
                    continue;
                }
            };
            if let Some(hash) = row.dedup_hash {
                if self.dedup.check(hash, Position::new(tp, item.raw.offset)) == Verdict::Duplicate
                {
                    duplicates += 1;
                    continue;
                }
            }
            batches.extend(batcher.push(
                ReplayRow {
                    item: i,
                    table: row.table,
                    entry: row.body.into_json(),
                },
                now,
            ));
        }
        batches.extend(batcher.drain());
        let mut written = 0;
        for batch in batches {
            let entries: Vec<&[u8]> = batch.rows.iter().map(|r| r.entry.as_slice()).collect();
            let outcome = runtime.block_on(send_with_retry(
                &*self.bq,
                &batch.table,
                &entries,
                self.policy,
                &|_| true,
            ));
            if let Some(sf) = outcome.sink_failure {
                anyhow::bail!(
                    "BigQuery table {} could not take rows for {:.1?} ({}); the replay stops here \
                     and its progress is not committed past them: run it again later",
                    batch.table,
                    sf.after,
                    sf.error
                );
            }
            written += outcome.written.len() as u64;
            for (row, class, error) in outcome.failed {
                if let Some(r) = batch.rows.get(row) {
                    failures.push((
                        r.item,
                        format!("bigquery ({class}): table {}: {error}", batch.table),
                    ));
                }
            }
        }
        Ok((written, duplicates, failures))
    }
}
