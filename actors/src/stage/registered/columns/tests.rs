use super::*;
use crate::stage::registered::protobuf::ProtoSchema;

/// `(path, type, mode)` of every column, depth first.
fn flat(fields: &[FieldSchema]) -> Vec<String> {
    fn walk(prefix: &str, fields: &[FieldSchema], out: &mut Vec<String>) {
        for f in fields {
            let path = format!("{prefix}{}", f.name);
            let mode = f.mode.as_deref().unwrap_or("");
            out.push(format!("{path} {} {mode}", f.field_type));
            walk(&format!("{path}."), &f.fields, out);
        }
    }
    let mut out = Vec::new();
    walk("", fields, &mut out);
    out
}

#[test]
fn avro_columns_have_the_types_the_writer_writes() {
    let schema = AvroSchema::parse(
        1,
        r#"{"type": "record", "name": "M", "fields": [
          {"name": "id", "type": "long"},
          {"name": "nick", "type": ["null", "string"]},
          {"name": "tags", "type": {"type": "array", "items": "string"}},
          {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
          {"name": "born", "type": {"type": "int", "logicalType": "date"}},
          {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
          {"name": "cents", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
          {"name": "huge", "type": {"type": "bytes", "logicalType": "decimal", "precision": 40, "scale": 2}},
          {"name": "scores", "type": {"type": "map", "values": "int"}},
          {"name": "either", "type": ["null", "int", "string"]},
          {"name": "home", "type": {"type": "record", "name": "A", "fields": [{"name": "city", "type": "string"}]}},
          {"name": "work", "type": ["null", "A"]},
          {"name": "tier", "type": {"type": "enum", "name": "T", "symbols": ["X"]}}
        ]}"#,
    )
    .unwrap();
    assert_eq!(
        flat(&avro(&schema).unwrap()),
        [
            "id INTEGER NULLABLE",
            "nick STRING NULLABLE",
            "tags STRING REPEATED",
            "at TIMESTAMP NULLABLE",
            "born DATE NULLABLE",
            "local DATETIME NULLABLE",
            "cents NUMERIC NULLABLE",
            "huge BIGNUMERIC NULLABLE",
            "scores RECORD REPEATED",
            "scores.key STRING NULLABLE",
            "scores.value INTEGER NULLABLE",
            "either RECORD NULLABLE",
            "either.int INTEGER NULLABLE",
            "either.string STRING NULLABLE",
            "home RECORD NULLABLE",
            "home.city STRING NULLABLE",
            "work RECORD NULLABLE",
            "work.city STRING NULLABLE",
            "tier STRING NULLABLE",
        ]
    );
    let nested = AvroSchema::parse(
        2,
        r#"{"type": "record", "name": "N", "fields": [{"name": "grid",
          "type": {"type": "array", "items": {"type": "array", "items": "int"}}}]}"#,
    )
    .unwrap();
    assert!(avro(&nested).unwrap_err().contains("array of arrays"));
}

#[test]
fn protobuf_columns_have_the_types_the_writer_writes() {
    let schema = ProtoSchema::parse(
        3,
        r#"syntax = "proto3";
        import "google/protobuf/timestamp.proto";
        import "google/type/date.proto";
        message M {
          int64 id = 1;
          optional string nick = 2;
          repeated string tags = 3;
          google.protobuf.Timestamp at = 4;
          google.type.Date born = 5;
          map<string, int32> scores = 6;
          oneof contact { string email = 7; string phone = 8; }
          Inner inner = 9;
          repeated Inner inners = 10;
          message Inner { bytes blob = 1; }
        }
        message Loop { Loop next = 1; }"#,
        &[],
    )
    .unwrap();
    assert_eq!(
        flat(&protobuf(&schema.message(&[0]).unwrap()).unwrap()),
        [
            "contact_0 RECORD NULLABLE",
            "contact_0.email STRING NULLABLE",
            "contact_0.phone STRING NULLABLE",
            "id INTEGER NULLABLE",
            "nick STRING NULLABLE",
            "tags STRING REPEATED",
            "at TIMESTAMP NULLABLE",
            "born DATE NULLABLE",
            "scores RECORD REPEATED",
            "scores.key STRING NULLABLE",
            "scores.value INTEGER NULLABLE",
            "inner RECORD NULLABLE",
            "inner.blob BYTES NULLABLE",
            "inners RECORD REPEATED",
            "inners.blob BYTES NULLABLE",
        ]
    );
    let e = protobuf(&schema.message(&[1]).unwrap()).unwrap_err();
    assert!(e.contains("recursive"), "{e}");
}

#[test]
fn json_schema_columns_are_those_it_pins_down() {
    let refs = [(
        "address.json".to_owned(),
        r#"{"type": "object", "properties": {"city": {"type": "string"}}}"#.to_owned(),
    )];
    let schema = JsonSchema::parse(
        4,
        r##"{"type": "object", "properties": {
          "id": {"type": "integer"},
          "at": {"type": "string", "format": "date-time"},
          "day": {"type": ["string", "null"], "format": "date"},
          "ratio": {"type": "number"},
          "ok": {"type": "boolean"},
          "tags": {"type": "array", "items": {"type": "string"}},
          "address": {"$ref": "address.json"},
          "home": {"$ref": "#/definitions/home"},
          "open": {},
          "either": {"type": ["string", "integer"]}
        }, "definitions": {"home": {"type": "object", "properties": {"zip": {"type": "integer"}}}}}"##,
        &refs,
    )
    .unwrap();
    assert_eq!(
        flat(&json_schema(&schema).unwrap()),
        [
            "address RECORD NULLABLE",
            "address.city STRING NULLABLE",
            "at TIMESTAMP NULLABLE",
            "day DATE NULLABLE",
            "home RECORD NULLABLE",
            "home.zip INTEGER NULLABLE",
            "id INTEGER NULLABLE",
            "ok BOOLEAN NULLABLE",
            "ratio FLOAT NULLABLE",
            "tags STRING REPEATED",
        ]
    );
}
