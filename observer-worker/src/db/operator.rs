//! The operator CLI's database access (`status`, `dlq ...`, `debug-event`, `replay`).
//!
//! One plain connection (no pools: a command runs a few statements and exits), in UTC so every
//! timestamp the CLI prints or emits as JSON is `...+00:00`. Rows come back as JSON objects
//! (`to_jsonb(row)`): the output keeps every column the installed extension returns, and a CLI
//! built against a newer contract still works (with blanks) against an older extension.

use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::{root_cause, DbError};

/// `status()` plus ages computed by the server (no clock skew between CLI and database).
/// Columns the installed extension does not have yet are simply absent (NULL ages).
pub const STATUS: &str = "SELECT to_jsonb(s) || jsonb_build_object(\
       'oldest_undelivered_age_s', extract(epoch FROM s.oldest_undelivered_age)::float8, \
       'oldest_job_age_s', extract(epoch FROM s.oldest_job_age)::float8, \
       'lease_expires_in_s', extract(epoch FROM s.lease_expires_at - now())::float8, \
       'last_error_age_s', extract(epoch FROM now() - (to_jsonb(s)->>'last_error_at')::timestamptz)::float8, \
       'last_heartbeat_age_s', extract(epoch FROM now() - (to_jsonb(s)->>'last_heartbeat')::timestamptz)::float8) \
     FROM observers.status() AS s";

/// Every worker's last heartbeat, its age, and whether it holds its group's unexpired lease.
pub const WORKERS: &str = "SELECT jsonb_build_object(\
       'group_name', w.group_name, 'worker_id', w.worker_id, \
       'role', w.info->>'role', 'version', w.info->>'version', 'pid', w.info->'pid', \
       'started_at', w.started_at, 'last_seen', w.last_seen, \
       'heartbeat_age_s', extract(epoch FROM now() - w.last_seen)::float8, \
       'leader', coalesce(l.worker_id = w.worker_id AND l.expires_at > clock_timestamp(), false), \
       'dedup_degraded', coalesce((w.info->'dedup'->>'degraded')::boolean, false)) \
     FROM observers.worker AS w \
     LEFT JOIN observers.leader_lease AS l ON l.group_name = w.group_name \
     ORDER BY w.group_name, w.worker_id";

/// Circuit breakers as workers last reported them.
pub const BREAKERS: &str = "SELECT to_jsonb(b) || jsonb_build_object(\
       'age_s', extract(epoch FROM now() - b.last_seen)::float8) \
     FROM observers.breakers AS b ORDER BY b.group_name, b.destination, b.worker_id";

/// Is the current role a member of observers_worker and not of observers_admin? (No error when
/// the roles do not exist.)
pub const WORKER_ROLE: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r \
       WHERE r.rolname = 'observers_worker' AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')) \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r \
       WHERE r.rolname = 'observers_admin' AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'))";

/// Dead letters, oldest first.
pub const DLQ_LIST: &str = "SELECT to_jsonb(d) FROM observers.dlq_list(\
       observer => $1, since => $2, before => $3, error_contains => $4, lim => $5) AS d";

/// One dead letter with its payload, as JSON text (numbers exact: see `commands::exact_json`).
pub const DLQ_SHOW: &str = "SELECT to_jsonb(d)::text FROM observers.dlq_show(id => $1) AS d";

/// Queue one dead letter for redelivery: true queued, false a retry was already pending.
pub const DLQ_RETRY: &str = "SELECT observers.dlq_retry(id => $1)";

/// Queue every matching dead letter (or count them with `dry_run`).
pub const DLQ_RETRY_ALL: &str = "SELECT observers.dlq_retry_all(\
       observer => $1, since => $2, before => $3, error_contains => $4, dry_run => $5)";

/// Delete matching dead letters (or count them with `dry_run`).
pub const DLQ_PURGE: &str = "SELECT observers.dlq_purge(\
       observer => $1, since => $2, before => $3, error_contains => $4, ids => $5, \
       all_entries => $6, dry_run => $7)";

/// Dead letters per observer.
pub const DLQ_STATS: &str = "SELECT to_jsonb(s) FROM observers.dlq_stats() AS s";

/// Everything known about one event, as JSON text (numbers exact: see `commands::exact_json`).
pub const DEBUG_EVENT: &str = "SELECT observers.debug_event(id => $1)::text";

/// Queue past events of an observer for redelivery.
pub const REPLAY: &str =
    "SELECT observers.replay(observer => $1, from_id => $2, to_id => $3, force => $4)";

/// Every group's cursor and backlog (snapshots as text, the age in seconds).
pub const CHECKPOINT_SHOW: &str = "SELECT to_jsonb(c) || jsonb_build_object(\
       'snap_lo', c.snap_lo::text, 'snap_hi', c.snap_hi::text, \
       'oldest_undelivered_secs', extract(epoch FROM c.oldest_undelivered_age)::float8) \
       FROM observers.checkpoint_show(group_name => $1) AS c";

