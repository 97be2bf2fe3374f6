//! Avro records in the Schema Registry's wire format, turned into the JSON object the rest of the
//! pipeline takes (the transform stage reads it as it reads a JSON payload, so insertAll and the
//! Storage Write API both take these rows).
//!
//! | module | holds |
//! |---|---|
//! | `plan` | a registered schema compiled for decoding: named types resolved, labels written |
//! | `json` | Avro binary read with the plan, written as BigQuery-ready JSON text (no value tree) |
//! | this file | [`AvroSchema`] (a registered schema, parsed once) and [`decode`] |
//!
//! The value mapping is kafka-connect-bigquery's (through Kafka Connect's Avro converter):
//!
//! | Avro | BigQuery column | JSON written |
//! |---|---|---|
//! | boolean, int, long, float, double, string | BOOLEAN, INTEGER, FLOAT, STRING | as is (NaN and ±Infinity as BigQuery's strings) |
//! | bytes, fixed | BYTES | base64 |
//! | enum | STRING | the symbol |
//! | record | RECORD | an object, fields in schema order |
//! | array | REPEATED | an array |
//! | map | REPEATED RECORD (`key`, `value`) | `[{"key":…,"value":…}]`, by key |
//! | union of null and one type | that type, NULLABLE | the value or null |
//! | other unions | RECORD with one field per branch | `{"<branch>": value}`, branch = type name |
//! | date | DATE | `"YYYY-MM-DD"` |
//! | time-millis, time-micros | TIME | `"HH:MM:SS.ffffff"` |
//! | timestamp-millis, -micros, -nanos | TIMESTAMP | `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` (nanos cut to µs) |
//! | local-timestamp-* | DATETIME | `"YYYY-MM-DDTHH:MM:SS.ffffff"` |
//! | decimal, big-decimal | NUMERIC / BIGNUMERIC | the exact decimal as a string |
//! | uuid | STRING | hyphenated |
//! | duration | RECORD (`months`, `days`, `milliseconds`) | an object |

use std::collections::HashMap;

use apache_avro::schema::Name;
use apache_avro::Schema;

use crate::stage::convert::JsonObject;

mod json;
pub(super) mod plan;

use super::wire;
use plan::Plan;

/// A schema from the registry, parsed once and shared by every record written with it.
pub struct AvroSchema {
    pub schema: Schema,
    /// Named types by full name, for the `Ref`s inside `schema`.
    names: HashMap<Name, Schema>,
    /// The schema compiled for decoding values ([`json`] reads them with it).
    plan: Plan,
}

impl std::fmt::Debug for AvroSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Why a record's value is not a usable Avro record.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("the registry's schema {id} is not a valid Avro schema: {error}")]
    BadSchema { id: u32, error: String },
    #[error("the value's bytes do not match Avro schema {id}: {error}")]
    Mismatch { id: u32, error: String },
    #[error("Avro schema {id} is not a record (it is {kind}): a row needs named fields")]
    NotARecord { id: u32, kind: String },
}

impl AvroError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            AvroError::BadSchema { .. } => "bad_schema",
            AvroError::Mismatch { .. } => "avro_mismatch",
            AvroError::NotARecord { .. } => "not_a_record",
        }
    }
}

/// The longest string, bytes or block a value may claim (apache-avro's default for its own reader:
/// 512 MiB). A record of a few bytes can claim any length: the claim is checked against this bound
/// (and against the bytes there are) before anything is read. No row can be larger than
/// BigQuery's 10 MB row limit anyway.
pub const MAX_ALLOCATION_BYTES: usize = 16 << 20;

impl AvroSchema {
    /// Parses the registry's schema text (JSON).
    pub fn parse(id: u32, text: &str) -> Result<Self, AvroError> {
        // Process-wide and set once (apache-avro keeps the first value); bounds the tests' and
        // tools' use of apache-avro's own reader.
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        let bad = |error: String| AvroError::BadSchema { id, error };
        let schema = Schema::parse_str(text).map_err(|e| bad(e.to_string()))?;
        if serde_json::from_str(text).is_ok_and(|json| has_fixed_uuid(&json)) {
            // apache-avro parses it as a string `uuid`: its 16 raw bytes would be misread.
            return Err(bad(
                "a uuid on a fixed(16), which bqsink does not read (apache-avro 0.21 \
                 takes every uuid as a string)"
                    .into(),
            ));
        }
        let names = apache_avro::schema::ResolvedSchema::try_from(&schema)
            .map_err(|e| bad(e.to_string()))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        let mut parsed = Self {
            schema,
            names,
            plan: Plan { nodes: Vec::new() },
        };
        parsed.plan = Plan::new(&parsed).map_err(|e| bad(e.to_string()))?;
        Ok(parsed)
    }

    /// The named type `name` refers to.
    pub(crate) fn named(&self, name: &Name) -> Option<&Schema> {
        self.names.get(name)
    }
}

/// Whether the schema JSON has a `uuid` logical type on a `fixed` (Avro 1.12's second form).
fn has_fixed_uuid(json: &serde_json::Value) -> bool {
    match json {
        serde_json::Value::Object(o) => {
            let is = |k: &str, v: &str| o.get(k).and_then(|x| x.as_str()) == Some(v);
            (is("type", "fixed") && is("logicalType", "uuid")) || o.values().any(has_fixed_uuid)
        }
        serde_json::Value::Array(a) => a.iter().any(has_fixed_uuid),
        _ => false,
    }
}

/// Decodes a value in the wire format written with schema `id` (`framed`: header included) into
/// the JSON text of an object, with its members found as
/// [`parse_object`](crate::stage::convert::parse_object) would find them.
pub fn decode(id: u32, schema: &AvroSchema, framed: &[u8]) -> Result<JsonObject, AvroError> {
    if !matches!(schema.schema, Schema::Record(_)) {
        return Err(AvroError::NotARecord {
            id,
            kind: format!(
                "{:?}",
                apache_avro::schema::SchemaKind::from(&schema.schema)
            )
            .to_lowercase(),
        });
    }
    let (text, members) = decode_any(id, schema, framed)?;
    Ok(JsonObject {
        inner: Vec::new(),
        members,
        text: Some(text),
        key: None,
    })
}

/// Decodes a value of any Avro type in the wire format into its JSON text (a record key, or a
/// plain string or long: keys need not be records); for a record, also its members.
pub fn decode_any(
    id: u32,
    schema: &AvroSchema,
    framed: &[u8],
) -> Result<(Vec<u8>, Vec<crate::stage::json::Member>), AvroError> {
    let body = wire::frame(framed)
        .map(|f| f.body)
        .map_err(|e| AvroError::Mismatch {
            id,
            error: e.to_string(),
        })?;
    // A row's text is about three times its Avro (names, quotes, base64, timestamps as text).
    let mut out = Vec::with_capacity(128 + 3 * framed.len());
    let members = json::write(&schema.plan, body, &mut out).map_err(|e| AvroError::Mismatch {
        id,
        error: e.to_string(),
    })?;
    Ok((out, members))
}

#[cfg(test)]
mod tests;
