//! PostgreSQL access: one typed wrapper per SQL function of the extension.
//!
//! Small connection pools keep unrelated traffic from starving each
//! other: `main` (the consumer: batches, fetches, checkpoints), `lease`
//! (one connection that does nothing but take, renew and release the leader
//! lease: the lease records its database session, whose end tells standbys
//! that the leader is gone), `heartbeat` (heartbeats: never behind a flood of
//! dead letters), `side` (dead letters, observer definitions, maintenance) and
//! `dedup`.
//! Pools reconnect by themselves: a connection that died (database restart)
//! is dropped when next checked out and a fresh one is opened.

mod attempts;
mod control;
mod dedup;
mod feed;
mod gauges;
mod jobs;
pub mod listener;
pub mod operator;
mod outbox;
mod parked;
pub mod queries;
pub mod schema;

pub use attempts::AttemptRecord;
pub use dedup::ClaimState;
pub use feed::{FeedDeadLetter, FeedRow, FeedSession};
pub use jobs::{ClaimedJob, JobOutcome, PairJob};
pub use parked::{ParkRecord, ParkedPair};

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

pub use control::{DeadLetterRecord, ObserverDefinition};
pub use outbox::{FetchedEvent, OpenBatch};

/// SQLSTATE raised by fenced functions when the caller's lease epoch is stale.
pub const FENCED_SQLSTATE: &str = "OB001";

/// Errors from the database, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Cannot reach the database or the connection broke (restart, network).
    /// Retryable: back off and try again.
    #[error("database unreachable at {target}: {message}")]
    Unavailable { target: String, message: String },
    /// Our lease epoch is no longer current (SQLSTATE OB001). Stop processing,
    /// go back to acquiring the lease.
    #[error("fenced: another worker owns the group now ({0})")]
    Fenced(String),
    /// A transient server-side condition (serialization failure, deadlock,
    /// too many connections). Retryable.
    #[error("{context}: transient database error: {message}")]
    Transient {
        context: &'static str,
        message: String,
    },
    /// Any other SQL error (permissions, missing function, bad input): not
    /// fixed by retrying immediately. The message includes the SQLSTATE.
    #[error("{context}: {message}")]
    Sql {
        context: &'static str,
        code: Option<String>,
        message: String,
    },
    /// The connection string itself is unusable.
    #[error("invalid database URL: {0}")]
    BadUrl(String),
}

impl DbError {
    /// True for errors that go away by retrying later (connection, transient).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DbError::Unavailable { .. } | DbError::Transient { .. }
        )
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, DbError::Fenced(_))
    }

    /// The SQLSTATE of an SQL error, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Sql { code, .. } => code.as_deref(),
            DbError::Fenced(_) => Some(FENCED_SQLSTATE),
            _ => None,
        }
    }

    /// Classifies a driver error.
    pub fn classify(target: &str, context: &'static str, e: tokio_postgres::Error) -> DbError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            if code == FENCED_SQLSTATE {
                return DbError::Fenced(db.message().to_owned());
            }
            let mut message = format!("{} (SQLSTATE {code})", db.message());
            if let Some(hint) = db.hint() {
                message.push_str("; hint: ");
                message.push_str(hint);
            }
            // 08: connection exception; 57P0x: shutdown/crash/starting up; 53300: too many connections.
            if code.starts_with("08")
                || code.starts_with("57P")
                || code == SqlState::TOO_MANY_CONNECTIONS.code()
            {
                return DbError::Unavailable {
                    target: target.to_owned(),
                    message,
                };
            }
            if code == SqlState::T_R_SERIALIZATION_FAILURE.code()
                || code == SqlState::T_R_DEADLOCK_DETECTED.code()
                || code == SqlState::LOCK_NOT_AVAILABLE.code()
                || code == SqlState::QUERY_CANCELED.code()
            {
                return DbError::Transient { context, message };
            }
            return DbError::Sql {
                context,
                code: Some(code.to_owned()),
                message,
            };
        }
        // No SQLSTATE: closed connection, I/O, protocol, or a decoding problem.
        let message = root_cause(&e);
        if e.is_closed() || is_io(&e) || message.contains("connection") {
            DbError::Unavailable {
                target: target.to_owned(),
                message,
            }
        } else {
            DbError::Sql {
                context,
                code: None,
                message,
            }
        }
    }
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The innermost error message (the driver wraps e.g. "Connection refused").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !m.is_empty() {
            msg = m;
        }
        source = s.source();
    }
    msg
}

