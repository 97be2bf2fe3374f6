//! The Schema Registry port and the schemas read from it.
//!
//! Invariant: a record of a registry topic (`avro`, `protobuf`, `json_schema` in `kafka.formats`)
//! reaches the converter only once the schema its header names is in the [`SchemaCache`] —
//! compiled, or known to be unusable (not registered, not valid, not a record: a record failure of
//! each record that names it). A registry that cannot answer is a sink failure: the
//! [`resolver`](crate::resolver) holds the records and retries, and never turns them into record
//! failures. Each schema is fetched once per process, never per record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use crate::config::ValueFormat;
use crate::stage::convert::{parse_object, ConvertError, JsonObject};
use crate::stage::registered::avro::{self, AvroError, AvroSchema};
use crate::stage::registered::json_schema::{self, JsonSchema, JsonSchemaError};
use crate::stage::registered::protobuf::{self, ProtoError, ProtoSchema};
use crate::stage::registered::{columns, wire};
use crate::stage::schema::FieldSchema;

/// Fetches schemas by id (the `bqsink` crate implements it over HTTP; tests plug in fakes).
pub trait SchemaRegistry: Send + Sync + 'static {
    /// The schema registered under `id`, with every schema it references (transitively).
    fn fetch(&self, id: u32) -> BoxFuture<'static, Result<RegisteredSchema, RegistryError>>;
    /// The registry's name in sink health, logs and metrics, e.g. `schema registry http://r:8081`.
    fn name(&self) -> String;
}

/// A schema's type, as the registry names it (`schemaType`; absent means Avro).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    Avro,
    Protobuf,
    Json,
}

impl SchemaKind {
    /// The kind of the registry's `schemaType` (`None`: Avro); `None` for a type it does not know.
    pub fn from_registry(schema_type: Option<&str>) -> Option<Self> {
        match schema_type {
            None | Some("AVRO") => Some(SchemaKind::Avro),
            Some("PROTOBUF") => Some(SchemaKind::Protobuf),
            Some("JSON") => Some(SchemaKind::Json),
            Some(_) => None,
        }
    }

    /// The `kafka.formats` value that reads values of this kind.
    pub fn format(self) -> ValueFormat {
        match self {
            SchemaKind::Avro => ValueFormat::Avro,
            SchemaKind::Protobuf => ValueFormat::Protobuf,
            SchemaKind::Json => ValueFormat::JsonSchema,
        }
    }
}

/// A schema as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    pub kind: SchemaKind,
    /// Avro's JSON, the `.proto` text, or the JSON Schema.
    pub text: String,
    /// The schemas it references, transitively, by the name it refers to them by (the import
    /// path of a `.proto`, the `$ref` of a JSON Schema).
    pub references: Vec<(String, String)>,
}

impl RegisteredSchema {
    /// An Avro schema without references.
    pub fn avro(text: impl Into<String>) -> Self {
        Self {
            kind: SchemaKind::Avro,
            text: text.into(),
            references: Vec::new(),
        }
    }
}

/// Why a schema could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that no schema has this id (or a schema it references is gone): a
    /// record failure of the records naming it.
    #[error("schema id {id} is not registered in the schema registry ({detail})")]
    NotFound { id: u32, detail: String },
    /// The schema's type is none bqsink reads: a record failure of the records naming it.
    #[error("schema id {id} is of type {kind}, which bqsink does not read")]
    UnknownType { id: u32, kind: String },
    /// The registry cannot answer now (unreachable, timeout, 5xx, 429, 401/403): a sink failure.
    #[error("the schema registry cannot answer: {0}")]
    Unavailable(String),
}

/// A registered schema, compiled.
#[derive(Debug)]
pub enum Schema {
    /// Boxed: apache-avro's schema and reader are ten times the size of the other variants.
    Avro(Box<AvroSchema>),
    Protobuf(ProtoSchema),
    Json(JsonSchema),
}

