//! The Schema Registry port and the schemas read from it.
//!
//! Invariant: a record of an `avro` topic reaches the converter only once the schema its header
//! names is in the [`SchemaCache`] — parsed, or known to be unusable (not registered, not Avro, not
//! a record: a record failure of each record that names it). A registry that cannot answer is a
//! sink failure: the [`resolver`](crate::resolver) holds the records and retries, and never turns
//! them into record failures. Each schema is fetched once per process, never per record.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use crate::stage::avro::{wire, AvroError, AvroSchema};
use crate::stage::convert::{ConvertError, JsonObject};

/// Fetches schemas by id (the `bqsink` crate implements it over HTTP; tests plug in fakes).
pub trait SchemaRegistry: Send + Sync + 'static {
    /// The schema text registered under `id` (Avro's JSON schema).
    fn fetch(&self, id: u32) -> BoxFuture<'static, Result<String, RegistryError>>;
    /// The registry's name in sink health, logs and metrics, e.g. `schema registry http://r:8081`.
    fn name(&self) -> String;
}

/// Why a schema could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that no schema has this id: a record failure of the records naming it.
    #[error("schema id {id} is not registered in the schema registry ({detail})")]
    NotFound { id: u32, detail: String },
    /// The schema is not Avro (Protobuf, JSON Schema): a record failure of the records naming it.
    #[error("schema id {id} is a {kind} schema; this topic is read as avro (kafka.formats)")]
    NotAvro { id: u32, kind: String },
    /// The registry cannot answer now (unreachable, timeout, 5xx, 429, 401/403): a sink failure.
    #[error("the schema registry cannot answer: {0}")]
    Unavailable(String),
}

/// What the cache knows of one schema id.
pub type Known = Result<Arc<AvroSchema>, Arc<SchemaError>>;

/// Why the records naming a schema id fail.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Registry(RegistryError),
    #[error(transparent)]
    Avro(AvroError),
}

impl SchemaError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            SchemaError::Registry(RegistryError::NotFound { .. }) => "unknown_schema_id",
            SchemaError::Registry(_) => "not_avro_schema",
            SchemaError::Avro(e) => e.class(),
        }
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

    /// Remembers what the registry answered for `id` (its schema text, or a record-failure error).
    pub fn insert(&self, id: u32, answer: Result<String, RegistryError>) -> Known {
        let known: Known = match answer {
            Ok(text) => AvroSchema::parse(id, &text)
                .map(Arc::new)
                .map_err(|e| Arc::new(SchemaError::Avro(e))),
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
}

/// Why an Avro record is not a JSON object (record failures, all).
#[derive(Debug, thiserror::Error)]
pub enum AvroRecordError {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Schema(Arc<SchemaError>),
    #[error(transparent)]
    Avro(#[from] AvroError),
}

impl AvroRecordError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            AvroRecordError::Convert(e) => e.class(),
            AvroRecordError::Wire(e) => e.class(),
            AvroRecordError::Schema(e) => e.class(),
            AvroRecordError::Avro(e) => e.class(),
        }
    }
}

impl SchemaCache {
    /// Decodes an Avro value in the wire format into the JSON object a row is made of. Its schema
    /// must be known ([`Self::missing`] is empty for it): the resolver sees to that.
    pub fn convert(&self, payload: Option<&[u8]>) -> Result<JsonObject, AvroRecordError> {
        let bytes = payload.ok_or(ConvertError::Tombstone)?;
        let framed = wire::frame(bytes)?;
        let id = framed.schema_id;
        let schema = match self.get(id) {
            Some(known) => known.map_err(AvroRecordError::Schema)?,
            // Not resolved (a bug upstream): a record failure that says so, never a panic.
            None => {
                return Err(AvroRecordError::Schema(Arc::new(SchemaError::Registry(
                    RegistryError::NotFound {
                        id,
                        detail: "not looked up before conversion".into(),
                    },
                ))))
            }
        };
        Ok(crate::stage::avro::decode(id, &schema, bytes)?)
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
        assert!(cache.insert(1, Ok(avro.into())).is_ok());
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
        let e = cache.insert(3, Ok("\"string\"".into())).unwrap_err();
        assert_eq!(e.class(), "not_a_record");
        assert!(cache.get(1).unwrap().is_ok());
    }
}
