//! Unit tests of the schema cache: answers remembered and classed, values and keys decoded.

use super::*;

#[test]
fn answers_are_remembered_and_classed() {
    let cache = SchemaCache::default();
    let avro = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
    let payloads = [
        Some(wire::encode(1, b"x")),
        Some(wire::encode(2, b"y")),
        Some(wire::encode(1, b"z")),
        Some(b"{}".to_vec()),
        None,
    ];
    let missing = |c: &SchemaCache| c.missing(payloads.iter().map(|p| p.as_deref()));
    assert_eq!(missing(&cache), vec![1, 2]);
    assert!(cache.insert(1, Ok(RegisteredSchema::avro(avro))).is_ok());
    let e = cache
        .insert(
            2,
            Err(RegistryError::NotFound {
                id: 2,
                detail: "40403".into(),
            }),
        )
        .unwrap_err();
    assert_eq!(e.class(), "unknown_schema_id");
    assert_eq!(missing(&cache), Vec::<u32>::new());
    // A plain type: a key's schema; a value naming it fails as no record.
    assert!(cache
        .insert(3, Ok(RegisteredSchema::avro("\"string\"")))
        .is_ok());
    let key = wire::encode(3, &[6, b'k', b'-', b'1']);
    let e = cache.convert(ValueFormat::Avro, Some(&key)).unwrap_err();
    assert_eq!(e.class(), "not_a_record");
    assert_eq!(cache.convert_key(ValueFormat::Avro, &key).unwrap(), b"k-1");
    let e = cache.convert_key(ValueFormat::Protobuf, &key).unwrap_err();
    assert_eq!(e.class(), "wrong_schema_type");
    assert!(cache.get(1).unwrap().is_ok());
}

#[test]
fn a_schema_of_another_type_than_the_topic_is_a_record_failure() {
    let cache = SchemaCache::default();
    let json = RegisteredSchema {
        kind: SchemaKind::Json,
        text: r#"{"type":"object"}"#.into(),
        references: Vec::new(),
    };
    assert!(cache.insert(1, Ok(json)).is_ok());
    let framed = wire::encode(1, b"{\"a\":1}");
    let e = cache.convert(ValueFormat::Avro, Some(&framed)).unwrap_err();
    assert_eq!(e.class(), "wrong_schema_type");
    assert!(e.to_string().contains("read as avro"), "{e}");
    assert!(cache
        .convert(ValueFormat::JsonSchema, Some(&framed))
        .is_ok());
    let e = cache
        .convert(ValueFormat::Protobuf, Some(b"{}"))
        .unwrap_err();
    assert_eq!(e.class(), "not_wire_format");
    let unknown = RegistryError::UnknownType {
        id: 2,
        kind: "THRIFT".into(),
    };
    assert_eq!(
        cache.insert(2, Err(unknown)).unwrap_err().class(),
        "wrong_schema_type"
    );
}

#[test]
fn keys_are_decoded_as_their_topic_reads_them() {
    let formats = BTreeMap::from([
        ("v".to_string(), ValueFormat::Avro),
        ("j".to_string(), ValueFormat::Json),
    ]);
    let key_formats = BTreeMap::from([
        ("k".to_string(), ValueFormat::Avro),
        ("p".to_string(), ValueFormat::Protobuf),
        ("j".to_string(), ValueFormat::JsonSchema),
        ("b".to_string(), ValueFormat::Json),
    ]);
    let topics = RegistryTopics::new(&formats, &key_formats).unwrap();
    let names: Vec<String> = topics.topics().into_iter().collect();
    assert_eq!(names, ["j", "k", "p", "v"]);
    let at = |topic: &str| topics.of(topic);
    assert_eq!(
        at("j"),
        TopicFormats {
            value: None,
            key: Some(ValueFormat::JsonSchema)
        }
    );
    assert_eq!(at("b"), TopicFormats::default());
    assert!(RegistryTopics::new(&BTreeMap::new(), &BTreeMap::new()).is_none());

    // Keys name schemas only on topics whose keys are registered; values likewise.
    let (k1, v2) = (wire::encode(1, b"x"), wire::encode(2, b"y"));
    let missing = |topic: &str| topics.missing(topic, [(Some(&k1[..]), Some(&v2[..]))].into_iter());
    assert_eq!(missing("k"), vec![1]);
    assert_eq!(missing("v"), vec![2]);
    assert_eq!(missing("b"), Vec::<u32>::new());

    let cache = &topics.schemas;
    let key_record = r#"{"type":"record","name":"K","fields":[
        {"name":"member_id","type":"long"},{"name":"region","type":"string"}]}"#;
    assert!(cache
        .insert(1, Ok(RegisteredSchema::avro(key_record)))
        .is_ok());
    let proto = RegisteredSchema {
        kind: SchemaKind::Protobuf,
        text: "syntax = \"proto3\"; message K { string member = 1; }".into(),
        references: Vec::new(),
    };
    assert!(cache.insert(4, Ok(proto)).is_ok());
    let json = RegisteredSchema {
        kind: SchemaKind::Json,
        text: r#"{"type":["string","object"],"maxLength":5}"#.into(),
        references: Vec::new(),
    };
    assert!(cache.insert(5, Ok(json)).is_ok());

    let value = br#"{"a":1}"#;
    let read = |topic: &str, key: &[u8]| topics.read(at(topic), Some(key), Some(value));
    // A record key: its compact JSON; the value read as the topic's values are (JSON here).
    let avro_key = wire::encode(1, &[14, 4, b'e', b'u']);
    let object = read("k", &avro_key).unwrap();
    assert_eq!(
        object.key.as_deref(),
        Some(&br#"{"member_id":7,"region":"eu"}"#[..])
    );
    assert_eq!(object.members.len(), 1);
    let mut proto_key = wire::encode_indexes(&[0]);
    proto_key.extend_from_slice(&[0x0a, 2, b'm', b'7']);
    let object = read("p", &wire::encode(4, &proto_key)).unwrap();
    assert_eq!(object.key.as_deref(), Some(&br#"{"member":"m7"}"#[..]));
    // A string key: its characters; JSON Schema's text made compact.
    let object = read("j", &wire::encode(5, b"\"ab c\"")).unwrap();
    assert_eq!(object.key.as_deref(), Some(&b"ab c"[..]));
    let object = read("j", &wire::encode(5, b"{ \"m\" : [1, 2] }")).unwrap();
    assert_eq!(object.key.as_deref(), Some(&br#"{"m":[1,2]}"#[..]));
    // No key stays no key; a key on a topic whose keys are bytes is left to the bytes.
    let object = topics.read(at("k"), None, Some(value)).unwrap();
    assert_eq!(object.key, None);
    let object = read("b", b"raw").unwrap();
    assert_eq!(object.key, None);

    // A key that does not decode fails the record, saying it is the key.
    let e = read("j", &wire::encode(5, b"\"too long\"")).unwrap_err();
    assert_eq!(e.class(), "schema_violation");
    assert!(e.to_string().starts_with("record key: "), "{e}");
    let e = read("k", &avro_key[..6]).unwrap_err();
    assert_eq!(e.class(), "avro_mismatch");
    let e = read("k", b"plain").unwrap_err();
    assert_eq!(e.class(), "not_wire_format");
    let e = read("p", &avro_key).unwrap_err();
    assert_eq!(e.class(), "wrong_schema_type");
    // A bad value fails first, as the value.
    let e = topics
        .read(at("k"), Some(&avro_key), Some(b"[1]"))
        .unwrap_err();
    assert_eq!(e.class(), "not_an_object");
    assert!(!e.to_string().starts_with("record key"), "{e}");
}
