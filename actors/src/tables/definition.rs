//! Table definitions: what a missing table is created with. Its configured schema, partitioning
//! and clustering (`[[bigquery.tables]]`), or a schema inferred from the first batch's rows.
//!
//! Invariant: nothing here calls BigQuery. [`TableManager`] holds the settings and the per-table
//! locks; the calls that create tables and add fields are in [`super::api`], so the BigQuery client
//! trait (which names `TableManager`) sits between the two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::registered::{typed, RegistryColumns};
use crate::config::{BigQueryConfig, PartitionType};
use crate::model::{sanitize_table_name, TableRef};
use crate::stage::batch::InsertOptions;
use crate::stage::schema::{self, FieldSchema};

/// What `tables.insert` is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDefinition {
    pub table: TableRef,
    pub schema: Vec<FieldSchema>,
    pub time_partitioning: Option<TimePartitioning>,
    /// Clustering columns (none: not clustered).
    pub clustering: Vec<String>,
}

/// `timePartitioning`: by a column, or by ingestion time when `field` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimePartitioning {
    pub kind: PartitionType,
    pub field: Option<String>,
}

/// The configured definition of a table (or of the tables a `table_from` entry routes to).
#[derive(Debug, Default)]
pub(super) struct Spec {
    /// Empty: inferred.
    pub(super) schema: Vec<FieldSchema>,
    time_partitioning: Option<TimePartitioning>,
    clustering: Vec<String>,
}

/// Types that inference must use whatever the rows hold.
const TIMESTAMP_COLUMNS: &[&str] = &["_kafka_timestamp"];

/// Table settings from `[bigquery]`, and a lock per table so that concurrent batches create or
/// patch a table once.
pub struct TableManager {
    pub auto_create_tables: bool,
    pub auto_create_dataset: bool,
    pub allow_new_fields: bool,
    pub options: InsertOptions,
    specs: HashMap<TableRef, Arc<Spec>>,
    /// For tables named by a record field that no entry defines: the routing entry's definition,
    /// by the dataset of its fallback table.
    templates: Vec<(String, Arc<Spec>)>,
    /// The tables of topics no entry lists (named after the topic): never routed by a field.
    topic_tables: std::collections::HashSet<TableRef>,
    locks: Mutex<HashMap<TableRef, Arc<tokio::sync::Mutex<()>>>>,
    /// Datasets created (or found) by this process.
    pub(super) datasets: Mutex<std::collections::HashSet<String>>,
    /// The columns the registry's schemas give tables (registry topics only).
    pub(super) registry_columns: Option<Arc<RegistryColumns>>,
}

impl TableManager {
    /// Table management for `config` (`topics`: the topics consumed, `kafka.topics`).
    pub fn new(config: &BigQueryConfig, topics: &[String]) -> Self {
        let listed: std::collections::HashSet<&str> = config
            .tables
            .iter()
            .flat_map(|t| t.topics.iter().map(String::as_str))
            .collect();
        let topic_tables = topics
            .iter()
            .filter(|t| !listed.contains(t.as_str()))
            .map(|t| TableRef {
                dataset: config.dataset.clone(),
                table: sanitize_table_name(t),
            })
            .collect();
        let mut specs = HashMap::new();
        let mut templates = Vec::new();
        for t in config.tables.iter() {
            let Some(table) = TableRef::parse(&t.table, &config.dataset) else {
                continue; // rejected by Config::validate
            };
            let time_partitioning = match (t.partition_type, &t.partition_field) {
                (None, None) => None,
                (kind, field) => Some(TimePartitioning {
                    kind: kind.unwrap_or(PartitionType::Day),
                    field: field.clone(),
                }),
            };
            let spec = Arc::new(Spec {
                schema: t.schema.iter().map(FieldSchema::from).collect(),
                time_partitioning,
                clustering: t.clustering.clone(),
            });
            if t.table_from.is_some() {
                templates.push((table.dataset.clone(), Arc::clone(&spec)));
            }
            specs.insert(table, spec);
        }
        Self {
            auto_create_tables: config.auto_create_tables,
            auto_create_dataset: config.auto_create_dataset,
            allow_new_fields: config.allow_new_fields,
            options: InsertOptions {
                skip_invalid_rows: config.skip_invalid_rows,
                ignore_unknown_values: config.ignore_unknown_values,
            },
            specs,
            templates,
            topic_tables,
            locks: Mutex::new(HashMap::new()),
            datasets: Mutex::new(std::collections::HashSet::new()),
            registry_columns: None,
        }
    }

    pub(super) fn spec(&self, table: &TableRef) -> Option<&Spec> {
        if self.topic_tables.contains(table) {
            return None;
        }
        self.specs
            .get(table)
            .or_else(|| {
                self.templates
                    .iter()
                    .find(|(d, _)| *d == table.dataset)
                    .map(|(_, s)| s)
            })
            .map(|s| &**s)
    }

