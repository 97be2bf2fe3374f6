//! Avro records in the Schema Registry's wire format, turned into the JSON object the rest of the
//! pipeline takes (the transform stage reads it as it reads a JSON payload, so insertAll and the
//! Storage Write API both take these rows).
//!
//! | module | holds |
//! |---|---|
//! | [`json`] | an Avro value and its schema as BigQuery-ready JSON text |
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

use apache_avro::headers::HeaderBuilder;
use apache_avro::schema::Name;
use apache_avro::{GenericSingleObjectReader, Schema};

use crate::stage::convert::JsonObject;

pub mod json;

use super::text::Misfit;
use super::wire;

/// A schema from the registry, parsed once and shared by every record written with it.
pub struct AvroSchema {
    pub schema: Schema,
    /// Named types by full name, for the `Ref`s inside `schema`.
    names: HashMap<Name, Schema>,
    /// apache-avro's reader with the schema resolved once (its plain datum reading resolves the
    /// schema again for every value: a fifth of the decoding cost). Its "single object" header is
    /// the wire format's own: magic byte and schema id.
    reader: GenericSingleObjectReader,
}

impl std::fmt::Debug for AvroSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// The wire format's header for one schema id, as apache-avro's single-object header.
struct WireHeader(u32);

impl HeaderBuilder for WireHeader {
    fn build_header(&self) -> Vec<u8> {
        wire::encode(self.0, &[])
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
    #[error("value does not fit its Avro schema {0}")]
    Value(Misfit),
}

impl AvroError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            AvroError::BadSchema { .. } => "bad_schema",
            AvroError::Mismatch { .. } | AvroError::Value(_) => "avro_mismatch",
            AvroError::NotARecord { .. } => "not_a_record",
        }
    }
}

/// The most apache-avro allocates for one string, bytes or block length read from a value
/// (its default: 512 MiB). A record of a few bytes can claim any length: without this bound a bad
/// record could make each converter thread allocate half a gigabyte. No row can be larger than
/// BigQuery's 10 MB row limit anyway.
pub const MAX_ALLOCATION_BYTES: usize = 16 << 20;

impl AvroSchema {
    /// Parses the registry's schema text (JSON).
    pub fn parse(id: u32, text: &str) -> Result<Self, AvroError> {
        // Process-wide and set once (apache-avro keeps the first value).
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        let bad = |e: apache_avro::Error| AvroError::BadSchema {
            id,
            error: e.to_string(),
        };
        let schema = Schema::parse_str(text).map_err(bad)?;
        let names = apache_avro::schema::ResolvedSchema::try_from(&schema)
            .map_err(bad)?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        let reader =
            GenericSingleObjectReader::new_with_header_builder(schema.clone(), WireHeader(id))
                .map_err(bad)?;
        Ok(Self {
            schema,
            names,
            reader,
        })
    }

    /// The named type `name` refers to.
    pub(crate) fn named(&self, name: &Name) -> Option<&Schema> {
        self.names.get(name)
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
    let mut body = framed;
    let value = schema
        .reader
        .read_value(&mut body)
        .map_err(|e| AvroError::Mismatch {
            id,
            error: e.to_string(),
        })?;
    if !body.is_empty() {
        return Err(AvroError::Mismatch {
            id,
            error: format!("{} bytes left after the value", body.len()),
        });
    }
    let mut out = Vec::with_capacity(64 + 2 * framed.len());
    let members = json::write(&value, &schema.schema, schema, &mut out)?;
    Ok((out, members))
}

#[cfg(test)]
mod tests;
