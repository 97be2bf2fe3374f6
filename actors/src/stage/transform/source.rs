//! What a row takes from its Kafka record beside the value's members: the metadata columns'
//! values, and what `dedup.key = "kafka_key"` or `"payload_hash"` reads.

use crate::messages::RawRecord;
use crate::stage::convert::JsonObject;
use crate::stage::json::Member;

/// A record as the transform reads it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Source<'a> {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// The key as `_kafka_key` holds it and `kafka_key` dedup compares it: decoded when the topic's
    /// keys are in a registry format ([`JsonObject::key`]), else the record's own bytes.
    pub key: Option<&'a [u8]>,
    /// The value's original bytes (what `payload_hash` hashes, whatever the format).
    pub payload: Option<&'a [u8]>,
    /// The members of the objects among the value's members, as the converter found them in the
    /// text the members are spans of (empty: read them from the text).
    pub inner: &'a [(u32, Member)],
}

impl<'a> Source<'a> {
    pub fn new(record: &'a RawRecord, object: Option<&'a JsonObject>) -> Self {
        let decoded = object.and_then(|o| o.key.as_deref());
        Self {
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: decoded.or(record.key.as_deref()),
            payload: record.payload.as_deref(),
            inner: object.map_or(&[], |o| &o.inner[..]),
        }
    }
}
