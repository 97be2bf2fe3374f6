//! The client's encoding step: rows the transform stage encoded are sent as they are only with the
//! very format they were encoded for.

use bqsink_actors::stage::proto::ProtoRow;

use super::*;

fn format(columns: &[&str], version: u64) -> Format {
    let schema: Vec<FieldSchema> = columns
        .iter()
        .map(|c| FieldSchema::new(*c, "STRING", "NULLABLE"))
        .collect();
    Format {
        rows: Arc::new(RowFormat::new(&schema).expect("a format")),
        version,
    }
}

#[test]
fn rows_encoded_for_a_replaced_format_are_encoded_again_from_their_json() {
    let old = format(&["a", "id", "n"], 1);
    // `ALTER TABLE … DROP COLUMN a`: the columns after it get other field numbers.
    let new = format(&["id", "n"], 2);
    let json = br#"{"json":{"id":"e1","n":"5"}}"#;
    let mut bytes = Vec::new();
    old.rows.encode_entry(json, &mut bytes).unwrap();
    let row = ProtoRow {
        format: Arc::clone(&old.rows),
        bytes: bytes.clone().into(),
    };
    let rows = [RowData::Proto(&row), RowData::Json(json)];

    let same = encode(&old, &rows);
    assert_eq!(same.rows[0], bytes, "its own format: sent as it is");
    assert_eq!(same.rows[1], bytes, "JSON rows are encoded as before");

    let moved = encode(&new, &rows);
    let mut expected = Vec::new();
    new.rows.encode_entry(json, &mut expected).unwrap();
    assert_ne!(expected, bytes, "the field numbers moved");
    assert_eq!(
        moved.rows[0], expected,
        "encoded again for the table as it is"
    );
    assert_eq!(moved.rows[1], expected);
    assert_eq!(moved.index, vec![0, 1]);
    assert!(moved.failed.is_empty());
}
