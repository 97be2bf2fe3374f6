//! Plain value types the rest of the crate is built on: where a record sits in Kafka ([`Tp`],
//! [`Position`]) and where a row goes ([`TableRef`]).
//!
//! Invariant: this module imports nothing from the crate. Messages, stage logic, config checks,
//! the BigQuery port and telemetry all name these types, so they live below all of them; the old
//! paths (`crate::messages::Tp`, `crate::stage::dedup::Position`, `crate::stage::transform::TableRef`)
//! are re-exports of these.

use std::fmt;
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl Tp {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for Tp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// Where a record sits in Kafka, compactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: u64,
    pub offset: i64,
}

impl Position {
    pub fn new(tp: &Tp, offset: i64) -> Self {
        Self {
            partition: xxh3_64_with_seed(tp.topic.as_bytes(), tp.partition as u32 as u64),
            offset,
        }
    }

    /// 64 bits that tell positions apart (as well as the key hashes tell keys apart).
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.partition.to_le_bytes());
        bytes[8..].copy_from_slice(&self.offset.to_le_bytes());
        xxh3_64(&bytes)
    }
}

/// A BigQuery table within the configured project.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    pub dataset: String,
    pub table: String,
}

impl TableRef {
    /// Parses `table` (in `default_dataset`) or `dataset.table`.
    pub fn parse(s: &str, default_dataset: &str) -> Option<TableRef> {
        let valid =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match s.split_once('.') {
            Some((d, t)) if valid(d) && valid(t) => Some(TableRef {
                dataset: d.into(),
                table: t.into(),
            }),
            None if valid(s) => Some(TableRef {
                dataset: default_dataset.into(),
                table: s.into(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.dataset, self.table)
    }
}

/// A topic name made into a valid BigQuery table name: every character other than ASCII letters,
/// digits and `_` becomes `_`, cut to 1024 characters (what kafka-connect-bigquery does).
pub fn sanitize_table_name(topic: &str) -> String {
    let mut s: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(1024);
    if s.is_empty() {
        s.push('_');
    }
    s
}
