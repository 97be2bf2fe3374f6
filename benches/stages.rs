//! Micro-benchmarks of the pipeline's CPU stages on generated member events (~250 bytes):
//! convert (JSON, or the same events as Avro, Protobuf or JSON Schema from a Schema Registry), transform (to an insertAll entry, or to the Storage Write API's protobuf row), dedup
//! lookup, insert and claim/settle, and insertAll body encoding — each per record
//! (`Throughput::Elements`) and per byte of payload (`Throughput::Bytes`).
//!
//! ```sh
//! cargo bench --bench stages                      # all, with criterion
//! cargo bench --bench stages -- convert           # one group
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bqsink_actors::config::{Config, ValueFormat};
use bqsink_actors::messages::{RawRecord, SettledAs, Tp};
use bqsink_actors::registry::{RegisteredSchema, SchemaCache, SchemaKind};
use bqsink_actors::stage::batch::encode_body;
use bqsink_actors::stage::convert::{parse_object, JsonObject};
use bqsink_actors::stage::dedup::{Claims, Deduplicator, Position, Released};
use bqsink_actors::stage::proto::{RowFormat, RowFormats};
use bqsink_actors::stage::schema::FieldSchema;
use bqsink_actors::stage::transform::Transformer;
use bqsink_devtools::avro;
use bqsink_devtools::generator::{member_events_fields, Generator, Mix};
use bqsink_devtools::registered::{self, Encoder};
use criterion::{criterion_group, Criterion, Throughput};

/// The allocator `bqsink` ships with (`src/main.rs`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Records per iteration.
const CHUNK: usize = 1_000;

fn records(n: usize) -> Vec<RawRecord> {
    let mix = Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 1,
    };
    Generator::new(mix)
        .take(n)
        .enumerate()
        .map(|(i, e)| RawRecord {
            offset: i as i64,
            timestamp_ms: Some(1_790_000_000_000 + i as i64),
            key: Some(e.key.into_bytes()),
            payload: Some(e.payload),
            headers: Vec::new(),
        })
        .collect()
}

/// `records` as member events in a registry format's wire format, with schema id `id`.
fn registered_records(records: &[RawRecord], encoder: &Encoder) -> Vec<RawRecord> {
    records
        .iter()
        .map(|r| RawRecord {
            payload: r.payload.as_deref().and_then(|p| encoder.encode(p)),
            ..r.clone()
        })
        .collect()
}

/// The registry formats benched, with their schema ids and schemas.
const REGISTERED: [(ValueFormat, u32, SchemaKind, &str); 3] = [
    (
        ValueFormat::Avro,
        1,
        SchemaKind::Avro,
        avro::MEMBER_EVENTS_SCHEMA,
    ),
    (
        ValueFormat::Protobuf,
        2,
        SchemaKind::Protobuf,
        registered::MEMBER_EVENTS_PROTO,
    ),
    (
        ValueFormat::JsonSchema,
        3,
        SchemaKind::Json,
        registered::MEMBER_EVENTS_JSON_SCHEMA,
    ),
];

fn config() -> Config {
    let mut c = Config::default();
    c.bigquery.project = "p".into();
    c.bigquery.dataset = "events".into();
    c
}

fn payload_bytes(records: &[RawRecord]) -> u64 {
    records.iter().map(|r| r.size() as u64).sum()
}

/// The stages with their inputs, set up once.
struct Stages {
    recs: Vec<RawRecord>,
    bytes: u64,
    tp: Tp,
    transformer: Transformer,
    /// A transformer that writes protobuf rows, as on the Storage Write API path.
    proto_transformer: Transformer,
    converted: Vec<JsonObject>,
    dedup: Deduplicator,
    claims: Claims<u64>,
    next_claim: u64,
    next_key: u64,
    seen: u64,
    entries: Vec<Vec<u8>>,
    /// The member events table's protobuf row format.
    proto: RowFormat,
    /// The same events in each registry format (`REGISTERED`'s order), and their schemas
    /// (resolved once).
    registered: Vec<Vec<RawRecord>>,
    schemas: SchemaCache,
}

fn proto_format() -> RowFormat {
    let schema: Vec<FieldSchema> = serde_json::from_value(member_events_fields()).expect("schema");
    RowFormat::new(&schema).expect("a row format")
}

