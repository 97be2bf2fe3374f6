//! One column's value: which JSON each BigQuery type takes and how it is written as a protobuf
//! field (the table in the parent module).

use std::fmt;

use base64::Engine as _;
use prost::encoding::WireType;
use prost_types::field_descriptor_proto::Type;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::number::{integral_float, is_decimal};
use super::{put_bytes, put_key, put_varint, FieldError, Message, MessageSeed, Path};
use crate::stage::json::string_value;

/// A column's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Nullable,
    Required,
    Repeated,
}

impl Mode {
    pub(super) fn of(mode: Option<&str>) -> Self {
        match mode {
            Some(m) if m.eq_ignore_ascii_case("REQUIRED") => Mode::Required,
            Some(m) if m.eq_ignore_ascii_case("REPEATED") => Mode::Repeated,
            _ => Mode::Nullable,
        }
    }
}

/// A column's type, as far as the encoding is concerned.
#[derive(Debug)]
pub(super) enum Kind {
    String,
    Bytes,
    Int64,
    Float64,
    /// NUMERIC or BIGNUMERIC: the decimal text.
    Decimal,
    Bool,
    Timestamp,
    Date,
    Time,
    DateTime,
    Geography,
    Json,
    Record(Box<Message>),
}

impl Kind {
    /// A scalar type by its BigQuery name (legacy and standard SQL names).
    pub(super) fn of(field_type: &str) -> Option<Kind> {
        Some(match field_type.to_ascii_uppercase().as_str() {
            "STRING" => Kind::String,
            "BYTES" => Kind::Bytes,
            "INTEGER" | "INT64" => Kind::Int64,
            "FLOAT" | "FLOAT64" => Kind::Float64,
            "NUMERIC" | "BIGNUMERIC" | "DECIMAL" | "BIGDECIMAL" => Kind::Decimal,
            "BOOLEAN" | "BOOL" => Kind::Bool,
            "TIMESTAMP" => Kind::Timestamp,
            "DATE" => Kind::Date,
            "TIME" => Kind::Time,
            "DATETIME" => Kind::DateTime,
            "GEOGRAPHY" => Kind::Geography,
            "JSON" => Kind::Json,
            _ => return None,
        })
    }

    pub(super) fn proto_type(&self) -> Type {
        match self {
            Kind::Bytes => Type::Bytes,
            Kind::Int64 | Kind::Timestamp => Type::Int64,
            Kind::Date => Type::Int32,
            Kind::Float64 => Type::Double,
            Kind::Bool => Type::Bool,
            Kind::Record(_) => Type::Message,
            Kind::String
            | Kind::Decimal
            | Kind::Time
            | Kind::DateTime
            | Kind::Geography
            | Kind::Json => Type::String,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Kind::String => "STRING",
            Kind::Bytes => "BYTES",
            Kind::Int64 => "INTEGER",
            Kind::Float64 => "FLOAT",
            Kind::Decimal => "NUMERIC",
            Kind::Bool => "BOOLEAN",
            Kind::Timestamp => "TIMESTAMP",
            Kind::Date => "DATE",
            Kind::Time => "TIME",
            Kind::DateTime => "DATETIME",
            Kind::Geography => "GEOGRAPHY",
            Kind::Json => "JSON",
            Kind::Record(_) => "RECORD",
        }
    }
}

/// A column of a message level.
#[derive(Debug)]
pub(super) struct Column {
    pub(super) name: String,
    pub(super) number: u32,
    pub(super) kind: Kind,
    pub(super) mode: Mode,
}

/// Reads one member's value into its field; yields whether it was present (not `null`).
pub(super) struct ValueSeed<'c, 'o, 'p, 'e> {
    pub(super) column: &'c Column,
    pub(super) out: &'o mut Vec<u8>,
    pub(super) path: &'p Path<'p>,
    pub(super) error: &'e mut Option<FieldError>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, '_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        if self.column.mode == Mode::Repeated {
            return d.deserialize_any(Repeated(self));
        }
        Element {
            column: self.column,
            out: self.out,
            path: self.path,
            error: self.error,
            repeated: false,
        }
        .deserialize(d)
    }
}

/// A REPEATED column: an array of elements, or `null`.
struct Repeated<'c, 'o, 'p, 'e>(ValueSeed<'c, 'o, 'p, 'e>);

