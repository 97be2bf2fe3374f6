//! Rows encoded for the Storage Write API: each BigQuery type, nesting, modes and the errors.

use prost::encoding::{decode_key, decode_varint, WireType};
use prost_types::field_descriptor_proto::{Label, Type};

use super::*;

fn field(name: &str, t: &str, mode: &str) -> FieldSchema {
    FieldSchema::new(name, t, mode)
}

fn schema() -> Vec<FieldSchema> {
    let mut address = field("address", "RECORD", "NULLABLE");
    address.fields = vec![
        field("city", "STRING", "REQUIRED"),
        field("zip", "INTEGER", "NULLABLE"),
    ];
    vec![
        field("s", "STRING", "NULLABLE"),      // 1
        field("b", "BYTES", "NULLABLE"),       // 2
        field("i", "INTEGER", "NULLABLE"),     // 3
        field("f", "FLOAT", "NULLABLE"),       // 4
        field("n", "NUMERIC", "NULLABLE"),     // 5
        field("bn", "BIGNUMERIC", "NULLABLE"), // 6
        field("ok", "BOOLEAN", "NULLABLE"),    // 7
        field("ts", "TIMESTAMP", "NULLABLE"),  // 8
        field("d", "DATE", "NULLABLE"),        // 9
        field("t", "TIME", "NULLABLE"),        // 10
        field("dt", "DATETIME", "NULLABLE"),   // 11
        field("g", "GEOGRAPHY", "NULLABLE"),   // 12
        field("j", "JSON", "NULLABLE"),        // 13
        address,                               // 14
        field("tags", "STRING", "REPEATED"),   // 15
        field("id", "STRING", "REQUIRED"),     // 16
    ]
}

/// A decoded field: its number and value (varint, 64-bit or bytes).
#[derive(Debug, PartialEq)]
enum V {
    Int(u64),
    F64(f64),
    Bytes(Vec<u8>),
}

fn decode(mut buf: &[u8]) -> Vec<(u32, V)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (number, wire) = decode_key(&mut buf).unwrap();
        let v = match wire {
            WireType::Varint => V::Int(decode_varint(&mut buf).unwrap()),
            WireType::SixtyFourBit => {
                let (head, rest) = buf.split_at(8);
                buf = rest;
                V::F64(f64::from_le_bytes(head.try_into().unwrap()))
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).unwrap() as usize;
                let (head, rest) = buf.split_at(len);
                buf = rest;
                V::Bytes(head.to_vec())
            }
            w => panic!("unexpected wire type {w:?}"),
        };
        out.push((number, v));
    }
    out
}

fn encode(json: &str) -> Result<Vec<(u32, V)>, FieldError> {
    let format = RowFormat::new(&schema()).unwrap();
    let mut out = Vec::new();
    format.encode(json.as_bytes(), &mut out)?;
    Ok(decode(&out))
}

fn text(s: &str) -> V {
    V::Bytes(s.as_bytes().to_vec())
}

