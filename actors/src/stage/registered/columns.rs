//! A registered schema as BigQuery columns: what `auto_create_tables` creates a table with and
//! `allow_new_fields` adds, instead of types guessed from the first rows (which make a timestamp a
//! STRING). The types are those the value writers ([`super::avro`], [`super::protobuf`]) write, the
//! tables in their module docs.
//!
//! Every column is NULLABLE (or REPEATED), as kafka-connect-bigquery's `allBQFieldsNullable` makes
//! them: a later schema version may then drop a field without breaking the table. A JSON Schema
//! gives the columns whose type it pins down (`string` with format `date-time`, `date` or `time`,
//! `integer`, `number`, `boolean`, objects with `properties`, arrays of those, a `null` alternative
//! allowed); the others are left to inference from the rows.

use apache_avro::Schema;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value;

use super::avro::plan::{branch_name, resolve};
use super::avro::AvroSchema;
use super::json_schema::JsonSchema;
use crate::stage::schema::FieldSchema;

/// BigQuery's nesting limit for RECORD columns.
const MAX_DEPTH: usize = 15;

fn column(name: &str, field_type: &str, mode: &str, fields: Vec<FieldSchema>) -> FieldSchema {
    let mut f = FieldSchema::new(name, field_type, mode);
    f.fields = fields;
    f
}

/// The columns of an Avro record schema.
pub fn avro(schema: &AvroSchema) -> Result<Vec<FieldSchema>, String> {
    match &schema.schema {
        Schema::Record(r) => r
            .fields
            .iter()
            .map(|f| avro_column(schema, &f.name, &f.schema, 1))
            .collect(),
        _ => Err("not a record".into()),
    }
}

fn avro_column(
    root: &AvroSchema,
    name: &str,
    schema: &Schema,
    depth: usize,
) -> Result<FieldSchema, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{name}: nested deeper than BigQuery's {MAX_DEPTH} levels"
        ));
    }
    let schema = resolve(root, schema).map_err(|e| e.to_string())?;
    let scalar = |t: &str| Ok(column(name, t, "NULLABLE", Vec::new()));
    match schema {
        Schema::Null | Schema::String | Schema::Uuid | Schema::Enum(_) => scalar("STRING"),
        Schema::Boolean => scalar("BOOLEAN"),
        Schema::Int | Schema::Long => scalar("INTEGER"),
        Schema::Float | Schema::Double => scalar("FLOAT"),
        Schema::Bytes | Schema::Fixed(_) => scalar("BYTES"),
        Schema::Date => scalar("DATE"),
        Schema::TimeMillis | Schema::TimeMicros => scalar("TIME"),
        Schema::TimestampMillis | Schema::TimestampMicros | Schema::TimestampNanos => {
            scalar("TIMESTAMP")
        }
        Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => scalar("DATETIME"),
        Schema::Decimal(d) => scalar(numeric(d.precision, d.scale)),
        Schema::BigDecimal => scalar("BIGNUMERIC"),
        Schema::Duration => Ok(column(
            name,
            "RECORD",
            "NULLABLE",
            ["months", "days", "milliseconds"]
                .iter()
                .map(|n| column(n, "INTEGER", "NULLABLE", Vec::new()))
                .collect(),
        )),
        Schema::Record(r) => Ok(column(
            name,
            "RECORD",
            "NULLABLE",
            r.fields
                .iter()
                .map(|f| avro_column(root, &f.name, &f.schema, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        Schema::Array(a) => repeated(avro_column(root, name, &a.items, depth)?),
        Schema::Map(m) => Ok(column(
            name,
            "RECORD",
            "REPEATED",
            vec![
                column("key", "STRING", "NULLABLE", Vec::new()),
                avro_column(root, "value", &m.types, depth + 1)?,
            ],
        )),
        Schema::Union(u) => {
            let branches: Vec<&Schema> = u
                .variants()
                .iter()
                .filter(|s| **s != Schema::Null)
                .collect();
            match branches.as_slice() {
                [] => scalar("STRING"),
                [one] => avro_column(root, name, one, depth),
                many => Ok(column(
                    name,
                    "RECORD",
                    "NULLABLE",
                    many.iter()
                        .map(|b| avro_column(root, &branch_name(b), b, depth + 1))
                        .collect::<Result<_, _>>()?,
                )),
            }
        }
        Schema::Ref { name: r } => Err(format!("{name}: unresolved type {}", r.fullname(None))),
    }
}

/// NUMERIC holds 29 integer and 9 fraction digits; wider decimals need BIGNUMERIC.
fn numeric(precision: usize, scale: usize) -> &'static str {
    if scale <= 9 && precision.saturating_sub(scale) <= 29 {
        "NUMERIC"
    } else {
        "BIGNUMERIC"
    }
}

/// `field` as the element column of an array (BigQuery has no arrays of arrays).
fn repeated(mut field: FieldSchema) -> Result<FieldSchema, String> {
    if field.mode.as_deref() == Some("REPEATED") {
        return Err(format!(
            "{}: an array of arrays or maps, which BigQuery cannot hold",
            field.name
        ));
    }
    field.mode = Some("REPEATED".into());
    Ok(field)
}

/// The columns of a Protobuf message.
pub fn protobuf(message: &MessageDescriptor) -> Result<Vec<FieldSchema>, String> {
    proto_fields(message, 1)
}

fn proto_fields(message: &MessageDescriptor, depth: usize) -> Result<Vec<FieldSchema>, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: nested deeper than BigQuery's {MAX_DEPTH} levels (a recursive message?)",
            message.full_name()
        ));
    }
    let mut columns = Vec::new();
    for (index, oneof) in message.oneofs().enumerate() {
        if oneof.is_synthetic() {
            continue;
        }
        let members = oneof
            .fields()
            .map(|f| proto_column(&f, depth + 1))
            .collect::<Result<_, _>>()?;
        columns.push(column(
            &format!("{}_{index}", oneof.name()),
            "RECORD",
            "NULLABLE",
            members,
        ));
    }
    for field in message.fields() {
        if field.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
            continue;
        }
        columns.push(proto_column(&field, depth)?);
    }
    Ok(columns)
}

