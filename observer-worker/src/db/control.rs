//! Lease, dead letters, observer registry, heartbeat, maintenance. (The operator commands'
//! queries, `status()` included, are in [`super::operator`].)

use std::time::Duration;

use super::{queries, Db, DbError, Lane};
use crate::config::ObserverConfig;

/// A row of `observers.observer_definitions(group)`.
#[derive(Debug, Clone)]
pub struct ObserverDefinition {
    pub id: i32,
    pub name: String,
    pub table_name: String,
    /// As stored: `${VAR}` placeholders not expanded.
    pub actions: serde_json::Value,
    pub ordering_key: Option<Vec<String>>,
    pub enabled: bool,
}

/// What `dlq_add` records.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord<'a> {
    pub event_id: i64,
    pub observer_id: i32,
    pub action_index: i32,
    pub action_type: &'a str,
    pub webhook_id: &'a str,
    /// The webhook body (JSON text).
    pub payload: &'a str,
    pub error: &'a str,
    pub attempts: i32,
    pub last_status: Option<i32>,
}

fn shape(context: &'static str, e: tokio_postgres::Error) -> DbError {
    DbError::Sql {
        context,
        code: None,
        message: format!("unexpected result from the extension: {e}"),
    }
}

impl Db {
    /// The installed version of `pg_observers`, `None` if the extension is not installed.
    pub async fn extension_version(&self) -> Result<Option<String>, DbError> {
        const CTX: &str = "checking for the pg_observers extension";
        let c = self.client(Lane::Side, CTX).await?;
        let row = c
            .query_opt(queries::EXTENSION_VERSION, &[])
            .await
            .map_err(|e| self.err(CTX, e))?;
        match row {
            Some(r) => Ok(Some(r.try_get(0).map_err(|e| shape(CTX, e))?)),
            None => Ok(None),
        }
    }

    /// Takes or renews the group's lease; `Some(epoch)` if we hold it.
    pub async fn lease_acquire(
        &self,
        group: &str,
        worker_id: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, DbError> {
        const CTX: &str = "observers.lease_acquire";
        let (c, stmt) = self
            .prepared(Lane::Lease, CTX, queries::LEASE_ACQUIRE)
            .await?;
        let secs = ttl.as_secs_f64();
        let row = c
            .query_one(&stmt, &[&group, &worker_id, &secs])
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get(0).map_err(|e| shape(CTX, e))
    }

    pub async fn lease_release(
        &self,
        group: &str,
        worker_id: &str,
        epoch: i64,
    ) -> Result<bool, DbError> {
        const CTX: &str = "observers.lease_release";
        let (c, stmt) = self
            .prepared(Lane::Lease, CTX, queries::LEASE_RELEASE)
            .await?;
        let row = c
            .query_one(&stmt, &[&group, &worker_id, &epoch])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(row
            .try_get::<_, Option<bool>>(0)
            .map_err(|e| shape(CTX, e))?
            .unwrap_or(false))
    }

    pub async fn heartbeat(
        &self,
        group: &str,
        worker_id: &str,
        info: &serde_json::Value,
    ) -> Result<(), DbError> {
        const CTX: &str = "observers.heartbeat";
        let (c, stmt) = self
            .prepared(Lane::Heartbeat, CTX, queries::HEARTBEAT)
            .await?;
        c.execute(&stmt, &[&group, &worker_id, info])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }

    /// Records a dead letter (fenced by `epoch`); returns its id.
    pub async fn dlq_add(
        &self,
        group: &str,
        epoch: i64,
        d: &DeadLetterRecord<'_>,
    ) -> Result<i64, DbError> {
        const CTX: &str = "observers.dlq_add";
        let (c, stmt) = self.prepared(Lane::Side, CTX, queries::DLQ_ADD).await?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &group,
                    &epoch,
                    &d.event_id,
                    &d.observer_id,
                    &d.action_index,
                    &d.action_type,
                    &d.webhook_id,
                    &d.payload,
                    &d.error,
                    &d.attempts,
                    &d.last_status,
                ],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(|e| shape(CTX, e))?
            .unwrap_or(0))
    }

    pub async fn observer_definitions(
        &self,
        group: &str,
    ) -> Result<Vec<ObserverDefinition>, DbError> {
        const CTX: &str = "observers.observer_definitions";
        let (c, stmt) = self
            .prepared(Lane::Side, CTX, queries::OBSERVER_DEFINITIONS)
            .await?;
        let rows = c
            .query(&stmt, &[&group])
            .await
            .map_err(|e| self.err(CTX, e))?;
        rows.iter()
            .map(|r| {
                Ok(ObserverDefinition {
                    id: r.try_get(0).map_err(|e| shape(CTX, e))?,
                    name: r.try_get(1).map_err(|e| shape(CTX, e))?,
                    table_name: r
                        .try_get::<_, Option<String>>(2)
                        .map_err(|e| shape(CTX, e))?
                        .unwrap_or_default(),
                    actions: r
                        .try_get::<_, Option<serde_json::Value>>(3)
                        .map_err(|e| shape(CTX, e))?
                        .unwrap_or(serde_json::Value::Null),
                    ordering_key: r.try_get(4).map_err(|e| shape(CTX, e))?,
                    enabled: r
                        .try_get::<_, Option<bool>>(5)
                        .map_err(|e| shape(CTX, e))?
                        .unwrap_or(true),
                })
            })
            .collect()
    }

    /// Creates or replaces an observer of the configuration file in `group`.
    pub async fn create_observer(&self, o: &ObserverConfig, group: &str) -> Result<(), DbError> {
        const CTX: &str = "observers.create_observer";
        let (c, stmt) = self
            .prepared(Lane::Side, CTX, queries::CREATE_OBSERVER)
            .await?;
        c.execute(
            &stmt,
            &[
                &o.name,
                &o.table,
                &o.events,
                &o.condition,
                &o.columns,
                &o.ordering_key,
                &o.actions_raw,
                &group,
            ],
        )
        .await
        .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }

    pub async fn maintain(&self) -> Result<String, DbError> {
        const CTX: &str = "observers.maintain";
        let c = self.client(Lane::Side, CTX).await?;
        let row = c
            .query_one(queries::MAINTAIN, &[])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(row
            .try_get::<_, Option<String>>(0)
            .map_err(|e| shape(CTX, e))?
            .unwrap_or_default())
    }
}
