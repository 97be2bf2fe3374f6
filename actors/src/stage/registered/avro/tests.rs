use apache_avro::types::Value;
use serde_json::json;

use super::super::wire;
use super::*;

const SCHEMA: &str = r#"{
  "type": "record", "name": "Member", "namespace": "com.example",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "name", "type": "string"},
    {"name": "nickname", "type": ["null", "string"], "default": null},
    {"name": "active", "type": "boolean"},
    {"name": "score", "type": "double"},
    {"name": "ratio", "type": "float"},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
      {"name": "city", "type": "string"},
      {"name": "zip", "type": ["null", "int"]}
    ]}},
    {"name": "previous", "type": {"type": "array", "items": "Address"}},
    {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["FREE", "GOLD"]}},
    {"name": "attrs", "type": {"type": "map", "values": "long"}},
    {"name": "either", "type": ["null", "int", "string"]},
    {"name": "avatar", "type": "bytes"},
    {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 2}},
    {"name": "born", "type": {"type": "int", "logicalType": "date"}},
    {"name": "wakes", "type": {"type": "long", "logicalType": "time-micros"}},
    {"name": "joined", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "seen", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
    {"name": "balance", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}}
  ]
}"#;

fn address(city: &str, zip: Option<i32>) -> Value {
    Value::Record(vec![
        ("city".into(), Value::String(city.into())),
        (
            "zip".into(),
            match zip {
                Some(z) => Value::Union(1, Box::new(Value::Int(z))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
    ])
}

fn member() -> Value {
    Value::Record(vec![
        ("id".into(), Value::Long(42)),
        ("name".into(), Value::String("Kim \"J\" Min".into())),
        ("nickname".into(), Value::Union(0, Box::new(Value::Null))),
        ("active".into(), Value::Boolean(true)),
        ("score".into(), Value::Double(f64::NAN)),
        ("ratio".into(), Value::Float(0.5)),
        (
            "tags".into(),
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        ),
        ("address".into(), address("Seoul", Some(4524))),
        (
            "previous".into(),
            Value::Array(vec![address("Busan", None)]),
        ),
        ("tier".into(), Value::Enum(1, "GOLD".into())),
        (
            "attrs".into(),
            Value::Map([("z".into(), Value::Long(2)), ("a".into(), Value::Long(1))].into()),
        ),
        (
            "either".into(),
            Value::Union(2, Box::new(Value::String("x".into()))),
        ),
        ("avatar".into(), Value::Bytes(vec![1, 2, 3])),
        ("hash".into(), Value::Fixed(2, vec![0xff, 0])),
        ("born".into(), Value::Date(19_000)),
        ("wakes".into(), Value::TimeMicros(25_200_000_001)),
        ("joined".into(), Value::TimestampMillis(1_700_000_000_123)),
        ("seen".into(), Value::TimestampMicros(-1)),
        ("local".into(), Value::LocalTimestampMicros(86_400_000_000)),
        (
            "balance".into(),
            Value::Decimal(apache_avro::Decimal::from(
                (-123_456i64).to_be_bytes().to_vec(),
            )),
        ),
        (
            "uid".into(),
            Value::Uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8".parse().unwrap()),
        ),
    ])
}

#[test]
fn every_type_maps_to_what_bigquery_takes_for_its_column() {
    let schema = AvroSchema::parse(7, SCHEMA).unwrap();
    let body = apache_avro::to_avro_datum(&schema.schema, member()).unwrap();
    let framed = wire::encode(7, &body);
    let f = wire::frame(&framed).unwrap();
    assert_eq!(f.schema_id, 7);
    let object = decode(7, &schema, &framed).unwrap();
    let text = object.text.clone().unwrap();
    let got: serde_json::Value = serde_json::from_slice(&text).expect("JSON");
    assert_eq!(
        got,
        json!({
            "id": 42, "name": "Kim \"J\" Min", "nickname": null, "active": true,
            "score": "NaN", "ratio": 0.5, "tags": ["a", "b"],
            "address": {"city": "Seoul", "zip": 4524},
            "previous": [{"city": "Busan", "zip": null}],
            "tier": "GOLD",
            "attrs": [{"key": "a", "value": 1}, {"key": "z", "value": 2}],
            "either": {"string": "x"},
            "avatar": "AQID", "hash": "/wA=",
            "born": "2022-01-08",
            "wakes": "07:00:00.000001",
            "joined": "2023-11-14T22:13:20.123000Z",
            "seen": "1969-12-31T23:59:59.999999Z",
            "local": "1970-01-02T00:00:00.000000",
            "balance": "-1234.56",
            "uid": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
        })
    );
    // The members found while writing are those a JSON payload's reading finds.
    let read = crate::stage::convert::parse_object(Some(&text)).expect("an object");
    assert_eq!(read.members, object.members);
}

#[test]
fn bytes_that_do_not_match_the_schema_are_a_record_failure() {
    let schema = AvroSchema::parse(7, SCHEMA).unwrap();
    let body = apache_avro::to_avro_datum(&schema.schema, member()).unwrap();
    for bad in [&body[..body.len() / 2], &[0xff; 3][..], &[]] {
        let e = decode(7, &schema, &wire::encode(7, bad)).unwrap_err();
        assert_eq!(e.class(), "avro_mismatch", "{e}");
        assert!(e.to_string().contains("schema 7"), "{e}");
    }
    let mut longer = wire::encode(7, &body);
    longer.push(0);
    let e = decode(7, &schema, &longer).unwrap_err();
    assert!(e.to_string().contains("1 bytes left"), "{e}");
}

#[test]
fn a_schema_that_is_not_a_record_or_not_avro_is_named() {
    // A plain type is a schema (keys are often strings), but a value of it is no row.
    let schema = AvroSchema::parse(3, r#""string""#).unwrap();
    let framed = wire::encode(
        3,
        &apache_avro::to_avro_datum(&schema.schema, Value::String("k-1".into())).unwrap(),
    );
    let e = decode(3, &schema, &framed).unwrap_err();
    assert_eq!(e.class(), "not_a_record");
    assert_eq!(decode_any(3, &schema, &framed).unwrap().0, b"\"k-1\"");
    // A uuid on a fixed(16): apache-avro would read it as a string, misreading its bytes.
    let e = AvroSchema::parse(
        5,
        r#"{"type":"record","name":"R","fields":[{"name":"u","type":
          {"type":"fixed","name":"U","size":16,"logicalType":"uuid"}}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.class(), "bad_schema");
    assert!(e.to_string().contains("uuid on a fixed(16)"), "{e}");
    let e = AvroSchema::parse(4, r#"{"type": "recrd"}"#).unwrap_err();
    assert_eq!(e.class(), "bad_schema");
    assert!(e.to_string().contains("schema 4"), "{e}");
}

#[test]
fn decimals_are_exact_at_any_scale_and_size() {
    use super::super::text::decimal_text;
    assert_eq!(decimal_text(&[0x01, 0xe2, 0x40], 2), "1234.56");
    assert_eq!(decimal_text(&[0xfe, 0x1d, 0xc0], 2), "-1234.56");
    assert_eq!(decimal_text(&[0x05], 3), "0.005");
    assert_eq!(decimal_text(&[0xff], 0), "-1");
    assert_eq!(decimal_text(&[], 0), "0");
    assert_eq!(decimal_text(&[0x00], 2), "0.00");
    // 2^255 - 1 at scale 38 (BIGNUMERIC's range).
    let mut max = vec![0xff; 32];
    max[0] = 0x7f;
    let text = decimal_text(&max, 38);
    assert_eq!(
        text.replace('.', ""),
        "57896044618658097711785492504343953926634992332820282019728792003956564819967"
    );
    assert_eq!(text.split('.').nth(1).map(str::len), Some(38));
}

#[test]
fn a_length_no_record_can_have_fails_without_allocating_it() {
    let schema = AvroSchema::parse(
        8,
        r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"}]}"#,
    )
    .unwrap();
    // A string of 100,000,000 bytes (zigzag varint 200,000,000), then nothing.
    let mut body = Vec::new();
    let mut n: u64 = 200_000_000;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    let e = decode(8, &schema, &wire::encode(8, &body)).unwrap_err();
    assert_eq!(e.class(), "avro_mismatch");
    assert!(
        e.to_string().contains(&MAX_ALLOCATION_BYTES.to_string()),
        "{e}"
    );
}

#[test]
fn a_value_that_does_not_fit_names_its_path() {
    let schema = AvroSchema::parse(
        9,
        r#"{"type":"record","name":"R","fields":[
          {"name":"inner","type":{"type":"record","name":"I","fields":[
            {"name":"days","type":{"type":"array","items":{"type":"int","logicalType":"date"}}}]}}]}"#,
    )
    .unwrap();
    let value = Value::Record(vec![(
        "inner".into(),
        Value::Record(vec![(
            "days".into(),
            Value::Array(vec![Value::Date(0), Value::Date(i32::MAX)]),
        )]),
    )]);
    let body = apache_avro::to_avro_datum(&schema.schema, value).unwrap();
    let e = decode(9, &schema, &wire::encode(9, &body)).unwrap_err();
    assert_eq!(e.class(), "avro_mismatch");
    assert!(e.to_string().contains("at inner.days.1: date"), "{e}");
}

/// The rest of the logical types, a recursive record, and the encodings apache-avro's writer does
/// not produce (blocks with a negative count and their size) but other writers may.
#[test]
fn other_logical_types_recursion_and_block_forms_decode() {
    let schema = AvroSchema::parse(
        10,
        r#"{"type":"record","name":"R","fields":[
          {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
          {"name":"tn","type":{"type":"long","logicalType":"timestamp-nanos"}},
          {"name":"lm","type":{"type":"long","logicalType":"local-timestamp-millis"}},
          {"name":"ln","type":{"type":"long","logicalType":"local-timestamp-nanos"}},
          {"name":"df","type":{"type":"fixed","name":"D","size":3,"logicalType":"decimal","precision":6,"scale":3}},
          {"name":"big","type":{"type":"bytes","logicalType":"big-decimal"}},
          {"name":"dur","type":{"type":"fixed","name":"Dur","size":12,"logicalType":"duration"}},
          {"name":"next","type":["null","R"]}]}"#,
    )
    .unwrap();
    let record = |next: Value| {
        Value::Record(vec![
            ("tm".into(), Value::TimeMillis(3_600_001)),
            ("tn".into(), Value::TimestampNanos(1_500)),
            ("lm".into(), Value::LocalTimestampMillis(-1)),
            ("ln".into(), Value::LocalTimestampNanos(2_000)),
            (
                "df".into(),
                Value::Decimal(apache_avro::Decimal::from(vec![0xff, 0xff, 0xfe])),
            ),
            ("big".into(), Value::BigDecimal("-12.5000".parse().unwrap())),
            (
                "dur".into(),
                Value::Duration(apache_avro::Duration::new(
                    apache_avro::Months::new(1),
                    apache_avro::Days::new(2),
                    apache_avro::Millis::new(3),
                )),
            ),
            ("next".into(), next),
        ])
    };
    let inner = record(Value::Union(0, Box::new(Value::Null)));
    let value = record(Value::Union(1, Box::new(inner)));
    let body = apache_avro::to_avro_datum(&schema.schema, value).unwrap();
    let object = decode(10, &schema, &wire::encode(10, &body)).unwrap();
    let got: serde_json::Value = serde_json::from_slice(&object.text.unwrap()).unwrap();
    let fields = json!({
        "tm": "01:00:00.001000", "tn": "1970-01-01T00:00:00.000001Z",
        "lm": "1969-12-31T23:59:59.999000", "ln": "1970-01-01T00:00:00.000002",
        "df": "-0.002", "big": "-12.5000",
        "dur": {"months": 1, "days": 2, "milliseconds": 3},
    });
    let mut want = fields.clone();
    want["next"] = fields.clone();
    want["next"]["next"] = serde_json::Value::Null;
    assert_eq!(got, want);

    // An array and a map in two blocks each, the first with a negative count and its size.
    let schema = AvroSchema::parse(
        11,
        r#"{"type":"record","name":"B","fields":[
          {"name":"a","type":{"type":"array","items":"int"}},
          {"name":"m","type":{"type":"map","values":"boolean"}}]}"#,
    )
    .unwrap();
    let body = [
        3, 4, 2, 4, 2, 6, 0, // a: block of -2 items (size 2 bytes): 1, 2; block of 1: 3; end
        3, 4, 2, b'z', 1, 2, b'a', 0,
        0, // m: block of -2 entries (size 2): z=true, a=false; end
    ];
    let object = decode(11, &schema, &wire::encode(11, &body)).unwrap();
    assert_eq!(
        String::from_utf8(object.text.unwrap()).unwrap(),
        r#"{"a":[1,2,3],"m":[{"key":"a","value":false},{"key":"z","value":true}]}"#
    );
}