    /// Type hints for inference: `_kafka_timestamp` and the partitioning column are TIMESTAMPs.
    pub(super) fn hints<'a>(&self, spec: Option<&'a Spec>) -> Vec<(&'a str, &'static str)> {
        let mut hints: Vec<(&str, &str)> = TIMESTAMP_COLUMNS
            .iter()
            .map(|c| (*c, "TIMESTAMP"))
            .collect();
        if let Some(field) = spec
            .and_then(|s| s.time_partitioning.as_ref())
            .and_then(|p| p.field.as_deref())
        {
            hints.push((field, "TIMESTAMP"));
        }
        hints
    }

    /// Fields inferred from `rows` (encoded insertAll entries), typed by the registry's columns of
    /// `table` where it has them.
    pub(super) fn row_fields(&self, table: &TableRef, rows: &[&[u8]]) -> Vec<FieldSchema> {
        let rows = row_objects(rows);
        let inferred = schema::infer(rows.iter(), &self.hints(self.spec(table)));
        match self.registry_columns.as_ref().and_then(|r| r.fields(table)) {
            Some(columns) => typed(&columns, inferred),
            None => inferred,
        }
    }

    /// The definition `table` is created with: its configured schema, or the registry's columns
    /// and those inferred from `rows` (encoded insertAll entries), with the configured
    /// partitioning and clustering.
    pub fn definition(&self, table: &TableRef, rows: &[&[u8]]) -> TableDefinition {
        let spec = self.spec(table);
        let schema = match spec {
            Some(s) if !s.schema.is_empty() => s.schema.clone(),
            _ => {
                let mut schema = self.row_fields(table, rows);
                // Partitioning and clustering columns must exist: ones no row had are added.
                let partition = spec
                    .and_then(|s| s.time_partitioning.as_ref())
                    .and_then(|p| p.field.as_ref())
                    .map(|f| (f, "TIMESTAMP"));
                let clustering = spec
                    .map(|s| s.clustering.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|c| (c, "STRING"));
                for (name, t) in partition.into_iter().chain(clustering) {
                    if !schema.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
                        schema.push(FieldSchema::new(name.clone(), t, "NULLABLE"));
                    }
                }
                schema
            }
        };
        TableDefinition {
            table: table.clone(),
            schema,
            time_partitioning: spec.and_then(|s| s.time_partitioning.clone()),
            clustering: spec.map(|s| s.clustering.clone()).unwrap_or_default(),
        }
    }

    pub(super) fn lock(&self, table: &TableRef) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(table.clone()).or_default())
    }
}

/// The `json` objects of encoded insertAll entries (ones that do not parse are skipped).
pub(super) fn row_objects(entries: &[&[u8]]) -> Vec<Map<String, Value>> {
    entries
        .iter()
        .filter_map(|e| {
            match serde_json::from_slice::<Value>(e)
                .ok()?
                .get_mut("json")?
                .take()
            {
                Value::Object(m) => Some(m),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{TableConfig, Tables};

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

    #[test]
    fn routed_tables_take_their_routing_entry_definition_and_topic_tables_none() {
        let bq = config(|c| {
            c.tables = Tables(vec![
                TableConfig {
                    topics: vec!["events".into()],
                    table: "fallback".into(),
                    table_from: Some("/type".into()),
                    partition_field: Some("at".into()),
                    clustering: vec!["k".into()],
                    ..Default::default()
                },
                TableConfig {
                    table: "other.own".into(),
                    partition_type: Some(PartitionType::Month),
                    ..Default::default()
                },
            ]);
        });
        let m = TableManager::new(&bq, &["events".into(), "plain-topic".into()]);
        let t = |d: &str, n: &str| TableRef {
            dataset: d.into(),
            table: n.into(),
        };
        let row = entries(&[json!({"k": "a", "n": 1})]);
        let rows: Vec<&[u8]> = row.iter().map(Vec::as_slice).collect();
        // A table a record field named: partitioned and clustered like its routing entry, the
        // partitioning column added as TIMESTAMP although no row had it.
        let routed = m.definition(&t("ds", "signup"), &rows);
        assert_eq!(
            routed.time_partitioning,
            Some(TimePartitioning {
                kind: PartitionType::Day,
                field: Some("at".into())
            })
        );
        assert_eq!(routed.clustering, ["k"]);
        assert_eq!(
            names(&routed.schema),
            [
                ("k", "STRING", "NULLABLE"),
                ("n", "INTEGER", "NULLABLE"),
                ("at", "TIMESTAMP", "NULLABLE")
            ]
        );
        // An entry's own table: its own definition (ingestion-time MONTH partitions).
        let own = m.definition(&t("other", "own"), &rows);
        assert_eq!(
            own.time_partitioning,
            Some(TimePartitioning {
                kind: PartitionType::Month,
                field: None
            })
        );
        // The table of a topic no entry lists: nothing but the inferred schema.
        let plain = m.definition(&t("ds", "plain_topic"), &rows);
        assert_eq!((plain.time_partitioning, plain.clustering.len()), (None, 0));
        assert_eq!(plain.schema.len(), 2);
    }
}
