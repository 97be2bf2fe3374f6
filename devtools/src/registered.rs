//! The generated member events in the Schema Registry's formats (`kafka.formats`): Avro
//! ([`crate::avro`]), Protobuf and JSON Schema, each with its schema registered in a local
//! registry. The demo and the bench produce them; the bench compares their decoding with JSON's.

use bqsink_actors::config::ValueFormat;
use bqsink_actors::stage::registered::protobuf::ProtoSchema;
use bqsink_actors::stage::registered::wire;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use serde_json::Value as Json;

use crate::registry::Registry;

/// The member events as a `.proto` file: `occurred_at` a google.protobuf.Timestamp, `attributes`
/// a nested message (fields in the JSON events' order).
pub const MEMBER_EVENTS_PROTO: &str = r#"syntax = "proto3";
package bqsink.demo;
import "google/protobuf/timestamp.proto";

message MemberEvent {
  string event_id = 1;
  string member_id = 2;
  string event_type = 3;
  google.protobuf.Timestamp occurred_at = 4;
  string channel = 5;
  int64 seq = 6;
  Attributes attributes = 7;

  message Attributes {
    string ip = 1;
    string plan = 2;
    string locale = 3;
    string session = 4;
  }
}
"#;

/// The member events as a JSON Schema (draft 7).
pub const MEMBER_EVENTS_JSON_SCHEMA: &str = r#"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "MemberEvent",
  "type": "object",
  "properties": {
    "event_id": {"type": "string"},
    "member_id": {"type": "string"},
    "event_type": {"type": "string"},
    "occurred_at": {"type": "string", "format": "date-time"},
    "channel": {"type": "string"},
    "seq": {"type": "integer"},
    "attributes": {
      "type": "object",
      "properties": {
        "ip": {"type": "string"}, "plan": {"type": "string"},
        "locale": {"type": "string"}, "session": {"type": "string"}
      }
    }
  },
  "required": ["event_id", "member_id", "event_type", "occurred_at"]
}"#;

/// Encodes member events in one registry format, under one schema id.
pub struct Encoder {
    id: u32,
    kind: Kind,
}

enum Kind {
    Avro(apache_avro::Schema),
    Protobuf(MessageDescriptor),
    JsonSchema,
}

impl Encoder {
    /// The encoder of `format` with schema id `id`; `None` for plain JSON.
    pub fn new(format: ValueFormat, id: u32) -> Option<Self> {
        let kind = match format {
            ValueFormat::Json => return None,
            ValueFormat::Avro => Kind::Avro(crate::avro::member_events_schema()),
            ValueFormat::Protobuf => Kind::Protobuf(member_event_descriptor()),
            ValueFormat::JsonSchema => Kind::JsonSchema,
        };
        Some(Self { id, kind })
    }

    /// Registers the schema in `registry` under the encoder's id.
    pub fn register(&self, registry: &Registry) {
        match &self.kind {
            Kind::Avro(_) => registry.register(self.id, crate::avro::MEMBER_EVENTS_SCHEMA),
            Kind::Protobuf(_) => registry.register_typed(self.id, "PROTOBUF", MEMBER_EVENTS_PROTO),
            Kind::JsonSchema => registry.register_typed(self.id, "JSON", MEMBER_EVENTS_JSON_SCHEMA),
        }
    }

    /// A generated event (its JSON payload) in the wire format; `None` for a payload that is not a
    /// member event (the generator's malformed ones, which stay JSON and fail as not framed).
    pub fn encode(&self, payload: &[u8]) -> Option<Vec<u8>> {
        match &self.kind {
            Kind::Avro(schema) => crate::avro::member_event(schema, self.id, payload),
            Kind::Protobuf(descriptor) => {
                let message = member_message(descriptor, payload)?;
                let mut body = wire::encode_indexes(&[0]);
                prost::Message::encode(&message, &mut body).ok()?;
                Some(wire::encode(self.id, &body))
            }
            Kind::JsonSchema => {
                let event: Json = serde_json::from_slice(payload).ok()?;
                event.get("event_id")?;
                Some(wire::encode(self.id, payload))
            }
        }
    }
}

