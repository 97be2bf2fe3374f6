//! Rows encoded where the record is parsed: the transform stage (several threads) writes a row's
//! protobuf member by member from the spans the converter found ([`RowWriter`]), with the table's
//! format as the Storage Write API client last read it ([`RowFormats`]), so the writer's single
//! thread sends the bytes as they are instead of reading the JSON row again.
//!
//! The invariant: a row carries protobuf bytes ([`RowBody::Proto`]) only if [`RowWriter`] wrote
//! every member without error, and those bytes are what [`RowFormat::encode`] gives for the row's
//! JSON with the same format. The client sends them only while that format is still the table's
//! (the same `Arc`); otherwise, and wherever the JSON is needed (creating a missing table from the
//! rows), [`RowFormat::entry_json`] gives the row's JSON back.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use prost::encoding::WireType;
use serde::de::DeserializeSeed;

use super::value::{self, Kind, Mode, ValueSeed};
use super::{put_bytes, put_key, put_varint, FieldError, Message, Path, RowFormat};
use crate::model::TableRef;
use crate::stage::json::{string_text, valid_object_members, Member, Span};

/// A row encoded as protobuf for `format`.
#[derive(Debug, Clone)]
pub struct ProtoRow {
    pub format: Arc<RowFormat>,
    pub bytes: Bytes,
}

/// A row as the transform stage encoded it.
#[derive(Debug, Clone)]
pub enum RowBody {
    /// The insertAll `rows[]` entry, `{"insertId":…,"json":{…}}`.
    Json(Vec<u8>),
    /// The Storage Write API's protobuf message (storage path, table format known).
    Proto(ProtoRow),
}

impl RowBody {
    /// The encoded size: what the row adds to a request.
    pub fn len(&self) -> usize {
        match self {
            RowBody::Json(entry) => entry.len(),
            RowBody::Proto(p) => p.bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A borrowed view, for the BigQuery port.
    pub fn data(&self) -> RowData<'_> {
        match self {
            RowBody::Json(entry) => RowData::Json(entry),
            RowBody::Proto(p) => RowData::Proto(p),
        }
    }

    /// The insertAll entry (decoded from the protobuf for a proto row).
    pub fn json(&self) -> Cow<'_, [u8]> {
        self.data().json()
    }

    /// The insertAll entry, owned.
    pub fn into_json(self) -> Vec<u8> {
        match self {
            RowBody::Json(entry) => entry,
            RowBody::Proto(p) => p.format.entry_json(&p.bytes),
        }
    }
}

