//! Datasets and tables kept like BigQuery does ([`Sink::manage_tables`]): `datasets.insert`,
//! `tables.insert` / `get` / `patch`, and insertAll against a managed table (404 when missing,
//! "no such field" for fields the schema lacks).

use super::*;

/// insertAll with table management: 404 for a missing table; rows with unknown fields rejected
/// (`invalid`, "no such field: x."), the others `stopped` unless `skipInvalidRows`; unknown fields
/// dropped with `ignoreUnknownValues`.
pub(super) fn insert_managed(
    shared: &Shared,
    table: &str,
    mut rows: Vec<Value>,
    skip_invalid: bool,
    ignore_unknown: bool,
) -> Response {
    let schema = match shared.lock().definitions.get(table) {
        Some(def) => schema_of(def),
        None => return error_body(404, "notFound", &format!("Not found: Table sink:{table}")),
    };
    let mut rejected: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let Some(json) = row.get_mut("json").and_then(Value::as_object_mut) else {
            rejected.push((i, vec!["json".into()]));
            continue;
        };
        let unknown = unknown_fields(&schema, json);
        if unknown.is_empty() {
            continue;
        }
        if ignore_unknown {
            drop_fields(json, &unknown);
        } else {
            rejected.push((i, unknown));
        }
    }
    if rejected.is_empty() {
        store(shared, table, rows);
        return Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response();
    }
    let bad: HashSet<usize> = rejected.iter().map(|(i, _)| *i).collect();
    let mut errors: Vec<Value> = rejected
        .iter()
        .map(|(i, fields)| {
            let errs: Vec<Value> = fields
                .iter()
                .map(|f| json!({"reason": "invalid", "location": f, "message": format!("no such field: {f}.")}))
                .collect();
            json!({"index": i, "errors": errs})
        })
        .collect();
    if skip_invalid {
        let good = rows
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !bad.contains(i))
            .map(|(_, r)| r)
            .collect();
        store(shared, table, good);
    } else {
        errors.extend(
            (0..rows.len())
                .filter(|i| !bad.contains(i))
                .map(|i| json!({"index": i, "errors": [{"reason": "stopped", "location": "", "message": ""}]})),
        );
    }
    Json(json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": errors}))
        .into_response()
}

/// Removes dotted paths (as [`unknown_fields`] gives them) from a row.
fn drop_fields(row: &mut Map<String, Value>, paths: &[String]) {
    for path in paths {
        let mut parts: Vec<&str> = path.split('.').collect();
        let Some(last) = parts.pop() else { continue };
        let mut targets: Vec<&mut Map<String, Value>> = vec![row];
        for part in parts {
            targets = targets
                .into_iter()
                .filter_map(|m| m.get_mut(part))
                .flat_map(|v| match v {
                    Value::Array(items) => {
                        items.iter_mut().filter_map(Value::as_object_mut).collect()
                    }
                    Value::Object(m) => vec![m],
                    _ => vec![],
                })
                .collect();
        }
        for m in targets {
            m.remove(last);
        }
    }
}

pub(super) fn schema_of(def: &Value) -> Vec<FieldSchema> {
    serde_json::from_value(def["schema"]["fields"].clone()).unwrap_or_default()
}

pub(super) async fn datasets_insert(
    State(shared): State<Arc<Shared>>,
    Path(_project): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Some(id) = body["datasetReference"]["datasetId"].as_str() else {
        return error_body(400, "invalid", "datasetReference.datasetId is required");
    };
    let mut inner = shared.lock();
    inner.calls.push(format!("datasets.insert {id}"));
    if !inner.datasets.insert(id.to_owned()) {
        return error_body(
            409,
            "duplicate",
            &format!("Already Exists: Dataset sink:{id}"),
        );
    }
    Json(body).into_response()
}

