//! Pairs parked while their destination's circuit breaker is open
//! (`observers.parked`, pg_observers/sql/bootstrap/36_parked.sql).

use super::{queries, Db, DbError, Lane};

/// A pair to park.
#[derive(Debug)]
pub struct ParkRecord<'a> {
    pub event_id: i64,
    pub observer_id: i32,
    pub action_index: i32,
    pub action_type: &'a str,
    pub webhook_id: &'a str,
    /// UTC capture day `YYYY-MM-DD`.
    pub day: &'a str,
    pub destination: &'a str,
    pub body: &'a str,
    pub attempts: i32,
    pub last_error: Option<&'a str>,
}

/// A parked pair, fetched for delivery.
#[derive(Debug, Clone)]
pub struct ParkedPair {
    pub id: i64,
    pub event_id: i64,
    pub observer_id: i32,
    pub action_index: i32,
    pub webhook_id: String,
    pub day: String,
    pub destination: String,
    pub body: String,
    pub attempts: i32,
}

impl Db {
    /// Parks a pair (fenced by `epoch`); returns its id.
    pub async fn park_add(
        &self,
        group: &str,
        epoch: i64,
        p: &ParkRecord<'_>,
    ) -> Result<i64, DbError> {
        const CTX: &str = "observers.park_add";
        let (c, stmt) = self.prepared(Lane::Side, CTX, queries::PARK_ADD).await?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &group,
                    &epoch,
                    &p.event_id,
                    &p.observer_id,
                    &p.action_index,
                    &p.action_type,
                    &p.webhook_id,
                    &p.day,
                    &p.destination,
                    &p.body,
                    &p.attempts,
                    &p.last_error,
                ],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get::<_, Option<i64>>(0)
            .map(|v| v.unwrap_or(0))
            .map_err(|e| self.err(CTX, e))
    }

    pub async fn park_fetch(
        &self,
        group: &str,
        skip_destinations: &[String],
        skip_ids: &[i64],
        limit: i32,
    ) -> Result<Vec<ParkedPair>, DbError> {
        const CTX: &str = "observers.park_fetch";
        let (c, stmt) = self.prepared(Lane::Side, CTX, queries::PARK_FETCH).await?;
        let rows = c
            .query(&stmt, &[&group, &skip_destinations, &skip_ids, &limit])
            .await
            .map_err(|e| self.err(CTX, e))?;
        rows.iter()
            .map(|r| {
                Ok(ParkedPair {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    observer_id: r.try_get(2)?,
                    action_index: r.try_get(3)?,
                    webhook_id: r.try_get(4)?,
                    day: r.try_get(5)?,
                    destination: r.try_get(6)?,
                    body: r.try_get(7)?,
                    attempts: r.try_get(8)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.err(CTX, e))
    }

    /// Finishes a parked pair (fenced): delivered when `error` is `None`, else dead-lettered.
    pub async fn park_finish(
        &self,
        group: &str,
        epoch: i64,
        id: i64,
        error: Option<&str>,
        attempts: i32,
        last_status: Option<i32>,
    ) -> Result<(), DbError> {
        const CTX: &str = "observers.park_finish";
        let (c, stmt) = self.prepared(Lane::Side, CTX, queries::PARK_FINISH).await?;
        c.execute(
            &stmt,
            &[&group, &epoch, &id, &error, &attempts, &last_status],
        )
        .await
        .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }
}
