//! The columns the Schema Registry gives each table: the transform workers note, the first time a
//! table gets a record of a schema id, that schema's columns
//! ([`columns`](crate::stage::registered::columns)); table management creates a missing table with
//! them and types new fields by them, instead of inferring types from the rows.
//!
//! Invariant: a table whose records come with schemas that disagree on a column's type (a field
//! that was INTEGER becomes STRING, a RECORD becomes a scalar, a single value a list) is marked
//! *conflicting*, naming the field and both types, and stays so: its writes fail as a sink failure
//! (never written, dead-lettered or committed past) until an operator migrates the table and
//! restarts bqsink. Versions that only add fields merge into the table's columns.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use crate::model::TableRef;
use crate::stage::schema::FieldSchema;

/// The registry's columns of each table this process has written registry records to.
#[derive(Debug, Default)]
pub struct RegistryColumns {
    tables: RwLock<HashMap<TableRef, Columns>>,
}

#[derive(Debug, Default)]
struct Columns {
    fields: Vec<FieldSchema>,
    ids: HashSet<u32>,
    conflict: Option<String>,
}

impl RegistryColumns {
    /// Whether schema `id`'s columns were noted for `table` already.
    pub fn knows(&self, table: &TableRef, id: u32) -> bool {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        tables.get(table).is_some_and(|c| c.ids.contains(&id))
    }

    /// Notes that `table` gets records of schema `id`, whose columns are `fields`: they merge into
    /// the table's columns, or mark it conflicting.
    pub fn note(&self, table: &TableRef, id: u32, fields: &[FieldSchema]) {
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let columns = tables.entry(table.clone()).or_default();
        if !columns.ids.insert(id) {
            return;
        }
        if let Err(conflict) = merge(&mut columns.fields, fields, "") {
            if columns.conflict.is_none() {
                tracing::error!(table = %table, schema_id = id, conflict = %conflict, kind = "sink_failure",
                    "a registered schema changes a column's type incompatibly: the table's writes stop until it is migrated and bqsink restarted");
                columns.conflict = Some(format!("schema id {id} {conflict}"));
            }
        }
    }

    /// The registry's columns of `table`, if its records came with schemas.
    pub fn fields(&self, table: &TableRef) -> Option<Vec<FieldSchema>> {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        tables.get(table).map(|c| c.fields.clone())
    }

    /// Why `table` cannot be written, when its schemas conflict.
    pub fn conflict(&self, table: &TableRef) -> Option<String> {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        tables.get(table).and_then(|c| c.conflict.clone())
    }
}

/// Adds `new`'s fields that `into` lacks (at any depth); `Err` naming the first field whose type or
/// repetition differs.
fn merge(into: &mut Vec<FieldSchema>, new: &[FieldSchema], prefix: &str) -> Result<(), String> {
    for n in new {
        let path = format!("{prefix}{}", n.name);
        match into
            .iter_mut()
            .find(|f| f.name.eq_ignore_ascii_case(&n.name))
        {
            None => into.push(n.clone()),
            Some(old) => {
                let repeated = |f: &FieldSchema| f.mode.as_deref() == Some("REPEATED");
                if !old.field_type.eq_ignore_ascii_case(&n.field_type)
                    || repeated(old) != repeated(n)
                {
                    return Err(format!(
                        "changes field `{path}` from {} {} to {} {}",
                        old.mode.as_deref().unwrap_or("NULLABLE"),
                        old.field_type,
                        n.mode.as_deref().unwrap_or("NULLABLE"),
                        n.field_type
                    ));
                }
                merge(&mut old.fields, &n.fields, &format!("{path}."))?;
            }
        }
    }
    Ok(())
}

/// `inferred` (from rows) typed by the registry's `columns` where they name the same field: the
/// registry's columns first, then the inferred fields they lack (metadata columns, fields the
/// transform adds).
pub fn typed(columns: &[FieldSchema], inferred: Vec<FieldSchema>) -> Vec<FieldSchema> {
    let mut out = columns.to_vec();
    for f in inferred {
        if !out.iter().any(|c| c.name.eq_ignore_ascii_case(&f.name)) {
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, t: &str, mode: &str, fields: Vec<FieldSchema>) -> FieldSchema {
        let mut f = FieldSchema::new(name, t, mode);
        f.fields = fields;
        f
    }

    #[test]
    fn added_fields_merge_and_type_changes_conflict() {
        let t = TableRef {
            dataset: "ds".into(),
            table: "m".into(),
        };
        let c = RegistryColumns::default();
        let v1 = [
            f("id", "INTEGER", "NULLABLE", vec![]),
            f(
                "a",
                "RECORD",
                "NULLABLE",
                vec![f("city", "STRING", "NULLABLE", vec![])],
            ),
        ];
        c.note(&t, 1, &v1);
        assert!(c.knows(&t, 1) && !c.knows(&t, 2));
        let v2 = [
            f("id", "INTEGER", "NULLABLE", vec![]),
            f(
                "a",
                "RECORD",
                "NULLABLE",
                vec![f("zip", "INTEGER", "NULLABLE", vec![])],
            ),
            f("at", "TIMESTAMP", "NULLABLE", vec![]),
        ];
        c.note(&t, 2, &v2);
        let names: Vec<_> = c
            .fields(&t)
            .unwrap()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(names, ["id", "a", "at"]);
        assert_eq!(c.fields(&t).unwrap()[1].fields.len(), 2);
        assert_eq!(c.conflict(&t), None);
        let v3 = [f(
            "a",
            "RECORD",
            "NULLABLE",
            vec![f("zip", "STRING", "NULLABLE", vec![])],
        )];
        c.note(&t, 3, &v3);
        let conflict = c.conflict(&t).unwrap();
        assert!(
            conflict.contains("schema id 3")
                && conflict.contains("`a.zip` from NULLABLE INTEGER to NULLABLE STRING"),
            "{conflict}"
        );
        let typed = typed(
            &c.fields(&t).unwrap(),
            vec![
                f("id", "STRING", "NULLABLE", vec![]),
                f("_kafka_offset", "INTEGER", "NULLABLE", vec![]),
            ],
        );
        let names: Vec<_> = typed
            .iter()
            .map(|f| (f.name.as_str(), f.field_type.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("id", "INTEGER"),
                ("a", "RECORD"),
                ("at", "TIMESTAMP"),
                ("_kafka_offset", "INTEGER")
            ]
        );
    }
}
