//! The attempt log (`observers.attempt`, pg_observers/sql/bootstrap/37_operations.sql): one row
//! per delivery attempt, read by `observers.debug_event()`.

use std::time::SystemTime;

use super::{queries, Db, DbError, Lane};

/// One attempt, as the executor saw it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub event_id: i64,
    pub observer_id: i32,
    pub action_index: i32,
    /// 1 for the first attempt of this delivery round.
    pub attempt: i32,
    pub at: SystemTime,
    pub duration_ms: f32,
    pub status: Option<i32>,
    /// `delivered`, `retry` (failed, another attempt follows) or `failed` (for good).
    pub outcome: &'static str,
    pub error: Option<String>,
}

impl Db {
    /// Appends attempts in one round trip, on the asynchronous-commit lane: the log is a
    /// diagnostic record, not part of the delivery guarantee.
    pub async fn attempt_add(
        &self,
        worker_id: &str,
        recs: &[AttemptRecord],
    ) -> Result<i64, DbError> {
        const CTX: &str = "observers.attempt_add";
        let (c, stmt) = self
            .prepared(Lane::Dedup, CTX, queries::ATTEMPT_ADD)
            .await?;
        let event_ids: Vec<i64> = recs.iter().map(|r| r.event_id).collect();
        let observer_ids: Vec<i32> = recs.iter().map(|r| r.observer_id).collect();
        let indexes: Vec<i32> = recs.iter().map(|r| r.action_index).collect();
        let attempts: Vec<i32> = recs.iter().map(|r| r.attempt).collect();
        let ats: Vec<SystemTime> = recs.iter().map(|r| r.at).collect();
        let durations: Vec<f32> = recs.iter().map(|r| r.duration_ms).collect();
        let statuses: Vec<Option<i32>> = recs.iter().map(|r| r.status).collect();
        let outcomes: Vec<&str> = recs.iter().map(|r| r.outcome).collect();
        let errors: Vec<Option<&str>> = recs.iter().map(|r| r.error.as_deref()).collect();
        let row = c
            .query_one(
                &stmt,
                &[
                    &worker_id,
                    &event_ids,
                    &observer_ids,
                    &indexes,
                    &attempts,
                    &ats,
                    &durations,
                    &statuses,
                    &outcomes,
                    &errors,
                ],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get::<_, Option<i64>>(0)
            .map(|v| v.unwrap_or(0))
            .map_err(|e| self.err(CTX, e))
    }
}
