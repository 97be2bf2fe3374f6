//! Routing by a record field (`table_from`): the value at a pointer names the table, sanitized like
//! a topic name, in the fallback table's dataset.
//!
//! Invariant: memory stays bounded; at most [`MAX_ROUTED_VALUES`] field values are remembered per
//! routed topic, then the memory starts over.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::key::{pointer_value, split_pointer};
use crate::model::{sanitize_table_name, TableRef};
use crate::stage::json::Member;

/// Routing by a record field: the pointer, the fallback table, and the tables named so far.
pub(super) struct FieldRoute {
    pub(super) pointer: String,
    pub(super) fallback: Arc<TableRef>,
    pub(super) tables: HashMap<String, Arc<TableRef>>,
}

/// Field values remembered per routed topic; beyond, the memory starts over.
pub(super) const MAX_ROUTED_VALUES: usize = 10_000;

/// The table named by the record's `table_from` field (sanitized like a topic name, in the dataset
/// of the fallback table); a missing, null, empty, object or array value goes to the fallback.
pub(super) fn table_from_field(
    route: &mut FieldRoute,
    text: &[u8],
    members: &[Member],
) -> Arc<TableRef> {
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
