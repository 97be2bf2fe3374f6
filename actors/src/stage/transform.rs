//! Transform: the declarative changes from `[transform]`, table routing, the dedup key, and the
//! encoding of the row as one insertAll `rows[]` entry.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::config::{Config, DedupKey, InsertIdMode, TransformConfig};
use crate::messages::{RawRecord, Tp};
use crate::stage::schema::{sanitize_field_names, NameCollision};

/// A BigQuery table within the configured project.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    pub dataset: String,
    pub table: String,
}

impl TableRef {
    /// Parses `table` (in `default_dataset`) or `dataset.table`.
    pub fn parse(s: &str, default_dataset: &str) -> Option<TableRef> {
        let valid =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match s.split_once('.') {
            Some((d, t)) if valid(d) && valid(t) => Some(TableRef {
                dataset: d.into(),
                table: t.into(),
            }),
            None if valid(s) => Some(TableRef {
                dataset: default_dataset.into(),
                table: s.into(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.dataset, self.table)
    }
}

/// A topic name made into a valid BigQuery table name: every character other than ASCII letters,
/// digits and `_` becomes `_`, cut to 1024 characters (what kafka-connect-bigquery does).
pub fn sanitize_table_name(topic: &str) -> String {
    let mut s: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(1024);
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// Why a record could not be made into a row.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("encoded row is {size} bytes, over the {limit} byte limit of one insertAll request")]
    Oversize { size: usize, limit: usize },
    #[error("rename of `{from}` to `{to}` would overwrite an existing field")]
    RenameCollision { from: String, to: String },
    #[error(transparent)]
    FieldNameCollision(#[from] NameCollision),
}

impl TransformError {
    pub fn class(&self) -> &'static str {
        match self {
            TransformError::Oversize { .. } => "oversize",
            TransformError::RenameCollision { .. } => "rename_collision",
            TransformError::FieldNameCollision(_) => "field_name_collision",
        }
    }
}

/// The output of [`Transformer::apply`].
#[derive(Debug)]
pub struct Transformed {
    pub table: Arc<TableRef>,
    pub dedup_hash: Option<u64>,
    pub entry: Vec<u8>,
}

/// Applies `[transform]`, routes to a table, derives the dedup key and encodes the row.
pub struct Transformer {
    cfg: TransformConfig,
    dedup_key: DedupKey,
    insert_id: InsertIdMode,
    max_row_bytes: usize,
    dataset: String,
    configured: HashMap<String, Arc<TableRef>>,
    routed: HashMap<Arc<str>, Arc<TableRef>>,
    /// Topics routed by a record field (`table_from`).
    by_field: HashMap<String, FieldRoute>,
    sanitize_field_names: bool,
}

/// Routing by a record field: the pointer, the fallback table, and the tables named so far.
struct FieldRoute {
    pointer: String,
    fallback: Arc<TableRef>,
    tables: HashMap<String, Arc<TableRef>>,
}

/// Field values remembered per routed topic; beyond, the memory starts over.
const MAX_ROUTED_VALUES: usize = 10_000;

impl Transformer {
    pub fn new(config: &Config) -> Self {
        let dataset = config.bigquery.dataset.clone();
        let mut configured = HashMap::new();
        let mut by_field = HashMap::new();
        for entry in config.bigquery.tables.iter() {
            let Some(table) = TableRef::parse(&entry.table, &dataset) else {
                continue; // rejected by Config::validate
            };
            let table = Arc::new(table);
            for topic in &entry.topics {
                configured.insert(topic.clone(), Arc::clone(&table));
                if let Some(pointer) = &entry.table_from {
                    by_field.insert(
                        topic.clone(),
                        FieldRoute {
                            pointer: pointer.clone(),
                            fallback: Arc::clone(&table),
                            tables: HashMap::new(),
                        },
                    );
                }
            }
        }
        Self {
            cfg: config.transform.clone(),
            dedup_key: config.dedup.key.clone(),
            insert_id: config.bigquery.insert_id,
            max_row_bytes: config.batch.max_bytes,
            dataset,
            configured,
            routed: HashMap::new(),
            by_field,
            sanitize_field_names: config.bigquery.sanitize_field_names,
        }
    }

    /// The table a record goes to: named by its `table_from` field when its topic has one (the
    /// value sanitized like a topic name, in the dataset of the fallback table), else by topic.
    /// A missing, null, empty, object or array value goes to the fallback table.
    pub fn table_for_record(
        &mut self,
        topic: &Arc<str>,
        value: &Map<String, Value>,
    ) -> Arc<TableRef> {
        let Some(route) = self.by_field.get_mut(&**topic) else {
            return self.table_for(topic);
        };
        let name: std::borrow::Cow<'_, str> = match pointer(value, &route.pointer) {
            Some(Value::String(s)) if !s.is_empty() => std::borrow::Cow::Borrowed(s),
            Some(Value::Number(n)) => std::borrow::Cow::Owned(n.to_string()),
            Some(Value::Bool(b)) => std::borrow::Cow::Owned(b.to_string()),
            _ => return Arc::clone(&route.fallback),
        };
        if let Some(t) = route.tables.get(&*name) {
            return Arc::clone(t);
        }
        if route.tables.len() >= MAX_ROUTED_VALUES {
            route.tables.clear();
        }
        let table = Arc::new(TableRef {
            dataset: route.fallback.dataset.clone(),
            table: sanitize_table_name(&name),
        });
        route.tables.insert(name.into_owned(), Arc::clone(&table));
        table
    }

    /// The table a topic's rows go to.
    pub fn table_for(&mut self, topic: &Arc<str>) -> Arc<TableRef> {
        if let Some(t) = self.routed.get(topic) {
            return t.clone();
        }
        let table = self.configured.get(&**topic).cloned().unwrap_or_else(|| {
            Arc::new(TableRef {
                dataset: self.dataset.clone(),
                table: sanitize_table_name(topic),
            })
        });
        self.routed.insert(topic.clone(), table.clone());
        table
    }

    /// Turns one converted record into a row.
    pub fn apply(
        &mut self,
        tp: &Tp,
        source: &RawRecord,
        mut value: Map<String, Value>,
    ) -> Result<Transformed, TransformError> {
        let table = self.table_for_record(&tp.topic, &value);
        // The dedup key is read from the record as produced, before any field is dropped or renamed.
        let dedup = dedup_key(&self.dedup_key, &value, source).map(|key| {
            let mut scoped = Vec::with_capacity(table.table.len() + key.len() + 2);
            scoped.extend_from_slice(table.dataset.as_bytes());
            scoped.push(b'.');
            scoped.extend_from_slice(table.table.as_bytes());
            scoped.push(0);
            scoped.extend_from_slice(key.as_bytes());
            (xxh3_64(&scoped), insert_id_text(key))
        });

        for field in &self.cfg.drop {
            value.remove(field);
        }
        for (from, to) in &self.cfg.rename {
            if let Some(v) = value.remove(from) {
                if value.contains_key(to) {
                    return Err(TransformError::RenameCollision {
                        from: from.clone(),
                        to: to.clone(),
                    });
                }
                value.insert(to.clone(), v);
            }
        }
        if self.sanitize_field_names {
            sanitize_field_names(&mut value)?;
        }
        let meta = &self.cfg.metadata;
        if meta.topic {
            value.insert("_kafka_topic".into(), Value::String(tp.topic.to_string()));
        }
        if meta.partition {
            value.insert("_kafka_partition".into(), Value::from(tp.partition));
        }
        if meta.offset {
            value.insert("_kafka_offset".into(), Value::from(source.offset));
        }
        if meta.timestamp {
            let ts = source.timestamp_ms.filter(|ms| *ms >= 0).map(|ms| {
                let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
                Value::String(humantime::format_rfc3339_millis(t).to_string())
            });
            value.insert("_kafka_timestamp".into(), ts.unwrap_or(Value::Null));
        }
        if meta.key {
            let key = source
                .key
                .as_deref()
                .map(|k| Value::String(String::from_utf8_lossy(k).into()));
            value.insert("_kafka_key".into(), key.unwrap_or(Value::Null));
        }

        let mut entry = Vec::with_capacity(source.payload.as_ref().map_or(64, |p| p.len() + 160));
        entry.push(b'{');
        if let (InsertIdMode::DedupKey, Some((_, id))) = (self.insert_id, &dedup) {
            entry.extend_from_slice(b"\"insertId\":");
            write_json(&mut entry, id);
            entry.push(b',');
        }
        entry.extend_from_slice(b"\"json\":");
        write_json(&mut entry, &value);
        entry.push(b'}');
        if entry.len() > self.max_row_bytes {
            return Err(TransformError::Oversize {
                size: entry.len(),
                limit: self.max_row_bytes,
            });
        }
        Ok(Transformed {
            table,
            dedup_hash: dedup.map(|(h, _)| h),
            entry,
        })
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Serializing a string or a JSON map into a Vec cannot fail: keys are strings, no I/O.
    serde_json::to_writer(out, v).expect("JSON value serializes into memory");
}

/// The record's dedup key as text, or `None` when dedup is off.
fn dedup_key<'a>(
    key: &DedupKey,
    value: &'a Map<String, Value>,
    source: &RawRecord,
) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    let payload_hash = || {
        Cow::Owned(format!(
            "{:032x}",
            xxh3_128(source.payload.as_deref().unwrap_or_default())
        ))
    };
    match key {
        DedupKey::None => None,
        DedupKey::PayloadHash => Some(payload_hash()),
        DedupKey::KafkaKey => Some(match source.key.as_deref() {
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => Cow::Owned(s.to_owned()),
                Err(_) => Cow::Owned(format!("{:032x}", xxh3_128(k))),
            },
            None => payload_hash(),
        }),
        DedupKey::Pointer(ptr) => Some(match pointer(value, ptr) {
            Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
            Some(Value::Null) | None => payload_hash(),
            Some(other) => Cow::Owned(other.to_string()),
        }),
    }
}

