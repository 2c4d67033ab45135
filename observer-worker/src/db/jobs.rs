//! The job queue (`observers.job`, pg_observers/sql/bootstrap/50_jobs.sql; docs/JOBS.md).
//! Tokens and runner ids travel as text (no uuid driver feature needed); intervals as
//! milliseconds.

use std::time::Duration;

use super::{Db, DbError, Lane};

const CLAIM: &str =
    "SELECT id, token::text, observer_id, action_index, event_id, day, webhook_id, \
     body, attempts, max_attempts, \
     (extract(epoch FROM clock_timestamp() - run_at) * 1000)::float8 \
     FROM observers.job_claim($1, $2, $3::text::uuid, $4, ($5::text || ' milliseconds')::interval)";
const FINISH: &str = "SELECT observers.job_finish($1, $2::text::uuid, $3, $4, $5, \
     ($6::text || ' milliseconds')::interval)";
const COMPLETE: &str = "SELECT observers.job_complete($1, $2::text[]::uuid[])";
const RESCUE: &str = "SELECT observers.job_rescue($1, ($2::text || ' milliseconds')::interval)";
const BEAT: &str = "SELECT observers.job_runner_beat($1::text::uuid, $2, $3, $4)";
const ENQUEUE_PAIR: &str = "SELECT observers.job_enqueue_pair($1, $2, $3, $4, $5, \
     coalesce(nullif($6::text, '')::date, (now() AT TIME ZONE 'UTC')::date), $7, $8, $9)";
const NEW_RUNNER_ID: &str = "SELECT gen_random_uuid()::text";
const MAINTAIN: &str = "SELECT observers.job_maintain()";

/// A job this worker claimed (its attempt is already counted).
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    /// The run's token: only a finish with it changes the job.
    pub token: String,
    pub observer_id: i32,
    pub action_index: i32,
    /// The pair's event (`mode: async`); `None` for jobs enqueued from SQL.
    pub event_id: Option<i64>,
    /// Deduplication day `YYYY-MM-DD`.
    pub day: String,
    pub webhook_id: String,
    pub body: String,
    /// Attempts used, this one included.
    pub attempts: i32,
    pub max_attempts: i32,
    /// How long it waited from `run_at` to this claim.
    pub wait: Duration,
}

/// How a run ended (`observers.job_finish`'s `outcome`).
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Completed,
    /// Retryable failure: again after `retry_in` (discarded when out of attempts).
    Retry {
        error: String,
        status: Option<i32>,
        retry_in: Duration,
    },
    /// Permanent failure: dead-lettered.
    Discard {
        error: String,
        status: Option<i32>,
    },
    /// Not attempted (breaker open, shutdown): the attempt is given back.
    Snooze {
        reason: String,
        retry_in: Duration,
    },
}

/// An (event, action) pair to enqueue (`mode: async`).
#[derive(Debug, Clone)]
pub struct PairJob<'a> {
    pub event_id: i64,
    pub observer_id: i32,
    pub action_index: i32,
    pub day: &'a str,
    pub webhook_id: &'a str,
    pub body: &'a str,
    pub max_attempts: i32,
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

impl Db {
    /// A fresh id for this process's job runner.
    pub async fn job_runner_id(&self) -> Result<String, DbError> {
        const CTX: &str = "gen_random_uuid";
        let (c, stmt) = self.prepared(Lane::Jobs, CTX, NEW_RUNNER_ID).await?;
        let row = c
            .query_one(&stmt, &[])
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get(0).map_err(|e| self.err(CTX, e))
    }

    pub async fn job_runner_beat(
        &self,
        runner: &str,
        group: &str,
        worker_id: &str,
        stopping: bool,
    ) -> Result<(), DbError> {
        const CTX: &str = "observers.job_runner_beat";
        let (c, stmt) = self.prepared(Lane::Jobs, CTX, BEAT).await?;
        c.execute(&stmt, &[&runner, &group, &worker_id, &stopping])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }

    /// Claims at most `limit` due jobs (one round trip, committed at once).
    pub async fn job_claim(
        &self,
        group: &str,
        worker_id: &str,
        runner: &str,
        limit: i32,
        timeout: Duration,
    ) -> Result<Vec<ClaimedJob>, DbError> {
        const CTX: &str = "observers.job_claim";
        let (c, stmt) = self.prepared(Lane::Jobs, CTX, CLAIM).await?;
        let rows = c
            .query(
                &stmt,
                &[&group, &worker_id, &runner, &limit, &millis(timeout)],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        rows.iter()
            .map(|r| {
                let wait_ms: f64 = r.try_get(10)?;
                Ok(ClaimedJob {
                    id: r.try_get(0)?,
                    token: r.try_get(1)?,
                    observer_id: r.try_get(2)?,
                    action_index: r.try_get(3)?,
                    event_id: r.try_get(4)?,
                    day: r.try_get(5)?,
                    webhook_id: r.try_get(6)?,
                    body: r.try_get(7)?,
                    attempts: r.try_get(8)?,
                    max_attempts: r.try_get(9)?,
                    wait: Duration::from_secs_f64((wait_ms / 1000.0).max(0.0)),
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.err(CTX, e))
    }

    /// Records the end of a run. `Ok(None)`: the token is stale (the job was rescued and
    /// belongs to another run): nothing changed.
    pub async fn job_finish(
        &self,
        id: i64,
        token: &str,
        outcome: &JobOutcome,
    ) -> Result<Option<String>, DbError> {
        const CTX: &str = "observers.job_finish";
        let (c, stmt) = self.prepared(Lane::Jobs, CTX, FINISH).await?;
        let (kind, error, status, retry_in): (&str, Option<&str>, Option<i32>, Duration) =
            match outcome {
                JobOutcome::Completed => ("completed", None, None, Duration::ZERO),
                JobOutcome::Retry {
                    error,
                    status,
                    retry_in,
                } => ("retry", Some(error), *status, *retry_in),
                JobOutcome::Discard { error, status } => {
                    ("discard", Some(error), *status, Duration::ZERO)
                }
                JobOutcome::Snooze { reason, retry_in } => {
                    ("snooze", Some(reason), None, *retry_in)
                }
            };
        let row = c
            .query_one(
                &stmt,
                &[&id, &token, &kind, &error, &status, &millis(retry_in)],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get(0).map_err(|e| self.err(CTX, e))
    }

    /// Records many successful runs in one statement (`observers.job_complete`): `runs` are
    /// (job id, token) pairs. Returns the ids that completed; the others' tokens were stale.
    pub async fn job_complete(&self, runs: &[(i64, &str)]) -> Result<Vec<i64>, DbError> {
        const CTX: &str = "observers.job_complete";
        let (c, stmt) = self.prepared(Lane::Jobs, CTX, COMPLETE).await?;
        let ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
        let tokens: Vec<&str> = runs.iter().map(|r| r.1).collect();
        let rows = c
            .query(&stmt, &[&ids, &tokens])
            .await
            .map_err(|e| self.err(CTX, e))?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.err(CTX, e))
    }

    /// Rescues the group's running jobs whose runner is gone or whose deadline passed.
    pub async fn job_rescue(&self, group: &str, stale: Duration) -> Result<i32, DbError> {
        const CTX: &str = "observers.job_rescue";
        let (c, stmt) = self.prepared(Lane::Jobs, CTX, RESCUE).await?;
        let row = c
            .query_one(&stmt, &[&group, &millis(stale)])
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get(0).map_err(|e| self.err(CTX, e))
    }

    /// Enqueues an (event, action) pair (fenced; idempotent per pair). Returns the job id.
    pub async fn job_enqueue_pair(
        &self,
        group: &str,
        epoch: i64,
        job: &PairJob<'_>,
    ) -> Result<i64, DbError> {
        const CTX: &str = "observers.job_enqueue_pair";
        let (c, stmt) = self.prepared(Lane::Side, CTX, ENQUEUE_PAIR).await?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &group,
                    &epoch,
                    &job.event_id,
                    &job.observer_id,
                    &job.action_index,
                    &job.day,
                    &job.webhook_id,
                    &job.body,
                    &job.max_attempts,
                ],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get(0).map_err(|e| self.err(CTX, e))
    }

    /// History partitions ahead and retention of finished jobs.
    pub async fn job_maintain(&self) -> Result<String, DbError> {
        const CTX: &str = "observers.job_maintain";
        let (c, stmt) = self.prepared(Lane::Jobs, CTX, MAINTAIN).await?;
        let row = c
            .query_one(&stmt, &[])
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get(0).map_err(|e| self.err(CTX, e))
    }
}
