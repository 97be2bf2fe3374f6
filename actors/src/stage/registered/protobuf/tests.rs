use std::collections::HashMap;

use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, Value};
use serde_json::json;

use super::super::wire;
use super::*;

const ADDRESS: &str = r#"syntax = "proto3";
package example.common;
message Address {
  string city = 1;
  optional int32 zip = 2;
}
"#;

const MEMBER: &str = r#"syntax = "proto3";
package example;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "google/type/date.proto";
import "google/type/timeofday.proto";
import "confluent/type/decimal.proto";
import "common/address.proto";

enum Tier { FREE = 0; GOLD = 1; }

message Member {
  string event_id = 1;
  int64 member_id = 2;
  optional string nickname = 3;
  repeated string tags = 4;
  example.common.Address address = 5;
  google.protobuf.Timestamp joined = 6;
  google.type.Date born = 7;
  google.type.TimeOfDay wakes = 8;
  confluent.type.Decimal balance = 9;
  Tier tier = 10;
  map<string, int32> scores = 11;
  oneof contact {
    string email = 12;
    string phone = 13;
  }
  google.protobuf.StringValue note = 14;
  bytes avatar = 15;
  double ratio = 16;
  uint64 big = 17;
  repeated Visit visits = 18;

  message Visit {
    string page = 1;
    uint32 seconds = 2;
  }
}
"#;

fn schema() -> ProtoSchema {
    let refs = [("common/address.proto".to_owned(), ADDRESS.to_owned())];
    ProtoSchema::parse(7, MEMBER, &refs).expect("the schema compiles")
}

