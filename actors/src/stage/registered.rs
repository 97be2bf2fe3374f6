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
