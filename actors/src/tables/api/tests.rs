//! Table management end to end: `send_with_retry` through [`Managed`] against BigQuery in memory.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::bigquery::{send_with_retry, ErrorProto, Outcome, RetryPolicy, RowErrors};
use crate::config::{
    BigQueryConfig, FieldConfig, FieldMode, FieldType, PartitionType, TableConfig, Tables,
};
use crate::stage::schema::unknown_fields;
use crate::tables::definition::TimePartitioning;

/// BigQuery in memory: datasets, tables with schemas, rows; "no such field" rejections like
/// BigQuery's (the other rows `stopped`, unless skipInvalidRows).
#[derive(Default)]
struct State {
    datasets: HashSet<String>,
    tables: HashMap<String, TableDefinition>,
    rows: HashMap<String, Vec<Value>>,
    calls: Vec<String>,
    /// insertAll answers 404 this many more times after a table exists (BigQuery's delay).
    lag_404: usize,
}

#[derive(Default)]
struct Memory(Mutex<State>);

fn not_found(what: String) -> BqError {
    BqError::http(404, "notFound", format!("Not found: {what}"))
}

impl Memory {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn insert(&self, table: &TableRef, body: &[u8]) -> Result<InsertAllResponse, BqError> {
        let mut st = self.state();
        st.calls.push("insertAll".into());
        let key = table.to_string();
        let Some(def) = st.tables.get(&key) else {
            return Err(not_found(format!("Table p:{key}")));
        };
        let schema = def.schema.clone();
        if st.lag_404 > 0 {
            st.lag_404 -= 1;
            return Err(not_found(format!("Table p:{key}")));
        }
        let req: Value = serde_json::from_slice(body).unwrap();
        let (skip, ignore) = (
            req["skipInvalidRows"] == true,
            req["ignoreUnknownValues"] == true,
        );
        let rows = req["rows"].as_array().unwrap();
        let mut bad = Vec::new();
        for (index, r) in rows.iter().enumerate() {
            let unknown = unknown_fields(&schema, r["json"].as_object().unwrap());
            if !unknown.is_empty() && !ignore {
                let errors = unknown
                    .iter()
                    .map(|f| ErrorProto {
                        reason: "invalid".into(),
                        location: f.clone(),
                        message: format!("no such field: {f}."),
                    })
                    .collect();
                bad.push(RowErrors { index, errors });
            }
        }
        let bad_idx: HashSet<usize> = bad.iter().map(|r| r.index).collect();
        if bad.is_empty() || skip {
            let stored = st.rows.entry(key).or_default();
            stored.extend(
                rows.iter()
                    .enumerate()
                    .filter(|(i, _)| !bad_idx.contains(i))
                    .map(|(_, r)| r["json"].clone()),
            );
        } else {
            for index in (0..rows.len()).filter(|i| !bad_idx.contains(i)) {
                bad.push(RowErrors {
                    index,
                    errors: vec![ErrorProto {
                        reason: "stopped".into(),
                        ..Default::default()
                    }],
                });
            }
        }
        Ok(InsertAllResponse { insert_errors: bad })
    }
}

impl BigQuery for Memory {
    fn insert_all(
        &self,
        table: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let r = self.insert(table, &body);
        Box::pin(async move { r })
    }

