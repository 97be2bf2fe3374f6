//! The generated member events as Avro: their schema, and each event's JSON payload turned into
//! the Avro value it stands for, in the Schema Registry's wire format. The bench compares decoding
//! these with reading the JSON events.

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;

/// The member events' Avro schema: `occurred_at` a timestamp-micros, `seq` a long, `attributes` a
/// nested record.
pub const MEMBER_EVENTS_SCHEMA: &str = r#"{
  "type": "record", "name": "MemberEvent", "namespace": "bqsink.demo",
  "fields": [
    {"name": "event_id", "type": "string"},
    {"name": "member_id", "type": "string"},
    {"name": "event_type", "type": "string"},
    {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "channel", "type": "string"},
    {"name": "seq", "type": "long"},
    {"name": "attributes", "type": {"type": "record", "name": "Attributes", "fields": [
      {"name": "ip", "type": "string"},
      {"name": "plan", "type": "string"},
      {"name": "locale", "type": "string"},
      {"name": "session", "type": "string"}
    ]}}
  ]
}"#;

/// The parsed schema.
pub fn member_events_schema() -> Schema {
    Schema::parse_str(MEMBER_EVENTS_SCHEMA).expect("the member events' Avro schema parses")
}

/// A generated member event (its JSON payload) in the wire format for schema `id`; `None` for a
/// payload that is not a member event (the generator's malformed ones).
pub fn member_event(schema: &Schema, id: u32, payload: &[u8]) -> Option<Vec<u8>> {
    let e: Json = serde_json::from_slice(payload).ok()?;
    let s = |k: &str| Some(Value::String(e.get(k)?.as_str()?.to_owned()));
    let a = e.get("attributes")?;
    let attr = |k: &str| Some((k.to_owned(), Value::String(a.get(k)?.as_str()?.to_owned())));
    let occurred = e.get("occurred_at")?.as_str()?;
    let micros =
        time::OffsetDateTime::parse(occurred, &time::format_description::well_known::Rfc3339)
            .ok()?
            .unix_timestamp_nanos()
            / 1_000;
    let value = Value::Record(vec![
        ("event_id".into(), s("event_id")?),
        ("member_id".into(), s("member_id")?),
        ("event_type".into(), s("event_type")?),
        ("occurred_at".into(), Value::TimestampMicros(micros as i64)),
        ("channel".into(), s("channel")?),
        ("seq".into(), Value::Long(e.get("seq")?.as_i64()?)),
        (
            "attributes".into(),
            Value::Record(vec![
                attr("ip")?,
                attr("plan")?,
                attr("locale")?,
                attr("session")?,
            ]),
        ),
    ]);
    let body = apache_avro::to_avro_datum(schema, value).ok()?;
    let mut framed = vec![0];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(&body);
    Some(framed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Generator, Mix};

    #[test]
    fn generated_events_become_avro_of_the_same_values() {
        let schema = member_events_schema();
        let mut g = Generator::new(Mix {
            duplicates: 0.0,
            malformed: 0.0,
            seed: 3,
        });
        let e = g.next().unwrap();
        let framed = member_event(&schema, 5, &e.payload).expect("a member event");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert!(
            framed.len() < e.payload.len(),
            "Avro is smaller than the JSON"
        );
        assert_eq!(member_event(&schema, 5, b"{\"event_id\":\"x\"}"), None);
    }
}
