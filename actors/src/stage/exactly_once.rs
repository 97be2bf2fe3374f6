//! Exactly-once delivery through BUFFERED write streams: which rows of which stream a Kafka offset
//! commit covers, the commit's metadata, and which streams may be flushed and finalized when.
//! Pure bookkeeping; the gRPC calls and the Kafka commit are the callers' (`bqsink`'s storage
//! client and Kafka poller).
//!
//! # The invariant
//!
//! For every partition P the group has committed offset O with metadata M, and for every table:
//! the rows of P's records below O are exactly the rows at positions `0..=F` of the streams M names
//! (as `(stream, F)`), and those are the only rows of P that are, or will ever be, visible in the
//! table. Records at or above O are read again by whoever owns P next and are written to a new
//! stream, whose rows become visible only through a later commit naming it.
//!
//! # Why it holds
//!
//! 1. Rows become visible only through `FlushRows(S, F)`, and bqsink flushes only `(S, F)` pairs it
//!    has committed to Kafka in M beforehand, with a synchronous commit through the consumer group
//!    (a previous owner's commit fails on its stale generation, so it never flushes).
//! 2. A commit's `(O, F)` is chosen by [`PartitionBook::prepare`]: every record below O has been
//!    handled (the offset tracker's guarantee: written, dead-lettered or dropped as a duplicate), the
//!    appends holding its rows were acknowledged, and they sit at positions `<= F` ([`Stream`] keeps
//!    the Kafka offsets of each acknowledged append); if a row at or above O sits at a position `<= F`
//!    of some stream (appends that finished out of order), O is lowered to that row's record until
//!    the rows below O are a prefix of every stream. So flushing to F publishes exactly the records
//!    below O.
//! 3. An append whose outcome is unknown (timeout, broken connection, `ALREADY_EXISTS`,
//!    `OUT_OF_RANGE`) retires its stream: nothing more is appended there, and since its rows were
//!    never acknowledged they lie beyond every F it will be flushed to. The rows go to a new stream.
//! 4. `FlushRows` is cumulative and idempotent on an open stream, so flushing again after a crash
//!    between the commit and the flush (the next owner reads M and flushes the same `(S, F)`) makes
//!    nothing visible twice.
//! 5. A stream is finalized only once a successful commit no longer names it and its flush is
//!    confirmed, so no reader of M can find it finalized (after `FinalizeWriteStream` a stream can no
//!    longer be flushed, and a committed F would be lost).
//!
//! The commit metadata is ASCII: `bqsink1` then `;dataset.table,stream,F` per stream, the stream
//! as its id within the table (`projects/…/streams/<id>` is rebuilt from the table). Kafka limits it
//! (`offset.metadata.max.bytes`, 4,096 bytes by default): about 40 tables written by one partition
//! between two commits; [`encode_metadata`] refuses more.

use std::collections::{BTreeMap, VecDeque};

use crate::model::TableRef;

/// The metadata's version tag.
const TAG: &str = "bqsink1";
/// Kafka's default `offset.metadata.max.bytes`.
pub const MAX_METADATA_BYTES: usize = 4096;

/// One acknowledged append: its rows end before `end` (a row position) and hold the records
/// `min..=max` (Kafka offsets, not necessarily all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    end: i64,
    min: i64,
    max: i64,
}

/// One BUFFERED stream of a (table, partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The stream's id within its table.
    pub id: String,
    /// The row position of the next append.
    pub next: i64,
    /// Acknowledged appends not yet covered by a commit, in position order.
    segments: VecDeque<Segment>,
    /// The last row position a successful commit named (rows `0..=F` are committed).
    pub committed: Option<i64>,
    /// The last row position `FlushRows` confirmed.
    pub flushed: Option<i64>,
    /// No more appends (its partition was revoked, or an append's outcome was unknown).
    pub retired: bool,
    /// Named by the last successful commit of its partition.
    named: bool,
    /// Finalized or deleted by someone else: it takes no flush, so its rows beyond the last
    /// confirmed flush can never become visible; the commit is held below them.
    pub lost: bool,
}

impl Stream {
    /// A new stream, created by this instance.
    pub fn new(id: String) -> Self {
        Stream {
            id,
            next: 0,
            segments: VecDeque::new(),
            committed: None,
            flushed: None,
            retired: false,
            named: false,
            lost: false,
        }
    }