impl Schema {
    fn compile(id: u32, registered: &RegisteredSchema) -> Result<Self, FormatError> {
        let RegisteredSchema {
            kind,
            text,
            references,
        } = registered;
        Ok(match kind {
            SchemaKind::Avro => Schema::Avro(Box::new(AvroSchema::parse(id, text)?)),
            SchemaKind::Protobuf => Schema::Protobuf(ProtoSchema::parse(id, text, references)?),
            SchemaKind::Json => Schema::Json(JsonSchema::parse(id, text, references)?),
        })
    }

    pub fn kind(&self) -> SchemaKind {
        match self {
            Schema::Avro(_) => SchemaKind::Avro,
            Schema::Protobuf(_) => SchemaKind::Protobuf,
            Schema::Json(_) => SchemaKind::Json,
        }
    }
}

/// What the cache knows of one schema id.
pub type Known = Result<Arc<Schema>, Arc<SchemaError>>;

/// A format's own error: a schema that does not compile, or a value that does not decode with it.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Avro(#[from] AvroError),
    #[error(transparent)]
    Protobuf(#[from] ProtoError),
    #[error(transparent)]
    Json(#[from] JsonSchemaError),
}

impl FormatError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            FormatError::Avro(e) => e.class(),
            FormatError::Protobuf(e) => e.class(),
            FormatError::Json(e) => e.class(),
        }
    }
}

/// Why the records naming a schema id fail (record failures, all).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Registry(RegistryError),
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl SchemaError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            SchemaError::Registry(RegistryError::NotFound { .. }) => "unknown_schema_id",
            SchemaError::Registry(_) => "wrong_schema_type",
            SchemaError::Format(e) => e.class(),
        }
    }
}

/// The registry topics (their values or keys in a registry format), their formats, and the
/// schemas the resolver fetched for them.
#[derive(Clone)]
pub struct RegistryTopics {
    /// Topics whose values are in a registry format (`kafka.formats`; JSON topics left out).
    pub formats: BTreeMap<String, ValueFormat>,
    /// Topics whose keys are in a registry format (`kafka.key_formats`; byte keys left out).
    pub key_formats: BTreeMap<String, ValueFormat>,
    pub schemas: Arc<SchemaCache>,
}

/// How one topic's records are read: the registry format of its values and of its keys (`None`:
/// a JSON value, a key's bytes as they are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicFormats {
    pub value: Option<ValueFormat>,
    pub key: Option<ValueFormat>,
}

impl TopicFormats {
    /// Whether the topic's values or keys name schemas in the registry.
    pub fn uses_registry(self) -> bool {
        self.value.is_some() || self.key.is_some()
    }
}

impl RegistryTopics {
    /// The topics of `kafka.formats` and `kafka.key_formats` in a registry format, with an empty
    /// cache; `None` when there is none.
    pub fn new(
        formats: &BTreeMap<String, ValueFormat>,
        key_formats: &BTreeMap<String, ValueFormat>,
    ) -> Option<Self> {
        let registered = |formats: &BTreeMap<String, ValueFormat>| -> BTreeMap<_, _> {
            formats
                .iter()
                .filter(|(_, f)| f.uses_registry())
                .map(|(t, f)| (t.clone(), *f))
                .collect()
        };
        let topics = Self {
            formats: registered(formats),
            key_formats: registered(key_formats),
            schemas: Arc::new(SchemaCache::default()),
        };
        (!topics.formats.is_empty() || !topics.key_formats.is_empty()).then_some(topics)
    }

    /// Every registry topic.
    pub fn topics(&self) -> BTreeSet<String> {
        self.formats
            .keys()
            .chain(self.key_formats.keys())
            .cloned()
            .collect()
    }

    /// How `topic`'s values and keys are read.
    pub fn of(&self, topic: &str) -> TopicFormats {
        TopicFormats {
            value: self.formats.get(topic).copied(),
            key: self.key_formats.get(topic).copied(),
        }
    }

