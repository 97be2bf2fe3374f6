//! The table API: the BigQuery calls of table management. [`TableManager::ensure_table`] creates a
//! missing table (and dataset) from its [definition](super::definition); [`TableManager::add_fields`]
//! patches in the fields BigQuery rejected rows for. [`Managed`] is the client that carries a
//! `TableManager` to [`send_with_retry`], which drives both.
//!
//! [`send_with_retry`]: crate::bigquery::retry::send_with_retry

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::definition::{TableDefinition, TableManager};
use super::registered::RegistryColumns;
use crate::bigquery::client::{BigQuery, BqError, CommitHook, InsertAllResponse};
use crate::config::Config;
use crate::model::{TableRef, Tp};
use crate::stage::batch::InsertOptions;
use crate::stage::proto::{RowData, RowFormats};
use crate::stage::schema::{self, FieldSchema};

impl TableManager {
    /// Creates `table` (and, with `auto_create_dataset`, its dataset) from [`Self::definition`].
    /// A table that exists already is fine: another batch or instance created it.
    pub async fn ensure_table(
        &self,
        bq: &dyn BigQuery,
        table: &TableRef,
        rows: &[&[u8]],
    ) -> Result<(), BqError> {
        let lock = self.lock(table);
        let _held = lock.lock().await;
        let def = self.definition(table, rows);
        let known = |m: &Mutex<std::collections::HashSet<String>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&table.dataset)
        };
        if self.auto_create_dataset && !known(&self.datasets) {
            // Before the table: some servers (bqemulator) answer 500, not 404, for a table in a
            // missing dataset.
            self.create_dataset(bq, &table.dataset).await?;
        }
        let created = match bq.create_table(&def).await {
            Err(e) if e.is_not_found() && self.auto_create_dataset => {
                // The dataset went away since.
                self.create_dataset(bq, &table.dataset).await?;
                bq.create_table(&def).await?
            }
            other => other?,
        };
        if created {
            tracing::info!(
                table = %table,
                fields = def.schema.len(),
                inferred = self.spec(table).is_none_or(|s| s.schema.is_empty()),
                partitioning = ?def.time_partitioning,
                clustering = ?def.clustering,
                "created table"
            );
        }
        Ok(())
    }

    async fn create_dataset(&self, bq: &dyn BigQuery, dataset: &str) -> Result<(), BqError> {
        if bq.create_dataset(dataset).await? {
            tracing::info!(dataset = %dataset, "created dataset");
        }
        self.datasets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dataset.to_owned());
        Ok(())
    }

    /// Adds the fields of `rows` (encoded insertAll entries) that `table` lacks, typed by inference,
    /// with `tables.patch`. Returns their paths; none when the table has them all already (another
    /// batch added them, or a type mismatch is to blame).
    pub async fn add_fields(
        &self,
        bq: &dyn BigQuery,
        table: &TableRef,
        rows: &[&[u8]],
    ) -> Result<Vec<String>, BqError> {
        let lock = self.lock(table);
        let _held = lock.lock().await;
        let current = bq.get_table(table).await?.ok_or_else(|| {
            BqError::http(
                404,
                "notFound",
                format!("table {table} disappeared while adding fields"),
            )
        })?;
        let inferred = self.row_fields(table, rows);
        let (merged, added) = schema::merge_missing(&current, &inferred);
        if !added.is_empty() {
            bq.patch_schema(table, merged).await?;
            tracing::info!(table = %table, fields = ?added, "added fields to the table");
        }
        Ok(added)
    }
}

/// A BigQuery client with table management: what the writer is given when `[bigquery]` asks for
/// any (see [`TableManager`]). Every call goes to the inner client.
pub struct Managed {
    inner: Arc<dyn BigQuery>,
    tables: TableManager,
}

impl Managed {
    pub fn new(inner: Arc<dyn BigQuery>, config: &Config) -> Self {
        Self {
            inner,
            tables: TableManager::new(&config.bigquery, &config.kafka.topics),
        }
    }

    /// With the columns the registry's schemas give tables: missing tables are created with their
    /// types, and a table whose schemas conflict is not written (a sink failure).
    pub fn with_registry_columns(mut self, columns: Arc<RegistryColumns>) -> Self {
        self.tables.registry_columns = Some(columns);
        self
    }

    /// The sink failure of writing to `table` while its schemas conflict.
    fn conflict(&self, table: &TableRef) -> Option<BqError> {
        let columns = self.tables.registry_columns.as_ref()?;
        columns.conflict(table).map(BqError::SchemaConflict)
    }
}

impl BigQuery for Managed {
    fn insert_all(
        &self,
        table: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        if let Some(e) = self.conflict(table) {
            return Box::pin(futures::future::ready(Err(e)));
        }
        self.inner.insert_all(table, body)
    }

    fn write_rows(
        &self,
        table: &TableRef,
        rows: &[RowData<'_>],
        sources: &[(Tp, i64)],
        options: InsertOptions,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        if let Some(e) = self.conflict(table) {
            return Box::pin(futures::future::ready(Err(e)));
        }
        self.inner.write_rows(table, rows, sources, options)
    }

    fn commit_hook(&self) -> Option<Arc<dyn CommitHook>> {
        self.inner.commit_hook()
    }

    fn row_formats(&self) -> Option<RowFormats> {
        self.inner.row_formats()
    }

    fn get_table(
        &self,
        table: &TableRef,
    ) -> BoxFuture<'static, Result<Option<Vec<FieldSchema>>, BqError>> {
        self.inner.get_table(table)
    }

    fn create_table(&self, def: &TableDefinition) -> BoxFuture<'static, Result<bool, BqError>> {
        self.inner.create_table(def)
    }

    fn create_dataset(&self, dataset: &str) -> BoxFuture<'static, Result<bool, BqError>> {
        self.inner.create_dataset(dataset)
    }

    fn patch_schema(
        &self,
        table: &TableRef,
        schema: Vec<FieldSchema>,
    ) -> BoxFuture<'static, Result<(), BqError>> {
        self.inner.patch_schema(table, schema)
    }

    fn tables(&self) -> Option<&TableManager> {
        Some(&self.tables)
    }
}

#[cfg(test)]
mod tests;