fn proto_column(field: &FieldDescriptor, depth: usize) -> Result<FieldSchema, String> {
    let name = field.name();
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Err(format!("{name}: a map without an entry type"));
        };
        let key = proto_column(&entry.map_entry_key_field(), depth + 1)?;
        let value = proto_column(&entry.map_entry_value_field(), depth + 1)?;
        return Ok(column(name, "RECORD", "REPEATED", vec![key, value]));
    }
    let scalar = |t: &str| column(name, t, "NULLABLE", Vec::new());
    let single = match field.kind() {
        Kind::Bool => scalar("BOOLEAN"),
        Kind::String | Kind::Enum(_) => scalar("STRING"),
        Kind::Bytes => scalar("BYTES"),
        Kind::Float | Kind::Double => scalar("FLOAT"),
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint64
        | Kind::Fixed64 => scalar("INTEGER"),
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => scalar("TIMESTAMP"),
            "google.type.Date" => scalar("DATE"),
            "google.type.TimeOfDay" => scalar("TIME"),
            "confluent.type.Decimal" => scalar("BIGNUMERIC"),
            _ => column(name, "RECORD", "NULLABLE", proto_fields(&m, depth + 1)?),
        },
    };
    if field.is_list() {
        repeated(single)
    } else {
        Ok(single)
    }
}

/// The columns of a JSON Schema whose types it pins down (see the module's doc).
pub fn json_schema(schema: &JsonSchema) -> Result<Vec<FieldSchema>, String> {
    let root = schema.resolve(&schema.schema);
    Ok(json_properties(schema, root, 1))
}

fn json_properties(schema: &JsonSchema, object: &Value, depth: usize) -> Vec<FieldSchema> {
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .filter_map(|(name, p)| json_column(schema, name, p, depth))
        .collect()
}

fn json_column(schema: &JsonSchema, name: &str, p: &Value, depth: usize) -> Option<FieldSchema> {
    if depth > MAX_DEPTH {
        return None;
    }
    let p = schema.resolve(p);
    // "type": "x", or ["x", "null"].
    let kind = match p.get("type")? {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => {
            let named: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            match named.as_slice() {
                [one] => *one,
                _ => return None,
            }
        }
        _ => return None,
    };
    let scalar = |t: &str| Some(column(name, t, "NULLABLE", Vec::new()));
    match kind {
        "string" => match p.get("format").and_then(Value::as_str) {
            Some("date-time") => scalar("TIMESTAMP"),
            Some("date") => scalar("DATE"),
            Some("time") => scalar("TIME"),
            _ => scalar("STRING"),
        },
        "integer" => scalar("INTEGER"),
        "number" => scalar("FLOAT"),
        "boolean" => scalar("BOOLEAN"),
        "object" => {
            let fields = json_properties(schema, p, depth + 1);
            (!fields.is_empty()).then(|| column(name, "RECORD", "NULLABLE", fields))
        }
        "array" => {
            let item = json_column(schema, name, p.get("items")?, depth)?;
            repeated(item).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
