//! Rows as protocol buffers for the BigQuery Storage Write API: a table's schema becomes a
//! self-contained proto2 `DescriptorProto` ([`RowFormat::descriptor`]) and each row's JSON object is
//! encoded straight into the message's bytes ([`RowFormat::encode`]), in one pass over the text
//! without building `serde_json::Value`s.
//!
//! The invariant: [`RowFormat::encode`] either returns bytes that BigQuery decodes into the same
//! values `tabledata.insertAll` would store for that JSON, or a [`FieldError`] naming the field
//! path, the column's type and an excerpt of the value. A value that does not fit its column is a
//! *record failure* of its row alone, never a failed request for the batch.
//!
//! Types, as Google documents the proto conversions (`write-api#data_type_conversions`):
//!
//! | column | proto field | JSON accepted |
//! |---|---|---|
//! | STRING | string | string; a number or boolean as its text |
//! | BYTES | bytes | base64 string |
//! | INTEGER | int64 | integer, or a string holding one |
//! | FLOAT | double | number, or a string (`NaN`, `Infinity`, …) |
//! | NUMERIC, BIGNUMERIC | string | number or decimal string |
//! | BOOLEAN | bool | `true`/`false`, or those as strings |
//! | TIMESTAMP | int64 (µs since the epoch) | RFC 3339 / `YYYY-MM-DD HH:MM:SS[.f][zone]` string, or seconds since the epoch |
//! | DATE | int32 (days since the epoch) | `YYYY-MM-DD` |
//! | TIME, DATETIME | string | `HH:MM:SS[.f]`, `YYYY-MM-DD[ T]HH:MM:SS[.f]` (checked) |
//! | GEOGRAPHY | string | WKT or GeoJSON text |
//! | JSON | string | a string as the JSON text, any other value as its text |
//! | RECORD | nested message | object |
//!
//! REPEATED columns take an array (`null` is empty); REQUIRED columns refuse a missing or `null`
//! value. Column names match case-insensitively, as BigQuery's do; a member the table lacks is the
//! error BigQuery gives (`no such field`), which table management may fix by adding the field.

mod civil;
mod decode;
mod number;
mod row;
mod value;

use std::collections::HashMap;
use std::fmt;

use prost::encoding::{encode_varint, WireType};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};
use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde::Deserializer;

use crate::stage::schema::FieldSchema;
pub use row::{ProtoRow, RowBody, RowData, RowFormats, RowWriter};
use value::{Column, Kind};

/// Why a row cannot be encoded for its table: the field path, what the column takes and what the
/// row has. Its text reads like BigQuery's own row errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field (`address.city`, `tags[2]`); empty for the row itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field {}: {}", self.path, self.message)
        }
    }
}

impl FieldError {
    /// A member the table has no column for, worded as BigQuery words it (`no such field: x.`), so
    /// that table management recognises it.
    pub fn is_unknown_field(&self) -> bool {
        self.message.starts_with("no such field")
    }
}