    /// A stream a previous owner committed up to `f` (the commit's metadata): to be flushed, never
    /// appended to.
    pub fn inherited(id: String, f: i64) -> Self {
        Stream {
            committed: Some(f),
            retired: true,
            named: true,
            ..Stream::new(id)
        }
    }

    /// An append of `rows` rows at [`Self::next`] holding records `min..=max` was acknowledged.
    pub fn acked(&mut self, rows: i64, min: i64, max: i64) {
        self.next += rows;
        self.segments.push_back(Segment {
            end: self.next,
            min,
            max,
        });
    }

    /// Rows committed and not yet confirmed flushed.
    pub fn needs_flush(&self) -> Option<i64> {
        if self.lost {
            return None;
        }
        match (self.committed, self.flushed) {
            (Some(c), Some(f)) if f >= c => None,
            (Some(c), _) => Some(c),
            _ => None,
        }
    }

    /// The last position a commit below `offset` may name: the end of the longest run of segments
    /// whose records are all below `offset`; and the least record after that run.
    fn prefix(&self, offset: i64) -> (Option<i64>, Option<i64>) {
        if self.lost {
            // Nothing more becomes visible; every record it holds stays above the commit.
            return (None, self.segments.iter().map(|s| s.min).min());
        }
        let mut f = None;
        let mut rest = self.segments.iter();
        for s in rest.by_ref() {
            if s.max >= offset {
                return (
                    f,
                    Some(s.min.min(rest.map(|s| s.min).min().unwrap_or(s.min))),
                );
            }
            f = Some(s.end - 1);
        }
        (f, None)
    }
}

/// What one commit of a partition names: the offset and, per stream, the last row position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitPlan {
    pub offset: i64,
    pub streams: Vec<(TableRef, String, i64)>,
}

/// The streams of one partition, per table.
#[derive(Debug, Default)]
pub struct PartitionBook {
    tables: BTreeMap<TableRef, Vec<Stream>>,
}

impl PartitionBook {
    /// The streams of `table`, oldest first; the last is open for appends unless retired.
    pub fn streams(&mut self, table: &TableRef) -> &mut Vec<Stream> {
        self.tables.entry(table.clone()).or_default()
    }

    /// The stream appends to `table` go to, if there is one that is not retired.
    pub fn current(&mut self, table: &TableRef) -> Option<&mut Stream> {
        self.tables
            .get_mut(table)?
            .last_mut()
            .filter(|s| !s.retired)
    }

    /// Takes over the streams a previous owner's commit metadata names.
    pub fn inherit(&mut self, named: Vec<(TableRef, String, i64)>) {
        for (table, id, f) in named {
            self.streams(&table).push(Stream::inherited(id, f));
        }
    }

    /// Every stream of the partition, by table and id.
    pub fn stream_ids(&self) -> Vec<(TableRef, String)> {
        self.tables
            .iter()
            .flat_map(|(t, streams)| streams.iter().map(move |s| (t.clone(), s.id.clone())))
            .collect()
    }

    /// The partition is given up: every stream retires, and rows no commit covers are abandoned —
    /// whoever owns the partition next (this instance again, maybe) reads their records again from
    /// the committed offset and writes them to a new stream, so these must never be flushed.
    pub fn retire_all(&mut self) {
        for s in self.tables.values_mut().flatten() {
            s.retired = true;
            s.segments.clear();
        }
    }

    /// The commit for a tracker offset `offset` (every record below it handled): the offset lowered
    /// until the rows below it are a prefix of every stream, and each stream's F (see the module
    /// docs). A stream is named when rows up to its F are not confirmed flushed.
    pub fn prepare(&self, offset: i64) -> CommitPlan {
        let mut offset = offset;
        loop {
            let least = self
                .tables
                .values()
                .flatten()
                .filter_map(|s| s.prefix(offset).1)
                .min();
            match least {
                Some(l) if l < offset => offset = l,
                _ => break,
            }
        }
        let mut streams = Vec::new();
        for (table, list) in &self.tables {
            for s in list.iter().filter(|s| !s.lost) {
                let f = s.prefix(offset).0.max(s.committed);
                let Some(f) = f else { continue };
                if s.flushed.is_none_or(|done| done < f) {
                    streams.push((table.clone(), s.id.clone(), f));
                }
            }
        }
        CommitPlan { offset, streams }
    }

