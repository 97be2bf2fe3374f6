//! What the sink counts of a Storage Write API row when it keeps no rows (the demo, the
//! benchmarks): the hash of its id and its `_kafka_timestamp`, read in one pass over the protobuf
//! row's top-level fields, without building a `Value` — the gRPC counterpart of `decode.rs`. In
//! production this work is Google's; on the benchmark's two cores a sink that decoded every row
//! into JSON would be what is measured.
//!
//! The id is hashed as its JSON text (a string quoted and escaped, a number in decimal), as
//! [`super::store`] and the insertAll reader hash it, so the same row counts the same on any path.

use prost::encoding::{decode_key, decode_varint, WireType};
use prost_types::field_descriptor_proto::Type;
use prost_types::DescriptorProto;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use super::{LatencyTracker, Shared};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The counted facts of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Facts {
    /// The hash of the id's JSON text.
    pub(super) id: Option<u64>,
    /// `_kafka_timestamp`, in microseconds since the epoch.
    pub(super) micros: Option<i64>,
}

/// Where the facts are in a row of one writer schema.
pub(super) struct FactFields {
    /// The id's field number and type.
    id: Option<(u32, Type)>,
    timestamp: Option<u32>,
}

impl FactFields {
    /// The fields of `descriptor` that hold the id (`pointer`, a top-level member such as
    /// `/event_id`) and `_kafka_timestamp`; `None` when the id is nested deeper (read the rows
    /// whole then).
    pub(super) fn new(descriptor: &DescriptorProto, pointer: Option<&str>) -> Option<Self> {
        let field = |name: &str| {
            descriptor
                .field
                .iter()
                .find(|f| f.name().eq_ignore_ascii_case(name))
        };
        let id = match pointer {
            None => None,
            Some(p) => {
                let name = p.strip_prefix('/')?;
                if name.contains(['/', '~']) {
                    return None;
                }
                field(name).map(|f| (f.number() as u32, f.r#type()))
            }
        };
        let timestamp = field("_kafka_timestamp").map(|f| f.number() as u32);
        Some(Self { id, timestamp })
    }

    /// Reads one row's facts; `buf` is scratch space for the id's JSON text.
    pub(super) fn read(&self, mut row: &[u8], buf: &mut Vec<u8>) -> Result<Facts, String> {
        let mut facts = Facts::default();
        while !row.is_empty() {
            let (number, wire) = decode_key(&mut row).map_err(|e| e.to_string())?;
            let is_id = self.id.filter(|(n, _)| *n == number);
            match wire {
                WireType::Varint => {
                    let v = decode_varint(&mut row).map_err(|e| e.to_string())?;
                    if Some(number) == self.timestamp {
                        facts.micros = Some(v as i64);
                    } else if is_id.is_some() {
                        facts.id = Some(xxh3_64((v as i64).to_string().as_bytes()));
                    }
                }
                WireType::SixtyFourBit => row = skip(row, 8)?,
                WireType::ThirtyTwoBit => row = skip(row, 4)?,
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut row).map_err(|e| e.to_string())? as usize;
                    if row.len() < len {
                        return Err("truncated message".into());
                    }
                    let (field, rest) = row.split_at(len);
                    row = rest;
                    if let Some((_, Type::String)) = is_id {
                        let text = std::str::from_utf8(field)
                            .map_err(|_| "the id is not UTF-8".to_owned())?;
                        buf.clear();
                        serde_json::to_writer(&mut *buf, text).map_err(|e| e.to_string())?;
                        facts.id = Some(xxh3_64(buf));
                    }
                }
                w => return Err(format!("unsupported wire type {w:?}")),
            }
        }
        Ok(facts)
    }
}

fn skip(buf: &[u8], n: usize) -> Result<&[u8], String> {
    buf.get(n..).ok_or_else(|| "truncated message".to_owned())
}

impl Facts {
    /// The facts of a decoded row (`{"json": {…}}`).
    pub(super) fn of_row(row: &Value, pointer: Option<&str>) -> Self {
        let json = row.get("json");
        Self {
            id: pointer
                .and_then(|p| json?.pointer(p))
                .map(|id| xxh3_64(id.to_string().as_bytes())),
            micros: json
                .and_then(|j| j.get("_kafka_timestamp"))
                .and_then(Value::as_i64),
        }
    }
}

