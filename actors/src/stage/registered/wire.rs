//! The Schema Registry's wire format (Confluent's, which Karapace, Redpanda and Apicurio's
//! compatibility mode share): byte 0 is the magic byte 0, bytes 1..5 the schema id (big-endian),
//! the rest the serialized value; a Protobuf value's body starts with its message indexes
//! ([`message_indexes`]). A few lines of parsing, so no crate for it.

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
    #[error("the Protobuf value's message indexes are unreadable: {0}")]
    BadIndexes(&'static str),
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

/// The most message indexes a value may name (nesting depth of its message type in the schema).
const MAX_INDEXES: u64 = 64;

/// A Protobuf value's message indexes, read from the front of its `body`: the path from the
/// schema's file to the message type the value is (`[2]`: the file's third message; `[0, 1]`: the
/// second message nested in the first). Zigzag varints, as Kafka's `ByteUtils.writeVarint`: a
/// count, then the indexes; the count 0 alone stands for `[0]` (the common case, one byte).
/// Returns the indexes and the message's bytes after them.
pub fn message_indexes(body: &[u8]) -> Result<(Vec<usize>, &[u8]), WireError> {
    let mut rest = body;
    let count = zigzag(&mut rest)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=MAX_INDEXES as i64).contains(&count) {
        return Err(WireError::BadIndexes("count out of range"));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let i = zigzag(&mut rest)?;
        indexes.push(usize::try_from(i).map_err(|_| WireError::BadIndexes("negative index"))?);
    }
    Ok((indexes, rest))
}

/// Reads one zigzag varint (at most 32 bits, as Kafka writes them).
fn zigzag(rest: &mut &[u8]) -> Result<i64, WireError> {
    varint(rest, 5)
        .map(unzigzag)
        .map_err(|_| WireError::BadIndexes("truncated or overlong varint"))
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The bytes end inside it.
    Ends,
    /// It is longer than allowed.
    TooLong,
}

/// Reads one base-128 varint of at most `max` bytes, low groups first: the integer encoding of
/// Avro and protobuf, and of the message indexes.
#[inline]
pub fn varint(input: &mut &[u8], max: usize) -> Result<u64, VarintError> {
    let mut value: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(max) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(value);
        }
    }
    Err(if input.len() < max {
        VarintError::Ends
    } else {
        VarintError::TooLong
    })
}

/// A zigzag-encoded integer's value (0, -1, 1, -2, … for 0, 1, 2, 3, …).
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// `indexes` as [`message_indexes`] reads them (producers in tests, the demo).
pub fn encode_indexes(indexes: &[usize]) -> Vec<u8> {
    if indexes == [0] {
        return vec![0];
    }
    let mut out = Vec::new();
    for v in std::iter::once(indexes.len()).chain(indexes.iter().copied()) {
        let mut z = (v as u64) << 1;
        while z >= 0x80 {
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    out
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
    fn varints_and_zigzag_read_as_avro_and_protobuf_write_them() {
        let read = |bytes: &[u8], max: usize| {
            let mut input = bytes;
            varint(&mut input, max).map(|v| (v, input.len()))
        };
        assert_eq!(read(&[0x96, 0x01, 9], 10), Ok((150, 1)));
        assert_eq!(read(&[0xff; 10][..9], 10), Err(VarintError::Ends));
        assert_eq!(read(&[0xff; 11], 10), Err(VarintError::TooLong));
        assert_eq!(
            read(&[0x80, 0x80, 0x80, 0x80, 0x80, 1], 5),
            Err(VarintError::TooLong)
        );
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read(&max, 10), Ok((u64::MAX, 0)));
        let zigzag: Vec<i64> = (0..5).map(unzigzag).collect();
        assert_eq!(zigzag, [0, -1, 1, -2, 2]);
        assert_eq!(unzigzag(u64::MAX), i64::MIN);
        // sint32's zigzag over 32 bits, as the Protobuf writer reads it.
        assert_eq!(unzigzag(u64::from(u32::MAX)) as i32, i32::MIN);
    }

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

    #[test]
    fn message_indexes_read_as_kafka_writes_them() {
        // [0] is the single byte 0; [1] is count 1, index 1 (zigzag: 2, 2); [0, 70] needs a
        // two-byte varint (zigzag 140).
        assert_eq!(encode_indexes(&[0]), vec![0]);
        assert_eq!(encode_indexes(&[1]), vec![2, 2]);
        assert_eq!(encode_indexes(&[0, 70]), vec![4, 0, 0x8c, 0x01]);
        for indexes in [vec![0], vec![1], vec![0, 70], vec![3, 0, 2]] {
            let mut body = encode_indexes(&indexes);
            body.extend_from_slice(b"msg");
            assert_eq!(message_indexes(&body), Ok((indexes, &b"msg"[..])));
        }
        assert_eq!(
            message_indexes(&[]),
            Err(WireError::BadIndexes("truncated or overlong varint"))
        );
        assert_eq!(
            message_indexes(&[1]),
            Err(WireError::BadIndexes("count out of range"))
        );
        assert_eq!(
            message_indexes(&[2, 1]),
            Err(WireError::BadIndexes("negative index"))
        );
        assert_eq!(
            message_indexes(&[0xff; 6]),
            Err(WireError::BadIndexes("truncated or overlong varint"))
        );
    }
}
