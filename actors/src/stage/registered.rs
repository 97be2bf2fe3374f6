//! Values in the Schema Registry's wire format (Confluent's: magic byte 0, 4-byte schema id, the
//! serialized value), decoded with their registered schema into the JSON object the rest of the
//! pipeline takes, so that transform, dedup, routing and both write paths handle them as they
//! handle a JSON topic's payload.
//!
//! | module | holds |
//! |---|---|
//! | [`wire`] | the header, and a Protobuf value's message indexes |
//! | [`avro`] | Avro schemas (parsed by apache-avro) and a decoder from their values' bytes to JSON text |
//! | [`protobuf`] | `.proto` schemas (compiled by protox, described by prost-reflect) and a decoder from messages' bytes to JSON text |
//! | [`json_schema`] | JSON Schema (validated by the jsonschema crate) |
//! | [`text`] | BigQuery's JSON text for typed values, shared by the Avro and Protobuf writers |
//! | [`columns`] | a registered schema as BigQuery columns (table creation, new fields) |
//!
//! The schemas come from [`crate::registry`], which fetches each once; which format a topic's
//! values and keys are read in is `kafka.formats` and `kafka.key_formats`.

pub mod avro;
pub mod columns;
pub mod json_schema;
pub mod protobuf;
pub mod text;
pub mod wire;

/// `n` corruptions of a valid encoding, the same on every run: bytes overwritten, cut short,
/// doubled. For tests that decoders fail on them as record failures, never by panicking.
#[cfg(test)]
fn mutations(valid: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below.max(1) as u64) as usize
    };
    (0..n)
        .map(|i| {
            let mut m = valid.to_vec();
            match i % 3 {
                0 => {
                    for _ in 0..1 + next(3) {
                        let at = next(m.len());
                        m[at] = next(256) as u8;
                    }
                }
                1 => m.truncate(next(m.len())),
                _ => {
                    let at = next(m.len());
                    let tail = m[at..].to_vec();
                    m.extend_from_slice(&tail);
                }
            }
            m
        })
        .collect()
}
