//! Convert: a record's bytes into a JSON object.
//!
//! The pipeline uses [`parse_object`]: it validates the payload and keeps the object's members as
//! spans of the payload, so that transform copies them into the row as they are. [`convert`] builds
//! a `serde_json` map instead, for callers that want values.

use serde_json::{Map, Value};

use crate::stage::json::{object_members_and_inner, InnerMembers, Member, NotAnObject};

/// Why a payload is not a JSON object.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("record has no value (tombstone)")]
    Tombstone,
    #[error("value is not valid JSON: {0}")]
    InvalidJson(#[from] serde_json::Error),
    #[error("value is JSON {0}, not an object")]
    NotAnObject(&'static str),
}

impl ConvertError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            ConvertError::Tombstone => "tombstone",
            ConvertError::InvalidJson(_) => "invalid_json",
            ConvertError::NotAnObject(_) => "not_an_object",
        }
    }
}

/// Parses a payload into a JSON object.
pub fn convert(payload: Option<&[u8]>) -> Result<Map<String, Value>, ConvertError> {
    let bytes = payload.ok_or(ConvertError::Tombstone)?;
    match serde_json::from_slice::<Value>(bytes)? {
        Value::Object(map) => Ok(map),
        Value::Null => Err(ConvertError::NotAnObject("null")),
        Value::Bool(_) => Err(ConvertError::NotAnObject("boolean")),
        Value::Number(_) => Err(ConvertError::NotAnObject("number")),
        Value::String(_) => Err(ConvertError::NotAnObject("string")),
        Value::Array(_) => Err(ConvertError::NotAnObject("array")),
    }
}

/// A payload that is a JSON object: its members, in order, as spans of the payload (a key that
/// appears twice keeps its last member).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonObject {
    pub members: Vec<Member>,
    /// The members of the objects among the members' values, when the reader found them (see
    /// [`InnerMembers`]): the protobuf row writes a RECORD from them instead of reading it again.
    pub inner: InnerMembers,
    /// The object's text when it is not the record's payload (a registry topic's value decoded to
    /// JSON, [`crate::stage::registered`]); `members` are spans of it then. The payload stays the original
    /// bytes, for the error destinations.
    pub text: Option<Vec<u8>>,
    /// The record's key decoded, for a topic whose keys are in a registry format
    /// (`kafka.key_formats`): a string key's characters, any other key's compact JSON text. `None`:
    /// the key's own bytes (or no key).
    pub key: Option<Vec<u8>>,
}

/// Checks that a payload is a JSON object and finds its members, without building values.
pub fn parse_object(payload: Option<&[u8]>) -> Result<JsonObject, ConvertError> {
    let bytes = payload.ok_or(ConvertError::Tombstone)?;
    match object_members_and_inner(bytes) {
        Ok((members, inner)) => Ok(JsonObject {
            members,
            inner,
            text: None,
            key: None,
        }),
        Err(NotAnObject::Invalid(e)) => Err(ConvertError::InvalidJson(e)),
        Err(NotAnObject::Kind(kind)) => Err(ConvertError::NotAnObject(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_object` and `convert` agree on what is an object and how each failure is classed.
    #[test]
    fn both_parsers_agree() {
        let cases: &[&[u8]] = &[
            br#"{"event_id":"e1","n":3,"nested":{"a":[1,2]}}"#,
            b"{\"event_id\": ",
            b"not json",
            &[0xff, 0xfe],
            b"[1,2]",
            b"\"s\"",
            b"null",
            b"12",
            b"{} {}",
        ];
        for case in cases {
            let (a, b) = (parse_object(Some(case)), convert(Some(case)));
            match (&a, &b) {
                (Ok(o), Ok(m)) => assert_eq!(o.members.len(), m.len()),
                (Err(x), Err(y)) => {
                    assert_eq!(x.class(), y.class());
                    assert_eq!(x.to_string(), y.to_string());
                }
                _ => panic!("{:?}: {a:?} vs {b:?}", String::from_utf8_lossy(case)),
            }
        }
        assert_eq!(parse_object(None).unwrap_err().class(), "tombstone");
    }

    #[test]
    fn object_is_converted() {
        let map = convert(Some(br#"{"event_id":"e1","n":3,"nested":{"a":[1,2]}}"#)).unwrap();
        assert_eq!(map["event_id"], "e1");
        assert_eq!(map["n"], 3);
        assert_eq!(map["nested"]["a"][1], 2);
    }

    #[test]
    fn malformed_json_is_an_error() {
        let err = convert(Some(b"{\"event_id\": ")).unwrap_err();
        assert_eq!(err.class(), "invalid_json");
        assert!(err.to_string().contains("EOF"), "{err}");
        assert_eq!(
            convert(Some(b"not json")).unwrap_err().class(),
            "invalid_json"
        );
        assert_eq!(
            convert(Some(&[0xff, 0xfe])).unwrap_err().class(),
            "invalid_json"
        );
    }

    #[test]
    fn non_objects_and_tombstones_are_errors() {
        assert_eq!(
            convert(Some(b"[1,2]")).unwrap_err().to_string(),
            "value is JSON array, not an object"
        );
        assert_eq!(
            convert(Some(b"\"s\"")).unwrap_err().class(),
            "not_an_object"
        );
        assert_eq!(convert(Some(b"null")).unwrap_err().class(), "not_an_object");
        assert_eq!(convert(None).unwrap_err().class(), "tombstone");
    }
}
