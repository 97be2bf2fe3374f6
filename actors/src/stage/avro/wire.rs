//! The Schema Registry's wire format (Confluent's, which Karapace, Redpanda and Apicurio's
//! compatibility mode share): byte 0 is the magic byte 0, bytes 1..5 the schema id (big-endian),
//! the rest the serialized value. Three lines of parsing, so no crate for it.

/// The magic byte of the wire format.
pub const MAGIC: u8 = 0;

/// A value in the wire format: the schema it was written with, and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    pub body: &'a [u8],
}

/// Why a value is not in the wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("value is {0} bytes, shorter than the Schema Registry's 5-byte header")]
    TooShort(usize),
    #[error("value starts with byte {0:#04x}, not the Schema Registry wire format's magic byte 0")]
    BadMagic(u8),
}

impl WireError {
    /// Short class for logs and dead-letter headers.
    pub fn class(&self) -> &'static str {
        "not_wire_format"
    }
}

/// Splits a value into its schema id and body.
pub fn frame(value: &[u8]) -> Result<Framed<'_>, WireError> {
    match value {
        [MAGIC, a, b, c, d, body @ ..] => Ok(Framed {
            schema_id: u32::from_be_bytes([*a, *b, *c, *d]),
            body,
        }),
        [first, _, _, _, _, ..] => Err(WireError::BadMagic(*first)),
        short => Err(WireError::TooShort(short.len())),
    }
}

/// A value in the wire format for schema `id` (producers in tests, the demo).
pub fn encode(id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + body.len());
    v.push(MAGIC);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_gives_the_schema_id_and_bad_headers_are_named() {
        let v = encode(258, b"body");
        assert_eq!(&v[..5], &[0, 0, 0, 1, 2]);
        assert_eq!(
            frame(&v),
            Ok(Framed {
                schema_id: 258,
                body: b"body"
            })
        );
        assert_eq!(frame(&encode(7, b"")).map(|f| f.body.len()), Ok(0));
        assert_eq!(frame(b"{\"a\":1}"), Err(WireError::BadMagic(b'{')));
        assert_eq!(frame(&[0, 0, 1]), Err(WireError::TooShort(3)));
        assert!(WireError::BadMagic(1).to_string().contains("0x01"));
    }
}