    /// `plan` was committed: its rows are committed, and only its streams are named.
    pub fn committed(&mut self, plan: &CommitPlan) {
        for s in self.tables.values_mut().flatten() {
            s.named = false;
        }
        for (table, id, f) in &plan.streams {
            if let Some(s) = self.find(table, id) {
                s.committed = s.committed.max(Some(*f));
                s.named = true;
                while s.segments.front().is_some_and(|seg| seg.end - 1 <= *f) {
                    s.segments.pop_front();
                }
            }
        }
    }

    /// Stream `id` was finalized or deleted by someone else. Its rows not confirmed flushed will
    /// never be visible: those not committed yet hold the partition's commit below their records
    /// from now on (a restart reads them again and writes them to a new stream); those committed
    /// already are lost, and returned as (first, last) row positions for the error report.
    pub fn lose(&mut self, table: &TableRef, id: &str) -> Option<(i64, i64)> {
        let s = self.find(table, id)?;
        s.lost = true;
        s.retired = true;
        let first = s.flushed.map_or(0, |f| f + 1);
        match s.committed {
            Some(c) if c >= first => Some((first, c)),
            _ => None,
        }
    }

    /// `FlushRows(stream, f)` succeeded.
    pub fn flushed(&mut self, table: &TableRef, id: &str, f: i64) {
        if let Some(s) = self.find(table, id) {
            s.flushed = s.flushed.max(Some(f));
        }
    }

    /// Retired streams that no commit names any more, with nothing left to flush or commit: they may
    /// be finalized now, and are forgotten.
    pub fn take_finished(&mut self) -> Vec<(TableRef, String)> {
        let mut out = Vec::new();
        for (table, list) in self.tables.iter_mut() {
            list.retain(|s| {
                let done = s.retired
                    && !s.named
                    && (s.segments.is_empty() && s.needs_flush().is_none())
                    && !s.lost;
                if done {
                    out.push((table.clone(), s.id.clone()));
                }
                !done
            });
        }
        self.tables.retain(|_, l| !l.is_empty());
        out
    }

    /// Whether a commit is due although the partition's offset has not moved: a named stream
    /// awaits its flush, or a confirmed one is still named (a commit without it lets it be finalized).
    pub fn needs_commit(&self) -> bool {
        self.tables.values().flatten().any(|s| {
            s.needs_flush().is_some() || (s.named && s.retired && s.segments.is_empty() && !s.lost)
        })
    }

    /// Whether nothing is left: no stream at all.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    fn find(&mut self, table: &TableRef, id: &str) -> Option<&mut Stream> {
        self.tables.get_mut(table)?.iter_mut().find(|s| s.id == id)
    }
}

/// Why commit metadata cannot be written or read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("the commit metadata names {streams} streams in {bytes} bytes, past Kafka's {MAX_METADATA_BYTES}-byte default limit (offset.metadata.max.bytes): too many tables written from one partition between two commits")]
    TooLarge { streams: usize, bytes: usize },
    #[error("unreadable bqsink commit metadata {0:?}")]
    Unreadable(String),
}

/// The commit metadata naming `streams`.
pub fn encode_metadata(streams: &[(TableRef, String, i64)]) -> Result<String, MetadataError> {
    let mut out = String::from(TAG);
    for (table, id, f) in streams {
        out.push_str(&format!(";{}.{},{id},{f}", table.dataset, table.table));
    }
    if out.len() > MAX_METADATA_BYTES {
        return Err(MetadataError::TooLarge {
            streams: streams.len(),
            bytes: out.len(),
        });
    }
    Ok(out)
}

/// The streams a commit's metadata names; none for metadata bqsink did not write (empty, or another
/// tool's), which is not an error: nothing of it is to be flushed.
pub fn decode_metadata(text: &str) -> Result<Vec<(TableRef, String, i64)>, MetadataError> {
    let mut parts = text.split(';');
    if parts.next() != Some(TAG) {
        return Ok(Vec::new());
    }
    parts
        .map(|p| {
            let bad = || MetadataError::Unreadable(text.to_owned());
            let mut fields = p.split(',');
            let (Some(table), Some(id), Some(f), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad());
            };
            let table = TableRef::parse(table, "").ok_or_else(bad)?;
            let f: i64 = f.parse().map_err(|_| bad())?;
            if id.is_empty() || f < 0 {
                return Err(bad());
            }
            Ok((table, id.to_owned(), f))
        })
        .collect()
}

#[cfg(test)]
mod tests;