/// A key hash (dedup keys are xxh3 hashes: spread them).
fn key(k: u64) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Stages {
    fn new() -> Self {
        let recs = records(CHUNK);
        let registered = REGISTERED
            .iter()
            .map(|(format, id, ..)| {
                let encoder = Encoder::new(*format, *id).expect("a registry format");
                registered_records(&recs, &encoder)
            })
            .collect();
        let bytes = payload_bytes(&recs);
        let tp = Tp::new("member-events", 3);
        let mut transformer = Transformer::new(&config());
        let converted: Vec<_> = recs
            .iter()
            .map(|r| parse_object(r.payload.as_deref()).expect("valid event"))
            .collect();
        let entries = recs
            .iter()
            .zip(&converted)
            .map(|(r, v)| {
                transformer
                    .apply_object(&tp, r, v)
                    .expect("valid event")
                    .body
                    .into_json()
            })
            .collect();
        let formats = RowFormats::default();
        let table = transformer.table_for(&tp.topic);
        formats.set(&table, Some(Arc::new(proto_format())));
        let proto_transformer = Transformer::new(&config()).with_formats(Some(formats));
        let full = || {
            let dedup = Deduplicator::new(1_000_000, Duration::from_secs(3600));
            for k in 0..1_000_000u64 {
                dedup.check(key(k), Position::new(&tp, k as i64));
            }
            dedup
        };
        let (dedup, claims) = (full(), Claims::new(full()));
        Self {
            recs,
            bytes,
            tp,
            transformer,
            proto_transformer,
            converted,
            dedup,
            claims,
            next_claim: 1_000_000,
            next_key: 1_000_000,
            seen: 0,
            entries,
            proto: proto_format(),
            registered,
            schemas: {
                let cache = SchemaCache::default();
                for (_, id, kind, text) in REGISTERED {
                    let schema = RegisteredSchema {
                        kind,
                        text: text.to_owned(),
                        references: Vec::new(),
                    };
                    cache.insert(id, Ok(schema)).expect("the schema compiles");
                }
                cache
            },
        }
    }

    fn convert(&mut self) {
        for r in &self.recs {
            black_box(parse_object(black_box(r.payload.as_deref())).ok());
        }
    }

    /// The converter on a registry topic: the wire format, the decoded value, its JSON object.
    fn convert_registered(&mut self, which: usize) {
        let format = REGISTERED[which].0;
        for r in &self.registered[which] {
            let payload = black_box(r.payload.as_deref());
            black_box(self.schemas.convert(format, payload).ok());
        }
    }

    fn convert_avro(&mut self) {
        self.convert_registered(0);
    }

    fn convert_protobuf(&mut self) {
        self.convert_registered(1);
    }

    fn convert_json_schema(&mut self) {
        self.convert_registered(2);
    }

    fn transform(&mut self) {
        for (r, v) in self.recs.iter().zip(&self.converted) {
            black_box(self.transformer.apply_object(&self.tp, r, v).ok());
        }
    }

    /// The transform stage on the Storage Write API path: each record's protobuf row, written
    /// from the members the converter found (what replaces `encode/proto_rows` on the writer).
    fn transform_proto(&mut self) {
        for (r, v) in self.recs.iter().zip(&self.converted) {
            black_box(self.proto_transformer.apply_object(&self.tp, r, v).ok());
        }
    }

    /// New keys into the full cache (each evicts one).
    fn dedup_insert(&mut self) {
        for _ in 0..CHUNK {
            self.next_key += 1;
            let k = self.next_key;
            black_box(self.dedup.check(key(k), Position::new(&self.tp, k as i64)));
        }
    }

    /// Keys the cache holds, read again at their own position (a pass, not a duplicate).
    fn dedup_lookup(&mut self) {
        for _ in 0..CHUNK {
            self.seen = (self.seen + 7919) % 900_000;
            let k = self.next_key - self.seen;
            black_box(self.dedup.check(key(k), Position::new(&self.tp, k as i64)));
        }
    }

    /// The deduplicator's work for new keys: each claimed (a chunk of them pending at once), then
    /// settled as written into the full cache (each evicts one).
    fn dedup_claim_settle(&mut self) {
        let first = self.next_claim + 1;
        self.next_claim += CHUNK as u64;
        for k in first..=self.next_claim {
            black_box(
                self.claims
                    .admit(key(k), Position::new(&self.tp, k as i64), k),
            );
        }
        let mut out = Released::default();
        for k in first..=self.next_claim {
            let at = Position::new(&self.tp, k as i64);
            self.claims.settle(key(k), at, SettledAs::Written, &mut out);
        }
        black_box(out);
    }

    /// The Storage Write API's encoding: each row's insertAll entry into a protobuf message of the
    /// member events table (what the storage client does per row, JSON read again included).
    fn encode_proto(&mut self) {
        let mut out = Vec::with_capacity(256);
        for e in &self.entries {
            black_box(self.proto.encode_entry(black_box(e), &mut out).ok());
        }
    }

    fn encode(&mut self) {
        let size: usize = self.entries.iter().map(|e| e.len() + 1).sum::<usize>() + 80;
        black_box(encode_body(self.entries.iter().map(Vec::as_slice), size));
    }
}