/// Whether two names are the same bytes. Column names are mostly 4 to 16 bytes: those are compared
/// as two overlapping words each, without a call to `memcmp` (a tenth of the row encoding's
/// instructions when every member compared through it).
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let half = |s: &[u8], at: usize| {
        let mut w = [0; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_le_bytes(w)
    };
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

/// A schema the encoder cannot describe (an unknown column type).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("column {path} has type {field_type}, which the Storage Write API encoding does not know")]
pub struct UnsupportedColumn {
    pub path: String,
    pub field_type: String,
}

/// The columns of one message level: the table's, or a RECORD's.
#[derive(Debug)]
struct Message {
    columns: Vec<Column>,
    /// Lower-cased column name → index in `columns`.
    by_name: HashMap<String, usize>,
    /// Bit `i` set: column `i` (of the first 64) is REQUIRED.
    required: u64,
}

impl Message {
    /// The index of the column `key` names (exactly, else case-insensitively), trying `next` first:
    /// rows mostly list their members in the table's order.
    fn find(&self, key: &str, next: usize) -> Option<usize> {
        match self.columns.get(next) {
            Some(c) if same_name(c.name.as_bytes(), key.as_bytes()) => Some(next),
            _ => self
                .by_name
                .get(key)
                .or_else(|| self.by_name.get(&key.to_ascii_lowercase()))
                .copied(),
        }
    }

    /// A member the message has no column for, in BigQuery's own words (`no such field: x.`), so
    /// that table management adds the field.
    fn unknown(path: &Path<'_>, key: &str) -> FieldError {
        FieldError {
            path: Path::Field(path, key).to_string(),
            message: format!("no such field: {key}."),
        }
    }

    /// Every REQUIRED column among the first 64 was given (bit `i` of `seen`: column `i`); past
    /// 64 columns REQUIRED is checked by BigQuery.
    fn check_required(&self, seen: u64, path: &Path<'_>) -> Result<(), FieldError> {
        if seen & self.required == self.required {
            return Ok(());
        }
        for (i, column) in self.columns.iter().enumerate().take(64) {
            if column.mode == value::Mode::Required && seen & (1 << i) == 0 {
                return Err(FieldError {
                    path: Path::Field(path, &column.name).to_string(),
                    message: "missing required field".into(),
                });
            }
        }
        Ok(())
    }
}

/// A table's schema as a protobuf row format: the descriptor BigQuery is sent once per connection
/// and the encoder of each row.
#[derive(Debug)]
pub struct RowFormat {
    root: Message,
    descriptor: DescriptorProto,
}

impl RowFormat {
    /// The format of rows for a table with `schema`.
    pub fn new(schema: &[FieldSchema]) -> Result<Self, UnsupportedColumn> {
        let (root, descriptor) = message(schema, "row", "")?;
        Ok(Self { root, descriptor })
    }

    /// The self-contained proto2 descriptor (RECORDs as nested types), for `ProtoSchema`.
    pub fn descriptor(&self) -> &DescriptorProto {
        &self.descriptor
    }

    /// Encodes one row, given as the text of a JSON object, appending its message to `out` (cleared
    /// first). On error `out` holds garbage.
    pub fn encode(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), FieldError> {
        out.clear();
        let mut error = None;
        // UTF-8 checked once here, not again for every value read.
        let text = std::str::from_utf8(json).map_err(|e| FieldError {
            path: String::new(),
            message: format!("the row is not UTF-8: {e}"),
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = MessageSeed {
            message: &self.root,
            out,
            path: &Path::Root,
            error: &mut error,
        };
        let result = seed.deserialize(&mut de).and_then(|()| de.end());
        match (result, error) {
            (_, Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(FieldError {
                path: String::new(),
                message: format!("the row is not a JSON object: {e}"),
            }),
        }
    }

    /// Encodes the `json` member of an insertAll entry (`{"insertId":…,"json":{…}}`).
    pub fn encode_entry(&self, entry: &[u8], out: &mut Vec<u8>) -> Result<(), FieldError> {
        if let Some(row) = row_of_entry(entry) {
            return self.encode(row, out);
        }
        let members = crate::stage::json::object_members(entry).map_err(|_| FieldError {
            path: String::new(),
            message: "the row entry is not a JSON object".into(),
        })?;
        let json = members
            .iter()
            .find(|m| m.is(entry, "json"))
            .ok_or_else(|| FieldError {
                path: String::new(),
                message: "the row entry has no `json` member".into(),
            })?;
        self.encode(json.value.of(entry), out)
    }
}

/// The `json` object of an entry as the transform stage writes it (`{"json":…}` or
/// `{"insertId":"…","json":…}`), without reading the row; `None` for any other shape.
fn row_of_entry(entry: &[u8]) -> Option<&[u8]> {
    let inner = entry.strip_suffix(b"}")?;
    if let Some(row) = inner.strip_prefix(b"{\"json\":") {
        return Some(row);
    }
    let rest = inner.strip_prefix(b"{\"insertId\":")?;
    let mut values =
        serde_json::Deserializer::from_slice(rest).into_iter::<&serde_json::value::RawValue>();
    values.next()?.ok()?;
    rest[values.byte_offset()..].strip_prefix(b",\"json\":")
}

/// Builds one message level: its columns and its descriptor, RECORDs nested inside it.
fn message(
    schema: &[FieldSchema],
    name: &str,
    prefix: &str,
) -> Result<(Message, DescriptorProto), UnsupportedColumn> {
    let mut columns = Vec::with_capacity(schema.len());
    let mut by_name = HashMap::with_capacity(schema.len());
    let mut descriptor = DescriptorProto {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    for (i, field) in schema.iter().enumerate() {
        let number = i as u32 + 1;
        let path = format!("{prefix}{}", field.name);
        let mode = value::Mode::of(field.mode.as_deref());
        let (kind, proto_type, type_name) = if field.is_record() {
            // A nested type per RECORD, named after its position so that any column name works.
            let nested_name = format!("f{number}");
            let (nested, desc) = message(&field.fields, &nested_name, &format!("{path}."))?;
            descriptor.nested_type.push(desc);
            (
                Kind::Record(Box::new(nested)),
                Type::Message,
                Some(nested_name),
            )
        } else {
            let kind = Kind::of(&field.field_type).ok_or_else(|| UnsupportedColumn {
                path: path.clone(),
                field_type: field.field_type.clone(),
            })?;
            let t = kind.proto_type();
            (kind, t, None)
        };
        // As Google's own clients map modes (proto2: BigQuery decodes rows with proto2 semantics).
        let label = match mode {
            value::Mode::Repeated => Label::Repeated,
            value::Mode::Required => Label::Required,
            value::Mode::Nullable => Label::Optional,
        };
        descriptor.field.push(FieldDescriptorProto {
            name: Some(field.name.clone()),
            number: Some(number as i32),
            label: Some(label as i32),
            r#type: Some(proto_type as i32),
            type_name,
            ..Default::default()
        });
        by_name.insert(field.name.to_ascii_lowercase(), columns.len());
        columns.push(Column {
            name: field.name.clone(),
            number,
            kind,
            mode,
        });
    }
    let required = columns
        .iter()
        .take(64)
        .enumerate()
        .filter(|(_, c)| c.mode == value::Mode::Required)
        .fold(0u64, |mask, (i, _)| mask | 1 << i);
    Ok((
        Message {
            columns,
            by_name,
            required,
        },
        descriptor,
    ))
}

/// Where a value sits in the row, for error messages; built only when an error is reported.
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Reads a JSON object into the message of `message`, appending the fields to `out`.
struct MessageSeed<'m, 'o, 'p, 'e> {
    message: &'m Message,
    out: &'o mut Vec<u8>,
    path: &'p Path<'p>,
    error: &'e mut Option<FieldError>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, '_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let m = self.message;
        // Which columns were given a value, for REQUIRED ones (tables rarely have more than 64
        // columns; past that, REQUIRED is checked by BigQuery).
        let mut seen: u64 = 0;
        // Rows mostly list their members in the table's order: try the column after the last one.
        let mut next = 0;
        while let Some(crate::stage::json::Key(key)) = map.next_key()? {
            let index = match m.find(&key, next) {
                Some(index) => index,
                None => {
                    *self.error = Some(Message::unknown(self.path, &key));
                    return Err(A::Error::custom("no such field"));
                }
            };
            next = index + 1;
            let column = &m.columns[index];
            let path = Path::Field(self.path, &column.name);
            let present = map.next_value_seed(value::ValueSeed {
                column,
                out: &mut *self.out,
                path: &path,
                error: &mut *self.error,
            })?;
            if present && index < 64 {
                seen |= 1 << index;
            }
        }
        if let Err(e) = m.check_required(seen, self.path) {
            *self.error = Some(e);
            return Err(A::Error::custom("missing required field"));
        }
        Ok(())
    }
}

/// Appends a length-delimited field (a string, bytes or a nested message's bytes).
fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_key(out, number, WireType::LengthDelimited);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a field's key (tag): `number` and `wire` type.
#[inline]
fn put_key(out: &mut Vec<u8>, number: u32, wire: WireType) {
    put_varint(out, u64::from(number << 3 | wire as u32));
}

/// Appends a varint. Keys and lengths are mostly one byte: that case is a push (prost's encoder
/// loops through `BufMut` for every byte, a tenth of the row encoding's instructions).
#[inline]
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        encode_varint(v, out);
    }
}

#[cfg(test)]
mod tests;