#[test]
fn the_descriptor_nests_records_and_marks_repeated_fields() {
    let format = RowFormat::new(&schema()).unwrap();
    let d = format.descriptor();
    assert_eq!(d.name(), "row");
    assert_eq!(d.field.len(), 16);
    let ts = &d.field[7];
    assert_eq!(
        (ts.name(), ts.number(), ts.r#type()),
        ("ts", 8, Type::Int64)
    );
    assert_eq!(d.field[8].r#type(), Type::Int32, "DATE is int32 days");
    assert_eq!(d.field[4].r#type(), Type::String, "NUMERIC is its text");
    let address = &d.field[13];
    assert_eq!(address.r#type(), Type::Message);
    assert_eq!(address.type_name(), "f14");
    assert_eq!(d.nested_type.len(), 1);
    assert_eq!(d.nested_type[0].name(), "f14");
    assert_eq!(d.nested_type[0].field[0].name(), "city");
    assert_eq!(d.field[14].label(), Label::Repeated);
    assert_eq!(d.field[15].label(), Label::Required);
    assert_eq!(d.field[0].label(), Label::Optional);
}

#[test]
fn every_type_is_encoded_as_google_documents() {
    let row = r#"{"s":"héllo \"q\"","b":"AAEC","i":"-42","f":1.5,"n":"123456789012345678901234567.123456789",
        "bn":1e-30,"ok":true,"ts":"2024-02-29T12:34:56.789012+02:00","d":"1969-12-31","t":"23:59:59.5",
        "dt":"2024-01-02T03:04:05","g":"POINT(1 2)","j":{"a":[1,2]},"address":{"CITY":"Oslo","zip":150},
        "tags":["x","y"],"id":"e1"}"#;
    let fields = encode(row).unwrap();
    let ts = 1_709_202_896_789_012u64; // 2024-02-29T10:34:56.789012Z
    assert_eq!(
        fields,
        vec![
            (1, text("héllo \"q\"")),
            (2, V::Bytes(vec![0, 1, 2])),
            (3, V::Int(-42i64 as u64)),
            (4, V::F64(1.5)),
            (5, text("123456789012345678901234567.123456789")),
            (6, text("1e-30")),
            (7, V::Int(1)),
            (8, V::Int(ts)),
            (9, V::Int(-1i64 as u64)),
            (10, text("23:59:59.5")),
            (11, text("2024-01-02 03:04:05")),
            (12, text("POINT(1 2)")),
            (13, text(r#"{"a":[1,2]}"#)),
            (
                14,
                V::Bytes(vec![0x0a, 4, b'O', b's', b'l', b'o', 0x10, 150, 1])
            ),
            (15, text("x")),
            (15, text("y")),
            (16, text("e1")),
        ]
    );
}

#[test]
fn timestamps_in_bigquerys_other_forms() {
    let micros = |v: &str| match encode(&format!(r#"{{"ts":{v},"id":"e"}}"#)).unwrap()[0] {
        (8, V::Int(m)) => m as i64,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(micros(r#""1970-01-01 00:00:01 UTC""#), 1_000_000);
    assert_eq!(micros(r#""1970-01-01T00:00:00.000001Z""#), 1);
    assert_eq!(micros(r#""1970-01-02""#), 86_400_000_000);
    assert_eq!(micros(r#""1970-01-01 01:00:00-01:00""#), 7_200_000_000);
    assert_eq!(micros("1.5"), 1_500_000, "seconds since the epoch");
    assert_eq!(micros(r#""1969-12-31T23:59:59Z""#), -1_000_000);
    // The fast form and the general parser agree.
    assert_eq!(
        micros(r#""2026-11-27T10:11:12.345Z""#),
        micros(r#""2026-11-27 10:11:12.345 UTC""#)
    );
    assert_eq!(
        micros(r#""2026-11-27T10:11:12.3Z""#),
        micros(r#""2026-11-27T10:11:12.300000+00:00""#)
    );
    assert_eq!(micros(r#""2026-11-27T10:11:12Z""#) % 1_000_000, 0);
}

#[test]
fn nulls_and_missing_values() {
    assert_eq!(
        encode(r#"{"s":null,"tags":null,"address":null,"id":"e"}"#).unwrap(),
        vec![(16, text("e"))]
    );
    let e = encode(r#"{"s":"x"}"#).unwrap_err();
    assert_eq!(
        (e.path.as_str(), e.message.as_str()),
        ("id", "missing required field")
    );
    let e = encode(r#"{"id":null}"#).unwrap_err();
    assert_eq!(e.to_string(), "field id: null for a REQUIRED column");
    let e = encode(r#"{"id":"e","address":{"zip":1}}"#).unwrap_err();
    assert_eq!(e.path, "address.city");
    let e = encode(r#"{"id":"e","tags":["a",null]}"#).unwrap_err();
    assert_eq!(e.path, "tags[1]");
}

#[test]
fn a_value_that_does_not_fit_names_the_field_the_type_and_the_value() {
    let e = encode(r#"{"id":"e","i":"12x"}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"field i: expected an integer: column type INTEGER, value "12x""#
    );
    let e = encode(r#"{"id":"e","address":{"city":"a","zip":{"n":1}}}"#).unwrap_err();
    assert_eq!(e.path, "address.zip");
    assert!(e.message.contains("column type INTEGER"), "{e}");
    let e = encode(r#"{"id":"e","d":"2024-13-01"}"#).unwrap_err();
    assert!(e.message.starts_with("not a date"), "{e}");
    let long = "x".repeat(500);
    let e = encode(&format!(r#"{{"id":"e","ok":"{long}"}}"#)).unwrap_err();
    assert!(e.message.len() < 200, "the value is cut to an excerpt: {e}");
    let e = encode(r#"{"id":"e","tags":"a"}"#).unwrap_err();
    assert!(e.message.contains("expected an array"), "{e}");
    let e = encode(r#"{"id":"e","n":"1.2.3"}"#).unwrap_err();
    assert!(e.message.contains("expected a decimal"), "{e}");
}

#[test]
fn a_member_the_table_lacks_is_bigquerys_no_such_field() {
    let e = encode(r#"{"id":"e","extra":1}"#).unwrap_err();
    assert_eq!(e.message, "no such field: extra.");
    assert!(e.is_unknown_field());
    let e = encode(r#"{"id":"e","address":{"city":"a","street":"b"}}"#).unwrap_err();
    assert_eq!(e.path, "address.street");
}

#[test]
fn an_insert_all_entry_is_encoded_from_its_json_member() {
    let format = RowFormat::new(&schema()).unwrap();
    let mut out = Vec::new();
    for entry in [
        &br#"{"insertId":"k1","json":{"id":"e1","i":7}}"#[..],
        br#"{"insertId":"k\",\"json\":{}","json":{"id":"e1","i":7}}"#,
        br#"{"json":{"id":"e1","i":7}}"#,
        br#"{ "json" : {"id":"e1","i":7}, "insertId": "k" }"#,
    ] {
        format.encode_entry(entry, &mut out).unwrap();
        assert_eq!(
            decode(&out),
            vec![(16, text("e1")), (3, V::Int(7))],
            "{}",
            String::from_utf8_lossy(entry)
        );
    }
}

#[test]
fn unknown_column_types_are_refused_up_front() {
    let e = RowFormat::new(&[field("r", "RANGE", "NULLABLE")]).unwrap_err();
    assert_eq!(e.path, "r");
}

/// Writes the object `json` member by member, as the transform stage does (with
/// [`RowFormat::writer_of`] the text, or without).
/// How [`write_members`] sets its writer up.
#[derive(Clone, Copy, PartialEq)]
enum Writer {
    Plain,
    /// [`RowFormat::writer_of`] the text.
    OfText,
    /// And [`RowWriter::with_inner`]: RECORDs from the members the converter found.
    WithInner,
}

fn write_members(format: &RowFormat, json: &str, how: Writer) -> Result<Vec<u8>, FieldError> {
    let text = json.as_bytes();
    let (members, inner) = crate::stage::json::object_members_and_inner(text).unwrap();
    if how == Writer::WithInner && !json.contains('\\') {
        // Found for every object with members among the values (these rows have no spaces).
        assert_eq!(json.contains(":{\""), !inner.is_empty(), "{json}");
    }
    let mut out = Vec::new();
    let mut row = match how {
        Writer::Plain => format.writer(),
        Writer::OfText => format.writer_of(text),
        Writer::WithInner => format.writer_of(text).with_inner(json, &inner),
    };
    for m in &members {
        let value = std::str::from_utf8(m.value.of(text)).unwrap();
        row.member(&m.name(text), value, &mut out)?;
    }
    row.finish()?;
    Ok(out)
}

/// Rows good and bad, for comparing the ways of encoding them.
const ROWS: &[&str] = &[
    r#"{"s":"héllo \"q\"","b":"AAEC","i":"-42","f":1.5,"n":"123456789012345678901234567.123456789",
        "bn":1e-30,"ok":true,"ts":"2024-02-29T12:34:56.789012+02:00","d":"1969-12-31","t":"23:59:59.5",
        "dt":"2024-01-02T03:04:05","g":"POINT(1 2)","j":{"a":[1,2]},"address":{"CITY":"Oslo","zip":150},
        "tags":["x","y"],"id":"e1"}"#,
    r#"{"ID":"e","S":7,"j":"{\"k\":1}","ts":-1.5,"d":"0001-01-01","f":"-Infinity","tags":[]}"#,
    r#"{"i\u0064":"escaped key","f":"NaN","b":"/w==","s":"\u0001\n"}"#,
    r#"{"s":null,"tags":null,"address":null,"id":"e","ts":"1969-12-31T23:59:59.999999Z"}"#,
    r#"{"id":"e","f":1e300,"i":3.0,"ok":"FALSE","address":{"city":"a","zip":null}}"#,
    r#"{"s":"x"}"#,
    r#"{"id":null}"#,
    r#"{"id":"e","address":{"zip":1}}"#,
    r#"{"id":"e","tags":["a",null]}"#,
    r#"{"id":"e","i":"12x"}"#,
    r#"{"id":"e","address":{"city":"a","zip":{"n":1}}}"#,
    r#"{"id":"e","tags":"a"}"#,
    r#"{"id":"e","s":[1]}"#,
    r#"{"id":"e","address":"x"}"#,
    r#"{"id":"e","extra":1}"#,
    r#"{"id":"e","address":{"city":"a","street":"b"}}"#,
    r#"{"id":"e","address":{ "c\u0069ty" : "a\"}" , "zip" : null , "ZIP": 2 }}"#,
    r#"{"id":"e","address":{}}"#,
    r#"{"id":"e","address":{"city":null}}"#,
    r#"{"id":"e","address":[{"city":"a"}]}"#,
];

#[test]
fn writing_member_by_member_gives_the_whole_rows_bytes_and_errors() {
    let format = RowFormat::new(&schema()).unwrap();
    for row in ROWS.iter().chain(UNESCAPED) {
        let mut whole = Vec::new();
        let expected = format.encode(row.as_bytes(), &mut whole).map(|()| whole);
        for how in [Writer::Plain, Writer::OfText, Writer::WithInner] {
            assert_eq!(write_members(&format, row, how), expected, "{row}");
        }
    }
}

/// Rows without a `\\`, whose STRING columns [`RowFormat::writer_of`] copies without looking for
/// escapes (`ROWS` has rows with escapes, in keys, values and records).
const UNESCAPED: &[&str] = &[
    r#"{"id":"e1","s":"héllo","address":{"city":"Oslo","zip":150},"tags":["x"],"g":"POINT(1 2)"}"#,
    r#"{"id":"","s":"","address":{"city":""}}"#,
    r#"{"id":"e","s":7,"address":{"city":true}}"#,
    r#"{"id":"e","s":["x"]}"#,
    r#"{"id":"e","address":{"city":{"x":"y"}}}"#,
    r#"{"id":"e","j":{"a":[1,{"b":2}]},"address":{"zip":7,"city":"Oslo","zip":8},"s":"x"}"#,
];

#[test]
fn metadata_values_are_written_as_their_json_would_be() {
    let format = RowFormat::new(&[
        field("t", "STRING", "NULLABLE"),
        field("p", "INTEGER", "NULLABLE"),
        field("ts", "TIMESTAMP", "NULLABLE"),
        field("ps", "STRING", "NULLABLE"),
        field("tss", "STRING", "NULLABLE"),
        field("pn", "NUMERIC", "NULLABLE"),
    ])
    .unwrap();
    let stamp = "\"2023-11-14T22:13:20.123Z\"";
    let mut typed = Vec::new();
    let mut row = format.writer();
    row.string("t", "to\"pic", &mut typed).unwrap();
    row.integer("p", -3, &mut typed).unwrap();
    row.timestamp_ms("ts", 1_700_000_000_123, || stamp.into(), &mut typed)
        .unwrap();
    row.integer("ps", 7, &mut typed).unwrap();
    row.timestamp_ms("tss", 1_700_000_000_123, || stamp.into(), &mut typed)
        .unwrap();
    row.integer("pn", 12, &mut typed).unwrap();
    row.finish().unwrap();
    let json = format!(r#"{{"t":"to\"pic","p":-3,"ts":{stamp},"ps":7,"tss":{stamp},"pn":12}}"#);
    let mut expected = Vec::new();
    format.encode(json.as_bytes(), &mut expected).unwrap();
    assert_eq!(typed, expected);
    let e = format
        .writer()
        .integer("missing", 1, &mut typed)
        .unwrap_err();
    assert!(e.is_unknown_field(), "{e}");
}

#[test]
fn a_rows_json_encodes_back_to_the_same_bytes() {
    let format = RowFormat::new(&schema()).unwrap();
    let mut good = 0;
    for row in ROWS {
        let mut bytes = Vec::new();
        if format.encode(row.as_bytes(), &mut bytes).is_err() {
            continue;
        }
        good += 1;
        let entry = format.entry_json(&bytes);
        let mut again = Vec::new();
        format.encode_entry(&entry, &mut again).unwrap();
        // The same fields (in the table's order now: order means nothing in protobuf).
        let by_number = |b: &[u8]| {
            let mut fields: Vec<_> = decode(b)
                .into_iter()
                .map(|(n, v)| match v {
                    V::F64(f) => (n, V::Int(f.to_bits())), // NaN equals itself by its bits
                    v => (n, v),
                })
                .collect();
            fields.sort_by_key(|(n, _)| *n);
            fields
        };
        assert_eq!(
            by_number(&again),
            by_number(&bytes),
            "{row} → {}",
            String::from_utf8_lossy(&entry)
        );
    }
    assert_eq!(good, 6, "the good rows all went round");
}

/// Names of every length up to 20 against themselves and against each one-byte change of them.
#[test]
fn names_compare_as_bytes_at_every_length() {
    let base = b"_kafka_timestamp_xyz";
    let copy = base.to_vec();
    for n in 0..=base.len() {
        let a = &base[..n];
        assert!(super::same_name(a, &copy[..n]), "{n}");
        for i in 0..n {
            let mut b = a.to_vec();
            b[i] ^= 0x20;
            assert!(!super::same_name(a, &b), "{n} {i}");
        }
        assert!(!super::same_name(a, &base[..n.saturating_sub(1)]) || n == 0);
    }
}
