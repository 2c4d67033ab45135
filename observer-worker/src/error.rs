//! Errors that end a command, with their exit codes.
//!
//! Component errors live next to their component and say whether they are
//! retryable: [`crate::db::DbError`], [`crate::actions::AttemptError`],
//! [`crate::config::ConfigError`]. Only `main` converts to `anyhow`.

use crate::config::ConfigError;
use crate::db::DbError;

/// Exit code: success (also after SIGTERM/SIGINT with a clean drain).
pub const EXIT_OK: i32 = 0;
/// Exit code: runtime error (database, extension missing, fatal bug).
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code: bad configuration or command-line usage.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code (operator commands): what was asked for does not exist (dead letter id, event,
/// observer name).
pub const EXIT_NOT_FOUND: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A usage problem the user must fix (e.g. no database URL anywhere).
    #[error("{0}")]
    Usage(String),
    /// An observer of the file was rejected by the database (unknown table,
    /// condition that does not compile, ...).
    #[error("observer `{name}` ({path}) was rejected by the database: {source}")]
    ObserverRejected {
        name: String,
        path: String,
        source: DbError,
    },
    #[error("the pg_observers extension is not installed in the database at {target}: run `CREATE EXTENSION pg_observers;` in that database (as its owner or a superuser)")]
    ExtensionMissing { target: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("cannot set up lookups: {0}")]
    Lookups(String),
    /// `failover: disabled` and another live worker of the group holds its lease.
    #[error(
        "another worker of group \"{group}\" is running and holds its leader lease, and this worker has \
         `failover: disabled` (one worker per group): stop the other worker, give this one another \
         `worker.group`, or set `failover: enabled` on every worker of the group so that they stand by for \
         each other (see `fraiseql-observers status` for the group's workers)"
    )]
    NotAlone { group: String },
    #[error("{0}")]
    Fatal(String),
}

impl WorkerError {
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Config(_)
            | WorkerError::Usage(_)
            | WorkerError::ObserverRejected { .. } => EXIT_CONFIG,
            WorkerError::Db(DbError::BadUrl(_)) => EXIT_CONFIG,
            _ => EXIT_RUNTIME,
        }
    }
}