/// What BigQuery checks of a new table: a schema with valid names, partitioning by a top-level
/// TIMESTAMP/DATE/DATETIME column, at most 4 clustering columns that exist.
fn check_definition(def: &Value) -> Result<(), String> {
    let schema = def["schema"]["fields"]
        .as_array()
        .ok_or("the table needs a schema")?;
    let fields: Vec<FieldSchema> = serde_json::from_value(Value::Array(schema.clone()))
        .map_err(|e| format!("bad schema: {e}"))?;
    fn check(fields: &[FieldSchema]) -> Result<(), String> {
        for f in fields {
            if f.name.is_empty()
                || !f
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!("Invalid field name \"{}\"", f.name));
            }
            if f.is_record() == f.fields.is_empty() {
                return Err(format!(
                    "Field {} is a RECORD without fields, or fields without RECORD",
                    f.name
                ));
            }
            check(&f.fields)?;
        }
        Ok(())
    }
    check(&fields)?;
    let top = |name: &str| fields.iter().find(|f| f.name.eq_ignore_ascii_case(name));
    if let Some(tp) = def.get("timePartitioning") {
        if !matches!(tp["type"].as_str(), Some("DAY" | "HOUR" | "MONTH" | "YEAR")) {
            return Err(format!("invalid timePartitioning type {}", tp["type"]));
        }
        if let Some(field) = tp["field"].as_str() {
            match top(field) {
                Some(f) if matches!(f.field_type.as_str(), "TIMESTAMP" | "DATE" | "DATETIME") => {}
                Some(f) => {
                    return Err(format!(
                        "partitioning field {field} has type {}",
                        f.field_type
                    ))
                }
                None => return Err(format!("partitioning field {field} is not in the schema")),
            }
        }
    }
    if let Some(c) = def.get("clustering") {
        let cols = c["fields"]
            .as_array()
            .ok_or("clustering.fields must be a list")?;
        if cols.len() > 4 {
            return Err("at most 4 clustering fields".into());
        }
        for col in cols {
            if top(col.as_str().unwrap_or_default()).is_none() {
                return Err(format!("clustering field {col} is not in the schema"));
            }
        }
    }
    Ok(())
}

pub(super) async fn tables_insert(
    State(shared): State<Arc<Shared>>,
    Path((_project, dataset)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let Some(id) = body["tableReference"]["tableId"].as_str() else {
        return error_body(400, "invalid", "tableReference.tableId is required");
    };
    let table = format!("{dataset}.{id}");
    let mut inner = shared.lock();
    inner.calls.push(format!("tables.insert {table}"));
    if !inner.datasets.contains(&dataset) {
        return error_body(
            404,
            "notFound",
            &format!("Not found: Dataset sink:{dataset}"),
        );
    }
    if inner.definitions.contains_key(&table) {
        return error_body(
            409,
            "duplicate",
            &format!("Already Exists: Table sink:{table}"),
        );
    }
    if let Err(e) = check_definition(&body) {
        return error_body(400, "invalid", &e);
    }
    inner.definitions.insert(table, body.clone());
    Json(body).into_response()
}

pub(super) async fn tables_get(
    State(shared): State<Arc<Shared>>,
    Path((_project, dataset, table)): Path<(String, String, String)>,
) -> Response {
    let table = format!("{dataset}.{table}");
    let mut inner = shared.lock();
    inner.calls.push(format!("tables.get {table}"));
    match inner.definitions.get(&table) {
        Some(def) => Json(def.clone()).into_response(),
        None => error_body(404, "notFound", &format!("Not found: Table sink:{table}")),
    }
}

/// A patch may add NULLABLE or REPEATED fields (nested too), never drop or change one.
fn check_patch(old: &[FieldSchema], new: &[FieldSchema], prefix: &str) -> Result<(), String> {
    for o in old {
        let Some(n) = new.iter().find(|n| n.name.eq_ignore_ascii_case(&o.name)) else {
            return Err(format!(
                "Provided Schema does not match Table: field {prefix}{} is missing",
                o.name
            ));
        };
        if n.field_type != o.field_type {
            return Err(format!("Field {prefix}{} has changed type", o.name));
        }
        check_patch(&o.fields, &n.fields, &format!("{prefix}{}.", o.name))?;
    }
    for n in new {
        let added = !old.iter().any(|o| o.name.eq_ignore_ascii_case(&n.name));
        if added && n.mode.as_deref() == Some("REQUIRED") {
            return Err(format!("Cannot add required field {prefix}{}", n.name));
        }
    }
    Ok(())
}

pub(super) async fn tables_patch(
    State(shared): State<Arc<Shared>>,
    Path((_project, dataset, table)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let table = format!("{dataset}.{table}");
    let mut inner = shared.lock();
    inner.calls.push(format!("tables.patch {table}"));
    let Some(def) = inner.definitions.get_mut(&table) else {
        return error_body(404, "notFound", &format!("Not found: Table sink:{table}"));
    };
    if let Some(fields) = body.get("schema").map(|s| s["fields"].clone()) {
        let new: Vec<FieldSchema> = match serde_json::from_value(fields.clone()) {
            Ok(f) => f,
            Err(e) => return error_body(400, "invalid", &format!("bad schema: {e}")),
        };
        if let Err(e) = check_patch(&schema_of(def), &new, "") {
            return error_body(400, "invalid", &e);
        }
        def["schema"] = json!({ "fields": fields });
    }
    Json(def.clone()).into_response()
}
