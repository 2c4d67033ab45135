//! Errors of the operator commands: a message that says what to do, and an exit code.
//!
//! Exit codes: 0 ok, 1 runtime or database error (unreachable, permission denied, extension
//! missing or too old), 2 invalid input (bad argument, bad URL, refused purge without a
//! filter), 3 not found (dead letter id, event, observer name).

use std::fmt;

use crate::db::DbError;
use crate::error::{EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_RUNTIME};

/// A failed operator command.
#[derive(Debug, Clone, PartialEq)]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    pub fn invalid(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: EXIT_CONFIG,
        }
    }

    pub fn not_found(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: EXIT_NOT_FOUND,
        }
    }

    pub fn runtime(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: EXIT_RUNTIME,
        }
    }

    /// Turns a database error into advice. `target` is `host:port`, `user` the role connected as.
    pub fn from_db(e: DbError, target: &str, user: &str) -> CliError {
        CliError::from_db_as(e, target, user, false)
    }

    /// [`CliError::from_db`] knowing whether `user` is the worker's role (a member of
    /// `observers_worker` but not of `observers_admin`): then a refusal never suggests granting
    /// it `observers_admin` (that would give the worker's credentials the operators' rights).
    pub fn from_db_as(e: DbError, target: &str, user: &str, worker_role: bool) -> CliError {
        match &e {
            DbError::Unavailable { message, .. } => CliError::runtime(format!(
                "cannot reach PostgreSQL at {target}: {message}. Check --database-url / DATABASE_URL \
                 (or database.url in the --config file) and that the server is running and accepts \
                 connections there"
            )),
            DbError::BadUrl(m) => CliError::invalid(format!(
                "invalid database URL: {m}. Expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            )),
            DbError::Sql { message, .. } | DbError::Transient { message, .. } => {
                let context = match &e {
                    DbError::Sql { context, .. } | DbError::Transient { context, .. } => *context,
                    _ => "",
                };
                match e.sqlstate() {
                    // P0002 no_data_found (dead letter id), 42704 undefined_object (observer name)
                    Some("P0002") | Some("42704") => CliError::not_found(message.clone()),
                    Some("42501") if worker_role => CliError::runtime(format!(
                        "{context}: {message}. Role {user} may not do this: it is a worker role \
                         (observers_worker), and operator commands need observers_admin. Connect \
                         as an operator role instead (--database-url / DATABASE_URL); a superuser \
                         creates one with CREATE ROLE ops_alice LOGIN IN ROLE observers_admin; \
                         (do not grant observers_admin to the worker's role: it needs only \
                         observers_worker)"
                    )),
                    Some("42501") => CliError::runtime(format!(
                        "{context}: {message}. Role {user} may not do this: operator commands need \
                         a member of observers_admin. Connect as an operator role \
                         (--database-url / DATABASE_URL), or, if {user} is an operator's own \
                         login, have a superuser run GRANT observers_admin TO {user}; (never to \
                         the worker's role: it needs only observers_worker)"
                    )),
                    Some("28000") | Some("28P01") => CliError::runtime(format!(
                        "cannot log in to PostgreSQL at {target} as {user}: {message}. Check the user \
                         and password in --database-url / DATABASE_URL"
                    )),
                    Some("3D000") => CliError::runtime(format!(
                        "{message}. Check the database name in --database-url / DATABASE_URL"
                    )),
                    Some("42883") | Some("3F000") => CliError::runtime(format!(
                        "{context}: {message}. The pg_observers extension of this database is older \
                         than this CLI: install the new version and run \
                         `ALTER EXTENSION pg_observers UPDATE;` (docs/UPGRADING.md)"
                    )),
                    Some(c) if c.starts_with("22") => {
                        CliError::invalid(format!("{context}: {message}"))
                    }
                    _ => CliError::runtime(e.to_string()),
                }
            }
            DbError::Fenced(_) => CliError::runtime(e.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(code: &str, message: &str) -> DbError {
        DbError::Sql {
            context: "observers.dlq_show",
            code: Some(code.to_owned()),
            message: message.to_owned(),
        }
    }

    #[test]
    fn exit_codes_and_advice() {
        let e = CliError::from_db(
            DbError::Unavailable {
                target: "db:5432".into(),
                message: "Connection refused".into(),
            },
            "db:5432",
            "ops",
        );
        assert_eq!(e.code, 1);
        assert!(
            e.message.contains("db:5432") && e.message.contains("DATABASE_URL"),
            "{e}"
        );

        let e = CliError::from_db(
            sql("P0002", "no dead letter with id 9 (SQLSTATE P0002)"),
            "h:1",
            "ops",
        );
        assert_eq!(e.code, 3);

        let e = CliError::from_db(
            sql(
                "42501",
                "permission denied for function dlq_purge (SQLSTATE 42501)",
            ),
            "h:1",
            "ops",
        );
        assert_eq!(e.code, 1);
        assert!(e.message.contains("GRANT observers_admin TO ops"), "{e}");
        // the worker's role is pointed at an operator role, never offered the admin role
        let e = CliError::from_db_as(
            sql(
                "42501",
                "permission denied for function dlq_purge (SQLSTATE 42501)",
            ),
            "h:1",
            "wk",
            true,
        );
        assert_eq!(e.code, 1);
        assert!(!e.message.contains("GRANT observers_admin"), "{e}");
        assert!(
            e.message.contains("Connect as an operator role")
                && e.message
                    .contains("CREATE ROLE ops_alice LOGIN IN ROLE observers_admin"),
            "{e}"
        );

        let e = CliError::from_db(
            sql("22023", "give a filter or all_entries => true"),
            "h:1",
            "ops",
        );
        assert_eq!(e.code, 2);

        let e = CliError::from_db(
            sql("42883", "function observers.dlq_list() does not exist"),
            "h:1",
            "ops",
        );
        assert!(
            e.message.contains("ALTER EXTENSION pg_observers UPDATE"),
            "{e}"
        );
    }
}