impl<'de> Visitor<'de> for Repeated<'_, '_, '_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let s = self.0;
        let mut i = 0;
        loop {
            let path = Path::Index(s.path, i);
            let element = Element {
                column: s.column,
                out: &mut *s.out,
                path: &path,
                error: &mut *s.error,
                repeated: true,
            };
            if seq.next_element_seed(element)?.is_none() {
                return Ok(i > 0);
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<bool, A::Error> {
        Err(fail(self.0.error, self.0.path, self.0.column, "an object"))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Err(fail(self.0.error, self.0.path, self.0.column, v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
        Err(fail(
            self.0.error,
            self.0.path,
            self.0.column,
            &v.to_string(),
        ))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
        Err(fail(
            self.0.error,
            self.0.path,
            self.0.column,
            &v.to_string(),
        ))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<bool, E> {
        Err(fail(
            self.0.error,
            self.0.path,
            self.0.column,
            &v.to_string(),
        ))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
        Err(fail(
            self.0.error,
            self.0.path,
            self.0.column,
            &v.to_string(),
        ))
    }
}

/// One value of a column (the value of a plain column, or an element of a REPEATED one).
struct Element<'c, 'o, 'p, 'e> {
    column: &'c Column,
    out: &'o mut Vec<u8>,
    path: &'p Path<'p>,
    error: &'e mut Option<FieldError>,
    /// An element of an array: `null` is not allowed (BigQuery refuses NULL in arrays).
    repeated: bool,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_, '_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        let c = self.column;
        if let Kind::Record(message) = &c.kind {
            let mut nested = Vec::with_capacity(64);
            let present = d.deserialize_any(RecordVisitor {
                message,
                out: &mut nested,
                path: self.path,
                error: &mut *self.error,
                column: c,
            })?;
            if present {
                put_bytes(self.out, c.number, &nested);
            }
            return self.null_check(present);
        }
        // Every scalar is read as its raw text: numbers keep their exact digits (NUMERIC), strings
        // are unescaped only when they have escapes.
        let raw: &RawValue = Deserialize::deserialize(d)?;
        scalar(c, raw.get(), self.out, self.path, self.repeated).map_err(|e| {
            *self.error = Some(e);
            D::Error::custom("value does not fit its column")
        })
    }
}

impl Element<'_, '_, '_, '_> {
    /// A `null` (or missing record) is fine for a NULLABLE column only.
    fn null_check<E: serde::de::Error>(self, present: bool) -> Result<bool, E> {
        null_check(self.column, self.path, self.repeated, present).map_err(|e| {
            *self.error = Some(e);
            E::custom("null where a value is required")
        })
    }
}

/// A `null` (or missing record) is fine for a NULLABLE column only; yields `present`.
pub(super) fn null_check(
    column: &Column,
    path: &Path<'_>,
    repeated: bool,
    present: bool,
) -> Result<bool, FieldError> {
    if present {
        return Ok(true);
    }
    let message = if repeated {
        "null in an array (BigQuery arrays cannot hold NULL)"
    } else if column.mode == Mode::Required {
        "null for a REQUIRED column"
    } else {
        return Ok(false);
    };
    Err(FieldError {
        path: path.to_string(),
        message: message.into(),
    })
}

/// Writes the scalar JSON text `text` (`null` included) as a value of `column` (not a RECORD);
/// yields whether a value was written.
pub(super) fn scalar(
    column: &Column,
    text: &str,
    out: &mut Vec<u8>,
    path: &Path<'_>,
    repeated: bool,
) -> Result<bool, FieldError> {
    if text == "null" {
        return null_check(column, path, repeated, false);
    }
    match write_scalar(&column.kind, column.number, text, out) {
        Ok(()) => Ok(true),
        Err(why) => Err(FieldError {
            path: path.to_string(),
            message: format!(
                "{why}: column type {}, value {}",
                column.kind.name(),
                excerpt(text)
            ),
        }),
    }
}

/// A RECORD value: an object, or `null`.
struct RecordVisitor<'m, 'o, 'p, 'e, 'c> {
    message: &'m Message,
    out: &'o mut Vec<u8>,
    path: &'p Path<'p>,
    error: &'e mut Option<FieldError>,
    column: &'c Column,
}

impl<'de> Visitor<'de> for RecordVisitor<'_, '_, '_, '_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        MessageSeed {
            message: self.message,
            out: self.out,
            path: self.path,
            error: self.error,
        }
        .visit_map(map)?;
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<bool, A::Error> {
        Err(fail(self.error, self.path, self.column, "an array"))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Err(fail(self.error, self.path, self.column, v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
        Err(fail(self.error, self.path, self.column, &v.to_string()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
        Err(fail(self.error, self.path, self.column, &v.to_string()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<bool, E> {
        Err(fail(self.error, self.path, self.column, &v.to_string()))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
        Err(fail(self.error, self.path, self.column, &v.to_string()))
    }
}

/// Records a value of the wrong shape (an array for a scalar, a string for a RECORD, …).
fn fail<E: serde::de::Error>(
    error: &mut Option<FieldError>,
    path: &Path<'_>,
    column: &Column,
    got: &str,
) -> E {
    let expected = match (&column.kind, column.mode) {
        (_, Mode::Repeated) => "an array",
        (Kind::Record(_), _) => "an object",
        _ => "a scalar",
    };
    *error = Some(FieldError {
        path: path.to_string(),
        message: format!(
            "expected {expected}: column type {}{}, value {}",
            column.kind.name(),
            if column.mode == Mode::Repeated {
                " REPEATED"
            } else {
                ""
            },
            excerpt(got)
        ),
    });
    E::custom("value does not fit its column")
}

/// At most 64 characters of a value, for messages.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Whether `raw` is a JSON number (not a string, object, array, boolean).
fn is_number(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

/// Writes a non-null scalar `raw` (JSON text) as field `number` of type `kind`.
fn write_scalar(kind: &Kind, number: u32, raw: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let string = string_value(raw);
    match kind {
        Kind::String | Kind::Geography => match (&string, raw) {
            (Some(s), _) => put_bytes(out, number, s.as_bytes()),
            (None, r) if is_number(r) || r == "true" || r == "false" => {
                put_bytes(out, number, r.as_bytes())
            }
            _ => return Err("expected a string".into()),
        },
        Kind::Json => match &string {
            Some(s) => put_bytes(out, number, s.as_bytes()),
            None => put_bytes(out, number, raw.as_bytes()),
        },
        Kind::Bytes => {
            let s = string.ok_or("expected a base64 string")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s.as_bytes()))
                .map_err(|e| format!("not base64 ({e})"))?;
            put_bytes(out, number, &bytes);
        }
        Kind::Int64 => {
            let text = string.as_deref().unwrap_or(raw);
            let v: i64 = text.trim().parse().or_else(|_| integral_float(text))?;
            put_key(out, number, WireType::Varint);
            put_varint(out, v as u64);
        }
        Kind::Float64 => {
            let text = string.as_deref().unwrap_or(raw);
            let v: f64 = match text.trim() {
                "Infinity" | "inf" | "+inf" => f64::INFINITY,
                "-Infinity" | "-inf" => f64::NEG_INFINITY,
                "NaN" | "nan" => f64::NAN,
                t => t.parse().map_err(|_| "expected a number".to_owned())?,
            };
            put_key(out, number, WireType::SixtyFourBit);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Kind::Decimal => {
            let text = string.as_deref().unwrap_or(raw).trim();
            if !is_decimal(text) {
                return Err("expected a decimal number".into());
            }
            put_bytes(out, number, text.as_bytes());
        }
        Kind::Bool => {
            let v = match string.as_deref().unwrap_or(raw) {
                "true" | "TRUE" | "True" | "1" => true,
                "false" | "FALSE" | "False" | "0" => false,
                _ => return Err("expected true or false".into()),
            };
            put_key(out, number, WireType::Varint);
            put_varint(out, v as u64);
        }
        Kind::Timestamp => {
            let micros = match &string {
                Some(s) => super::civil::timestamp_micros(s)?,
                None if is_number(raw) => {
                    let secs: f64 = raw.parse().map_err(|_| "expected a number".to_owned())?;
                    let micros = (secs * 1e6).round();
                    if !micros.is_finite() || micros.abs() > 2.6e17 {
                        return Err("seconds since the epoch out of range".into());
                    }
                    micros as i64
                }
                None => return Err("expected a timestamp string or seconds".into()),
            };
            put_key(out, number, WireType::Varint);
            put_varint(out, micros as u64);
        }
        Kind::Date => {
            let s = string.ok_or("expected a date string YYYY-MM-DD")?;
            let days = super::civil::date_days(&s)?;
            put_key(out, number, WireType::Varint);
            // int32 negatives are sign-extended to ten bytes, as protobuf does.
            put_varint(out, i64::from(days) as u64);
        }
        Kind::Time => {
            let s = string.ok_or("expected a time string HH:MM:SS")?;
            super::civil::check_time(&s)?;
            put_bytes(out, number, s.as_bytes());
        }
        Kind::DateTime => {
            let s = string.ok_or("expected a datetime string")?;
            let normal = super::civil::datetime_text(&s)?;
            put_bytes(out, number, normal.as_bytes());
        }
        Kind::Record(_) => unreachable!("records are read as objects"),
    }
    Ok(())
}
