//! The Schema Registry port and the schemas read from it.
//!
//! Invariant: a record of a registry topic (`avro`, `protobuf`, `json_schema` in `kafka.formats`)
//! reaches the converter only once the schema its header names is in the [`SchemaCache`] —
//! compiled, or known to be unusable (not registered, not valid, not a record: a record failure of
//! each record that names it). A registry that cannot answer is a sink failure: the
//! [`resolver`](crate::resolver) holds the records and retries, and never turns them into record
//! failures. Each schema is fetched once per process, never per record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use crate::config::ValueFormat;
use crate::stage::convert::{ConvertError, JsonObject};
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

/// The registry topics, their formats, and the schemas the resolver fetched for them.
#[derive(Clone)]
pub struct RegistryTopics {
    pub formats: BTreeMap<String, ValueFormat>,
    pub schemas: Arc<SchemaCache>,
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
        let id = wire::frame(bytes)?.schema_id;
        let schema = match self.get(id) {
            Some(known) => known.map_err(RecordError::Schema)?,
            // Not resolved (a bug upstream): a record failure that says so, never a panic.
            None => {
                return Err(RecordError::Schema(Arc::new(SchemaError::Registry(
                    RegistryError::NotFound {
                        id,
                        detail: "not looked up before conversion".into(),
                    },
                ))))
            }
        };
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
            (schema, format) => {
                return Err(RecordError::WrongKind {
                    id,
                    kind: schema.kind(),
                    format,
                })
            }
        })
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
    #[error("schema id {id} is a {kind:?} schema; this topic is read as {format} (kafka.formats)")]
    WrongKind {
        id: u32,
        kind: SchemaKind,
        format: ValueFormat,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_remembered_and_classed() {
        let cache = SchemaCache::default();
        let avro = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
        let payloads = [
            Some(wire::encode(1, b"x")),
            Some(wire::encode(2, b"y")),
            Some(wire::encode(1, b"z")),
            Some(b"{}".to_vec()),
            None,
        ];
        let missing = |c: &SchemaCache| c.missing(payloads.iter().map(|p| p.as_deref()));
        assert_eq!(missing(&cache), vec![1, 2]);
        assert!(cache.insert(1, Ok(RegisteredSchema::avro(avro))).is_ok());
        let e = cache
            .insert(
                2,
                Err(RegistryError::NotFound {
                    id: 2,
                    detail: "40403".into(),
                }),
            )
            .unwrap_err();
        assert_eq!(e.class(), "unknown_schema_id");
        assert_eq!(missing(&cache), Vec::<u32>::new());
        let e = cache
            .insert(3, Ok(RegisteredSchema::avro("\"string\"")))
            .unwrap_err();
        assert_eq!(e.class(), "not_a_record");
        assert!(cache.get(1).unwrap().is_ok());
    }

    #[test]
    fn a_schema_of_another_type_than_the_topic_is_a_record_failure() {
        let cache = SchemaCache::default();
        let json = RegisteredSchema {
            kind: SchemaKind::Json,
            text: r#"{"type":"object"}"#.into(),
            references: Vec::new(),
        };
        assert!(cache.insert(1, Ok(json)).is_ok());
        let framed = wire::encode(1, b"{\"a\":1}");
        let e = cache.convert(ValueFormat::Avro, Some(&framed)).unwrap_err();
        assert_eq!(e.class(), "wrong_schema_type");
        assert!(e.to_string().contains("read as avro"), "{e}");
        assert!(cache
            .convert(ValueFormat::JsonSchema, Some(&framed))
            .is_ok());
        let e = cache
            .convert(ValueFormat::Protobuf, Some(b"{}"))
            .unwrap_err();
        assert_eq!(e.class(), "not_wire_format");
        let unknown = RegistryError::UnknownType {
            id: 2,
            kind: "THRIFT".into(),
        };
        assert_eq!(
            cache.insert(2, Err(unknown)).unwrap_err().class(),
            "wrong_schema_type"
        );
    }
}
