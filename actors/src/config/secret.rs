//! [`Secret`]: a configuration value that must never reach a log, an error message or `bqsink
//! validate`'s output (`admin.token`, `bigquery.token`, `errors.slack.webhook_url`). Its `Debug`
//! and `Serialize` print `<redacted>`; the value is read only through [`Secret::expose`], so every
//! place that uses it is one `grep` away. Held in `secrecy`'s `SecretString`, which zeroes the
//! memory when dropped.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

/// A secret string from the configuration.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value itself: for the one place that sends it (a header, a request URL).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

/// Serialized as `<redacted>`: configuration is serialized only to be shown.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Holder {
        token: Option<Secret>,
    }

    #[test]
    fn a_secret_never_prints_and_reads_back_only_through_expose() {
        let h: Holder = serde_json::from_str(r#"{"token":"s3cr3t-value"}"#).unwrap();
        assert_eq!(h.token.as_ref().map(Secret::expose), Some("s3cr3t-value"));
        let printed = format!("{h:?} {h:#?} {}", serde_json::to_string(&h).unwrap());
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains(REDACTED), "{printed}");
        assert_eq!(Secret::from("a"), Secret::new(String::from("a")));
        assert_ne!(Secret::from("a"), Secret::from("b"));
    }
}