type Routine = fn(&mut Stages);

const ROUTINES: &[(&str, &str, Routine)] = &[
    ("convert", "json_object", Stages::convert),
    ("convert", "avro_object", Stages::convert_avro),
    ("convert", "protobuf_object", Stages::convert_protobuf),
    ("convert", "json_schema_object", Stages::convert_json_schema),
    ("transform", "row", Stages::transform),
    ("transform", "proto_row", Stages::transform_proto),
    ("dedup", "insert", Stages::dedup_insert),
    ("dedup", "lookup", Stages::dedup_lookup),
    ("dedup", "claim_settle", Stages::dedup_claim_settle),
    ("encode", "insert_all_body", Stages::encode),
    ("encode", "proto_rows", Stages::encode_proto),
];

fn stages(c: &mut Criterion) {
    let mut s = Stages::new();
    for (group, name, routine) in ROUTINES {
        let mut g = c.benchmark_group(*group);
        g.throughput(Throughput::Elements(CHUNK as u64));
        g.bench_function(format!("{name}/records"), |b| b.iter(|| routine(&mut s)));
        g.throughput(Throughput::Bytes(s.bytes));
        g.bench_function(format!("{name}/bytes"), |b| b.iter(|| routine(&mut s)));
        g.finish();
    }
}

/// One routine, `ITERATIONS` times, inside `measured` (for callgrind's `--toggle-collect`).
const ITERATIONS: usize = 100;

#[inline(never)]
fn measured(s: &mut Stages, routine: Routine) {
    for _ in 0..ITERATIONS {
        routine(s);
    }
}

/// Resident memory of this process in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// BQSINK_DEDUP_MEMORY=1: the resident memory 1,000,000 dedup keys take.
fn dedup_memory() {
    let tp = Tp::new("member-events", 3);
    let before = rss_kib();
    let dedup = Deduplicator::new(1_000_000, Duration::from_secs(3600));
    for k in 0..1_000_000u64 {
        dedup.check(key(k), Position::new(&tp, k as i64));
    }
    let after = rss_kib();
    println!(
        "1,000,000 dedup keys: {:.1} MiB resident ({} keys held)",
        (after - before) as f64 / 1024.0,
        dedup.len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = stages
}

fn main() {
    // BQSINK_CALLGRIND=<group>/<name>: run that routine only, for stable instruction counts:
    //   BQSINK_CALLGRIND=convert/json_object valgrind --tool=callgrind \
    //     --toggle-collect='*measured*' target/release/deps/stages-*
    // Instructions per record = total Ir / (ITERATIONS * CHUNK).
    if let Ok(which) = std::env::var("BQSINK_CALLGRIND") {
        let mut s = Stages::new();
        let Some((_, _, routine)) = ROUTINES
            .iter()
            .find(|(g, n, _)| format!("{g}/{n}") == which)
        else {
            eprintln!("unknown routine {which}");
            std::process::exit(2);
        };
        measured(&mut s, *routine);
        eprintln!("{which}: {} records", ITERATIONS * CHUNK);
        return;
    }
    if std::env::var_os("BQSINK_DEDUP_MEMORY").is_some() {
        dedup_memory();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
