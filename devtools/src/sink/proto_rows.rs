//! Reading a protobuf row with its `DescriptorProto` into a JSON object, for the sink's gRPC side.
//! Enough of the wire format for what BigQuery row descriptors use: varints (int32, int64, bool),
//! 64-bit (double), 32-bit (float) and length-delimited fields (string, bytes, nested messages),
//! repeated fields as arrays. Unknown field numbers are an error, as BigQuery rejects them.

use base64::Engine as _;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::DescriptorProto;
use serde_json::{Map, Value};

/// Decodes `bytes` as a message of `descriptor` (nested types are looked up inside it).
pub(super) fn decode_row(descriptor: &DescriptorProto, bytes: &[u8]) -> Result<Value, String> {
    decode_message(descriptor, descriptor, bytes)
}

fn decode_message(
    root: &DescriptorProto,
    message: &DescriptorProto,
    mut buf: &[u8],
) -> Result<Value, String> {
    let mut out = Map::new();
    while !buf.is_empty() {
        let (number, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        let field = message
            .field
            .iter()
            .find(|f| f.number() == number as i32)
            .ok_or_else(|| format!("field number {number} is not in the descriptor"))?;
        let value = match wire {
            WireType::Varint => {
                let v = decode_varint(&mut buf).map_err(|e| e.to_string())?;
                match field.r#type() {
                    Type::Bool => Value::Bool(v != 0),
                    Type::Int32 | Type::Sint32 | Type::Enum => Value::from(v as i32),
                    Type::Uint32 | Type::Uint64 => Value::from(v),
                    _ => Value::from(v as i64),
                }
            }
            WireType::SixtyFourBit => {
                let (head, rest) = split(buf, 8)?;
                buf = rest;
                let raw = u64::from_le_bytes(head.try_into().map_err(|_| "short field")?);
                match field.r#type() {
                    Type::Double => Value::from(f64::from_bits(raw)),
                    _ => Value::from(raw as i64),
                }
            }
            WireType::ThirtyTwoBit => {
                let (head, rest) = split(buf, 4)?;
                buf = rest;
                let raw = u32::from_le_bytes(head.try_into().map_err(|_| "short field")?);
                match field.r#type() {
                    Type::Float => Value::from(f64::from(f32::from_bits(raw))),
                    _ => Value::from(raw as i32),
                }
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())? as usize;
                let (head, rest) = split(buf, len)?;
                buf = rest;
                match field.r#type() {
                    Type::String => Value::String(
                        std::str::from_utf8(head)
                            .map_err(|_| format!("field {} is not UTF-8", field.name()))?
                            .to_owned(),
                    ),
                    Type::Bytes => {
                        Value::String(base64::engine::general_purpose::STANDARD.encode(head))
                    }
                    Type::Message => {
                        let name = field.type_name().trim_start_matches('.');
                        let name = name.rsplit('.').next().unwrap_or(name);
                        let nested = find_type(root, name)
                            .ok_or_else(|| format!("no nested type {name} in the descriptor"))?;
                        decode_message(root, nested, head)?
                    }
                    t => {
                        return Err(format!(
                            "field {}: {t:?} is not length-delimited",
                            field.name()
                        ))
                    }
                }
            }
            w => return Err(format!("unsupported wire type {w:?}")),
        };
        if field.label() == Label::Repeated {
            match out
                .entry(field.name().to_owned())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(items) => items.push(value),
                other => *other = Value::Array(vec![value]),
            }
        } else {
            out.insert(field.name().to_owned(), value);
        }
    }
    Ok(Value::Object(out))
}

fn split(buf: &[u8], n: usize) -> Result<(&[u8], &[u8]), String> {
    if buf.len() < n {
        return Err("truncated message".into());
    }
    Ok(buf.split_at(n))
}

/// A message type named `name` anywhere among the nested types of `d`.
fn find_type<'a>(d: &'a DescriptorProto, name: &str) -> Option<&'a DescriptorProto> {
    d.nested_type
        .iter()
        .find(|n| n.name() == name)
        .or_else(|| d.nested_type.iter().find_map(|n| find_type(n, name)))
}