/// A row handed to the BigQuery port: an insertAll entry or protobuf bytes.
#[derive(Debug, Clone, Copy)]
pub enum RowData<'a> {
    Json(&'a [u8]),
    Proto(&'a ProtoRow),
}

impl<'a> RowData<'a> {
    /// The insertAll entry, `{"json":{…}}` decoded for a proto row.
    pub fn json(&self) -> Cow<'a, [u8]> {
        match *self {
            RowData::Json(entry) => Cow::Borrowed(entry),
            RowData::Proto(p) => Cow::Owned(p.format.entry_json(&p.bytes)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RowData::Json(entry) => entry.len(),
            RowData::Proto(p) => p.bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [u8]> for RowData<'a> {
    fn from(entry: &'a [u8]) -> Self {
        RowData::Json(entry)
    }
}

impl<'a> From<&'a Vec<u8>> for RowData<'a> {
    fn from(entry: &'a Vec<u8>) -> Self {
        RowData::Json(entry)
    }
}

/// The tables' row formats the Storage Write API client holds, shared with the transform stage.
/// Readers check [`RowFormats::generation`] (one atomic load) to keep their own copies current.
#[derive(Debug, Clone, Default)]
pub struct RowFormats {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    generation: AtomicU64,
    formats: RwLock<HashMap<TableRef, Arc<RowFormat>>>,
}

impl RowFormats {
    pub fn get(&self, table: &TableRef) -> Option<Arc<RowFormat>> {
        let formats = self.inner.formats.read().unwrap_or_else(|e| e.into_inner());
        formats.get(table).cloned()
    }

    /// The table's format is now `format` (`None`: unknown, rows stay JSON).
    pub fn set(&self, table: &TableRef, format: Option<Arc<RowFormat>>) {
        let mut formats = self
            .inner
            .formats
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match format {
            Some(f) => formats.insert(table.clone(), f),
            None => formats.remove(table),
        };
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every [`RowFormats::set`].
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }
}

/// Encodes a row member by member, with the values and errors [`RowFormat::encode`] gives for the
/// whole object.
pub struct RowWriter<'f> {
    message: &'f Message,
    /// Where `message` is in the row (the root, or a RECORD column), for errors.
    path: &'f Path<'f>,
    /// Columns given a value (bit `i`: column `i`), for REQUIRED ones.
    seen: u64,
    /// The column after the last one written (members mostly come in the table's order).
    next: usize,
    /// No value given to this writer has a `\\` (see [`RowFormat::writer_of`]).
    unescaped: bool,
    /// The record's text and the members of the objects among its members' values, found by the
    /// converter (see [`RowWriter::with_inner`]).
    text: &'f str,
    inner: &'f [(u32, Member)],
}

impl RowFormat {
    /// A writer of one row's members; `out` is the caller's, cleared by the caller.
    pub fn writer(&self) -> RowWriter<'_> {
        RowWriter {
            message: &self.root,
            path: &Path::Root,
            seen: 0,
            next: 0,
            unescaped: false,
            text: "",
            inner: &[],
        }
    }

    /// [`RowFormat::writer`] for the members of the JSON text `text`: when it has no `\\`, none of
    /// its strings has an escape, and a STRING column's string is copied from between its quotes
    /// without looking for one. Every string value given to the writer must then be a part of
    /// `text` (or have no escape).
    pub fn writer_of(&self, text: &[u8]) -> RowWriter<'_> {
        RowWriter {
            unescaped: memchr::memchr(b'\\', text).is_none(),
            ..self.writer()
        }
    }
}

impl<'f> RowWriter<'f> {
    /// Takes a RECORD's members from `inner` (see [`crate::stage::json::InnerMembers`]: spans of
    /// `text`) when its value is the object of `text` they were found in, instead of reading the
    /// object again.
    pub fn with_inner(self, text: &'f str, inner: &'f [(u32, Member)]) -> Self {
        RowWriter {
            text,
            inner,
            ..self
        }
    }