    /// The schema ids not known yet that records of `topic`, given as (key, value), name.
    pub fn missing<'a>(
        &self,
        topic: &str,
        records: impl Iterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>)>,
    ) -> Vec<u32> {
        let formats = self.of(topic);
        self.schemas.missing(records.flat_map(|(key, value)| {
            [
                key.filter(|_| formats.key.is_some()),
                value.filter(|_| formats.value.is_some()),
            ]
        }))
    }

    /// Reads one record of a topic read as `formats` ([`Self::of`]): its value into a JSON object
    /// (JSON, or decoded with its schema), and its key decoded when the topic's keys are in a
    /// registry format. The schemas must be known ([`Self::missing`] is empty for it).
    pub fn read(
        &self,
        formats: TopicFormats,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<JsonObject, RecordError> {
        let mut object = match formats.value {
            Some(format) => self.schemas.convert(format, value)?,
            None => parse_object(value)?,
        };
        if let (Some(format), Some(key)) = (formats.key, key) {
            let decoded = self.schemas.convert_key(format, key);
            object.key = Some(decoded.map_err(|e| RecordError::Key(Box::new(e)))?);
        }
        Ok(object)
    }
}

/// Unusable schema ids remembered at most (each costs one registry lookup once forgotten); usable
/// ones are all kept (a topic's producers register few).
const MAX_UNUSABLE: usize = 10_000;

/// Schemas by id, shared by the resolver (which fills it) and the converters (which read it).
#[derive(Default)]
pub struct SchemaCache {
    known: RwLock<HashMap<u32, Known>>,
}

impl SchemaCache {
    pub fn get(&self, id: u32) -> Option<Known> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.get(&id).cloned()
    }

    /// Remembers what the registry answered for `id` (its schema, or a record-failure error).
    pub fn insert(&self, id: u32, answer: Result<RegisteredSchema, RegistryError>) -> Known {
        let known: Known = match answer {
            Ok(registered) => Schema::compile(id, &registered)
                .map(Arc::new)
                .map_err(|e| Arc::new(SchemaError::Format(e))),
            Err(e) => Err(Arc::new(SchemaError::Registry(e))),
        };
        let mut map = self.known.write().unwrap_or_else(|e| e.into_inner());
        let unusable = map.values().filter(|k| k.is_err()).count();
        if known.is_ok() || unusable < MAX_UNUSABLE {
            map.insert(id, known.clone());
        }
        known
    }

    /// The schema ids `payloads` name that are not known yet (values not in the wire format name
    /// none: they fail in the converter).
    pub fn missing<'a>(&self, payloads: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<u32> {
        let mut ids: Vec<u32> = payloads
            .flatten()
            .filter_map(|p| wire::frame(p).ok())
            .map(|f| f.schema_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        // One look at the cache per chunk (its records name one or a few ids), not per record.
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        ids.retain(|id| !known.contains_key(id));
        ids
    }

    /// Decodes a value in the wire format of a topic read as `format` into the JSON object a row
    /// is made of. Its schema must be known ([`Self::missing`] is empty for it): the resolver sees
    /// to that.
    pub fn convert(
        &self,
        format: ValueFormat,
        payload: Option<&[u8]>,
    ) -> Result<JsonObject, RecordError> {
        let bytes = payload.ok_or(ConvertError::Tombstone)?;
        let (id, schema) = self.schema_of(bytes)?;
        Ok(match (&*schema, format) {
            (Schema::Avro(s), ValueFormat::Avro) => {
                avro::decode(id, s, bytes).map_err(FormatError::from)?
            }
            (Schema::Protobuf(s), ValueFormat::Protobuf) => {
                protobuf::decode(id, s, bytes).map_err(FormatError::from)?
            }
            (Schema::Json(s), ValueFormat::JsonSchema) => {
                json_schema::decode(id, s, bytes).map_err(FormatError::from)?
            }
            (schema, format) => return Err(wrong_kind(id, schema, format)),
        })
    }

    /// Decodes a key in the wire format of a topic whose keys are read as `format` into its text:
    /// a string key's characters, any other key's compact JSON (keys need not be records). Its
    /// schema must be known, as for [`Self::convert`].
    pub fn convert_key(&self, format: ValueFormat, key: &[u8]) -> Result<Vec<u8>, RecordError> {
        let (id, schema) = self.schema_of(key)?;
        let json = match (&*schema, format) {
            (Schema::Avro(s), ValueFormat::Avro) => {
                avro::decode_any(id, s, key).map_err(FormatError::from)?.0
            }
            (Schema::Protobuf(s), ValueFormat::Protobuf) => protobuf::decode(id, s, key)
                .map_err(FormatError::from)?
                .text
                .unwrap_or_default(),
            (Schema::Json(s), ValueFormat::JsonSchema) => {
                json_schema::decode_any(id, s, key).map_err(FormatError::from)?
            }
            (schema, format) => return Err(wrong_kind(id, schema, format)),
        };
        Ok(key_text(json))
    }

    /// The schema a value in the wire format names, known or a record failure.
    fn schema_of(&self, bytes: &[u8]) -> Result<(u32, Arc<Schema>), RecordError> {
        let id = wire::frame(bytes)?.schema_id;
        match self.get(id) {
            Some(known) => Ok((id, known.map_err(RecordError::Schema)?)),
            // Not resolved (a bug upstream): a record failure that says so, never a panic.
            None => Err(RecordError::Schema(Arc::new(SchemaError::Registry(
                RegistryError::NotFound {
                    id,
                    detail: "not looked up before conversion".into(),
                },
            )))),
        }
    }
}