/// The compiled `MemberEvent` message.
pub fn member_event_descriptor() -> MessageDescriptor {
    ProtoSchema::parse(0, MEMBER_EVENTS_PROTO, &[])
        .ok()
        .and_then(|s| s.message(&[0]))
        .expect("the member events' .proto compiles")
}

/// A member event's JSON payload as a `MemberEvent` message.
fn member_message(descriptor: &MessageDescriptor, payload: &[u8]) -> Option<DynamicMessage> {
    let e: Json = serde_json::from_slice(payload).ok()?;
    let mut m = DynamicMessage::new(descriptor.clone());
    for name in ["event_id", "member_id", "event_type", "channel"] {
        let text = e.get(name)?.as_str()?.to_owned();
        m.try_set_field_by_name(name, Value::String(text)).ok()?;
    }
    m.try_set_field_by_name("seq", Value::I64(e.get("seq")?.as_i64()?))
        .ok()?;
    let occurred = e.get("occurred_at")?.as_str()?;
    let at = time::OffsetDateTime::parse(occurred, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let field = descriptor.get_field_by_name("occurred_at")?;
    let prost_reflect::Kind::Message(ts) = field.kind() else {
        return None;
    };
    let mut stamp = DynamicMessage::new(ts);
    stamp
        .try_set_field_by_name("seconds", Value::I64(at.unix_timestamp()))
        .ok()?;
    stamp
        .try_set_field_by_name("nanos", Value::I32(at.nanosecond() as i32))
        .ok()?;
    m.try_set_field(&field, Value::Message(stamp)).ok()?;
    let field = descriptor.get_field_by_name("attributes")?;
    let prost_reflect::Kind::Message(attributes) = field.kind() else {
        return None;
    };
    let a = e.get("attributes")?;
    let mut inner = DynamicMessage::new(attributes);
    for name in ["ip", "plan", "locale", "session"] {
        let text = a.get(name)?.as_str()?.to_owned();
        inner
            .try_set_field_by_name(name, Value::String(text))
            .ok()?;
    }
    m.try_set_field(&field, Value::Message(inner)).ok()?;
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Generator, Mix};
    use bqsink_actors::registry::{RegisteredSchema, SchemaCache, SchemaKind};

    /// Each format's encoding of an event decodes, through the pipeline's own decoder, to the
    /// event's JSON values (the occurred_at text as BigQuery takes it).
    #[test]
    fn every_format_decodes_back_to_the_event() {
        let mut g = Generator::new(Mix {
            duplicates: 0.0,
            malformed: 0.0,
            seed: 3,
        });
        let event = g.next().unwrap();
        let want: Json = serde_json::from_slice(&event.payload).unwrap();
        for (format, kind, text) in [
            (
                ValueFormat::Avro,
                SchemaKind::Avro,
                crate::avro::MEMBER_EVENTS_SCHEMA,
            ),
            (
                ValueFormat::Protobuf,
                SchemaKind::Protobuf,
                MEMBER_EVENTS_PROTO,
            ),
            (
                ValueFormat::JsonSchema,
                SchemaKind::Json,
                MEMBER_EVENTS_JSON_SCHEMA,
            ),
        ] {
            let encoder = Encoder::new(format, 9).unwrap();
            let framed = encoder.encode(&event.payload).expect("a member event");
            let cache = SchemaCache::default();
            let registered = RegisteredSchema {
                kind,
                text: text.into(),
                references: Vec::new(),
            };
            cache
                .insert(9, Ok(registered))
                .expect("the schema compiles");
            let object = cache.convert(format, Some(&framed)).expect("it decodes");
            let got: Json = serde_json::from_slice(object.text.as_deref().unwrap()).unwrap();
            for key in ["event_id", "member_id", "seq", "attributes"] {
                assert_eq!(got[key], want[key], "{format} {key}");
            }
            let at = |v: &Json| {
                let text = v["occurred_at"].as_str().unwrap().to_owned();
                time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .unwrap()
            };
            assert_eq!(at(&got), at(&want), "{format}");
            assert_eq!(encoder.encode(b"{\"x\":1}"), None);
        }
        assert!(Encoder::new(ValueFormat::Json, 9).is_none());
    }
}
