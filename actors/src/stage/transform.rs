//! Transform: the declarative changes from `[transform]`, table routing, the dedup key, and the
//! encoding of the row as one insertAll `rows[]` entry.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::config::{Config, DedupKey, InsertIdMode, TransformConfig};
use crate::messages::RawRecord;
use crate::model::Tp;
pub use crate::model::{sanitize_table_name, TableRef};
use crate::stage::convert::JsonObject;
use crate::stage::json::{lookup, object_members, Member};
use crate::stage::schema::{sanitize_field_names, NameCollision};

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

/// What a member of the record is called in the row, if it is in the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    /// Its own key.
    Own,
    /// The target of `renames[i]`.
    Renamed(usize),
    /// Dropped, or replaced by a metadata column of the same name.
    Gone,
}

/// The metadata columns, in the order they are written.
const META_TOPIC: &str = "_kafka_topic";
const META_PARTITION: &str = "_kafka_partition";
const META_OFFSET: &str = "_kafka_offset";
const META_TIMESTAMP: &str = "_kafka_timestamp";
const META_KEY: &str = "_kafka_key";

/// What is the same for every record of one partition: its table (unless a record field names
/// it) and the encoded topic and partition columns.
struct PartitionRoute {
    tp: Tp,
    table: Arc<TableRef>,
    /// The topic is routed by a record field (`table_from`): `table` is only the fallback.
    by_field: bool,
    /// `"_kafka_topic":"…","_kafka_partition":N` as configured (possibly empty).
    meta_prefix: Vec<u8>,
}