    /// The members `inner` has for `value`, an object's text: only if `value` lies in `text` (so
    /// that its offset names it).
    fn inner_of(&self, value: &str) -> Option<&'f [(u32, Member)]> {
        let at = (value.as_ptr() as usize).checked_sub(self.text.as_ptr() as usize)?;
        if at + value.len() > self.text.len() {
            return None;
        }
        let at = u32::try_from(at).ok()?;
        let start = self.inner.iter().position(|(o, _)| *o == at)?;
        let count = self.inner[start..]
            .iter()
            .take_while(|(o, _)| *o == at)
            .count();
        Some(&self.inner[start..start + count])
    }

    /// The column `name` names, or BigQuery's `no such field` error.
    fn column(&mut self, name: &str) -> Result<usize, FieldError> {
        let index = self
            .message
            .find(name, self.next)
            .ok_or_else(|| Message::unknown(self.path, name))?;
        self.next = index + 1;
        Ok(index)
    }

    fn mark(&mut self, index: usize, present: bool) {
        if present && index < 64 {
            self.seen |= 1 << index;
        }
    }

    /// Writes member `name` with `value`, the text of its value, which must be valid JSON (a
    /// part of a record the converter validated: see [`valid_object_members`]).
    pub fn member(&mut self, name: &str, value: &str, out: &mut Vec<u8>) -> Result<(), FieldError> {
        let index = self.column(name)?;
        let column = &self.message.columns[index];
        if let (Kind::String, Mode::Nullable | Mode::Required) = (&column.kind, column.mode) {
            // The common case, a string for a STRING column, copied as it is: what
            // `value::scalar` writes for it, without its checks for other types.
            let text = string_text(value);
            if let Some(inner) = text.filter(|t| self.unescaped || !t.contains('\\')) {
                put_bytes(out, column.number, inner.as_bytes());
                self.mark(index, true);
                return Ok(());
            }
        }
        let path = Path::Field(self.path, &column.name);
        let single = column.mode != Mode::Repeated;
        let record = matches!(column.kind, Kind::Record(_));
        let present = if single && !record && !value.starts_with(['{', '[']) {
            // A scalar (or `null`) for a scalar column: no parser needed.
            value::scalar(column, value, out, &path, false)?
        } else if single && record && value == "null" {
            value::null_check(column, &path, false, false)?
        } else if let (true, Kind::Record(nested), true) =
            (single, &column.kind, value.starts_with('{'))
        {
            // A RECORD's object, member by member as the row's.
            let mut bytes = Vec::with_capacity(value.len());
            let mut record = RowWriter {
                message: nested,
                path: &path,
                seen: 0,
                next: 0,
                unescaped: self.unescaped,
                text: "",
                inner: &[],
            };
            let not_object = || FieldError {
                path: path.to_string(),
                message: "the value is not a JSON object".into(),
            };
            match self.inner_of(value) {
                Some(members) => {
                    let text = self.text;
                    let span = |s: Span| text.get(s.start as usize..s.end as usize);
                    for (_, m) in members {
                        let (Some(key), Some(member)) = (span(m.key), span(m.value)) else {
                            return Err(not_object());
                        };
                        record.member(key, member, &mut bytes)?;
                    }
                }
                None => {
                    for member in valid_object_members(value) {
                        let (key, member) = member.map_err(|_| not_object())?;
                        record.member(&key, member, &mut bytes)?;
                    }
                }
            }
            record.finish()?;
            put_bytes(out, column.number, &bytes);
            true
        } else {
            let mut error = None;
            let mut de = serde_json::Deserializer::from_str(value);
            let seed = ValueSeed {
                column,
                out,
                path: &path,
                error: &mut error,
            };
            match (seed.deserialize(&mut de), error) {
                (_, Some(e)) => return Err(e),
                (Ok(present), None) => present,
                (Err(e), None) => {
                    return Err(FieldError {
                        path: path.to_string(),
                        message: format!("the value is not JSON: {e}"),
                    })
                }
            }
        };
        self.mark(index, present);
        Ok(())
    }

    /// Writes member `name` with the string `s` (a metadata column).
    pub fn string(&mut self, name: &str, s: &str, out: &mut Vec<u8>) -> Result<(), FieldError> {
        let index = self.column(name)?;
        let column = &self.message.columns[index];
        if column.mode != Mode::Repeated && matches!(column.kind, Kind::String) {
            put_bytes(out, column.number, s.as_bytes());
            self.mark(index, true);
            return Ok(());
        }
        self.next = index;
        let text = serde_json::to_string(s).unwrap_or_default();
        self.member(name, &text, out)
    }

    /// Writes member `name` with the integer `v` (a metadata column).
    pub fn integer(&mut self, name: &str, v: i64, out: &mut Vec<u8>) -> Result<(), FieldError> {
        let index = self.column(name)?;
        let column = &self.message.columns[index];
        if column.mode != Mode::Repeated && matches!(column.kind, Kind::Int64) {
            put_key(out, column.number, WireType::Varint);
            put_varint(out, v as u64);
            self.mark(index, true);
            return Ok(());
        }
        self.next = index;
        self.member(name, &v.to_string(), out)
    }

    /// Writes member `name` with the time `ms` (milliseconds since the epoch, ≥ 0); `text` gives
    /// its JSON text for a column that is not a TIMESTAMP.
    pub fn timestamp_ms(
        &mut self,
        name: &str,
        ms: i64,
        text: impl FnOnce() -> Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), FieldError> {
        let index = self.column(name)?;
        let column = &self.message.columns[index];
        if column.mode != Mode::Repeated && matches!(column.kind, Kind::Timestamp) {
            put_key(out, column.number, WireType::Varint);
            put_varint(out, ms.saturating_mul(1000) as u64);
            self.mark(index, true);
            return Ok(());
        }
        self.next = index;
        let text = text();
        let text = std::str::from_utf8(&text).map_err(|e| FieldError {
            path: name.to_owned(),
            message: format!("not UTF-8: {e}"),
        })?;
        self.member(name, text, out)
    }

    /// Ends the row: every REQUIRED column was given.
    pub fn finish(self) -> Result<(), FieldError> {
        self.message.check_required(self.seen, self.path)
    }
}