/// Connection handle for everything the worker does in the database.
#[derive(Clone)]
pub struct Db {
    main: Pool,
    lease: Pool,
    heartbeat: Pool,
    side: Pool,
    dedup: Pool,
    jobs: Pool,
    /// `batch_fetch` also returns each event's capture day (needed by deduplication and
    /// parking; set by [`Db::fetch_days`]).
    fetch_days: bool,
    pg: tokio_postgres::Config,
    target: String,
    connect_timeout: Duration,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("target", &self.target).finish()
    }
}

/// Which pool a call uses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lane {
    Main,
    /// The leader lease only (see the module comment).
    Lease,
    Heartbeat,
    Side,
    /// Deduplication state: asynchronous commit (see `Db::new`).
    Dedup,
    /// The job queue (claims, finishes, rescue, runner heartbeats): every worker runs jobs.
    Jobs,
}

impl Db {
    /// Builds the pools (no I/O: connections are opened on first use).
    pub fn new(url: &str, connect_timeout: Duration) -> Result<Db, DbError> {
        let mut pg =
            tokio_postgres::Config::from_str(url).map_err(|e| DbError::BadUrl(root_cause(&e)))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("fraiseql-observers");
        }
        pg.keepalives_idle(Duration::from_secs(30));
        let target = describe_target(&pg);
        // The consumer's own bookkeeping (batch_open/close, checkpoint_save)
        // commits without waiting for the WAL flush. If PostgreSQL itself
        // crashes, the newest of these commits may be lost: the checkpoint is
        // then slightly older and those events are delivered again (same
        // webhook-id), never skipped, because WAL is durable in order (a dead
        // letter, written synchronously on another lane, is always durable
        // before the checkpoint that passes its event). The lease stays
        // synchronous: an epoch must never be handed out twice.
        // A statement that hangs (e.g. behind a lock) must not stall the
        // consumer forever: it fails after a minute and is retried.
        // Deduplication state commits asynchronously too: a confirmation always commits before
        // the checkpoint that passes its event (the executor waits for it), and WAL is durable
        // in order, so a PostgreSQL crash can lose a confirmation only together with the
        // checkpoint after it; that pair then runs again with its webhook-id (the window
        // docs/RESILIENCE.md describes), never skipped.
        let with_options = |extra: &str| {
            let mut c = pg.clone();
            let options = match pg.get_options() {
                Some(o) if !o.trim().is_empty() => format!("{o} {extra}"),
                _ => extra.to_owned(),
            };
            c.options(options);
            c
        };
        // jit=off everywhere: the worker runs short OLTP statements whose cost estimates grow
        // with the outbox; JIT compiling them would cost far more than running them.
        let pg_main = with_options("-c jit=off -c synchronous_commit=off -c statement_timeout=60s");
        let pg_dedup =
            with_options("-c jit=off -c synchronous_commit=off -c statement_timeout=30s");
        let pg = with_options("-c jit=off");
        let make = |pg: &tokio_postgres::Config, size: usize| make_pool(pg, size, connect_timeout);
        Ok(Db {
            main: make(&pg_main, 3)?,
            lease: make(
                &with_options(&lease_options(DEFAULT_LEASE_STATEMENT_TIMEOUT)),
                1,
            )?,
            heartbeat: make(&pg, 1)?,
            side: make(&pg, 4)?,
            dedup: make(&pg_dedup, 4)?,
            // Job claims and finishes commit asynchronously: a PostgreSQL crash can lose the
            // last few, which only makes a job run again (a lost claim: still available; a lost
            // finish: still running, rescued at its deadline, job_queue.timeout) with the same
            // idempotency key - at-least-once, never lost. Enqueues (`job_enqueue_pair`, on
            // the side lane; `job_enqueue`, in the application's transaction) stay synchronous.
            jobs: make(
                &with_options("-c jit=off -c synchronous_commit=off -c statement_timeout=30s"),
                8,
            )?,
            fetch_days: false,
            pg,
            target,
            connect_timeout,
        })
    }

    /// Lease calls give up on the server after `timeout` (`statement_timeout`, `lock_timeout`
    /// of the dedicated lease connection; the worker passes a fraction of the lease TTL). Set
    /// before the handle is cloned.
    pub fn lease_statement_timeout(mut self, timeout: Duration) -> Result<Self, DbError> {
        let mut c = self.pg.clone();
        let options = match self.pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {}", lease_options(timeout)),
            _ => lease_options(timeout),
        };
        c.options(options);
        self.lease = make_pool(&c, 1, self.connect_timeout)?;
        Ok(self)
    }

    /// Makes `batch_fetch` return each event's capture day (deduplication and circuit breakers
    /// need it). Set before the handle is cloned.
    pub fn fetch_days(mut self, yes: bool) -> Self {
        self.fetch_days = yes;
        self
    }

    /// `host:port` (or socket path) for messages; never the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The driver configuration (for the dedicated LISTEN connection).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    pub(crate) async fn client(
        &self,
        lane: Lane,
        context: &'static str,
    ) -> Result<Object, DbError> {
        let pool = match lane {
            Lane::Main => &self.main,
            Lane::Lease => &self.lease,
            Lane::Heartbeat => &self.heartbeat,
            Lane::Side => &self.side,
            Lane::Dedup => &self.dedup,
            Lane::Jobs => &self.jobs,
        };
        pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => DbError::classify(&self.target, context, e),
            PoolError::Timeout(_) => DbError::Unavailable {
                target: self.target.clone(),
                message: "timed out connecting".to_owned(),
            },
            other => DbError::Unavailable {
                target: self.target.clone(),
                message: other.to_string(),
            },
        })
    }

    /// A pooled connection of `lane` and the cached prepared statement for `sql` on it.
    pub(crate) async fn prepared(
        &self,
        lane: Lane,
        context: &'static str,
        sql: &str,
    ) -> Result<(Object, tokio_postgres::Statement), DbError> {
        let c = self.client(lane, context).await?;
        let stmt = c
            .prepare_cached(sql)
            .await
            .map_err(|e| self.err(context, e))?;
        Ok((c, stmt))
    }

    pub(crate) fn err(&self, context: &'static str, e: tokio_postgres::Error) -> DbError {
        DbError::classify(&self.target, context, e)
    }
}