    fn get_table(
        &self,
        table: &TableRef,
    ) -> BoxFuture<'static, Result<Option<Vec<FieldSchema>>, BqError>> {
        let mut st = self.state();
        st.calls.push("tables.get".into());
        let r = st.tables.get(&table.to_string()).map(|d| d.schema.clone());
        Box::pin(async move { Ok(r) })
    }

    fn create_table(&self, def: &TableDefinition) -> BoxFuture<'static, Result<bool, BqError>> {
        let mut st = self.state();
        st.calls.push("tables.insert".into());
        let r = if !st.datasets.contains(&def.table.dataset) {
            Err(not_found(format!("Dataset p:{}", def.table.dataset)))
        } else {
            match st.tables.entry(def.table.to_string()) {
                std::collections::hash_map::Entry::Occupied(_) => Ok(false),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(def.clone());
                    Ok(true)
                }
            }
        };
        Box::pin(async move { r })
    }

    fn create_dataset(&self, dataset: &str) -> BoxFuture<'static, Result<bool, BqError>> {
        let mut st = self.state();
        st.calls.push("datasets.insert".into());
        let r = Ok(st.datasets.insert(dataset.to_owned()));
        Box::pin(async move { r })
    }

    fn patch_schema(
        &self,
        table: &TableRef,
        schema: Vec<FieldSchema>,
    ) -> BoxFuture<'static, Result<(), BqError>> {
        let mut st = self.state();
        st.calls.push("tables.patch".into());
        let r = match st.tables.get_mut(&table.to_string()) {
            Some(d) => {
                d.schema = schema;
                Ok(())
            }
            None => Err(not_found(table.to_string())),
        };
        Box::pin(async move { r })
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(10),
        max_delay: Duration::from_millis(5),
        min_delay: Duration::from_millis(1),
        give_up: true,
    }
}

fn table() -> TableRef {
    TableRef {
        dataset: "ds".into(),
        table: "t".into(),
    }
}

fn config(f: impl FnOnce(&mut BigQueryConfig)) -> BigQueryConfig {
    let mut c = BigQueryConfig {
        project: "p".into(),
        dataset: "ds".into(),
        ..Default::default()
    };
    f(&mut c);
    c
}

fn entries(rows: &[Value]) -> Vec<Vec<u8>> {
    rows.iter()
        .map(|r| serde_json::to_vec(&json!({ "json": r })).unwrap())
        .collect()
}

fn managed(memory: Arc<Memory>, config: &BigQueryConfig) -> Managed {
    let config = Config {
        bigquery: config.clone(),
        ..Config::default()
    };
    Managed::new(memory, &config)
}

async fn send(memory: Arc<Memory>, config: &BigQueryConfig, rows: &[Value]) -> Outcome {
    let managed = managed(memory, config);
    let e = entries(rows);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    send_with_retry(&managed, &table(), &refs, policy(), &|_| true).await
}

