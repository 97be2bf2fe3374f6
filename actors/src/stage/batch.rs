//! Batch: rows grouped per table into insertAll requests within `batch.max_rows`, `batch.max_bytes`
//! and `batch.linger_ms`, and the request body encoding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::messages::Row;
use crate::stage::transform::TableRef;

/// What the batcher needs to know about a row.
pub trait BatchItem {
    fn table(&self) -> &Arc<TableRef>;
    /// The encoded row's size (an insertAll `rows[]` entry, or a protobuf row).
    fn size(&self) -> usize;
    /// Which lane of its table the row belongs to, when batches are per lane (its partition, for
    /// exactly-once delivery: one stream per table and partition). Default: one lane.
    fn lane(&self) -> usize {
        0
    }
}

impl BatchItem for Row {
    fn table(&self) -> &Arc<TableRef> {
        &self.table
    }
    fn size(&self) -> usize {
        self.body.len()
    }
    fn lane(&self) -> usize {
        // The partition's origin: one per assigned partition (and incarnation).
        Arc::as_ptr(&self.origin) as usize
    }
}

/// Rows for one table, sent as one request.
#[derive(Debug)]
pub struct Batch<T> {
    pub table: Arc<TableRef>,
    pub rows: Vec<T>,
    /// Size of the request body these rows make.
    pub bytes: usize,
    opened: Instant,
    /// The lane of its rows ([`BatchItem::lane`]) when batches are per lane, else 0.
    lane: usize,
}

impl<T> Batch<T> {
    /// The lane of its rows ([`BatchItem::lane`]) when batches are per lane, else 0.
    pub fn lane(&self) -> usize {
        self.lane
    }
}

/// The envelope around the rows: `{"skipInvalidRows":false,"ignoreUnknownValues":false,"rows":[` … `]}`.
const BODY_HEAD: &[u8] = br#"{"skipInvalidRows":false,"ignoreUnknownValues":false,"rows":["#;
const BODY_TAIL: &[u8] = b"]}";

/// Encodes an insertAll request body from rows' entries.
pub fn encode_body<'a>(entries: impl IntoIterator<Item = &'a [u8]>, size_hint: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size_hint.max(BODY_HEAD.len() + BODY_TAIL.len()));
    body.extend_from_slice(BODY_HEAD);
    for (i, e) in entries.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(BODY_TAIL);
    body
}

/// insertAll's request options (`bigquery.skip_invalid_rows`, `bigquery.ignore_unknown_values`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertOptions {
    pub skip_invalid_rows: bool,
    pub ignore_unknown_values: bool,
}

/// Encodes an insertAll request body with these options. Never longer than [`encode_body`]'s (which
/// the batcher's size accounting assumes): `true` is shorter than `false`.
pub fn encode_body_with<'a>(
    options: InsertOptions,
    entries: impl IntoIterator<Item = &'a [u8]>,
    size_hint: usize,
) -> Vec<u8> {
    let mut body = encode_body(entries, size_hint);
    if options != InsertOptions::default() {
        let head = format!(
            r#"{{"skipInvalidRows":{},"ignoreUnknownValues":{},"rows":["#,
            options.skip_invalid_rows, options.ignore_unknown_values
        );
        body.splice(..BODY_HEAD.len(), head.into_bytes());
    }
    body
}

/// Groups rows per table.
pub struct Batcher<T> {
    max_rows: usize,
    max_bytes: usize,
    /// One batch per (table, lane) instead of per table.
    per_lane: bool,
    /// Open batches, one per table: a handful, searched by pointer first (rows of a table share
    /// its `Arc`), without hashing table names per row.
    open: Vec<Batch<T>>,
}

impl<T: BatchItem> Batcher<T> {
    pub fn new(max_rows: usize, max_bytes: usize) -> Self {
        Self {
            max_rows,
            max_bytes,
            per_lane: false,
            open: Vec::new(),
        }
    }

    /// Batches per (table, lane): exactly-once delivery appends each partition's rows to its own
    /// stream, one request at a time, so a batch mixing partitions would become many small appends.
    pub fn per_lane(mut self, on: bool) -> Self {
        self.per_lane = on;
        self
    }

    /// Adds a row. Returns the batches that became ready: the table's open batch when this row does
    /// not fit in it, and the new batch when it reached `max_rows`.
    pub fn push(&mut self, row: T, now: Instant) -> Vec<Batch<T>> {
        let mut ready = Vec::new();
        let size = row.size();
        let lane = if self.per_lane { row.lane() } else { 0 };
        let fresh = || Batch {
            table: row.table().clone(),
            // Rows are moved in one by one: room for a full batch (within reason) up front.
            rows: Vec::with_capacity(self.max_rows.min(1024)),
            bytes: BODY_HEAD.len() + BODY_TAIL.len(),
            opened: now,
            lane,
        };
        let i = match self.position(row.table(), lane) {
            Some(i) => {
                let b = &mut self.open[i];
                // The row and its separating comma do not fit: send what is there, start anew.
                if b.bytes + size + 1 > self.max_bytes {
                    ready.push(std::mem::replace(b, fresh()));
                }
                i
            }
            None => {
                self.open.push(fresh());
                self.open.len() - 1
            }
        };
        let batch = &mut self.open[i];
        batch.bytes += size + usize::from(!batch.rows.is_empty());
        batch.rows.push(row);
        if batch.rows.len() >= self.max_rows || batch.bytes >= self.max_bytes {
            ready.push(self.open.swap_remove(i));
        }
        ready
    }

