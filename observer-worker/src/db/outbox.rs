//! The snapshot cursor over the outbox: batch_open / batch_fetch /
//! checkpoint_save / batch_close (docs/ARCHITECTURE.md "No gaps").

use bytes::Bytes;

use super::{queries, Db, DbError, Lane};

/// The group's open batch as returned by `batch_open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBatch {
    /// Snapshots in their text form (`xmin:xmax:xip,...`), passed back verbatim.
    pub snap_lo: String,
    pub snap_hi: String,
    /// Everything up to this id (inside the batch) is finished.
    pub last_id: i64,
    /// Largest event id of the batch; `None` when the batch is empty.
    pub max_id: Option<i64>,
}

impl OpenBatch {
    /// Two values describe the same batch if their snapshots are equal.
    pub fn same_batch(&self, other: &OpenBatch) -> bool {
        self.snap_lo == other.snap_lo && self.snap_hi == other.snap_hi
    }
}

/// One event of a batch, ready to deliver.
#[derive(Debug, Clone)]
pub struct FetchedEvent {
    pub id: i64,
    pub observer_id: i32,
    /// JSON array text of the ordering-key values; `None` = no ordering.
    pub ordering_key: Option<String>,
    /// The complete webhook body, sent as is.
    pub body: Bytes,
    /// UTC day of `captured_at` (`YYYY-MM-DD`): where its dedup state lives. Empty unless the
    /// database handle fetches days ([`Db::fetch_days`]).
    pub day: String,
    /// `captured_at` in Unix seconds (the database clock), for the end-to-end latency metric.
    pub captured_at: f64,
}

fn shape(context: &'static str, e: tokio_postgres::Error) -> DbError {
    DbError::Sql {
        context,
        code: None,
        message: format!("unexpected result from the extension: {e}"),
    }
}

impl Db {
    pub async fn batch_open(&self, group: &str, epoch: i64) -> Result<OpenBatch, DbError> {
        const CTX: &str = "observers.batch_open";
        let (c, stmt) = self.prepared(Lane::Main, CTX, queries::BATCH_OPEN).await?;
        let row = c
            .query_one(&stmt, &[&group, &epoch])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(OpenBatch {
            snap_lo: row.try_get(0).map_err(|e| shape(CTX, e))?,
            snap_hi: row.try_get(1).map_err(|e| shape(CTX, e))?,
            last_id: row
                .try_get::<_, Option<i64>>(2)
                .map_err(|e| shape(CTX, e))?
                .unwrap_or(0),
            max_id: row.try_get(3).map_err(|e| shape(CTX, e))?,
        })
    }

    pub async fn batch_fetch(
        &self,
        group: &str,
        batch: &OpenBatch,
        after_id: i64,
        max_id: i64,
        limit: i32,
    ) -> Result<Vec<FetchedEvent>, DbError> {
        const CTX: &str = "observers.batch_fetch";
        let sql = if self.fetch_days {
            queries::BATCH_FETCH_WITH_DAY
        } else {
            queries::BATCH_FETCH
        };
        let (c, stmt) = self.prepared(Lane::Main, CTX, sql).await?;
        let rows = c
            .query(
                &stmt,
                &[
                    &group,
                    &batch.snap_lo,
                    &batch.snap_hi,
                    &after_id,
                    &max_id,
                    &limit,
                ],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let body: &str = row.try_get(3).map_err(|e| shape(CTX, e))?;
            out.push(FetchedEvent {
                id: row.try_get(0).map_err(|e| shape(CTX, e))?,
                observer_id: row.try_get(1).map_err(|e| shape(CTX, e))?,
                ordering_key: row.try_get(2).map_err(|e| shape(CTX, e))?,
                body: Bytes::copy_from_slice(body.as_bytes()),
                day: row
                    .try_get::<_, Option<String>>(4)
                    .map_err(|e| shape(CTX, e))?
                    .unwrap_or_default(),
                captured_at: row
                    .try_get::<_, Option<f64>>(5)
                    .map_err(|e| shape(CTX, e))?
                    .unwrap_or(0.0),
            });
        }
        Ok(out)
    }

    pub async fn checkpoint_save(
        &self,
        group: &str,
        epoch: i64,
        last_id: i64,
    ) -> Result<(), DbError> {
        const CTX: &str = "observers.checkpoint_save";
        let (c, stmt) = self
            .prepared(Lane::Main, CTX, queries::CHECKPOINT_SAVE)
            .await?;
        c.execute(&stmt, &[&group, &epoch, &last_id])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }

    pub async fn batch_close(&self, group: &str, epoch: i64) -> Result<(), DbError> {
        const CTX: &str = "observers.batch_close";
        let (c, stmt) = self.prepared(Lane::Main, CTX, queries::BATCH_CLOSE).await?;
        c.execute(&stmt, &[&group, &epoch])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }
}