/// Counts rows made visible in `table` by their facts: the row count, the ids and the latency
/// from `_kafka_timestamp` to now.
pub(super) fn store_facts(shared: &Shared, table: &str, rows: &[Facts]) {
    let (at, now) = (Instant::now(), SystemTime::now());
    let mut inner = shared.lock();
    let inner = &mut *inner;
    inner.ids.extend(rows.iter().filter_map(|f| f.id));
    record_latencies(
        &mut inner.latency,
        rows.iter().filter_map(|f| {
            let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(f.micros?).ok()?);
            Some(now.duration_since(at).unwrap_or_default().as_millis() as u64)
        }),
        !rows.is_empty(),
        at,
    );
    inner.tables.entry(table.to_owned()).or_default().count += rows.len() as u64;
}

/// Records latencies, and the time of the first and last stored row.
pub(super) fn record_latencies(
    lat: &mut LatencyTracker,
    millis: impl Iterator<Item = u64>,
    any: bool,
    at: Instant,
) {
    for ms in millis {
        lat.histogram.saturating_record(ms);
    }
    if any {
        lat.first_row.get_or_insert(at);
        lat.last_row = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bqsink_actors::stage::proto::RowFormat;
    use bqsink_actors::stage::schema::FieldSchema;

    fn field(name: &str, kind: &str) -> FieldSchema {
        serde_json::from_value(serde_json::json!({"name": name, "type": kind})).unwrap()
    }

    #[test]
    fn facts_read_from_protobuf_match_those_of_the_decoded_row() {
        let schema = vec![
            field("event_id", "STRING"),
            field("n", "INTEGER"),
            field("x", "FLOAT"),
            field("attributes", "JSON"),
            field("_kafka_timestamp", "TIMESTAMP"),
        ];
        let format = RowFormat::new(&schema).unwrap();
        let entry = br#"{"json":{"event_id":"e\"1","n":7,"x":1.5,"attributes":{"a":1},"_kafka_timestamp":"2026-01-01T00:00:00.250Z"}}"#;
        let mut bytes = Vec::new();
        format.encode_entry(entry, &mut bytes).unwrap();
        let decoded = super::super::proto_rows::decode_row(format.descriptor(), &bytes).unwrap();
        let whole = Facts::of_row(&serde_json::json!({ "json": decoded }), Some("/event_id"));
        for (pointer, id_read) in [("/event_id", true), ("/n", true), ("/missing", false)] {
            let fields = FactFields::new(format.descriptor(), Some(pointer)).unwrap();
            let facts = fields.read(&bytes, &mut Vec::new()).unwrap();
            assert_eq!(facts.micros, Some(1_767_225_600_250_000));
            assert_eq!(facts.id.is_some(), id_read, "{pointer}");
        }
        let fields = FactFields::new(format.descriptor(), Some("/event_id")).unwrap();
        assert_eq!(fields.read(&bytes, &mut Vec::new()).unwrap(), whole);
        assert!(FactFields::new(format.descriptor(), Some("/a/b")).is_none());
        assert!(fields
            .read(&bytes[..bytes.len() - 1], &mut Vec::new())
            .is_err());
    }

    #[test]
    fn id_stats_count_distinct_ids_and_repeats_across_calls() {
        let sink = super::super::Sink::start(Default::default()).unwrap();
        let facts = |ids: &[u64]| -> Vec<Facts> {
            ids.iter()
                .map(|&id| Facts {
                    id: Some(id),
                    micros: None,
                })
                .collect()
        };
        store_facts(&sink.shared, "t", &facts(&[7, 3, 7, 9]));
        assert_eq!(sink.id_stats(), (3, 1));
        // Sorted by the first call; rows stored since are counted as well.
        store_facts(&sink.shared, "t", &facts(&[1, 9, 9]));
        assert_eq!(sink.id_stats(), (4, 3));
        assert_eq!(sink.table_counts()["t"], 7);
    }
}
