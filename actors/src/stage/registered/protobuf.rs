//! Protobuf records in the Schema Registry's wire format, turned into the JSON object the rest of
//! the pipeline takes (as [`super::avro`] does for Avro).
//!
//! | module | holds |
//! |---|---|
//! | `plan` | the compiled file's messages planned for decoding: fields by number, defaults written |
//! | `json` | Protobuf binary read with the plan, written as BigQuery-ready JSON text (no message object) |
//! | `read` | protobuf's encoding: field keys, varints, fixed and length-delimited values |
//! | [`known`] | the `.proto` files the registry's clients bundle instead of registering them |
//! | this file | [`ProtoSchema`] (a registered `.proto`, compiled once) and [`decode`] |
//!
//! The registry stores a Protobuf schema as `.proto` source text, with the files it imports as
//! references. It is compiled at run time by `protox` (a Rust protobuf compiler: no `protoc`), described by
//! `prost-reflect`, and values are read with a plan made from those descriptors (see `json` for
//! why not with prost-reflect's dynamic messages). A value's body starts with its message
//! indexes ([`wire::message_indexes`]): which message of the file it is.
//!
//! The value mapping is kafka-connect-bigquery's, through Confluent's `ProtobufConverter` with its
//! defaults (`ProtobufData.toConnectData`):
//!
//! | Protobuf | BigQuery column | JSON written |
//! |---|---|---|
//! | bool, string | BOOLEAN, STRING | as is |
//! | int32, sint32, sfixed32, uint32, fixed32, int64, sint64, sfixed64, uint64, fixed64 | INTEGER | a number |
//! | float, double | FLOAT | a number (NaN and ±Infinity as BigQuery's strings) |
//! | bytes | BYTES | base64 |
//! | enum | STRING | the value's name (an unknown number: the number, as text) |
//! | message | RECORD | an object, fields in declaration order |
//! | repeated | REPEATED | an array |
//! | map | REPEATED RECORD (`key`, `value`) | `[{"key":…,"value":…}]`, by key |
//! | oneof `o` (the n-th of its message) | RECORD `o_n`, one field per member | `{"<member>": value}`, or null when none is set |
//! | google.protobuf.Timestamp | TIMESTAMP | `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` (nanos cut to µs) |
//! | google.type.Date | DATE | `"YYYY-MM-DD"` |
//! | google.type.TimeOfDay | TIME | `"HH:MM:SS.ffffff"` |
//! | confluent.type.Decimal | NUMERIC / BIGNUMERIC | the exact decimal as a string |
//!
//! Presence as the converter treats it: a scalar or repeated field not set is written with its
//! default (0, "", false, the first enum value, []), a message field or a proto3 `optional` field
//! not set is null. Wrapper types (`google.protobuf.StringValue`, …) are records with one `value`
//! field, as the converter's default (`wrapper.for.nullables = false`) has them.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, FileDescriptor, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::wire;
use crate::stage::convert::JsonObject;

mod json;
pub mod known;
mod plan;
mod read;

use plan::Plan;

/// A registered `.proto` schema, compiled once and shared by every record written with it.
#[derive(Debug)]
pub struct ProtoSchema {
    /// The registered file (its imports are in its pool).
    file: FileDescriptor,
    /// Its first message, which most values are (looking a message up builds its name: a tenth
    /// of the decoding cost).
    first: MessageDescriptor,
    /// Every message type of the file and those its fields reach, planned for decoding.
    plan: Plan,
    /// The first message's plan.
    first_plan: usize,
}

/// Why a record's value is not a usable Protobuf message.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("the registry's schema {id} is not a valid .proto file: {error}")]
    BadSchema { id: u32, error: String },
    #[error("Protobuf schema {id} has no message at indexes {indexes:?}")]
    NoSuchMessage { id: u32, indexes: Vec<usize> },
    #[error("the value's bytes do not match message {message} of Protobuf schema {id}: {error}")]
    Mismatch {
        id: u32,
        message: String,
        error: String,
    },
}