/// Applies `[transform]`, routes to a table, derives the dedup key and encodes the row.
///
/// The row is written from the record's own text: its members are copied as they are (minus those
/// dropped, under their new names when renamed) and the metadata columns appended, so no JSON value
/// is built.
pub struct Transformer {
    cfg: TransformConfig,
    /// `transform.rename`, in the order the renames apply.
    renames: Vec<(String, String)>,
    /// The metadata columns turned on.
    meta_names: Vec<&'static str>,
    dedup_key: DedupKey,
    /// A `DedupKey::Pointer` split into its first token (unescaped) and the rest.
    pointer: Option<(String, String)>,
    insert_id: InsertIdMode,
    max_row_bytes: usize,
    dataset: String,
    configured: HashMap<String, Arc<TableRef>>,
    routed: HashMap<Arc<str>, Arc<TableRef>>,
    /// Topics routed by a record field (`table_from`).
    by_field: HashMap<String, FieldRoute>,
    sanitize_field_names: bool,
    /// The route of the partition seen last (records come in chunks of one partition).
    last: Option<PartitionRoute>,
    /// Per member of the record at hand (reused between records).
    names: Vec<Name>,
    /// The last timestamp second formatted, `2026-11-27T22:34:08` (records come in time order).
    second: Option<(u64, String)>,
    /// Reused for hashing dedup keys.
    scratch: Vec<u8>,
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
        let meta = &config.transform.metadata;
        let meta_names = [
            (meta.topic, META_TOPIC),
            (meta.partition, META_PARTITION),
            (meta.offset, META_OFFSET),
            (meta.timestamp, META_TIMESTAMP),
            (meta.key, META_KEY),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let pointer = match &config.dedup.key {
            DedupKey::Pointer(p) => split_pointer(p),
            _ => None,
        };
        Self {
            cfg: config.transform.clone(),
            renames: config
                .transform
                .rename
                .iter()
                .map(|(f, t)| (f.clone(), t.clone()))
                .collect(),
            meta_names,
            dedup_key: config.dedup.key.clone(),
            pointer,
            insert_id: config.bigquery.insert_id,
            max_row_bytes: config.batch.max_bytes,
            dataset,
            configured,
            routed: HashMap::new(),
            by_field,
            sanitize_field_names: config.bigquery.sanitize_field_names,
            last: None,
            names: Vec::new(),
            second: None,
            scratch: Vec::new(),
        }
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

    /// Makes `self.last` the route of `tp` (records keep coming from one partition for a while).
    fn update_route(&mut self, tp: &Tp) {
        let hit = self.last.as_ref().is_some_and(|r| {
            r.tp.partition == tp.partition
                && (Arc::ptr_eq(&r.tp.topic, &tp.topic) || r.tp.topic == tp.topic)
        });
        if !hit {
            let table = self.table_for(&tp.topic);
            let by_field = self.by_field.contains_key(&*tp.topic);
            let mut meta_prefix = Vec::new();
            if self.cfg.metadata.topic {
                meta_prefix.extend_from_slice(b"\"_kafka_topic\":");
                write_json(&mut meta_prefix, &*tp.topic);
            }
            if self.cfg.metadata.partition {
                if !meta_prefix.is_empty() {
                    meta_prefix.push(b',');
                }
                meta_prefix.extend_from_slice(b"\"_kafka_partition\":");
                write_json(&mut meta_prefix, &tp.partition);
            }
            self.last = Some(PartitionRoute {
                tp: tp.clone(),
                table,
                by_field,
                meta_prefix,
            });
        }
    }

    /// Turns one converted record into a row.
    pub fn apply(
        &mut self,
        tp: &Tp,
        source: &RawRecord,
        value: Map<String, Value>,
    ) -> Result<Transformed, TransformError> {
        let text = serde_json::to_vec(&value).expect("a JSON map serializes into memory");
        let members = object_members(&text).expect("a serialized JSON map reads as an object");
        self.encode(tp, source, &text, &members)
    }

    /// Turns a record whose payload [`parse_object`](crate::stage::convert::parse_object) read
    /// into `object` into a row.
    pub fn apply_object(
        &mut self,
        tp: &Tp,
        source: &RawRecord,
        object: &JsonObject,
    ) -> Result<Transformed, TransformError> {
        let text = source.payload.as_deref().unwrap_or_default();
        self.encode(tp, source, text, &object.members)
    }

    /// Names each member as it will be in the row: drop, rename, then metadata columns replace
    /// members of the same name.
    fn name_members(&mut self, text: &[u8], members: &[Member]) -> Result<(), TransformError> {
        self.names.clear();
        self.names.resize(members.len(), Name::Own);
        let is = |names: &[Name], renames: &[(String, String)], i: usize, name: &str| match names[i]
        {
            Name::Own => members[i].is(text, name),
            Name::Renamed(r) => renames[r].1 == name,
            Name::Gone => false,
        };
        for field in &self.cfg.drop {
            for i in 0..members.len() {
                if is(&self.names, &self.renames, i, field) {
                    self.names[i] = Name::Gone;
                }
            }
        }
        for (r, (from, to)) in self.renames.iter().enumerate() {
            let Some(i) = (0..members.len()).find(|&i| is(&self.names, &self.renames, i, from))
            else {
                continue;
            };
            if (0..members.len()).any(|j| j != i && is(&self.names, &self.renames, j, to)) {
                return Err(TransformError::RenameCollision {
                    from: from.clone(),
                    to: to.clone(),
                });
            }
            self.names[i] = Name::Renamed(r);
        }
        self.mark_metadata_clashes(text, members);
        Ok(())
    }

    /// Metadata columns replace members of the same name (as inserting into a JSON map would).
    fn mark_metadata_clashes(&mut self, text: &[u8], members: &[Member]) {
        let is = |names: &[Name], renames: &[(String, String)], i: usize, name: &str| match names[i]
        {
            Name::Own => members[i].is(text, name),
            Name::Renamed(r) => renames[r].1 == name,
            Name::Gone => false,
        };
        for (i, member) in members.iter().enumerate() {
            let may_clash = match self.names[i] {
                Name::Gone => false,
                Name::Own => member.escaped || member.key.of(text).starts_with(b"_kafka_"),
                Name::Renamed(_) => true,
            };
            if may_clash
                && self
                    .meta_names
                    .iter()
                    .any(|n| is(&self.names, &self.renames, i, n))
            {
                self.names[i] = Name::Gone;
            }
        }
    }

    /// Encodes the row from the record's text and members.
    fn encode(
        &mut self,
        tp: &Tp,
        source: &RawRecord,
        text: &[u8],
        members: &[Member],
    ) -> Result<Transformed, TransformError> {
        // The dedup key is read from the record as produced, before any field is dropped or renamed.
        let key = dedup_key(
            &self.dedup_key,
            self.pointer.as_ref(),
            text,
            members,
            source,
        );
        self.name_members(text, members)?;
        self.update_route(tp);
        let route = self.last.as_ref().expect("route set above");
        let table = match self.by_field.get_mut(&*tp.topic).filter(|_| route.by_field) {
            Some(field_route) => table_from_field(field_route, text, members),
            None => Arc::clone(&route.table),
        };
        let dedup_hash = key
            .as_ref()
            .map(|k| scoped_key_hash(&mut self.scratch, &table, k));
        if self.sanitize_field_names {
            return self.encode_sanitized(tp, source, text, members, table, dedup_hash, key);
        }
        self.write_entry(tp, source, text, members, table, dedup_hash, key)
    }

    /// With `bigquery.sanitize_field_names`, names are rewritten in nested objects too: the row's
    /// object is built as a JSON map once, sanitized, then written like any other.
    #[allow(clippy::too_many_arguments)]
    fn encode_sanitized(
        &mut self,
        tp: &Tp,
        source: &RawRecord,
        text: &[u8],
        members: &[Member],
        table: Arc<TableRef>,
        dedup_hash: Option<u64>,
        key: Option<Cow<'_, str>>,
    ) -> Result<Transformed, TransformError> {
        let mut object = Vec::with_capacity(text.len());
        object.push(b'{');
        for (m, name) in members.iter().zip(&self.names) {
            if *name == Name::Gone {
                continue;
            }
            if object.len() > 1 {
                object.push(b',');
            }
            self.write_member(&mut object, text, m, *name);
        }
        object.push(b'}');
        let mut map: Map<String, Value> =
            serde_json::from_slice(&object).expect("members of a valid object make an object");
        sanitize_field_names(&mut map)?;
        let sanitized = serde_json::to_vec(&map).expect("a JSON map serializes into memory");
        let members = object_members(&sanitized).expect("a serialized JSON map reads as an object");
        self.names.clear();
        self.names.resize(members.len(), Name::Own);
        self.mark_metadata_clashes(&sanitized, &members);
        self.write_entry(tp, source, &sanitized, &members, table, dedup_hash, key)
    }

    /// Writes one member under its name in the row.
    fn write_member(&self, out: &mut Vec<u8>, text: &[u8], m: &Member, name: Name) {
        match name {
            Name::Gone => return,
            Name::Own => {
                out.push(b'"');
                out.extend_from_slice(m.key.of(text));
                out.push(b'"');
            }
            Name::Renamed(r) => write_json(out, &*self.renames[r].1),
        }
        out.push(b':');
        out.extend_from_slice(m.value.of(text));
    }

    /// Writes `{"insertId":…,"json":{members…, metadata columns}}`.
    #[allow(clippy::too_many_arguments)]
    fn write_entry(
        &mut self,
        tp: &Tp,
        source: &RawRecord,
        text: &[u8],
        members: &[Member],
        table: Arc<TableRef>,
        dedup_hash: Option<u64>,
        key: Option<Cow<'_, str>>,
    ) -> Result<Transformed, TransformError> {
        self.update_route(tp);
        let route = self.last.as_ref().expect("route set above");
        // Rows wait in memory until BigQuery has them: allocate what this one needs (the text, the
        // insertId, the metadata columns), so that it rarely grows and wastes little.
        let key_len = key.as_ref().map_or(0, |k| k.len().min(128) + 16);
        let meta_len =
            route.meta_prefix.len() + 80 + source.key.as_ref().map_or(0, |k| k.len() + 20);
        let mut entry = Vec::with_capacity(text.len() + key_len + meta_len + 16);
        entry.push(b'{');
        if let (InsertIdMode::DedupKey, Some(key)) = (self.insert_id, &key) {
            entry.extend_from_slice(b"\"insertId\":");
            write_json(&mut entry, &*insert_id_text(key));
            entry.push(b',');
        }
        entry.extend_from_slice(b"\"json\":{");
        let mut empty = true;
        let mut separate = |entry: &mut Vec<u8>| {
            if !std::mem::replace(&mut empty, false) {
                entry.push(b',');
            }
        };
        for (m, name) in members.iter().zip(&self.names) {
            if *name != Name::Gone {
                separate(&mut entry);
                self.write_member(&mut entry, text, m, *name);
            }
        }
        if !route.meta_prefix.is_empty() {
            separate(&mut entry);
            entry.extend_from_slice(&route.meta_prefix);
        }
        let meta = &self.cfg.metadata;
        if meta.offset {
            separate(&mut entry);
            let _ = write!(entry, "\"{META_OFFSET}\":");
            write_json(&mut entry, &source.offset);
        }
        if meta.timestamp {
            separate(&mut entry);
            let _ = write!(entry, "\"{META_TIMESTAMP}\":");
            match source.timestamp_ms.filter(|ms| *ms >= 0) {
                Some(ms) => write_timestamp(&mut entry, ms as u64, &mut self.second),
                None => entry.extend_from_slice(b"null"),
            }
        }
        if meta.key {
            separate(&mut entry);
            let _ = write!(entry, "\"{META_KEY}\":");
            match source.key.as_deref() {
                Some(k) => write_json(&mut entry, &*String::from_utf8_lossy(k)),
                None => entry.extend_from_slice(b"null"),
            }
        }
        entry.extend_from_slice(b"}}");
        if entry.len() > self.max_row_bytes {
            return Err(TransformError::Oversize {
                size: entry.len(),
                limit: self.max_row_bytes,
            });
        }
        Ok(Transformed {
            table,
            dedup_hash,
            entry,
        })
    }
}

/// The table named by the record's `table_from` field (sanitized like a topic name, in the dataset
/// of the fallback table); a missing, null, empty, object or array value goes to the fallback.
fn table_from_field(route: &mut FieldRoute, text: &[u8], members: &[Member]) -> Arc<TableRef> {
    let (first, tail) = split_pointer(&route.pointer).unwrap_or_default();
    let raw = pointer_value(Some(&(first, tail)), text, members);
    let name: Cow<'_, str> = match raw {
        Some(raw) if raw.starts_with('"') => match serde_json::from_str::<String>(raw) {
            Ok(s) if !s.is_empty() => Cow::Owned(s),
            _ => return Arc::clone(&route.fallback),
        },
        Some("true") => Cow::Borrowed("true"),
        Some("false") => Cow::Borrowed("false"),
        Some(raw) if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            match serde_json::from_str::<Value>(raw) {
                Ok(Value::Number(n)) => Cow::Owned(n.to_string()),
                _ => return Arc::clone(&route.fallback),
            }
        }
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

/// An RFC 6901 pointer as its first token (unescaped) and the rest.
fn split_pointer(pointer: &str) -> Option<(String, String)> {
    let rest = pointer.strip_prefix('/')?;
    let (first, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Some((first.replace("~1", "/").replace("~0", "~"), tail.to_owned()))
}

/// The dedup identity: the key scoped to its table (`dataset.table`, a zero byte, the key).
fn scoped_key_hash(buf: &mut Vec<u8>, table: &TableRef, key: &str) -> u64 {
    buf.clear();
    buf.extend_from_slice(table.dataset.as_bytes());
    buf.push(b'.');
    buf.extend_from_slice(table.table.as_bytes());
    buf.push(0);
    buf.extend_from_slice(key.as_bytes());
    xxh3_64(buf)
}

/// Writes `ms` since the epoch as a quoted RFC 3339 timestamp with milliseconds, reusing the
/// formatted date and time of `second` when it is the same second. After year 9999 (BigQuery's
/// largest TIMESTAMP, and humantime's largest year) it writes `null`.
fn write_timestamp(out: &mut Vec<u8>, ms: u64, second: &mut Option<(u64, String)>) {
    let (secs, millis) = (ms / 1000, ms % 1000);
    if secs >= 253_402_300_800 {
        out.extend_from_slice(b"null");
        return;
    }
    let text = match second {
        Some((s, text)) if *s == secs => text,
        _ => {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let mut text = humantime::format_rfc3339_seconds(t).to_string();
            text.pop(); // the `Z`
            &mut second.insert((secs, text)).1
        }
    };
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    let digits = [
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
        b'"',
    ];
    out.extend_from_slice(&digits);
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Serializing a string or a number into a Vec cannot fail: no I/O.
    serde_json::to_writer(out, v).expect("JSON value serializes into memory");
}

/// The record's dedup key as text, or `None` when dedup is off.
fn dedup_key<'a>(
    key: &DedupKey,
    pointer: Option<&(String, String)>,
    text: &'a [u8],
    members: &[Member],
    source: &RawRecord,
) -> Option<Cow<'a, str>> {
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
        DedupKey::Pointer(_) => Some(match pointer_value(pointer, text, members) {
            Some(raw) if raw.starts_with('"') => match serde_json::from_str::<&str>(raw) {
                Ok(s) => Cow::Borrowed(s),
                // With escapes, the string cannot be borrowed.
                Err(_) => Cow::Owned(serde_json::from_str::<String>(raw).unwrap_or_default()),
            },
            Some("null") | None => payload_hash(),
            // Numbers, booleans, objects, arrays: their compact JSON text.
            Some(raw) => match serde_json::from_str::<Value>(raw) {
                Ok(v) => Cow::Owned(v.to_string()),
                Err(_) => Cow::Borrowed(raw),
            },
        }),
    }
}

