//! An Avro value, walked with its schema, written as the JSON text BigQuery takes for the column
//! the value maps to (the table in [`super`]). Written straight into bytes: no `serde_json::Value`
//! tree in between.

use std::io::Write;

use apache_avro::schema::{Name, UnionSchema};
use apache_avro::types::Value;
use apache_avro::Schema;
use base64::Engine;

use super::super::text::{self, Misfit};
use super::{AvroError, AvroSchema};
use crate::stage::json::{Member, Span};

/// Writes `value` (of `schema`, inside the registered `root`) as JSON into `out`; for a record,
/// also returns its members as spans of `out` (what `parse_object` would find, without reading the
/// text again).
pub fn write(
    value: &Value,
    schema: &Schema,
    root: &AvroSchema,
    out: &mut Vec<u8>,
) -> Result<Vec<Member>, AvroError> {
    let mut w = Writer { root, out };
    let written = match (value, resolve(root, schema).map_err(AvroError::Value)?) {
        (Value::Record(fields), Schema::Record(r)) => {
            let mut members = Vec::with_capacity(fields.len());
            w.record(fields, r, Some(&mut members)).map(|()| members)
        }
        _ => w.value(value, schema).map(|()| Vec::new()),
    };
    written.map_err(AvroError::Value)
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        end: end as u32,
    }
}

struct Writer<'a> {
    root: &'a AvroSchema,
    out: &'a mut Vec<u8>,
}

/// `schema`, or the named type it refers to.
pub(crate) fn resolve<'s>(root: &'s AvroSchema, schema: &'s Schema) -> Result<&'s Schema, Misfit> {
    match schema {
        Schema::Ref { name } => root
            .named(name)
            .ok_or_else(|| Misfit::new(format!("unknown named type {}", name.fullname(None)))),
        other => Ok(other),
    }
}

