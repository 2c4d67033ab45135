//! Refreshes the database-derived gauges (backlog, oldest unfinished event, dead letters per
//! observer, database up) on a fixed interval, so that a scrape never queries the database and
//! any number of scrapers costs one `observers.status()` call every [`REFRESH_INTERVAL`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::Metrics;
use crate::db::{Db, DbError};

/// How often the database gauges are read.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// A refresh that takes longer counts as "database unreachable".
const REFRESH_TIMEOUT: Duration = Duration::from_secs(4);

/// Runs until `stop` fires. Starts at once (before the worker has connected), so
/// `observer_database_up` is 0 while the database cannot be reached at start.
pub async fn run(db: Db, metrics: Arc<Metrics>, stop: CancellationToken) {
    let group = metrics.group().to_owned();
    let mut was_up: Option<bool> = None;
    let mut sql_error_logged = false;
    loop {
        let result = tokio::time::timeout(REFRESH_TIMEOUT, db.observer_gauges(&group)).await;
        let up = match result {
            Ok(Ok(rows)) => {
                metrics.database_refreshed(&rows);
                sql_error_logged = false;
                true
            }
            Ok(Err(e @ (DbError::Unavailable { .. } | DbError::Transient { .. }))) => {
                debug!(error = %e, "metrics: database gauges not refreshed");
                metrics.database_down();
                false
            }
            Ok(Err(e)) => {
                // reachable, but the query failed (e.g. permissions): keep the last values
                if !sql_error_logged {
                    warn!(error = %e, "metrics: cannot read backlog and dead letters from observers.status()");
                    sql_error_logged = true;
                }
                metrics.database_down();
                false
            }
            Err(_) => {
                debug!(
                    "metrics: database gauges not refreshed within {:?}",
                    REFRESH_TIMEOUT
                );
                metrics.database_down();
                false
            }
        };
        if was_up.is_some_and(|w| w != up) {
            if up {
                info!(database = %db.target(), "metrics: database reachable again");
            } else {
                warn!(database = %db.target(), "metrics: database unreachable (observer_database_up 0, /health/ready 503)");
            }
        }
        was_up = Some(up);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
        }
    }
}