/// A decoded key's JSON text as `_kafka_key` and `kafka_key` dedup take it: a string's
/// characters, anything else compact (a JSON Schema key is the producer's text, spaces and all).
fn key_text(json: Vec<u8>) -> Vec<u8> {
    let compact = !json.iter().any(u8::is_ascii_whitespace);
    if compact && json.first() != Some(&b'"') {
        return json;
    }
    match serde_json::from_slice::<serde_json::Value>(&json) {
        Ok(serde_json::Value::String(s)) => s.into_bytes(),
        Ok(value) => value.to_string().into_bytes(),
        Err(_) => json,
    }
}

fn wrong_kind(id: u32, schema: &Schema, format: ValueFormat) -> RecordError {
    RecordError::WrongKind {
        id,
        kind: schema.kind(),
        format,
    }
}

impl SchemaCache {
    /// The BigQuery columns of the schema a value in the wire format names (its message's, for
    /// Protobuf): its id and the columns, or why it has none; `None` when the value names no known
    /// usable schema.
    pub fn columns(&self, payload: &[u8]) -> Option<(u32, Result<Vec<FieldSchema>, String>)> {
        let framed = wire::frame(payload).ok()?;
        let schema = self.get(framed.schema_id)?.ok()?;
        let columns = match &*schema {
            Schema::Avro(s) => columns::avro(s),
            Schema::Json(s) => columns::json_schema(s),
            Schema::Protobuf(s) => {
                let (indexes, _) = wire::message_indexes(framed.body).ok()?;
                columns::protobuf(&s.message(&indexes)?)
            }
        };
        Some((framed.schema_id, columns))
    }
}

/// Why a registry topic's record is not a JSON object (record failures, all).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Schema(Arc<SchemaError>),
    #[error("schema id {id} is a {kind:?} schema; this topic is read as {format} (kafka.formats, kafka.key_formats)")]
    WrongKind {
        id: u32,
        kind: SchemaKind,
        format: ValueFormat,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The record's key failed to decode (`kafka.key_formats`).
    #[error("record key: {0}")]
    Key(Box<RecordError>),
}

impl RecordError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            RecordError::Convert(e) => e.class(),
            RecordError::Wire(e) => e.class(),
            RecordError::Schema(e) => e.class(),
            RecordError::WrongKind { .. } => "wrong_schema_type",
            RecordError::Format(e) => e.class(),
            RecordError::Key(e) => e.class(),
        }
    }
}

#[cfg(test)]
mod tests;
