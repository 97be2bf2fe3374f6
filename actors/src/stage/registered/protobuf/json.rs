//! A decoded Protobuf message written as the JSON text BigQuery takes for the columns its fields
//! map to (the table in [`super`]), straight into bytes.

use std::io::Write;

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value};

use super::super::text::{self, Misfit};
use super::ProtoError;
use crate::stage::json::{Member, Span};

/// Writes `message` as a JSON object into `out` and returns its members as spans of `out` (what
/// `parse_object` would find, without reading the text again).
pub fn write(message: &DynamicMessage, out: &mut Vec<u8>) -> Result<Vec<Member>, ProtoError> {
    let mut members = Vec::new();
    let mut w = Writer { out };
    w.message(message, Some(&mut members))
        .map_err(ProtoError::Value)?;
    Ok(members)
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    /// A member's key (protobuf names are `[A-Za-z_][A-Za-z0-9_]*`: nothing to escape) and its
    /// value; with `members`, recorded as spans.
    fn member(
        &mut self,
        first: &mut bool,
        name: &str,
        members: &mut Option<&mut Vec<Member>>,
        value: impl FnOnce(&mut Self) -> Result<(), Misfit>,
    ) -> Result<(), Misfit> {
        if !std::mem::take(first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        let key = span(self.out.len(), self.out.len() + name.len());
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        let start = self.out.len();
        value(self).map_err(|e| e.within(name))?;
        if let Some(members) = members.as_deref_mut() {
            members.push(Member {
                key,
                escaped: false,
                value: span(start, self.out.len()),
            });
        }
        Ok(())
    }

    /// A message as an object: each real oneof as a record `<name>_<index>`, then the other
    /// fields in declaration order (Confluent's converter's order).
    fn message(
        &mut self,
        message: &DynamicMessage,
        mut members: Option<&mut Vec<Member>>,
    ) -> Result<(), Misfit> {
        let descriptor = message.descriptor();
        self.out.push(b'{');
        let mut first = true;
        for (index, oneof) in descriptor.oneofs().enumerate() {
            if oneof.is_synthetic() {
                continue;
            }
            let name = format!("{}_{index}", oneof.name());
            let set = oneof.fields().find(|f| message.has_field(f));
            self.member(&mut first, &name, &mut members, |w| match set {
                None => {
                    w.out.extend_from_slice(b"null");
                    Ok(())
                }
                Some(field) => {
                    w.out.push(b'{');
                    let mut inner = true;
                    w.member(&mut inner, field.name(), &mut None, |w| {
                        w.field(message, &field)
                    })?;
                    w.out.push(b'}');
                    Ok(())
                }
            })?;
        }
        for field in descriptor.fields() {
            if field.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
                continue;
            }
            self.member(&mut first, field.name(), &mut members, |w| {
                w.field(message, &field)
            })?;
        }
        self.out.push(b'}');
        Ok(())
    }

    /// A field's value: null for a message or proto3 `optional` field not set, else its value
    /// (its default when not set).
    fn field(&mut self, message: &DynamicMessage, field: &FieldDescriptor) -> Result<(), Misfit> {
        let optional = field.containing_oneof().is_some_and(|o| o.is_synthetic())
            || (matches!(field.kind(), Kind::Message(_)) && !field.is_list() && !field.is_map());
        if optional && !message.has_field(field) {
            self.out.extend_from_slice(b"null");
            return Ok(());
        }
        let value = message.get_field(field);
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return Err(Misfit::new("a map field without an entry type"));
            };
            let Value::Map(map) = value.as_ref() else {
                return Err(Misfit::new("a map field without a map value"));
            };
            let value_kind = entry.map_entry_value_field().kind();
            return text::key_value_array(
                self,
                |w| &mut *w.out,
                map.iter().collect(),
                |w, k| w.map_key(k),
                |w, n, _, v| w.value(v, &value_kind).map_err(|e| e.within(n)),
            );
        }
        self.value(value.as_ref(), &field.kind())
    }

    fn map_key(&mut self, key: &MapKey) {
        match key {
            MapKey::Bool(b) => self
                .out
                .extend_from_slice(if *b { b"true" } else { b"false" }),
            MapKey::I32(i) => drop(write!(self.out, "{i}")),
            MapKey::I64(i) => drop(write!(self.out, "{i}")),
            MapKey::U32(i) => drop(write!(self.out, "{i}")),
            MapKey::U64(i) => drop(write!(self.out, "{i}")),
            MapKey::String(s) => text::string(self.out, s),
        }
    }

    fn value(&mut self, value: &Value, kind: &Kind) -> Result<(), Misfit> {
        match value {
            Value::Bool(b) => self
                .out
                .extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::I32(i) => drop(write!(self.out, "{i}")),
            Value::I64(i) => drop(write!(self.out, "{i}")),
            Value::U32(i) => drop(write!(self.out, "{i}")),
            Value::U64(i) => drop(write!(self.out, "{i}")),
            Value::F32(f) => text::float(self.out, f64::from(*f)),
            Value::F64(f) => text::float(self.out, *f),
            Value::String(s) => text::string(self.out, s),
            Value::Bytes(b) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                text::string(self.out, &encoded);
            }
            Value::EnumNumber(n) => match kind {
                Kind::Enum(e) => match e.get_value(*n) {
                    Some(v) => text::string(self.out, v.name()),
                    None => text::string(self.out, &n.to_string()),
                },
                _ => drop(write!(self.out, "{n}")),
            },
            Value::Message(m) => self.nested(m)?,
            Value::List(items) => {
                self.out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        self.out.push(b',');
                    }
                    self.value(item, kind).map_err(|e| e.within(n))?;
                }
                self.out.push(b']');
            }
            Value::Map(_) => return Err(Misfit::new("a map value outside a map field")),
        }
        Ok(())
    }

    /// A message inside the record: the logical types Confluent's converter knows by name, else
    /// an object.
    fn nested(&mut self, m: &DynamicMessage) -> Result<(), Misfit> {
        let int = |name: &str| -> i64 {
            match m.get_field_by_name(name).as_deref() {
                Some(Value::I32(i)) => i64::from(*i),
                Some(Value::I64(i)) => *i,
                Some(Value::U32(i)) => i64::from(*i),
                _ => 0,
            }
        };
        match m.descriptor().full_name() {
            "google.protobuf.Timestamp" => {
                let micros =
                    i128::from(int("seconds")) * 1_000_000 + i128::from(int("nanos")) / 1_000;
                text::timestamp(self.out, micros, true).map_err(Misfit::new)
            }
            "google.type.Date" => {
                let (y, mo, d) = (int("year"), int("month"), int("day"));
                let date = i32::try_from(y)
                    .ok()
                    .zip(
                        u8::try_from(mo)
                            .ok()
                            .and_then(|m| time::Month::try_from(m).ok()),
                    )
                    .and_then(|(y, mo)| time::Date::from_calendar_date(y, mo, d as u8).ok())
                    .filter(|_| (1..=31).contains(&d))
                    .ok_or_else(|| {
                        Misfit::new(format!("date {y}-{mo}-{d} is not a calendar date"))
                    })?;
                text::quoted_date(self.out, date);
                Ok(())
            }
            "google.type.TimeOfDay" => {
                let (h, mi, s, n) = (int("hours"), int("minutes"), int("seconds"), int("nanos"));
                if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..60).contains(&s) {
                    return Err(Misfit::new(format!(
                        "time of day {h}:{mi}:{s} out of range"
                    )));
                }
                let micros = ((h * 60 + mi) * 60 + s) * 1_000_000 + n / 1_000;
                text::time(self.out, micros).map_err(Misfit::new)
            }
            "confluent.type.Decimal" => {
                let bytes = match m.get_field_by_name("value").as_deref() {
                    Some(Value::Bytes(b)) => b.to_vec(),
                    _ => Vec::new(),
                };
                let scale = usize::try_from(int("scale")).map_err(|_| {
                    Misfit::new(format!("decimal scale {} is negative", int("scale")))
                })?;
                if bytes.len() > 32 {
                    return Err(Misfit::new("decimal wider than BIGNUMERIC's 32 bytes"));
                }
                text::string(self.out, &text::decimal_text(&bytes, scale));
                Ok(())
            }
            _ => self.message(m, None),
        }
    }
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        end: end as u32,
    }
}
