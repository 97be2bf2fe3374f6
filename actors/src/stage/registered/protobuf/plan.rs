//! A compiled `.proto` turned, once, into what decoding a value needs: every message type the
//! file can reach as a flat list of [`MessagePlan`]s (field numbers mapped to their place in
//! declaration order, message fields pointing at other plans by index, so recursion costs nothing),
//! enum names and unset fields' defaults written as JSON text ahead of time, and the logical types
//! Confluent's converter knows by name marked.

use std::collections::HashMap;

use base64::Engine;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, Value};

use super::super::text;

/// Field numbers below this are found in a table; others (rare) in a map.
const NEAR: u32 = 64;

/// Every message type reachable from the registered file.
#[derive(Debug)]
pub(super) struct Plan {
    pub messages: Vec<MessagePlan>,
    by_name: HashMap<String, usize>,
}

#[derive(Debug)]
pub(super) struct MessagePlan {
    /// The full name, for errors.
    pub name: Box<str>,
    pub logical: Option<Logical>,
    /// In declaration order (a field's place here is its slot).
    pub fields: Vec<FieldPlan>,
    /// What the object holds, in order: each real oneof first, then the other fields.
    pub output: Vec<Out>,
    /// Slot by field number, for numbers below [`NEAR`] (`u16::MAX`: none).
    near: Vec<u16>,
    far: HashMap<u32, u16>,
}

impl MessagePlan {
    /// The slot of field `number`, if the message declares it.
    pub fn slot(&self, number: u32) -> Option<u16> {
        match self.near.get(number as usize) {
            Some(&u16::MAX) => None,
            Some(&slot) => Some(slot),
            None => self.far.get(&number).copied(),
        }
    }
}

/// The messages written as one value rather than an object (Confluent's converter's logical
/// types). Their field numbers are those of the files that define them (`known.rs` and protobuf's
/// own `timestamp.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Logical {
    /// google.protobuf.Timestamp: seconds = 1, nanos = 2.
    Timestamp,
    /// google.type.Date: year = 1, month = 2, day = 3.
    Date,
    /// google.type.TimeOfDay: hours = 1, minutes = 2, seconds = 3, nanos = 4.
    TimeOfDay,
    /// confluent.type.Decimal: value = 1 (bytes), precision = 2, scale = 3.
    Decimal,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Out {
    Field(u16),
    /// A real oneof, by the slot of its first member (whose [`FieldPlan::oneof`] names it).
    Oneof(u16),
}

#[derive(Debug)]
pub(super) struct FieldPlan {
    pub name: Box<str>,
    pub kind: FieldKind,
    pub shape: Shape,
    /// The JSON written when the field is not set: null (a message field, a proto3 `optional`
    /// field), else its default (`[]` for repeated and map fields).
    pub unset: Box<[u8]>,
    /// For a member of a real oneof: that oneof's `<name>_<index>` and its members' slots.
    pub oneof: Option<(Box<str>, Box<[u16]>)>,
}

#[derive(Debug)]
pub(super) enum Shape {
    Single,
    Repeated,
    /// A map field: its entries' key and value kinds, and the JSON of a value not set.
    Map {
        key: FieldKind,
        value: FieldKind,
        value_unset: Box<[u8]>,
    },
}

#[derive(Debug, Clone)]
pub(super) enum FieldKind {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// The values' names as JSON strings, by number (sorted).
    Enum(Box<[(i32, Box<[u8]>)]>),
    /// The index of the message's plan.
    Message(usize),
}

impl FieldKind {
    /// Whether repeated values of this kind may be packed (scalars: not strings, bytes, messages).
    pub fn packable(&self) -> bool {
        !matches!(
            self,
            FieldKind::String | FieldKind::Bytes | FieldKind::Message(_)
        )
    }
}

impl Plan {
    /// Plans every message of `roots` and every message type their fields reach.
    pub(super) fn new(roots: impl Iterator<Item = MessageDescriptor>) -> Self {
        let mut plan = Plan {
            messages: Vec::new(),
            by_name: HashMap::new(),
        };
        for root in roots {
            plan.add(&root);
        }
        plan
    }

    /// The plan of `message`, if planned.
    pub(super) fn index(&self, message: &MessageDescriptor) -> Option<usize> {
        self.by_name.get(message.full_name()).copied()
    }