fn names(schema: &[FieldSchema]) -> Vec<(&str, &str, &str)> {
    schema
        .iter()
        .map(|f| {
            (
                f.name.as_str(),
                f.field_type.as_str(),
                f.mode.as_deref().unwrap_or(""),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_missing_table_and_dataset_are_created_from_the_rows_then_written() {
    let memory = Arc::new(Memory::default());
    let c = config(|c| {
        c.auto_create_tables = true;
        c.auto_create_dataset = true;
    });
    let rows = [
        json!({"id": "a", "n": 1, "_kafka_timestamp": "2026-01-01T00:00:00.000Z"}),
        json!({"id": "b", "n": 2.5, "tags": ["x"], "_kafka_timestamp": null}),
    ];
    let out = send(Arc::clone(&memory), &c, &rows).await;
    assert_eq!(out.written, vec![0, 1]);
    assert!(out.failed.is_empty());
    let st = memory.state();
    assert_eq!(
        st.calls,
        ["insertAll", "datasets.insert", "tables.insert", "insertAll"]
    );
    let def = &st.tables["ds.t"];
    assert_eq!(
        names(&def.schema),
        [
            ("_kafka_timestamp", "TIMESTAMP", "NULLABLE"),
            ("id", "STRING", "NULLABLE"),
            ("n", "FLOAT", "NULLABLE"),
            ("tags", "STRING", "REPEATED"),
        ]
    );
    assert_eq!(def.time_partitioning, None);
    assert_eq!(st.rows["ds.t"].len(), 2);
}

#[tokio::test]
async fn a_configured_definition_is_sent_and_404s_after_creation_are_retried() {
    let memory = Arc::new(Memory::default());
    memory.state().datasets.insert("ds".into());
    memory.state().lag_404 = 2;
    let field = |name: &str, t: FieldType, mode: FieldMode| FieldConfig {
        name: name.into(),
        field_type: t,
        mode,
        fields: vec![],
        description: None,
    };
    let c = config(|c| {
        c.auto_create_tables = true;
        c.tables = Tables(vec![TableConfig {
            table: "t".into(),
            schema: vec![
                field("id", FieldType::String, FieldMode::Required),
                field("at", FieldType::Timestamp, FieldMode::Nullable),
                FieldConfig {
                    fields: vec![field("ip", FieldType::String, FieldMode::Nullable)],
                    ..field("attrs", FieldType::Record, FieldMode::Nullable)
                },
            ],
            partition_field: Some("at".into()),
            partition_type: Some(PartitionType::Hour),
            clustering: vec!["id".into()],
            ..Default::default()
        }]);
    });
    let out = send(
        Arc::clone(&memory),
        &c,
        &[json!({"id": "a", "at": "2026-01-01T00:00:00Z"})],
    )
    .await;
    assert_eq!(out.written, vec![0]);
    assert_eq!(
        out.retries, 2,
        "404s after the creation are retried with backoff"
    );
    let st = memory.state();
    assert_eq!(st.calls.iter().filter(|c| *c == "tables.insert").count(), 1);
    let def = &st.tables["ds.t"];
    assert_eq!(
        names(&def.schema),
        [
            ("id", "STRING", "REQUIRED"),
            ("at", "TIMESTAMP", "NULLABLE"),
            ("attrs", "RECORD", "NULLABLE")
        ]
    );
    assert_eq!(names(&def.schema[2].fields), [("ip", "STRING", "NULLABLE")]);
    assert_eq!(
        def.time_partitioning,
        Some(TimePartitioning {
            kind: PartitionType::Hour,
            field: Some("at".into())
        })
    );
    assert_eq!(def.clustering, ["id"]);
}

#[tokio::test]
async fn a_missing_table_that_cannot_be_created_is_a_sink_failure_not_failed_rows() {
    let memory = Arc::new(Memory::default());
    let short = RetryPolicy {
        timeout: Duration::from_millis(50),
        ..policy()
    };
    let send = |c: BigQueryConfig| {
        let managed = managed(Arc::clone(&memory), &c);
        async move {
            let e = entries(&[json!({"a": 1})]);
            let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
            send_with_retry(&managed, &table(), &refs, short, &|_| true).await
        }
    };
    // Without auto-create: the rows are not failed, they come back unwritten (give_up).
    let out = send(config(|_| {})).await;
    assert!(out.written.is_empty());
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    let sf = out.sink_failure.expect("a sink failure");
    assert!(sf.error.is_not_found(), "{}", sf.error);
    assert!(memory.state().calls.iter().all(|c| c == "insertAll"));
    // With auto-create but no dataset and no auto_create_dataset: creation is tried and
    // refused, and that too is a sink failure naming the cause.
    let out = send(config(|c| c.auto_create_tables = true)).await;
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    let sf = out.sink_failure.expect("a sink failure");
    assert!(sf.error.to_string().contains("Dataset"), "{}", sf.error);
}

fn existing(memory: &Memory) {
    let mut st = memory.state();
    st.datasets.insert("ds".into());
    st.tables.insert(
        "ds.t".into(),
        TableDefinition {
            table: table(),
            schema: vec![FieldSchema::new("a", "STRING", "REQUIRED")],
            time_partitioning: None,
            clustering: vec![],
        },
    );
}

fn unknown_rows() -> [Value; 3] {
    [
        json!({"a": "x"}),
        json!({"a": "y", "b": 1}),
        json!({"a": "z", "r": {"x": true}, "b": 2}),
    ]
}

#[tokio::test]
async fn new_fields_are_added_then_the_rejected_rows_written() {
    let memory = Arc::new(Memory::default());
    existing(&memory);
    let c = config(|c| c.allow_new_fields = true);
    let out = send(Arc::clone(&memory), &c, &unknown_rows()).await;
    let mut written = out.written.clone();
    written.sort();
    assert_eq!(written, vec![0, 1, 2]);
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    let st = memory.state();
    assert_eq!(
        st.calls,
        ["insertAll", "tables.get", "tables.patch", "insertAll"]
    );
    let schema = &st.tables["ds.t"].schema;
    assert_eq!(
        names(schema),
        [
            ("a", "STRING", "REQUIRED"),
            ("b", "INTEGER", "NULLABLE"),
            ("r", "RECORD", "NULLABLE")
        ]
    );
    assert_eq!(names(&schema[2].fields), [("x", "BOOLEAN", "NULLABLE")]);
    assert_eq!(st.rows["ds.t"].len(), 3, "each row once");
}

#[tokio::test]
async fn without_allow_new_fields_rows_with_unknown_fields_fail() {
    let memory = Arc::new(Memory::default());
    existing(&memory);
    let out = send(Arc::clone(&memory), &config(|_| {}), &unknown_rows()).await;
    assert_eq!(out.written, vec![0]);
    let failed: Vec<usize> = out.failed.iter().map(|f| f.0).collect();
    assert_eq!(failed, vec![1, 2]);
    assert!(
        out.failed[0].2.contains("no such field: b."),
        "{:?}",
        out.failed
    );
    assert!(!memory.state().calls.contains(&"tables.patch".to_string()));
}

#[tokio::test]
async fn insert_options_reach_bigquery() {
    // skipInvalidRows: the valid row is written by the first request, the others fail.
    let memory = Arc::new(Memory::default());
    existing(&memory);
    let c = config(|c| c.skip_invalid_rows = true);
    let out = send(Arc::clone(&memory), &c, &unknown_rows()).await;
    assert_eq!((out.written.len(), out.failed.len()), (1, 2));
    assert_eq!(memory.state().calls, ["insertAll"]);
    // ignoreUnknownValues: every row is written, without the unknown fields.
    let memory = Arc::new(Memory::default());
    existing(&memory);
    let c = config(|c| c.ignore_unknown_values = true);
    let out = send(Arc::clone(&memory), &c, &unknown_rows()).await;
    assert_eq!(out.written.len(), 3);
    assert_eq!(memory.state().calls, ["insertAll"]);
}

#[tokio::test]
async fn concurrent_batches_create_and_patch_a_table_once() {
    let memory = Arc::new(Memory::default());
    memory.state().datasets.insert("ds".into());
    let c = config(|c| {
        c.auto_create_tables = true;
        c.allow_new_fields = true;
    });
    let managed = managed(memory.clone(), &c);
    let a = entries(&[json!({"a": 1})]);
    let b = entries(&[json!({"a": 2, "extra": "x"})]);
    let (ra, rb): (Vec<&[u8]>, Vec<&[u8]>) = (
        a.iter().map(Vec::as_slice).collect(),
        b.iter().map(Vec::as_slice).collect(),
    );
    let t = table();
    let (oa, ob) = tokio::join!(
        send_with_retry(&managed, &t, &ra, policy(), &|_| true),
        send_with_retry(&managed, &t, &rb, policy(), &|_| true)
    );
    assert_eq!((oa.written.len(), ob.written.len()), (1, 1));
    let st = memory.state();
    assert_eq!(st.rows["ds.t"].len(), 2);
    assert!(st.calls.iter().filter(|c| *c == "tables.patch").count() <= 1);
    assert!(unknown_fields(
        &st.tables["ds.t"].schema,
        json!({"a": 1, "extra": "y"}).as_object().unwrap()
    )
    .is_empty());
}