impl ProtoError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            ProtoError::BadSchema { .. } => "bad_schema",
            ProtoError::NoSuchMessage { .. } | ProtoError::Mismatch { .. } => "protobuf_mismatch",
        }
    }
}

/// The registered file's own name while it is compiled (imports name their files by the names the
/// references give them; this one is not importable).
fn main_file(id: u32) -> String {
    format!("bqsink-registry/schema-{id}.proto")
}

/// The registered file and its references (name → `.proto` text), then the files bundled in
/// [`known`], then protobuf's well-known types.
struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self
            .0
            .get(name)
            .map(String::as_str)
            .or_else(|| known::source(name))
        {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

impl ProtoSchema {
    /// Compiles the registry's schema text; `references` are the files it imports, by the names
    /// it imports them under.
    pub fn parse(id: u32, text: &str, references: &[(String, String)]) -> Result<Self, ProtoError> {
        let bad = |error: String| ProtoError::BadSchema { id, error };
        let main = main_file(id);
        let mut sources: HashMap<String, String> = references.iter().cloned().collect();
        sources.insert(main.clone(), text.to_owned());
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources(sources));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.open_file(&main).map_err(|e| bad(e.to_string()))?;
        let pool: DescriptorPool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(&main)
            .ok_or_else(|| bad("the compiled file is missing".into()))?;
        let first = file
            .messages()
            .next()
            .ok_or_else(|| bad("the file defines no message".into()))?;
        let plan = Plan::new(all_messages(&file).into_iter());
        let first_plan = plan
            .index(&first)
            .ok_or_else(|| bad("the first message is not planned".into()))?;
        Ok(Self {
            file,
            first,
            plan,
            first_plan,
        })
    }

    /// The message type at `indexes` (a top-level message, then nested ones), if any.
    pub fn message(&self, indexes: &[usize]) -> Option<MessageDescriptor> {
        if indexes == [0] {
            return Some(self.first.clone());
        }
        let (first, nested) = indexes.split_first()?;
        let mut message = self.file.messages().nth(*first)?;
        for i in nested {
            let child = message.child_messages().nth(*i)?;
            message = child;
        }
        Some(message)
    }
}

/// Decodes a value in the wire format written with schema `id` (`framed`: header included) into
/// the JSON text of an object, with its members found as
/// [`parse_object`](crate::stage::convert::parse_object) would find them.
pub fn decode(id: u32, schema: &ProtoSchema, framed: &[u8]) -> Result<JsonObject, ProtoError> {
    let mismatch = |message: &str, error: String| ProtoError::Mismatch {
        id,
        message: message.to_owned(),
        error,
    };
    let body = wire::frame(framed).map(|f| f.body).unwrap_or_default();
    let (indexes, bytes) = wire::message_indexes(body).map_err(|e| mismatch("?", e.to_string()))?;
    let plan = match indexes.as_slice() {
        [0] => schema.first_plan,
        _ => schema
            .message(&indexes)
            .and_then(|d| schema.plan.index(&d))
            .ok_or(ProtoError::NoSuchMessage { id, indexes })?,
    };
    // A row's JSON is about three times its Protobuf (names, quotes, timestamps as text).
    let mut out = Vec::with_capacity(128 + 3 * framed.len());
    let members = json::write(&schema.plan, plan, bytes, &mut out).map_err(|e| {
        let name = schema.plan.messages[plan].name.clone();
        mismatch(&name, e.to_string())
    })?;
    Ok(JsonObject {
        inner: Vec::new(),
        members,
        text: Some(out),
        key: None,
    })
}

/// The file's messages and their nested messages, at any depth (what message indexes can name).
fn all_messages(file: &FileDescriptor) -> Vec<MessageDescriptor> {
    let mut all: Vec<MessageDescriptor> = file.messages().collect();
    let mut i = 0;
    while let Some(m) = all.get(i) {
        let nested: Vec<MessageDescriptor> = m.child_messages().collect();
        all.extend(nested);
        i += 1;
    }
    all
}

#[cfg(test)]
mod tests;