impl Writer<'_> {
    fn string(&mut self, s: &str) {
        text::string(self.out, s);
    }

    fn value(&mut self, value: &Value, schema: &Schema) -> Result<(), Misfit> {
        let schema = resolve(self.root, schema)?;
        match (value, schema) {
            (Value::Null, _) => self.out.extend_from_slice(b"null"),
            (Value::Boolean(b), _) => {
                self.out
                    .extend_from_slice(if *b { b"true" } else { b"false" })
            }
            (Value::Int(i), _) => {
                let _ = write!(self.out, "{i}");
            }
            (Value::Long(i), _) => {
                let _ = write!(self.out, "{i}");
            }
            (Value::Float(f), _) => self.float(f64::from(*f)),
            (Value::Double(f), _) => self.float(*f),
            (Value::Bytes(b) | Value::Fixed(_, b), _) => {
                let text = base64::engine::general_purpose::STANDARD.encode(b);
                self.string(&text);
            }
            (Value::String(s), _) | (Value::Enum(_, s), _) => self.string(s),
            (Value::Uuid(u), _) => self.string(&u.hyphenated().to_string()),
            (Value::Union(i, inner), Schema::Union(union)) => {
                self.union(*i as usize, inner, union)?
            }
            (Value::Array(items), Schema::Array(a)) => {
                self.out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        self.out.push(b',');
                    }
                    self.value(item, &a.items).map_err(|e| e.within(n))?;
                }
                self.out.push(b']');
            }
            (Value::Map(map), Schema::Map(m)) => text::key_value_array(
                self,
                |w| &mut *w.out,
                map.iter().collect(),
                |w, k| w.string(k),
                |w, _, k, v| w.value(v, &m.types).map_err(|e| e.within(k)),
            )?,
            (Value::Record(fields), Schema::Record(r)) => self.record(fields, r, None)?,
            (Value::Date(days), _) => {
                let date = text::date(*days)
                    .ok_or_else(|| Misfit::new(format!("date {days} out of range")))?;
                text::quoted_date(self.out, date);
            }
            (Value::TimeMillis(ms), _) => self.time(i64::from(*ms) * 1_000)?,
            (Value::TimeMicros(us), _) => self.time(*us)?,
            (Value::TimestampMillis(ms), _) => self.timestamp(i128::from(*ms) * 1_000, true)?,
            (Value::TimestampMicros(us), _) => self.timestamp(i128::from(*us), true)?,
            (Value::TimestampNanos(ns), _) => self.timestamp(i128::from(*ns) / 1_000, true)?,
            (Value::LocalTimestampMillis(ms), _) => {
                self.timestamp(i128::from(*ms) * 1_000, false)?
            }
            (Value::LocalTimestampMicros(us), _) => self.timestamp(i128::from(*us), false)?,
            (Value::LocalTimestampNanos(ns), _) => {
                self.timestamp(i128::from(*ns) / 1_000, false)?
            }
            (Value::Decimal(d), Schema::Decimal(s)) => {
                let bytes = <Vec<u8>>::try_from(d).map_err(|e| Misfit::new(e.to_string()))?;
                self.string(&text::decimal_text(&bytes, s.scale));
            }
            (Value::BigDecimal(d), _) => self.string(&d.to_plain_string()),
            (Value::Duration(d), _) => {
                let (months, days, ms) = (
                    u32::from(d.months()),
                    u32::from(d.days()),
                    u32::from(d.millis()),
                );
                let _ = write!(
                    self.out,
                    "{{\"months\":{months},\"days\":{days},\"milliseconds\":{ms}}}"
                );
            }
            (v, s) => {
                return Err(Misfit::new(format!(
                    "a {:?} value for a {:?} schema",
                    apache_avro::types::ValueKind::from(v),
                    apache_avro::schema::SchemaKind::from(s)
                )))
            }
        }
        Ok(())
    }

    /// A record as an object, fields in schema order; with `members`, each top-level member's key
    /// and value as spans of the text (Avro names are `[A-Za-z_][A-Za-z0-9_]*`: nothing to escape).
    fn record(
        &mut self,
        fields: &[(String, Value)],
        r: &apache_avro::schema::RecordSchema,
        mut members: Option<&mut Vec<Member>>,
    ) -> Result<(), Misfit> {
        self.out.push(b'{');
        for (n, ((name, v), field)) in fields.iter().zip(&r.fields).enumerate() {
            if n > 0 {
                self.out.push(b',');
            }
            self.out.push(b'"');
            let key = span(self.out.len(), self.out.len() + name.len());
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b"\":");
            let start = self.out.len();
            self.value(v, &field.schema).map_err(|e| e.within(name))?;
            if let Some(members) = members.as_deref_mut() {
                members.push(Member {
                    key,
                    escaped: false,
                    value: span(start, self.out.len()),
                });
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    /// A union of null and one type is that type, nullable; any other union is an object with one
    /// member named after the branch's type (Kafka Connect's mapping).
    fn union(&mut self, index: usize, inner: &Value, union: &UnionSchema) -> Result<(), Misfit> {
        let variants = union.variants();
        let branch = variants
            .get(index)
            .ok_or_else(|| Misfit::new(format!("union branch {index} of {}", variants.len())))?;
        let non_null = variants.iter().filter(|s| **s != Schema::Null).count();
        if matches!(inner, Value::Null) || non_null <= 1 {
            return self.value(inner, branch);
        }
        let name = branch_name(branch);
        self.out.push(b'{');
        self.string(&name);
        self.out.push(b':');
        self.value(inner, branch).map_err(|e| e.within(&name))?;
        self.out.push(b'}');
        Ok(())
    }

    fn float(&mut self, f: f64) {
        text::float(self.out, f);
    }

    fn time(&mut self, micros: i64) -> Result<(), Misfit> {
        text::time(self.out, micros).map_err(Misfit::new)
    }

    fn timestamp(&mut self, micros: i128, utc: bool) -> Result<(), Misfit> {
        text::timestamp(self.out, micros, utc).map_err(Misfit::new)
    }
}

/// Kafka Connect's name for a union branch: the named type's name, else the Avro type's.
pub(crate) fn branch_name(schema: &Schema) -> String {
    match schema.name() {
        Some(Name { name, .. }) => name.clone(),
        None => format!("{:?}", apache_avro::schema::SchemaKind::from(schema)).to_lowercase(),
    }
}
