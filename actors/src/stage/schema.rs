//! Schemas: BigQuery's TableFieldSchema, a schema inferred from JSON rows, adding missing fields to
//! an existing schema, and field names sanitized to BigQuery's rules.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::FieldConfig;

/// One column as the BigQuery API describes it (`TableFieldSchema`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSchema {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSchema>,
    /// Other attributes (description, policy tags, …), kept so that a patch does not drop them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl FieldSchema {
    pub fn new(name: impl Into<String>, field_type: &str, mode: &str) -> Self {
        Self {
            name: name.into(),
            field_type: field_type.into(),
            mode: Some(mode.into()),
            fields: Vec::new(),
            extra: Map::new(),
        }
    }

    /// RECORD (or STRUCT).
    pub fn is_record(&self) -> bool {
        self.field_type.eq_ignore_ascii_case("RECORD")
            || self.field_type.eq_ignore_ascii_case("STRUCT")
    }
}

impl From<&FieldConfig> for FieldSchema {
    fn from(f: &FieldConfig) -> Self {
        let mut extra = Map::new();
        if let Some(d) = &f.description {
            extra.insert("description".into(), Value::String(d.clone()));
        }
        FieldSchema {
            name: f.name.clone(),
            field_type: f.field_type.as_str().into(),
            mode: Some(f.mode.as_str().into()),
            fields: f.fields.iter().map(FieldSchema::from).collect(),
            extra,
        }
    }
}

/// The type seen for a field so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kind {
    /// Only nulls or empty arrays.
    #[default]
    Unknown,
    Bool,
    Int,
    Float,
    String,
    Record,
    /// Values of types that no one column holds (e.g. a string here, a number there).
    Mixed,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Null => Kind::Unknown,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) => Kind::String,
            Value::Object(_) => Kind::Record,
            // An array inside an array: BigQuery has no such column.
            Value::Array(_) => Kind::Mixed,
        }
    }

    fn unify(self, other: Kind) -> Kind {
        match (self, other) {
            (a, Kind::Unknown) => a,
            (Kind::Unknown, b) => b,
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Mixed,
        }
    }
}

/// What the rows said about one field.
#[derive(Debug, Default)]
struct Seen {
    kind: Kind,
    repeated: bool,
    fields: SeenFields,
}

/// Fields in the order first seen.
#[derive(Debug, Default)]
struct SeenFields {
    order: Vec<(String, Seen)>,
    index: HashMap<String, usize>,
}

impl SeenFields {
    fn observe_object(&mut self, map: &Map<String, Value>) {
        for (name, v) in map {
            let i = match self.index.get(name) {
                Some(&i) => i,
                None => {
                    self.order.push((name.clone(), Seen::default()));
                    self.index.insert(name.clone(), self.order.len() - 1);
                    self.order.len() - 1
                }
            };
            self.order[i].1.observe(v);
        }
    }

    fn into_schema(self, hints: &[(&str, &str)]) -> Vec<FieldSchema> {
        self.order
            .into_iter()
            .map(|(name, seen)| {
                let hint = hints.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
                seen.into_field(name, hint)
            })
            .collect()
    }
}

impl Seen {
    fn observe(&mut self, v: &Value) {
        match v {
            Value::Array(items) => {
                self.repeated = true;
                for item in items {
                    self.observe_one(item);
                }
            }
            v => self.observe_one(v),
        }
    }

    fn observe_one(&mut self, v: &Value) {
        if let Value::Object(m) = v {
            self.fields.observe_object(m);
        }
        self.kind = self.kind.unify(Kind::of(v));
    }

    fn into_field(self, name: String, hint: Option<&str>) -> FieldSchema {
        let mode = if self.repeated {
            "REPEATED"
        } else {
            "NULLABLE"
        };
        let field_type = match (hint, self.kind) {
            (Some(h), k) if k != Kind::Record => h,
            (_, Kind::Bool) => "BOOLEAN",
            (_, Kind::Int) => "INTEGER",
            (_, Kind::Float) => "FLOAT",
            // A RECORD needs at least one field; an always-empty object has none.
            (_, Kind::Record) if !self.fields.order.is_empty() => "RECORD",
            _ => "STRING",
        };
        let mut f = FieldSchema::new(name, field_type, mode);
        if field_type == "RECORD" {
            f.fields = self.fields.into_schema(&[]);
        }
        f
    }
}

/// A schema that holds `rows`: every field seen, NULLABLE (REPEATED for arrays), typed BOOLEAN,
/// INTEGER, FLOAT, STRING or RECORD by the values seen (INTEGER and FLOAT together make FLOAT;
/// other mixtures, nulls only and arrays of arrays make STRING). `hints` force the type of top-level
/// fields (e.g. a partitioning column to TIMESTAMP).
pub fn infer<'a>(
    rows: impl IntoIterator<Item = &'a Map<String, Value>>,
    hints: &[(&str, &str)],
) -> Vec<FieldSchema> {
    let mut seen = SeenFields::default();
    for row in rows {
        seen.observe_object(row);
    }
    seen.into_schema(hints)
}

