//! Opening the database for an operator command.

use crate::db::operator::OperatorDb;
use crate::db::DbError;

use super::failure::CliError;

/// Connects and checks that the extension is installed.
pub async fn connect(url: &str) -> Result<OperatorDb, CliError> {
    let target = url
        .parse::<tokio_postgres::Config>()
        .map(|c| {
            let port = c.get_ports().first().copied().unwrap_or(5432);
            match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => format!("{h}:{port}"),
                Some(tokio_postgres::config::Host::Unix(p)) => {
                    format!("{}/.s.PGSQL.{port}", p.display())
                }
                None => format!("localhost:{port}"),
            }
        })
        .unwrap_or_default();
    let mut db = OperatorDb::connect(url)
        .await
        .map_err(|e| CliError::from_db(e, &target, "<your role>"))?;
    match db.extension_version().await {
        Ok(Some(_)) => {
            db.detect_worker_role().await;
            Ok(db)
        }
        Ok(None) => Err(CliError::runtime(format!(
            "the pg_observers extension is not installed in the database at {}: run \
             `CREATE EXTENSION pg_observers;` there (as a superuser), or check that \
             --database-url / DATABASE_URL names the right database",
            db.target()
        ))),
        Err(e) => Err(fail(&db, e)),
    }
}

/// A database error of `db` as advice.
pub fn fail(db: &OperatorDb, e: DbError) -> CliError {
    CliError::from_db_as(e, db.target(), db.user(), db.is_worker_role())
}