    /// The open batch of `table` (and `lane`).
    fn position(&self, table: &Arc<TableRef>, lane: usize) -> Option<usize> {
        self.open
            .iter()
            .position(|b| b.lane == lane && Arc::ptr_eq(&b.table, table))
            .or_else(|| {
                self.open
                    .iter()
                    .position(|b| b.lane == lane && *b.table == **table)
            })
    }

    /// Takes the batches open for at least `linger`.
    pub fn due(&mut self, now: Instant, linger: Duration) -> Vec<Batch<T>> {
        let (due, open) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|b| now.duration_since(b.opened) >= linger);
        self.open = open;
        due
    }

    /// Takes every open batch.
    pub fn drain(&mut self) -> Vec<Batch<T>> {
        std::mem::take(&mut self.open)
    }

    /// Rows waiting in open batches.
    pub fn pending_rows(&self) -> usize {
        self.open.iter().map(|b| b.rows.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(Arc<TableRef>, Vec<u8>);
    impl BatchItem for R {
        fn table(&self) -> &Arc<TableRef> {
            &self.0
        }
        fn size(&self) -> usize {
            self.1.len()
        }
    }

    fn table(name: &str) -> Arc<TableRef> {
        Arc::new(TableRef {
            dataset: "d".into(),
            table: name.into(),
        })
    }

    fn row(t: &Arc<TableRef>, n: usize) -> R {
        R(
            t.clone(),
            format!("{{\"json\":{{\"n\":{n}}}}}").into_bytes(),
        )
    }

    struct L(Arc<TableRef>, usize);
    impl BatchItem for L {
        fn table(&self) -> &Arc<TableRef> {
            &self.0
        }
        fn size(&self) -> usize {
            2
        }
        fn lane(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn per_lane_batches_keep_each_lanes_rows_apart() {
        let t = table("a");
        let now = Instant::now();
        let mut b = Batcher::new(2, 1_000_000).per_lane(true);
        assert!(b.push(L(t.clone(), 1), now).is_empty());
        assert!(
            b.push(L(t.clone(), 2), now).is_empty(),
            "another lane: another batch"
        );
        let full = b.push(L(t.clone(), 1), now);
        assert_eq!(full.len(), 1);
        assert!(full[0].rows.iter().all(|r| r.1 == 1));
        let mut one = Batcher::new(2, 1_000_000);
        one.push(L(t.clone(), 1), now);
        assert_eq!(
            one.push(L(t, 2), now).len(),
            1,
            "without lanes, one batch per table"
        );
    }

    #[test]
    fn insert_options_are_encoded_and_never_lengthen_the_body() {
        let t = table("a");
        let rows = [row(&t, 1), row(&t, 2)];
        let plain = encode_body(rows.iter().map(|r| r.1.as_slice()), 0);
        for (skip, ignore) in [(false, false), (true, false), (false, true), (true, true)] {
            let opts = InsertOptions {
                skip_invalid_rows: skip,
                ignore_unknown_values: ignore,
            };
            let body = encode_body_with(opts, rows.iter().map(|r| r.1.as_slice()), 0);
            assert!(body.len() <= plain.len());
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["skipInvalidRows"], skip);
            assert_eq!(v["ignoreUnknownValues"], ignore);
            assert_eq!(v["rows"][1]["json"]["n"], 2);
        }
    }

    #[test]
    fn full_by_rows() {
        let t = table("a");
        let mut b = Batcher::new(3, 1_000_000);
        let now = Instant::now();
        assert!(b.push(row(&t, 1), now).is_empty());
        assert!(b.push(row(&t, 2), now).is_empty());
        let ready = b.push(row(&t, 3), now);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].rows.len(), 3);
        assert_eq!(b.pending_rows(), 0);
    }

    #[test]
    fn never_exceeds_max_bytes() {
        let t = table("a");
        let max = 200;
        let mut b = Batcher::new(1000, max);
        let mut sent = Vec::new();
        for n in 0..100 {
            sent.extend(b.push(row(&t, n), Instant::now()));
        }
        sent.extend(b.drain());
        assert_eq!(sent.iter().map(|b| b.rows.len()).sum::<usize>(), 100);
        for batch in &sent {
            let body = encode_body(batch.rows.iter().map(|r| r.1.as_slice()), batch.bytes);
            assert!(body.len() <= max, "body {} > {max}", body.len());
            assert_eq!(body.len(), batch.bytes, "tracked size is exact");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["rows"].as_array().unwrap().len(), batch.rows.len());
        }
    }

    #[test]
    fn one_batch_per_table_and_linger() {
        let (a, c) = (table("a"), table("c"));
        let mut b = Batcher::new(10, 1_000_000);
        let t0 = Instant::now();
        b.push(row(&a, 1), t0);
        b.push(row(&c, 2), t0 + Duration::from_millis(50));
        assert!(b
            .due(t0 + Duration::from_millis(10), Duration::from_millis(40))
            .is_empty());
        let due = b.due(t0 + Duration::from_millis(60), Duration::from_millis(40));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].table, a);
        assert_eq!(b.drain().len(), 1);
    }

    #[test]
    fn insert_all_limits_hold_at_the_maximum_settings() {
        let t = table("a");
        let mut b = Batcher::new(
            crate::config::MAX_ROWS_PER_REQUEST,
            crate::config::MAX_BYTES_PER_REQUEST,
        );
        let mut sizes = Vec::new();
        for n in 0..120_000 {
            sizes.extend(
                b.push(row(&t, n), Instant::now())
                    .into_iter()
                    .map(|x| (x.rows.len(), x.bytes)),
            );
        }
        assert!(!sizes.is_empty());
        for (rows, bytes) in sizes {
            assert!(
                rows <= 50_000 && bytes <= 10_000_000,
                "{rows} rows, {bytes} bytes"
            );
        }
    }
}
