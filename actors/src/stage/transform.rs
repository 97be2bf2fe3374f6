//! Transform: the declarative changes from `[transform]`, table routing, the dedup key, and the
//! encoding of the row: one insertAll `rows[]` entry, or, on the Storage Write API path once the
//! table's format is known, its protobuf message (see [`crate::stage::proto::RowWriter`]).
//!
//! The [`Transformer`] here runs the steps in order; the steps it calls live in its children:
//! `route` (the table named by a record field), `key` (the dedup key and `insertId`) and `encode`
//! (timestamps and JSON scalars in the row text). They know nothing of the `Transformer`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{Config, DedupKey, InsertIdMode, TransformConfig};
use crate::messages::RawRecord;
use crate::model::Tp;
pub use crate::model::{sanitize_table_name, TableRef};
use crate::stage::convert::JsonObject;
use crate::stage::json::{object_members, Member};
use crate::stage::proto::{RowBody, RowFormats};
use crate::stage::schema::{sanitize_field_names, NameCollision};

mod encode;
mod key;
mod protobuf;
mod route;
mod source;

use encode::{write_json, write_timestamp};
use key::{dedup_key, insert_id_text, scoped_key_hash, split_pointer};
use protobuf::KnownFormats;
use route::{table_from_field, FieldRoute};
use source::Source;

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
    pub body: RowBody,
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
    /// The Storage Write API client's row formats: rows of a table with a known format are encoded
    /// as protobuf here (see [`Transformer::with_formats`]).
    formats: Option<KnownFormats>,
}

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
            formats: None,
        }
    }

    /// Encodes rows as protobuf for tables whose format `formats` holds (the Storage Write API
    /// client's); other rows stay insertAll entries. The writer sends the bytes as they are while
    /// the format is current, so the row is read once, here, on the transform workers.
    pub fn with_formats(mut self, formats: Option<RowFormats>) -> Self {
        self.formats = formats.map(KnownFormats::new);
        self
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
        self.encode(tp, Source::new(source, None), &text, &members)
    }

    /// Turns a record whose payload [`parse_object`](crate::stage::convert::parse_object) read
    /// into `object` into a row.
    pub fn apply_object(
        &mut self,
        tp: &Tp,
        source: &RawRecord,
        object: &JsonObject,
    ) -> Result<Transformed, TransformError> {
        let text = match &object.text {
            Some(text) => text.as_slice(),
            None => source.payload.as_deref().unwrap_or_default(),
        };
        self.encode(tp, Source::new(source, Some(object)), text, &object.members)
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
        source: Source<'_>,
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
        self.write_row(tp, source, text, members, table, dedup_hash, key)
    }

    /// With `bigquery.sanitize_field_names`, names are rewritten in nested objects too: the row's
    /// object is built as a JSON map once, sanitized, then written like any other.
    #[allow(clippy::too_many_arguments)]
    fn encode_sanitized(
        &mut self,
        tp: &Tp,
        source: Source<'_>,
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
        // The converter's inner members are spans of the record's text, not of this one.
        let source = Source {
            inner: &[],
            ..source
        };
        self.write_row(tp, source, &sanitized, &members, table, dedup_hash, key)
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
        source: Source<'_>,
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
        let meta_len = route.meta_prefix.len() + 80 + source.key.map_or(0, |k| k.len() + 20);
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
            match source.key {
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
            body: RowBody::Json(entry),
        })
    }
}

#[cfg(test)]
mod tests;
