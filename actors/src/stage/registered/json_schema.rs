//! JSON Schema records in the Schema Registry's wire format: the body is the JSON object itself,
//! checked against its registered schema, then taken as a JSON topic's payload is (the same
//! members, the same rows; the payload handed to the error destinations stays the original bytes,
//! header included).
//!
//! A value that breaks its schema is a record failure (`schema_violation`), with the first
//! violations and where they are. Confluent's deserializer validates only when asked
//! (`json.fail.invalid.schema`); bqsink always does: the registered schema is the contract the
//! table is built on. The validator is the `jsonschema` crate (drafts 4, 6, 7, 2019-09 and
//! 2020-12, by the schema's `$schema`; Confluent's default, draft 7, when it names none); a
//! schema's references are the registry's, by the name its `$ref`s use, never fetched from the
//! network.

use std::collections::HashMap;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

use super::wire;
use crate::stage::convert::JsonObject;
use crate::stage::json::{object_members, NotAnObject};

/// A registered JSON Schema, compiled once.
pub struct JsonSchema {
    validator: Validator,
    /// The schema and its references, for its columns ([`super::columns`]).
    pub(crate) schema: Value,
    references: HashMap<String, Value>,
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSchema").finish_non_exhaustive()
    }
}

/// Why a record's value is not a usable JSON Schema record.
#[derive(Debug, thiserror::Error)]
pub enum JsonSchemaError {
    #[error("the registry's schema {id} is not a valid JSON Schema: {error}")]
    BadSchema { id: u32, error: String },
    #[error("the value is not JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("the value is JSON {0}, not an object")]
    NotAnObject(&'static str),
    #[error("the value breaks JSON Schema {id}: {violations}")]
    Violation { id: u32, violations: String },
}

impl JsonSchemaError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            JsonSchemaError::BadSchema { .. } => "bad_schema",
            JsonSchemaError::InvalidJson(_) => "invalid_json",
            JsonSchemaError::NotAnObject(_) => "not_an_object",
            JsonSchemaError::Violation { .. } => "schema_violation",
        }
    }
}

/// The schema's references, by the name its `$ref`s give them (resolved against the schema's base
/// URI, so matched by the end of the URI's path).
struct References(HashMap<String, Value>);

impl Retrieve for References {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let wanted = uri.as_str();
        self.0
            .iter()
            .find(|(name, _)| {
                wanted == name.as_str()
                    || wanted
                        .strip_suffix(name.as_str())
                        .is_some_and(|rest| rest.ends_with('/'))
            })
            .map(|(_, schema)| schema.clone())
            .ok_or_else(|| format!("{wanted} is not among the schema's registry references").into())
    }
}

/// The most violations a failure message lists.
const MAX_LISTED: usize = 3;

impl JsonSchema {
    /// Compiles the registry's schema text; `references` are the schemas it refers to, by name.
    pub fn parse(
        id: u32,
        text: &str,
        references: &[(String, String)],
    ) -> Result<Self, JsonSchemaError> {
        let bad = |error: String| JsonSchemaError::BadSchema { id, error };
        let schema: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut refs = HashMap::new();
        for (name, text) in references {
            let value: Value =
                serde_json::from_str(text).map_err(|e| bad(format!("reference {name}: {e}")))?;
            refs.insert(name.clone(), value);
        }
        let mut options = jsonschema::options().with_retriever(References(refs.clone()));
        if schema.get("$schema").is_none() {
            options = options.with_draft(jsonschema::Draft::Draft7);
        }
        let validator = options.build(&schema).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            validator,
            schema,
            references: refs,
        })
    }

    /// `v`, or the subschema its `$ref` names (in this schema, `#/…`, or in a reference,
    /// `name#/…`), followed a few times; `v` itself when a `$ref` leads nowhere.
    pub(crate) fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(target) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            let (name, pointer) = target.split_once('#').unwrap_or((target, ""));
            let document = if name.is_empty() {
                Some(&self.schema)
            } else {
                self.references.get(name)
            };
            match document.and_then(|d| d.pointer(pointer)) {
                Some(next) => v = next,
                None => return v,
            }
        }
        v
    }
}

