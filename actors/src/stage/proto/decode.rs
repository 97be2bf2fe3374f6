//! The way back: a row's protobuf bytes as the JSON the encoder takes, for the rare paths that need
//! a proto row as JSON (its table's format changed before it was sent; a missing table created
//! from the rows).
//!
//! The invariant: for bytes `b` that [`RowFormat::encode`] wrote, encoding
//! [`RowFormat::entry_json`]`(b)` with the same format gives `b` again (each type is written in a
//! form its column reads back exactly: TIMESTAMP as RFC 3339 with microseconds, DATE as
//! `YYYY-MM-DD`, BYTES as base64, FLOAT with Rust's shortest round-trip digits).

use std::io::Write as _;

use base64::Engine as _;
use prost::encoding::{decode_key, decode_varint, WireType};

use super::value::{Kind, Mode};
use super::{Message, RowFormat};

impl RowFormat {
    /// The insertAll entry `{"json":{…}}` of a row this format encoded. Fields the format does
    /// not know, or bytes that do not decode, are left out (they cannot come from the encoder).
    pub fn entry_json(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
        out.extend_from_slice(b"{\"json\":");
        object(&self.root, bytes, &mut out);
        out.push(b'}');
        out
    }
}

/// One field's value as read from the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

/// Writes the message `bytes` of `message` as a JSON object.
fn object(message: &Message, mut bytes: &[u8], out: &mut Vec<u8>) {
    // Each column's values in the order read (REPEATED columns have several).
    let mut values: Vec<Vec<Wire<'_>>> = (0..message.columns.len()).map(|_| Vec::new()).collect();
    while !bytes.is_empty() {
        let Ok((number, wire_type)) = decode_key(&mut bytes) else {
            break;
        };
        let value = match wire_type {
            WireType::Varint => match decode_varint(&mut bytes) {
                Ok(v) => Wire::Varint(v),
                Err(_) => break,
            },
            WireType::SixtyFourBit if bytes.len() >= 8 => {
                let (head, rest) = bytes.split_at(8);
                bytes = rest;
                Wire::Fixed64(u64::from_le_bytes(head.try_into().unwrap_or_default()))
            }
            WireType::LengthDelimited => {
                let Ok(len) = decode_varint(&mut bytes) else {
                    break;
                };
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > bytes.len() {
                    break;
                }
                let (head, rest) = bytes.split_at(len);
                bytes = rest;
                Wire::Bytes(head)
            }
            _ => break,
        };
        if let Some(slot) = (number as usize)
            .checked_sub(1)
            .and_then(|i| values.get_mut(i))
        {
            slot.push(value);
        }
    }
    out.push(b'{');
    let mut first = true;
    for (column, values) in message.columns.iter().zip(&values) {
        if values.is_empty() {
            continue;
        }
        if !std::mem::replace(&mut first, false) {
            out.push(b',');
        }
        json_string(&column.name, out);
        out.push(b':');
        if column.mode == Mode::Repeated {
            out.push(b'[');
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(&column.kind, v, out);
            }
            out.push(b']');
        } else if let Some(v) = values.last() {
            value(&column.kind, v, out);
        }
    }
    out.push(b'}');
}

/// Writes one value of a column of `kind`.
fn value(kind: &Kind, v: &Wire<'_>, out: &mut Vec<u8>) {
    match (kind, v) {
        (Kind::Int64, Wire::Varint(v)) => {
            let _ = write!(out, "{}", *v as i64);
        }
        (Kind::Bool, Wire::Varint(v)) => {
            out.extend_from_slice(if *v != 0 { b"true" } else { b"false" })
        }
        (Kind::Timestamp, Wire::Varint(v)) => timestamp(*v as i64, out),
        (Kind::Date, Wire::Varint(v)) => date(*v as i64, out),
        (Kind::Float64, Wire::Fixed64(bits)) => {
            let f = f64::from_bits(*bits);
            if f.is_finite() {
                // Rust's shortest representation parses back to the same double.
                let _ = write!(out, "{f:?}");
            } else if f.is_nan() {
                out.extend_from_slice(b"\"NaN\"");
            } else if f > 0.0 {
                out.extend_from_slice(b"\"Infinity\"");
            } else {
                out.extend_from_slice(b"\"-Infinity\"");
            }
        }
        (Kind::Bytes, Wire::Bytes(b)) => {
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(b)
                    .as_bytes(),
            );
            out.push(b'"');
        }
        (Kind::Record(message), Wire::Bytes(b)) => object(message, b, out),
        (
            Kind::String
            | Kind::Decimal
            | Kind::Time
            | Kind::DateTime
            | Kind::Geography
            | Kind::Json,
            Wire::Bytes(b),
        ) => json_string(&String::from_utf8_lossy(b), out),
        // A wire type the column's type never has: not from the encoder.
        _ => out.extend_from_slice(b"null"),
    }
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Microseconds since the epoch as `"YYYY-MM-DDTHH:MM:SS.ffffffZ"`.
fn timestamp(micros: i64, out: &mut Vec<u8>) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => {
            let _ = write!(
                out,
                "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{frac:06}Z\"",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
        Err(_) => out.extend_from_slice(b"null"),
    }
}

/// Days since the epoch (an int32, sign-extended on the wire) as `"YYYY-MM-DD"`.
fn date(days: i64, out: &mut Vec<u8>) {
    const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
    let julian = i32::try_from(days + UNIX_EPOCH_JULIAN_DAY).ok();
    match julian.and_then(|j| time::Date::from_julian_day(j).ok()) {
        Some(d) => {
            let _ = write!(
                out,
                "\"{:04}-{:02}-{:02}\"",
                d.year(),
                u8::from(d.month()),
                d.day()
            );
        }
        None => out.extend_from_slice(b"null"),
    }
}
