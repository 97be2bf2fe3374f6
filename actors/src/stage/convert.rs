//! Convert: a record's bytes into a JSON object.

use serde_json::{Map, Value};

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

#[cfg(test)]
mod tests {
    use super::*;

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