/// `statement_timeout` of the lease connection until [`Db::lease_statement_timeout`] sets it.
const DEFAULT_LEASE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

fn lease_options(timeout: Duration) -> String {
    let ms = timeout.as_millis().max(1);
    format!("-c jit=off -c statement_timeout={ms} -c lock_timeout={ms}")
}

fn make_pool(
    pg: &tokio_postgres::Config,
    size: usize,
    connect_timeout: Duration,
) -> Result<Pool, DbError> {
    let mgr = Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect_timeout + Duration::from_secs(1)))
        .build()
        .map_err(|e| DbError::BadUrl(e.to_string()))
}

fn describe_target(pg: &tokio_postgres::Config) -> String {
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        Some(Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
        None => format!("localhost:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_never_contains_password() {
        let db = Db::new(
            "postgres://alice:hunter2@db.internal:6543/app",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(db.target(), "db.internal:6543");
        assert!(!format!("{db:?}").contains("hunter2"));
    }

    #[test]
    fn bad_urls_are_reported() {
        let err = Db::new("postgres://h:notaport/db", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, DbError::BadUrl(_)), "{err:?}");
    }

    #[tokio::test]
    async fn unreachable_database_is_retryable() {
        // port 1 on loopback: nothing listens there
        let db = Db::new("postgres://postgres@127.0.0.1:1/x", Duration::from_secs(2)).unwrap();
        let err = db.client(Lane::Main, "test").await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("database unreachable at 127.0.0.1:1"),
            "{text}"
        );
    }
}