#[test]
fn malformed_bytes_are_named() {
    let schema = AvroSchema::parse(
        12,
        r#"{"type":"record","name":"M","fields":[
          {"name":"s","type":"string"},
          {"name":"b","type":"boolean"},
          {"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}},
          {"name":"u","type":["null","long"]}]}"#,
    )
    .unwrap();
    let fails = |body: &[u8], says: &str| {
        let e = decode(12, &schema, &wire::encode(12, body)).unwrap_err();
        assert_eq!(e.class(), "avro_mismatch");
        assert!(e.to_string().contains(says), "{e} (wanted {says:?})");
    };
    fails(&[2, 0xff, 1, 0, 2, 2], "at s: a string");
    fails(&[2, b'x', 2, 0, 2, 2], "at b: a boolean byte 2");
    fails(&[2, b'x', 1, 2, 2, 2], "at e: enum symbol 1 of 1");
    fails(&[2, b'x', 1, 0, 4], "at u: union branch 2 of 2");
    fails(&[2, b'x', 1, 0, 2], "at u: the value ends early");
    fails(
        &[0xff; 11],
        "at s: a variable-length integer longer than 10 bytes",
    );
    fails(&[1], "at s: length -1 is not between 0");
    let ok = decode(12, &schema, &wire::encode(12, &[2, b'x', 1, 0, 2, 3])).unwrap();
    assert_eq!(ok.text.unwrap(), br#"{"s":"x","b":true,"e":"A","u":-2}"#);
}

#[test]
fn a_recursive_value_nested_too_deep_fails_without_exhausting_the_stack() {
    let schema = AvroSchema::parse(
        13,
        r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#,
    )
    .unwrap();
    // Each level is one byte (branch 1: zigzag 2); the innermost is null (branch 0).
    let nested = |depth: usize| {
        let mut body = vec![2; depth];
        body.push(0);
        decode(13, &schema, &wire::encode(13, &body))
    };
    assert!(nested(50).is_ok());
    let e = nested(100_000).unwrap_err();
    assert_eq!(e.class(), "avro_mismatch");
    assert!(e.to_string().contains("nested more than 100 deep"), "{e}");
}

#[test]
fn corrupted_values_fail_as_record_failures_without_panicking() {
    let schema = AvroSchema::parse(7, SCHEMA).unwrap();
    let body = apache_avro::to_avro_datum(&schema.schema, member()).unwrap();
    let mut failed = 0;
    for bad in super::super::mutations(&body, 30_000) {
        if let Err(e) = decode(7, &schema, &wire::encode(7, &bad)) {
            assert_eq!(e.class(), "avro_mismatch", "{e}");
            failed += 1;
        }
    }
    assert!(failed > 10_000, "{failed}");
}