/// Checks a value in the wire format (`framed`: header included) against its schema and returns
/// its body as a JSON object, members found as
/// [`parse_object`](crate::stage::convert::parse_object) finds them.
pub fn decode(id: u32, schema: &JsonSchema, framed: &[u8]) -> Result<JsonObject, JsonSchemaError> {
    let body = wire::frame(framed).map(|f| f.body).unwrap_or_default();
    let members = object_members(body).map_err(|e| match e {
        NotAnObject::Invalid(e) => JsonSchemaError::InvalidJson(e),
        NotAnObject::Kind(kind) => JsonSchemaError::NotAnObject(kind),
    })?;
    validate(id, schema, body)?;
    Ok(JsonObject {
        inner: Vec::new(),
        members,
        text: Some(body.to_vec()),
        key: None,
    })
}

/// Checks a JSON value of any type in the wire format (a key: a string or number will do) against
/// its schema and returns its body.
pub fn decode_any(id: u32, schema: &JsonSchema, framed: &[u8]) -> Result<Vec<u8>, JsonSchemaError> {
    let body = wire::frame(framed).map(|f| f.body).unwrap_or_default();
    validate(id, schema, body)?;
    Ok(body.to_vec())
}

/// Checks `body` (JSON text) against `schema`; a violation names the first few and where.
fn validate(id: u32, schema: &JsonSchema, body: &[u8]) -> Result<(), JsonSchemaError> {
    let value: Value = serde_json::from_slice(body).map_err(JsonSchemaError::InvalidJson)?;
    let mut errors = schema.validator.iter_errors(&value).peekable();
    if errors.peek().is_none() {
        return Ok(());
    }
    let listed: Vec<String> = errors
        .take(MAX_LISTED)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            format!("at {at}: {e}")
        })
        .collect();
    Err(JsonSchemaError::Violation {
        id,
        violations: listed.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERSON: &str = r#"{
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string", "maxLength": 20},
            "address": {"$ref": "address.json"}
        },
        "required": ["id", "name"]
    }"#;
    const ADDRESS: &str = r#"{"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"]}"#;

    fn schema() -> JsonSchema {
        let refs = [("address.json".to_owned(), ADDRESS.to_owned())];
        JsonSchema::parse(4, PERSON, &refs).expect("the schema compiles")
    }

    #[test]
    fn a_valid_value_is_its_body_as_an_object() {
        let body = br#"{"id":1,"name":"Kim","address":{"city":"Seoul"}}"#;
        let o = decode(4, &schema(), &wire::encode(4, body)).unwrap();
        assert_eq!(o.text.as_deref(), Some(&body[..]));
        let names: Vec<_> = o
            .members
            .iter()
            .map(|m| m.name(body).into_owned())
            .collect();
        assert_eq!(names, ["id", "name", "address"]);
    }

    #[test]
    fn violations_are_record_failures_that_say_where() {
        let s = schema();
        let e = decode(4, &s, &wire::encode(4, br#"{"id":"x","name":"Kim"}"#)).unwrap_err();
        assert_eq!(e.class(), "schema_violation");
        assert!(e.to_string().contains("at /id"), "{e}");
        // A violation inside the referenced schema.
        let e = decode(
            4,
            &s,
            &wire::encode(4, br#"{"id":1,"name":"K","address":{}}"#),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("at /address") && e.to_string().contains("city"),
            "{e}"
        );
        let e = decode(4, &s, &wire::encode(4, b"[1]")).unwrap_err();
        assert_eq!(e.class(), "not_an_object");
        let e = decode(4, &s, &wire::encode(4, b"{\"id\":")).unwrap_err();
        assert_eq!(e.class(), "invalid_json");
    }

    #[test]
    fn bad_schemas_and_missing_references_are_named() {
        let e = JsonSchema::parse(5, "{not json", &[]).unwrap_err();
        assert_eq!(e.class(), "bad_schema");
        let e = JsonSchema::parse(5, r#"{"type": 12}"#, &[]).unwrap_err();
        assert_eq!(e.class(), "bad_schema");
        let e = JsonSchema::parse(5, PERSON, &[]).unwrap_err();
        assert!(e.to_string().contains("address.json"), "{e}");
    }
}
