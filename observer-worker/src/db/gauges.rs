//! The database-derived gauges of `/metrics` (backlog, oldest unfinished event, dead letters,
//! broken capture per observer), read from `observers.status()`.

use super::{queries, Db, DbError, Lane};
use crate::telemetry::metrics::ObserverGauges;

impl Db {
    /// One row per observer of `group` (side lane: never competes with the consumer or the lease).
    pub async fn observer_gauges(&self, group: &str) -> Result<Vec<ObserverGauges>, DbError> {
        const CTX: &str = "observers.status (metrics)";
        let (c, stmt) = self
            .prepared(Lane::Side, CTX, queries::OBSERVER_GAUGES)
            .await?;
        let rows = c
            .query(&stmt, &[&group])
            .await
            .map_err(|e| self.err(CTX, e))?;
        let shape = |e: tokio_postgres::Error| DbError::Sql {
            context: CTX,
            code: None,
            message: format!("unexpected result from the extension: {e}"),
        };
        rows.iter()
            .map(|r| {
                Ok(ObserverGauges {
                    observer: r.try_get(0).map_err(shape)?,
                    backlog: r.try_get(1).map_err(shape)?,
                    oldest_age_seconds: r.try_get(2).map_err(shape)?,
                    dlq: r.try_get(3).map_err(shape)?,
                    has_leader: r.try_get(4).map_err(shape)?,
                    capture_broken: r.try_get(5).map_err(shape)?,
                })
            })
            .collect()
    }
}