    fn add(&mut self, message: &MessageDescriptor) -> usize {
        if let Some(&at) = self.by_name.get(message.full_name()) {
            return at;
        }
        let at = self.messages.len();
        self.by_name.insert(message.full_name().to_owned(), at);
        self.messages.push(MessagePlan {
            name: message.full_name().into(),
            logical: None,
            fields: Vec::new(),
            output: Vec::new(),
            near: Vec::new(),
            far: HashMap::new(),
        });
        let logical = match message.full_name() {
            "google.protobuf.Timestamp" => Some(Logical::Timestamp),
            "google.type.Date" => Some(Logical::Date),
            "google.type.TimeOfDay" => Some(Logical::TimeOfDay),
            "confluent.type.Decimal" => Some(Logical::Decimal),
            _ => None,
        };
        let descriptors: Vec<FieldDescriptor> = message.fields().collect();
        let mut near = vec![u16::MAX; NEAR as usize];
        let mut far = HashMap::new();
        for (slot, f) in descriptors.iter().enumerate() {
            match near.get_mut(f.number() as usize) {
                Some(entry) => *entry = slot as u16,
                None => drop(far.insert(f.number(), slot as u16)),
            }
        }
        let slot_of = |f: &FieldDescriptor| descriptors.iter().position(|d| d == f).unwrap_or(0);
        // Real oneofs, numbered as Confluent's converter numbers them (among all oneofs).
        let mut oneofs = Vec::new();
        let mut output = Vec::new();
        for (index, oneof) in message.oneofs().enumerate() {
            if oneof.is_synthetic() {
                continue;
            }
            let slots: Box<[u16]> = oneof.fields().map(|f| slot_of(&f) as u16).collect();
            if let Some(&first) = slots.first() {
                output.push(Out::Oneof(first));
            }
            oneofs.push((format!("{}_{index}", oneof.name()), slots));
        }
        let mut fields = Vec::with_capacity(descriptors.len());
        for f in &descriptors {
            let slot = slot_of(f) as u16;
            let oneof = oneofs
                .iter()
                .find(|(_, slots)| slots.contains(&slot))
                .map(|(name, slots)| (name.as_str().into(), slots.clone()));
            if oneof.is_none() {
                output.push(Out::Field(slot));
            }
            fields.push(self.field(f, oneof));
        }
        let m = &mut self.messages[at];
        m.logical = logical;
        m.fields = fields;
        m.output = output;
        m.near = near;
        m.far = far;
        at
    }

    fn field(&mut self, f: &FieldDescriptor, oneof: Option<(Box<str>, Box<[u16]>)>) -> FieldPlan {
        let shape = match f.kind() {
            Kind::Message(entry) if f.is_map() => {
                let value = entry.map_entry_value_field();
                Shape::Map {
                    key: self.kind(&entry.map_entry_key_field().kind()),
                    value: self.kind(&value.kind()),
                    value_unset: default_text(&value.kind(), &value.kind().default_value()),
                }
            }
            _ if f.is_list() => Shape::Repeated,
            _ => Shape::Single,
        };
        let presence = f.containing_oneof().is_some_and(|o| o.is_synthetic())
            || matches!(shape, Shape::Single) && matches!(f.kind(), Kind::Message(_));
        let unset = match &shape {
            Shape::Single if presence => b"null".as_slice().into(),
            Shape::Single => default_text(&f.kind(), &f.default_value()),
            Shape::Repeated | Shape::Map { .. } => b"[]".as_slice().into(),
        };
        FieldPlan {
            name: f.name().into(),
            kind: self.kind(&f.kind()),
            shape,
            unset,
            oneof,
        }
    }

    fn kind(&mut self, kind: &Kind) -> FieldKind {
        match kind {
            Kind::Double => FieldKind::Double,
            Kind::Float => FieldKind::Float,
            Kind::Int32 => FieldKind::Int32,
            Kind::Int64 => FieldKind::Int64,
            Kind::Uint32 => FieldKind::Uint32,
            Kind::Uint64 => FieldKind::Uint64,
            Kind::Sint32 => FieldKind::Sint32,
            Kind::Sint64 => FieldKind::Sint64,
            Kind::Fixed32 => FieldKind::Fixed32,
            Kind::Fixed64 => FieldKind::Fixed64,
            Kind::Sfixed32 => FieldKind::Sfixed32,
            Kind::Sfixed64 => FieldKind::Sfixed64,
            Kind::Bool => FieldKind::Bool,
            Kind::String => FieldKind::String,
            Kind::Bytes => FieldKind::Bytes,
            Kind::Enum(e) => {
                let mut values: Vec<(i32, Box<[u8]>)> = e
                    .values()
                    .map(|v| {
                        let mut json = Vec::new();
                        text::string(&mut json, v.name());
                        (v.number(), json.into())
                    })
                    .collect();
                // Aliases (allow_alias): the first name of a number.
                values.sort_by_key(|(n, _)| *n);
                values.dedup_by_key(|(n, _)| *n);
                FieldKind::Enum(values.into())
            }
            Kind::Message(m) => FieldKind::Message(self.add(m)),
        }
    }
}

/// A default value as JSON text (a message default is written when met: it has fields).
fn default_text(kind: &Kind, value: &Value) -> Box<[u8]> {
    let mut out = Vec::new();
    match value {
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::I32(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::I64(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::U32(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::U64(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::F32(f) => text::float(&mut out, f64::from(*f)),
        Value::F64(f) => text::float(&mut out, *f),
        Value::String(s) => text::string(&mut out, s),
        Value::Bytes(b) => text::string(
            &mut out,
            &base64::engine::general_purpose::STANDARD.encode(b),
        ),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => text::string(&mut out, v.name()),
                None => text::string(&mut out, &n.to_string()),
            },
            _ => out.extend_from_slice(n.to_string().as_bytes()),
        },
        Value::Message(_) | Value::List(_) | Value::Map(_) => out.extend_from_slice(b"null"),
    }
    out.into()
}