/// `existing` with the fields of `new` it lacks added (into RECORDs too, as NULLABLE or REPEATED),
/// and the dotted paths of the added fields. Existing fields are never changed. BigQuery compares
/// column names without regard to case, and so does this.
pub fn merge_missing(
    existing: &[FieldSchema],
    new: &[FieldSchema],
) -> (Vec<FieldSchema>, Vec<String>) {
    let mut out = existing.to_vec();
    let mut added = Vec::new();
    merge_into(&mut out, new, "", &mut added);
    (out, added)
}

fn merge_into(
    out: &mut Vec<FieldSchema>,
    new: &[FieldSchema],
    prefix: &str,
    added: &mut Vec<String>,
) {
    for n in new {
        match out
            .iter_mut()
            .find(|f| f.name.eq_ignore_ascii_case(&n.name))
        {
            Some(e) if e.is_record() && n.is_record() => {
                merge_into(
                    &mut e.fields,
                    &n.fields,
                    &format!("{prefix}{}.", e.name),
                    added,
                );
            }
            Some(_) => {}
            None => {
                let mut f = n.clone();
                if f.mode.as_deref() != Some("REPEATED") {
                    f.mode = Some("NULLABLE".into());
                }
                added.push(format!("{prefix}{}", f.name));
                out.push(f);
            }
        }
    }
}

/// The dotted paths of the fields of `row` that `schema` lacks, as BigQuery names them in its
/// "no such field" errors (nested objects and arrays of objects checked against RECORDs).
pub fn unknown_fields(schema: &[FieldSchema], row: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    collect_unknown(schema, row, "", &mut out);
    out
}