/// `insertId` is limited in length; longer keys are sent as their 128-bit hash.
fn insert_id_text(key: std::borrow::Cow<'_, str>) -> String {
    if key.len() <= 128 {
        key.into_owned()
    } else {
        format!("{:032x}", xxh3_128(key.as_bytes()))
    }
}

/// RFC 6901 pointer lookup on a map (serde_json offers it only on `Value`).
fn pointer<'a>(map: &'a Map<String, Value>, ptr: &str) -> Option<&'a Value> {
    let rest = ptr.strip_prefix('/')?;
    let (first, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let first = first.replace("~1", "/").replace("~0", "~");
    let v = map.get(&first)?;
    if tail.is_empty() {
        Some(v)
    } else {
        v.pointer(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::convert::convert;

    fn config() -> Config {
        let mut c = Config::default();
        c.bigquery.project = "p".into();
        c.bigquery.dataset = "events".into();
        c
    }

    fn record(offset: i64, payload: &str) -> RawRecord {
        RawRecord {
            offset,
            timestamp_ms: Some(1_700_000_000_123),
            key: Some(b"member-7".to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            headers: vec![],
        }
    }

    fn run(
        t: &mut Transformer,
        topic: &str,
        rec: &RawRecord,
    ) -> Result<(Transformed, Value), TransformError> {
        let tp = Tp::new(topic, 2);
        let out = t.apply(&tp, rec, convert(rec.payload.as_deref()).unwrap())?;
        let entry: Value = serde_json::from_slice(&out.entry).unwrap();
        Ok((out, entry))
    }

    #[test]
    fn adds_metadata_and_insert_id() {
        let mut t = Transformer::new(&config());
        let (out, entry) = run(
            &mut t,
            "member.events",
            &record(42, r#"{"event_id":"e1","v":1}"#),
        )
        .unwrap();
        assert_eq!(
            *out.table,
            TableRef {
                dataset: "events".into(),
                table: "member_events".into()
            }
        );
        assert_eq!(entry["insertId"], "e1");
        let json = &entry["json"];
        assert_eq!(json["event_id"], "e1");
        assert_eq!(json["_kafka_topic"], "member.events");
        assert_eq!(json["_kafka_partition"], 2);
        assert_eq!(json["_kafka_offset"], 42);
        assert_eq!(json["_kafka_timestamp"], "2023-11-14T22:13:20.123Z");
        assert!(
            json.get("_kafka_key").is_none(),
            "key column is off by default"
        );
    }

    #[test]
    fn drop_rename_and_switches() {
        let mut c = config();
        c.transform.drop = vec!["secret".into()];
        c.transform.rename.insert("v".into(), "value".into());
        c.transform.metadata.offset = false;
        c.transform.metadata.key = true;
        c.bigquery.insert_id = InsertIdMode::None;
        let mut t = Transformer::new(&c);
        let (_, entry) = run(
            &mut t,
            "t",
            &record(1, r#"{"event_id":"e1","v":1,"secret":"x"}"#),
        )
        .unwrap();
        assert!(entry.get("insertId").is_none());
        let json = &entry["json"];
        assert!(json.get("secret").is_none());
        assert!(json.get("v").is_none());
        assert_eq!(json["value"], 1);
        assert!(json.get("_kafka_offset").is_none());
        assert_eq!(json["_kafka_key"], "member-7");
    }

    #[test]
    fn rename_onto_existing_field_is_an_error() {
        let mut c = config();
        c.transform.rename.insert("a".into(), "b".into());
        let mut t = Transformer::new(&c);
        let err = run(&mut t, "t", &record(1, r#"{"a":1,"b":2}"#)).unwrap_err();
        assert_eq!(err.class(), "rename_collision");
    }

    #[test]
    fn routes_configured_topics() {
        let mut c = config();
        c.bigquery.tables.insert("a".into(), "table_a".into());
        c.bigquery.tables.insert("b".into(), "other.table_b".into());
        let mut t = Transformer::new(&c);
        assert_eq!(t.table_for(&"a".into()).to_string(), "events.table_a");
        assert_eq!(t.table_for(&"b".into()).to_string(), "other.table_b");
        assert_eq!(t.table_for(&"c-1".into()).to_string(), "events.c_1");
        assert_eq!(sanitize_table_name("über-topic.v2"), "_ber_topic_v2");
        assert!(TableRef::parse("a.b.c", "d").is_none());
        assert!(TableRef::parse("bad name", "d").is_none());
    }

    #[test]
    fn routes_by_a_record_field_with_a_fallback() {
        let c = crate::config::Config {
            bigquery: crate::config::BigQueryConfig {
                dataset: "events".into(),
                tables: crate::config::Tables(vec![crate::config::TableConfig {
                    topics: vec!["member-events".into()],
                    table: "raw.unrouted".into(),
                    table_from: Some("/event_type".into()),
                    ..Default::default()
                }]),
                ..config().bigquery
            },
            ..config()
        };
        let mut t = Transformer::new(&c);
        let table = |t: &mut Transformer, payload: &str| {
            run(t, "member-events", &record(1, payload))
                .unwrap()
                .0
                .table
                .to_string()
        };
        assert_eq!(table(&mut t, r#"{"event_type":"sign-up"}"#), "raw.sign_up");
        assert_eq!(table(&mut t, r#"{"event_type":"login"}"#), "raw.login");
        assert_eq!(
            table(&mut t, r#"{"event_type":"sign-up","x":1}"#),
            "raw.sign_up"
        );
        assert_eq!(table(&mut t, r#"{"event_type":7}"#), "raw.7");
        for fallback in [
            r#"{}"#,
            r#"{"event_type":null}"#,
            r#"{"event_type":""}"#,
            r#"{"event_type":{"a":1}}"#,
        ] {
            assert_eq!(table(&mut t, fallback), "raw.unrouted", "{fallback}");
        }
        // Other topics are routed by topic.
        assert_eq!(
            run(&mut t, "other", &record(1, r#"{"event_type":"login"}"#))
                .unwrap()
                .0
                .table
                .to_string(),
            "events.other"
        );
        // The field is read from the record as produced, before drops and renames.
        let mut c2 = c.clone();
        c2.transform.drop = vec!["event_type".into()];
        let mut t2 = Transformer::new(&c2);
        let (out, entry) = run(
            &mut t2,
            "member-events",
            &record(1, r#"{"event_type":"login"}"#),
        )
        .unwrap();
        assert_eq!(out.table.to_string(), "raw.login");
        assert!(entry["json"].get("event_type").is_none());
    }

    #[test]
    fn sanitizes_field_names_when_asked() {
        let mut c = config();
        let payload = r#"{"event_id":"e1","user-id":1,"1st":{"a.b":2}}"#;
        let (_, entry) = run(&mut Transformer::new(&c), "t", &record(1, payload)).unwrap();
        assert_eq!(entry["json"]["user-id"], 1, "off by default");
        c.bigquery.sanitize_field_names = true;
        let mut t = Transformer::new(&c);
        let (_, entry) = run(&mut t, "t", &record(1, payload)).unwrap();
        assert_eq!(entry["json"]["user_id"], 1);
        assert_eq!(entry["json"]["_1st"]["a_b"], 2);
        assert_eq!(entry["insertId"], "e1");
        let err = run(&mut t, "t", &record(2, r#"{"a-b":1,"a.b":2}"#)).unwrap_err();
        assert_eq!(err.class(), "field_name_collision");
    }

    #[test]
    fn dedup_key_choices() {
        let rec = record(1, r#"{"event_id":"e1","n":{"id":7}}"#);
        let hash_of = |key: DedupKey| {
            let mut c = config();
            c.dedup.key = key;
            let mut t = Transformer::new(&c);
            run(&mut t, "t", &rec).unwrap().0.dedup_hash
        };
        let by_id = hash_of(DedupKey::Pointer("/event_id".into()));
        let by_nested = hash_of(DedupKey::Pointer("/n/id".into()));
        let by_key = hash_of(DedupKey::KafkaKey);
        let by_payload = hash_of(DedupKey::PayloadHash);
        let missing = hash_of(DedupKey::Pointer("/absent".into()));
        assert!(by_id.is_some() && by_nested.is_some() && by_key.is_some());
        assert_ne!(by_id, by_nested);
        assert_ne!(by_id, by_key);
        assert_eq!(
            missing, by_payload,
            "a missing key falls back to the payload hash"
        );
        assert_eq!(hash_of(DedupKey::None), None);

        // The same event id in another payload is the same key; in another table it is not.
        let mut t = Transformer::new(&config());
        let a = run(&mut t, "t", &record(1, r#"{"event_id":"e1","x":1}"#))
            .unwrap()
            .0
            .dedup_hash;
        let b = run(&mut t, "t", &record(2, r#"{"event_id":"e1","x":2}"#))
            .unwrap()
            .0
            .dedup_hash;
        let c = run(&mut t, "u", &record(3, r#"{"event_id":"e1","x":1}"#))
            .unwrap()
            .0
            .dedup_hash;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn long_keys_become_hashed_insert_ids() {
        let long = "k".repeat(300);
        let mut t = Transformer::new(&config());
        let (_, entry) = run(
            &mut t,
            "t",
            &record(1, &format!(r#"{{"event_id":"{long}"}}"#)),
        )
        .unwrap();
        assert_eq!(entry["insertId"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn oversize_rows_are_rejected() {
        let mut c = config();
        c.batch.max_bytes = 1024;
        let mut t = Transformer::new(&c);
        let big = format!(r#"{{"event_id":"e","blob":"{}"}}"#, "x".repeat(2000));
        let err = run(&mut t, "t", &record(1, &big)).unwrap_err();
        assert_eq!(err.class(), "oversize");
        assert!(err.to_string().contains("1024"), "{err}");
    }
}