fn set(m: &mut DynamicMessage, name: &str, value: Value) {
    m.try_set_field_by_name(name, value)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// A new message of the type of field `name` of `parent`.
fn child(parent: &MessageDescriptor, name: &str) -> DynamicMessage {
    match parent.get_field_by_name(name).map(|f| f.kind()) {
        Some(Kind::Message(d)) => DynamicMessage::new(d),
        _ => panic!("{name} is not a message field"),
    }
}

fn framed(indexes: &[usize], m: &DynamicMessage) -> Vec<u8> {
    let mut body = wire::encode_indexes(indexes);
    m.encode(&mut body).unwrap();
    wire::encode(7, &body)
}

fn decoded(schema: &ProtoSchema, framed: &[u8]) -> serde_json::Value {
    let o = decode(7, schema, framed).expect("decodes");
    let text = o.text.expect("decoded text");
    // The members are those the JSON reader finds in the text.
    let found = crate::stage::json::object_members(&text).unwrap();
    assert_eq!(o.members, found);
    serde_json::from_slice(&text).unwrap()
}

#[test]
fn every_type_maps_as_the_connect_converter_maps_it() {
    let s = schema();
    let d = s.message(&[0]).unwrap();
    assert_eq!(d.full_name(), "example.Member");
    let mut m = DynamicMessage::new(d.clone());
    set(&mut m, "event_id", Value::String("m-1".into()));
    set(&mut m, "member_id", Value::I64(1001));
    set(&mut m, "nickname", Value::String("kim".into()));
    set(
        &mut m,
        "tags",
        Value::List(vec![Value::String("a".into()), Value::String("b".into())]),
    );
    let mut address = child(&d, "address");
    set(&mut address, "city", Value::String("Seoul".into()));
    set(&mut m, "address", Value::Message(address));
    let mut joined = child(&d, "joined");
    set(&mut joined, "seconds", Value::I64(1_700_000_000));
    set(&mut joined, "nanos", Value::I32(123_456_789));
    set(&mut m, "joined", Value::Message(joined));
    let mut born = child(&d, "born");
    set(&mut born, "year", Value::I32(1990));
    set(&mut born, "month", Value::I32(2));
    set(&mut born, "day", Value::I32(28));
    set(&mut m, "born", Value::Message(born));
    let mut wakes = child(&d, "wakes");
    set(&mut wakes, "hours", Value::I32(6));
    set(&mut wakes, "minutes", Value::I32(30));
    set(&mut wakes, "nanos", Value::I32(5_000));
    set(&mut m, "wakes", Value::Message(wakes));
    let mut balance = child(&d, "balance");
    // -1234.56: unscaled -123456, big-endian two's complement.
    set(
        &mut balance,
        "value",
        Value::Bytes(vec![0xfe, 0x1d, 0xc0].into()),
    );
    set(&mut balance, "scale", Value::I32(2));
    set(&mut m, "balance", Value::Message(balance));
    set(&mut m, "tier", Value::EnumNumber(1));
    let scores = HashMap::from([
        (MapKey::String("b".into()), Value::I32(2)),
        (MapKey::String("a".into()), Value::I32(1)),
    ]);
    set(&mut m, "scores", Value::Map(scores));
    set(&mut m, "phone", Value::String("010".into()));
    let mut note = child(&d, "note");
    set(&mut note, "value", Value::String("hi".into()));
    set(&mut m, "note", Value::Message(note));
    set(&mut m, "avatar", Value::Bytes(b"\x00\xff".to_vec().into()));
    set(&mut m, "ratio", Value::F64(f64::NAN));
    set(&mut m, "big", Value::U64(u64::MAX));
    let mut visit = child(&d, "visits");
    set(&mut visit, "page", Value::String("/home".into()));
    set(&mut visit, "seconds", Value::U32(42));
    set(&mut m, "visits", Value::List(vec![Value::Message(visit)]));

    let got = decoded(&s, &framed(&[0], &m));
    assert_eq!(
        got,
        json!({
            "contact_0": {"phone": "010"},
            "event_id": "m-1",
            "member_id": 1001,
            "nickname": "kim",
            "tags": ["a", "b"],
            "address": {"city": "Seoul", "zip": null},
            "joined": "2023-11-14T22:13:20.123456Z",
            "born": "1990-02-28",
            "wakes": "06:30:00.000005",
            "balance": "-1234.56",
            "tier": "GOLD",
            "scores": [{"key": "a", "value": 1}, {"key": "b", "value": 2}],
            "note": {"value": "hi"},
            "avatar": "AP8=",
            "ratio": "NaN",
            "big": 18446744073709551615u64,
            "visits": [{"page": "/home", "seconds": 42}],
        })
    );
    // Field order is the converter's: oneofs first, then fields in declaration order.
    let text = decode(7, &s, &framed(&[0], &m)).unwrap().text.unwrap();
    assert!(text.starts_with(br#"{"contact_0":{"phone":"010"},"event_id":"m-1""#));
}

#[test]
fn unset_fields_are_defaults_or_null_as_the_converter_has_them() {
    let s = schema();
    let m = DynamicMessage::new(s.message(&[0]).unwrap());
    let got = decoded(&s, &framed(&[0], &m));
    assert_eq!(
        got,
        json!({
            "contact_0": null,
            "event_id": "",
            "member_id": 0,
            "nickname": null,
            "tags": [],
            "address": null,
            "joined": null,
            "born": null,
            "wakes": null,
            "balance": null,
            "tier": "FREE",
            "scores": [],
            "note": null,
            "avatar": "",
            "ratio": 0,
            "big": 0,
            "visits": [],
        })
    );
}

#[test]
fn message_indexes_pick_nested_messages() {
    let s = schema();
    // A map field's entry type is a nested message too, where the field is declared (as protoc
    // and Confluent's serializer number them): ScoresEntry is [0, 0], Visit [0, 1].
    assert_eq!(
        s.message(&[0, 0]).unwrap().full_name(),
        "example.Member.ScoresEntry"
    );
    let visit = s.message(&[0, 1]).unwrap();
    assert_eq!(visit.full_name(), "example.Member.Visit");
    let mut m = DynamicMessage::new(visit);
    set(&mut m, "page", Value::String("/a".into()));
    assert_eq!(
        decoded(&s, &framed(&[0, 1], &m)),
        json!({"page": "/a", "seconds": 0})
    );
    let e = decode(7, &s, &framed(&[3], &m)).unwrap_err();
    assert!(matches!(e, ProtoError::NoSuchMessage { id: 7, .. }), "{e}");
    assert_eq!(e.class(), "protobuf_mismatch");
}

#[test]
fn bad_bytes_and_bad_values_are_record_failures_that_say_where() {
    let s = schema();
    // Field 2 (member_id, a varint) with a truncated varint.
    let e = decode(7, &s, &wire::encode(7, &[0, 0x10, 0xff])).unwrap_err();
    assert!(matches!(e, ProtoError::Mismatch { .. }), "{e}");
    assert!(e.to_string().contains("example.Member"), "{e}");
    // Unreadable message indexes.
    let e = decode(7, &s, &wire::encode(7, &[1])).unwrap_err();
    assert_eq!(e.class(), "protobuf_mismatch");
    // A date that is no calendar date, named by its path.
    let d = s.message(&[0]).unwrap();
    let mut m = DynamicMessage::new(d.clone());
    let mut born = child(&d, "born");
    set(&mut born, "year", Value::I32(2023));
    set(&mut born, "month", Value::I32(2));
    set(&mut born, "day", Value::I32(30));
    set(&mut m, "born", Value::Message(born));
    let e = decode(7, &s, &framed(&[0], &m)).unwrap_err();
    assert!(e.to_string().contains("at born"), "{e}");
}

#[test]
fn schemas_that_do_not_compile_are_named() {
    let e = ProtoSchema::parse(9, "syntax = \"proto3\"; message {", &[]).unwrap_err();
    assert_eq!(e.class(), "bad_schema");
    // A missing reference.
    let e = ProtoSchema::parse(9, MEMBER, &[]).unwrap_err();
    assert!(e.to_string().contains("common/address.proto"), "{e}");
    let e = ProtoSchema::parse(9, "syntax = \"proto3\"; enum E { A = 0; }", &[]).unwrap_err();
    assert!(e.to_string().contains("no message"), "{e}");
}

const WIRE: &str = r#"syntax = "proto3";
package w;
message M {
  repeated int32 packed = 1;
  repeated sint64 zig = 2;
  int64 last = 3;
  Inner inner = 4;
  oneof choice {
    string a = 5;
    int32 b = 6;
  }
  map<int32, Inner> by_id = 7;
  fixed32 f32 = 8;
  sfixed64 sf64 = 9;
  float fl = 10;
  bool flag = 11;
  M self = 12;
}
message Inner {
  string x = 1;
  int32 y = 2;
}
"#;

/// Bytes as protobuf's parsing rules allow other writers to put them: repeated scalars packed and
/// not, a singular field twice (the last wins), a singular message twice (merged), two members of a
/// oneof (the last wins), unknown fields, a map key twice (the last wins), an entry without its
/// value.
#[test]
fn the_wire_forms_protobuf_allows_decode_as_its_parsers_do() {
    let s = ProtoSchema::parse(7, WIRE, &[]).unwrap();
    let mut b = wire::encode_indexes(&[0]);
    b.extend_from_slice(&[0x0a, 2, 1, 2]); // packed = [1, 2] (packed)
    b.extend_from_slice(&[0x08, 3]); // packed += 3 (not packed)
    b.extend_from_slice(&[0x10, 3, 0x10, 4]); // zig = [-2, 2]
    b.extend_from_slice(&[0x18, 1, 0x18, 9]); // last = 1, then 9
    b.extend_from_slice(&[0x22, 3, 0x0a, 1, b'p']); // inner = {x: "p"}
    b.extend_from_slice(&[0x22, 2, 0x10, 5]); // inner merged with {y: 5}
    b.extend_from_slice(&[0x2a, 1, b'a', 0x30, 7]); // a = "a", then b = 7: b is set
    b.extend_from_slice(&[0xf8, 0x07, 1]); // field 127, unknown: skipped
    b.extend_from_slice(&[0x3a, 6, 0x08, 2, 0x12, 2, 0x10, 1]); // by_id[2] = {y: 1}
    b.extend_from_slice(&[0x3a, 6, 0x08, 1, 0x12, 2, 0x10, 8]); // by_id[1] = {y: 8}
    b.extend_from_slice(&[0x3a, 6, 0x08, 2, 0x12, 2, 0x10, 3]); // by_id[2] = {y: 3}: replaces
    b.extend_from_slice(&[0x3a, 2, 0x08, 4]); // by_id[4] without a value
    b.extend_from_slice(&[0x45, 0xff, 0xff, 0xff, 0xff]); // f32 = 4294967295
    b.extend_from_slice(&[0x49, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]); // sf64 = -2
    b.extend_from_slice(&[0x55, 0, 0, 0xc0, 0x3f]); // fl = 1.5
    b.extend_from_slice(&[0x58, 2]); // flag: any non-zero varint is true
    assert_eq!(
        decoded(&s, &wire::encode(7, &b)),
        json!({
            "choice_0": {"b": 7},
            "packed": [1, 2, 3], "zig": [-2, 2], "last": 9,
            "inner": {"x": "p", "y": 5},
            "by_id": [
                {"key": 1, "value": {"x": "", "y": 8}},
                {"key": 2, "value": {"x": "", "y": 3}},
                {"key": 4, "value": {"x": "", "y": 0}}
            ],
            "f32": 4294967295u64, "sf64": -2, "fl": 1.5, "flag": true, "self": null
        })
    );
    // The same message read by prost-reflect agrees on what it holds.
    let reference = DynamicMessage::decode(s.message(&[0]).unwrap(), &b[1..]).unwrap();
    assert_eq!(
        reference.get_field_by_name("last").unwrap().as_i64(),
        Some(9)
    );
    assert!(reference.has_field_by_name("b") && !reference.has_field_by_name("a"));
}

#[test]
fn malformed_messages_are_named_and_deep_recursion_fails() {
    let s = ProtoSchema::parse(7, WIRE, &[]).unwrap();
    let fails = |body: &[u8], says: &str| {
        let mut b = wire::encode_indexes(&[0]);
        b.extend_from_slice(body);
        let e = decode(7, &s, &wire::encode(7, &b)).unwrap_err();
        assert_eq!(e.class(), "protobuf_mismatch");
        assert!(e.to_string().contains(says), "{e} (wanted {says:?})");
        assert!(e.to_string().contains("message w.M"), "{e}");
    };
    fails(&[0x18, 0x80], "the message ends early");
    fails(
        &[0x1a, 1, 0],
        "at last: a length-delimited value for a int64 field",
    );
    fails(&[0x2a, 2, 0xff, 0xfe], "at choice_0.a: a string");
    fails(&[0x22, 1, 0x0a], "at inner: the message ends early");
    fails(&[0x1b], "wire type 3");
    fails(&[0x00], "field number 0");
    // `self` nested 200 deep: each level is two bytes of tag and length around the next.
    let mut deep: Vec<u8> = Vec::new();
    for _ in 0..200 {
        let mut outer = vec![0x62];
        let mut n = deep.len();
        while n >= 0x80 {
            outer.push((n as u8) | 0x80);
            n >>= 7;
        }
        outer.push(n as u8);
        outer.extend_from_slice(&deep);
        deep = outer;
    }
    fails(&deep, "nested more than 100 deep");
}

#[test]
fn corrupted_messages_fail_as_record_failures_without_panicking() {
    let s = schema();
    let d = s.message(&[0]).unwrap();
    let mut m = DynamicMessage::new(d.clone());
    set(&mut m, "event_id", Value::String("e1".into()));
    set(&mut m, "tags", Value::List(vec![Value::String("a".into())]));
    let mut address = child(&d, "address");
    set(&mut address, "city", Value::String("Seoul".into()));
    set(&mut m, "address", Value::Message(address));
    let mut born = child(&d, "born");
    set(&mut born, "year", Value::I32(2000));
    set(&mut born, "month", Value::I32(1));
    set(&mut born, "day", Value::I32(2));
    set(&mut m, "born", Value::Message(born));
    let scores = HashMap::from([(MapKey::String("k".into()), Value::I32(3))]);
    set(&mut m, "scores", Value::Map(scores));
    set(&mut m, "phone", Value::String("010".into()));
    let valid = m.encode_to_vec();
    let mut failed = 0;
    for bad in super::super::mutations(&valid, 30_000) {
        let mut body = wire::encode_indexes(&[0]);
        body.extend_from_slice(&bad);
        if let Err(e) = decode(7, &s, &wire::encode(7, &body)) {
            assert_eq!(e.class(), "protobuf_mismatch", "{e}");
            failed += 1;
        }
    }
    assert!(failed > 5_000, "{failed}");
}