/// The raw JSON text at the dedup pointer (first token, rest), if the record has it.
fn pointer_value<'a>(
    pointer: Option<&(String, String)>,
    text: &'a [u8],
    members: &[Member],
) -> Option<&'a str> {
    let (first, tail) = pointer?;
    let member = members.iter().find(|m| m.is(text, first))?;
    // Validated UTF-8 (convert checked the whole payload).
    let raw = std::str::from_utf8(member.value.of(text)).ok()?;
    if tail.is_empty() {
        return Some(raw);
    }
    lookup(raw, tail).ok().flatten().map(|v| v.get())
}

/// `insertId` is limited in length; longer keys are sent as their 128-bit hash.
fn insert_id_text(key: &str) -> Cow<'_, str> {
    if key.len() <= 128 {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{:032x}", xxh3_128(key.as_bytes())))
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
    fn timestamps_are_rfc3339_with_milliseconds() {
        let mut second = None;
        let mut text = |ms: u64| {
            let mut out = Vec::new();
            write_timestamp(&mut out, ms, &mut second);
            String::from_utf8(out).unwrap()
        };
        for ms in [
            0,
            1_700_000_000_123,
            1_700_000_000_999,
            1_700_000_001_005,
            253_402_300_799_999,
        ] {
            let expected = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
                .to_string();
            assert_eq!(text(ms), format!("\"{expected}\""), "{ms}");
        }
        assert_eq!(text(253_402_300_800_000), "null", "after year 9999");
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
