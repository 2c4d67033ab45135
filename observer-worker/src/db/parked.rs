//! Pairs parked while their destination's circuit breaker is open, or while their observer is
//! broken (`observers.parked`, pg_observers/sql/bootstrap/36_parked.sql).

use std::borrow::Cow;

use super::{queries, Db, DbError, Lane};

/// A pair to park.
#[derive(Debug, Clone)]
pub struct ParkRecord {
    pub event_id: i64,
    pub observer_id: i32,
    pub action_index: i32,
    /// `webhook`, `slack`, ... (a broken observer's pairs keep the type as stored).
    pub action_type: Cow<'static, str>,
    pub webhook_id: String,
    /// UTC capture day `YYYY-MM-DD`.
    pub day: String,
    pub destination: String,
    pub body: String,
    pub attempts: i32,
    pub last_error: Option<String>,
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
    /// NULL for DLQ retries and replays (queued from SQL, which does not know it).
    pub destination: Option<String>,
    pub body: String,
    pub attempts: i32,
    /// `breaker`, `dlq_retry` (observers.dlq_retry) or `replay` (observers.replay).
    pub reason: String,
    /// Deliver even if deduplication remembers the pair as done (`replay(..., force => true)`).
    pub force: bool,
}

impl Db {
    /// Parks pairs, one round trip (fenced by `epoch`); returns how many rows were written.
    pub async fn park_add(
        &self,
        group: &str,
        epoch: i64,
        recs: &[ParkRecord],
    ) -> Result<i64, DbError> {
        const CTX: &str = "observers.park_add";
        let (c, stmt) = self.prepared(Lane::Side, CTX, queries::PARK_ADD).await?;
        let col = |f: &dyn Fn(&ParkRecord) -> i64| recs.iter().map(f).collect::<Vec<i64>>();
        let event_ids = col(&|r| r.event_id);
        let observer_ids: Vec<i32> = recs.iter().map(|r| r.observer_id).collect();
        let indexes: Vec<i32> = recs.iter().map(|r| r.action_index).collect();
        let types: Vec<&str> = recs.iter().map(|r| r.action_type.as_ref()).collect();
        let ids: Vec<&str> = recs.iter().map(|r| r.webhook_id.as_str()).collect();
        let days: Vec<&str> = recs.iter().map(|r| r.day.as_str()).collect();
        let dests: Vec<&str> = recs.iter().map(|r| r.destination.as_str()).collect();
        let bodies: Vec<&str> = recs.iter().map(|r| r.body.as_str()).collect();
        let attempts: Vec<i32> = recs.iter().map(|r| r.attempts).collect();
        let errors: Vec<Option<&str>> = recs.iter().map(|r| r.last_error.as_deref()).collect();
        let row = c
            .query_one(
                &stmt,
                &[
                    &group,
                    &epoch,
                    &event_ids,
                    &observer_ids,
                    &indexes,
                    &types,
                    &ids,
                    &days,
                    &dests,
                    &bodies,
                    &attempts,
                    &errors,
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
                    reason: r.try_get(9)?,
                    force: r.try_get(10)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.err(CTX, e))
    }

    /// Names the destination of a queued row that has none (DLQ retries and replays).
    pub async fn park_set_destination(
        &self,
        group: &str,
        id: i64,
        destination: &str,
    ) -> Result<(), DbError> {
        const CTX: &str = "observers.park_set_destination";
        let (c, stmt) = self
            .prepared(Lane::Side, CTX, queries::PARK_SET_DESTINATION)
            .await?;
        c.execute(&stmt, &[&group, &id, &destination])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(())
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