fn collect_unknown(
    schema: &[FieldSchema],
    row: &Map<String, Value>,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (name, v) in row {
        match schema.iter().find(|f| f.name.eq_ignore_ascii_case(name)) {
            None => out.push(format!("{prefix}{name}")),
            Some(f) if f.is_record() => {
                let path = format!("{prefix}{name}.");
                let items: Vec<&Value> = match v {
                    Value::Array(items) => items.iter().collect(),
                    v => vec![v],
                };
                for item in items {
                    if let Value::Object(m) = item {
                        collect_unknown(&f.fields, m, &path, out);
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// A field name made valid for BigQuery: characters other than ASCII letters, digits and `_`
/// become `_`, a leading digit (or an empty name) gets a `_` prefix, cut to 300 characters.
pub fn sanitize_field_name(name: &str) -> Cow<'_, str> {
    let valid = !name.is_empty()
        && name.len() <= 300
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        return Cow::Borrowed(name);
    }
    let mut s = String::with_capacity(name.len() + 1);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        s.push('_');
    }
    s.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    s.truncate(300);
    Cow::Owned(s)
}

/// Two fields of one object that sanitize to the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fields `{first}` and `{second}` both become `{name}` when sanitized")]
pub struct NameCollision {
    pub first: String,
    pub second: String,
    pub name: String,
}

/// Sanitizes every field name of `map`, nested objects (also inside arrays) included. Objects whose
/// names are all valid are left as they are.
pub fn sanitize_field_names(map: &mut Map<String, Value>) -> Result<(), NameCollision> {
    if map
        .keys()
        .any(|k| matches!(sanitize_field_name(k), Cow::Owned(_)))
    {
        let old = std::mem::take(map);
        let mut origin: HashMap<String, String> = HashMap::new();
        for (k, v) in old {
            let name = sanitize_field_name(&k).into_owned();
            if map.contains_key(&name) {
                let first = origin.remove(&name).unwrap_or_else(|| name.clone());
                return Err(NameCollision {
                    first,
                    second: k,
                    name,
                });
            }
            origin.insert(name.clone(), k);
            map.insert(name, v);
        }
    }
    for v in map.values_mut() {
        sanitize_value(v)?;
    }
    Ok(())
}

fn sanitize_value(v: &mut Value) -> Result<(), NameCollision> {
    match v {
        Value::Object(m) => sanitize_field_names(m),
        Value::Array(items) => items.iter_mut().try_for_each(sanitize_value),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn types(schema: &[FieldSchema]) -> Vec<(String, String, String)> {
        schema
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    f.field_type.clone(),
                    f.mode.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn infers_types_modes_and_records_over_rows() {
        let rows = [
            obj(
                json!({"s": "x", "i": 1, "f": 1.5, "b": true, "n": null, "mix": 2,
                       "r": {"a": 1, "deep": {"z": "q"}}, "tags": ["a", "b"], "ts": "2024-01-01T00:00:00Z"}),
            ),
            obj(
                json!({"i": 2, "mix": 2.5, "r": {"b": "y"}, "tags": [], "later": "x",
                       "items": [{"k": 1}, {"k": 2, "v": "w"}], "odd": "x"}),
            ),
            obj(json!({"odd": 1, "empty": {}})),
        ];
        let schema = infer(rows.iter(), &[("ts", "TIMESTAMP"), ("absent", "TIMESTAMP")]);
        let t = types(&schema);
        let get = |name: &str| t.iter().find(|(n, _, _)| n == name).cloned().unwrap();
        assert_eq!(get("s").1, "STRING");
        assert_eq!(get("i").1, "INTEGER");
        assert_eq!(get("f").1, "FLOAT");
        assert_eq!(get("b").1, "BOOLEAN");
        assert_eq!(get("n").1, "STRING", "nulls only");
        assert_eq!(get("mix").1, "FLOAT", "INTEGER and FLOAT make FLOAT");
        assert_eq!(get("odd").1, "STRING", "string and number make STRING");
        assert_eq!(get("empty").1, "STRING", "a RECORD needs fields");
        assert_eq!(get("ts").1, "TIMESTAMP", "hinted");
        assert!(
            !t.iter().any(|(n, _, _)| n == "absent"),
            "hints add no field"
        );
        assert_eq!(
            get("tags"),
            ("tags".into(), "STRING".into(), "REPEATED".into())
        );
        assert_eq!(get("later").2, "NULLABLE");
        let r = schema.iter().find(|f| f.name == "r").unwrap();
        assert_eq!(r.field_type, "RECORD");
        assert_eq!(
            types(&r.fields),
            vec![
                ("a".into(), "INTEGER".into(), "NULLABLE".into()),
                ("deep".into(), "RECORD".into(), "NULLABLE".into()),
                ("b".into(), "STRING".into(), "NULLABLE".into()),
            ]
        );
        let items = schema.iter().find(|f| f.name == "items").unwrap();
        assert_eq!(
            (items.field_type.as_str(), items.mode.as_deref()),
            ("RECORD", Some("REPEATED"))
        );
        assert_eq!(items.fields.len(), 2);
        // First-seen order.
        assert_eq!(schema[0].name, "b");
    }

    #[test]
    fn merge_adds_only_missing_fields_nested_too() {
        let mut existing = vec![
            FieldSchema::new("a", "STRING", "REQUIRED"),
            FieldSchema::new("r", "RECORD", "NULLABLE"),
        ];
        existing[1]
            .fields
            .push(FieldSchema::new("x", "INTEGER", "NULLABLE"));
        existing[0]
            .extra
            .insert("description".into(), json!("kept"));
        let new = infer(
            [obj(
                json!({"A": 5, "b": 1.0, "r": {"x": "s", "y": true}, "l": [1]}),
            )]
            .iter(),
            &[],
        );
        let (merged, added) = merge_missing(&existing, &new);
        assert_eq!(added, vec!["b", "l", "r.y"]);
        assert_eq!(merged[0], existing[0], "existing fields are untouched");
        assert_eq!(merged[1].fields[0].field_type, "INTEGER");
        assert_eq!(merged[1].fields[1].name, "y");
        assert_eq!(merged[3].mode.as_deref(), Some("REPEATED"));
        let (again, none) = merge_missing(&merged, &new);
        assert!(none.is_empty());
        assert_eq!(again, merged);
        // `extra` survives a JSON round trip.
        let v = serde_json::to_value(&merged[0]).unwrap();
        assert_eq!(v["description"], "kept");
        let back: FieldSchema = serde_json::from_value(v).unwrap();
        assert_eq!(back, merged[0]);
    }

    #[test]
    fn finds_unknown_fields_nested_and_in_arrays() {
        let mut r = FieldSchema::new("r", "RECORD", "REPEATED");
        r.fields.push(FieldSchema::new("x", "INTEGER", "NULLABLE"));
        let schema = vec![FieldSchema::new("A", "STRING", "NULLABLE"), r];
        let row = obj(json!({"a": "case-insensitive", "b": 1, "r": [{"x": 1}, {"y": 2}]}));
        assert_eq!(unknown_fields(&schema, &row), vec!["b", "r.y"]);
        assert!(unknown_fields(&schema, &obj(json!({"r": {"x": 1}}))).is_empty());
    }

    #[test]
    fn sanitizes_names_recursively_and_reports_collisions() {
        assert_eq!(sanitize_field_name("ok_1"), "ok_1");
        assert!(matches!(sanitize_field_name("ok_1"), Cow::Borrowed(_)));
        assert_eq!(sanitize_field_name("user-id"), "user_id");
        assert_eq!(sanitize_field_name("1st"), "_1st");
        assert_eq!(sanitize_field_name("é.x"), "__x");
        assert_eq!(sanitize_field_name(""), "_");
        assert_eq!(sanitize_field_name(&"a".repeat(400)).len(), 300);

        let mut m = obj(json!({"a-b": {"c.d": 1, "fine": [{"e f": 2}]}, "ok": 3}));
        sanitize_field_names(&mut m).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a_b": {"c_d": 1, "fine": [{"e_f": 2}]}, "ok": 3})
        );
        let mut m = obj(json!({"a-b": 1, "a.b": 2}));
        let e = sanitize_field_names(&mut m).unwrap_err();
        assert_eq!(e.name, "a_b");
    }
}