/// Skip a group's backlog (or report it with `dry_run`): one row per observer.
pub const CHECKPOINT_SKIP: &str =
    "SELECT to_jsonb(s) FROM observers.checkpoint_skip(group_name => $1, dry_run => $2) AS s";

/// Filters shared by `dlq list`, `dlq retry-all` and `dlq purge`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DlqFilter {
    pub observer: Option<String>,
    pub since: Option<SystemTime>,
    pub before: Option<SystemTime>,
    pub error_contains: Option<String>,
}

impl DlqFilter {
    pub fn is_empty(&self) -> bool {
        self.observer.is_none()
            && self.since.is_none()
            && self.before.is_none()
            && self.error_contains.is_none()
    }
}

/// A connection for one operator command.
pub struct OperatorDb {
    client: Client,
    target: String,
    user: String,
    /// The role is a worker role (member of observers_worker, not of observers_admin).
    worker_role: bool,
}

impl OperatorDb {
    /// Connects (5 s timeout unless the URL says otherwise), in UTC.
    pub async fn connect(url: &str) -> Result<OperatorDb, DbError> {
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|e| DbError::BadUrl(root_cause(&e)))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(5));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("fraiseql-observers-cli");
        }
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c TimeZone=UTC"),
            _ => "-c TimeZone=UTC".to_owned(),
        };
        pg.options(options);
        let target = super::describe_target(&pg);
        let user = pg
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "<your role>".to_owned());
        let (client, connection) = pg
            .connect(NoTls)
            .await
            .map_err(|e| DbError::classify(&target, "connecting", e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(OperatorDb {
            client,
            target,
            user,
            worker_role: false,
        })
    }

    /// `host:port` for messages (never the password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The role the CLI connects as (for "grant observers_admin to ..." hints).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Finds out whether the role is a worker role: a member of `observers_worker` and not of
    /// `observers_admin` (permission hints then point at an operator role instead of offering
    /// it the admin role). Best effort: false when it cannot tell.
    pub async fn detect_worker_role(&mut self) {
        self.worker_role = self
            .client
            .query_one(WORKER_ROLE, &[])
            .await
            .ok()
            .and_then(|r| r.try_get::<_, bool>(0).ok())
            .unwrap_or(false);
    }

    pub fn is_worker_role(&self) -> bool {
        self.worker_role
    }

    fn err(&self, context: &'static str, e: tokio_postgres::Error) -> DbError {
        DbError::classify(&self.target, context, e)
    }

    /// A transaction on this command's connection (`apply`: all or nothing).
    pub async fn transaction(&mut self) -> Result<tokio_postgres::Transaction<'_>, DbError> {
        let target = self.target.clone();
        self.client
            .transaction()
            .await
            .map_err(|e| DbError::classify(&target, "BEGIN", e))
    }

    /// Is the extension installed?
    pub async fn extension_version(&self) -> Result<Option<String>, DbError> {
        const CTX: &str = "checking for the pg_observers extension";
        let row = self
            .client
            .query_opt(super::queries::EXTENSION_VERSION, &[])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Rows of a query whose only column is a JSON object.
    pub async fn json_rows(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Value>, DbError> {
        let rows = self
            .client
            .query(sql, params)
            .await
            .map_err(|e| self.err(context, e))?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<_, Option<Value>>(0).ok().flatten())
            .map(|v| v.unwrap_or(Value::Null))
            .collect())
    }

    /// Rows of a query whose only column is text (JSON text: parsed by the caller, which keeps
    /// every digit of a number; see `commands::exact_json`). NULL is `None`.
    pub async fn text_rows(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Option<String>>, DbError> {
        let rows = self
            .client
            .query(sql, params)
            .await
            .map_err(|e| self.err(context, e))?;
        rows.iter()
            .map(|r| {
                r.try_get::<_, Option<String>>(0)
                    .map_err(|e| self.err(context, e))
            })
            .collect()
    }

    /// The single value of a one-row, one-column query (NULL as `Value::Null`).
    pub async fn json_scalar(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Value, DbError> {
        Ok(self
            .json_rows(context, sql, params)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Null))
    }

    /// A one-row, one-column result; NULL reads as `T::default()`.
    async fn scalar<T>(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<T, DbError>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a> + Default,
    {
        let row = self
            .client
            .query_one(sql, params)
            .await
            .map_err(|e| self.err(context, e))?;
        Ok(row
            .try_get::<_, Option<T>>(0)
            .map_err(|e| self.err(context, e))?
            .unwrap_or_default())
    }

    /// A one-row `bigint` result.
    pub async fn scalar_i64(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<i64, DbError> {
        self.scalar(context, sql, params).await
    }

    /// A one-row `boolean` result.
    pub async fn scalar_bool(
        &self,
        context: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<bool, DbError> {
        self.scalar(context, sql, params).await
    }

    /// Starts a transaction that [`OperatorDb::rollback`] undoes (dry runs of functions that
    /// have no `dry_run` argument: the exact answer, nothing kept).
    pub async fn begin(&self) -> Result<(), DbError> {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.err("BEGIN", e))
    }

    pub async fn rollback(&self) -> Result<(), DbError> {
        self.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| self.err("ROLLBACK", e))
    }
}
