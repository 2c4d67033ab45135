//! Refreshes the database-derived gauges (backlog, oldest unfinished event, dead letters per
//! observer) and `observer_database_up`, so that a scrape never queries the database:
//!
//! ```text
//! every REFRESH_INTERVAL (longer when the gauges are slow to compute):
//!   1. a cheap probe (PING_TIMEOUT)      ─► observer_database_up, /health/ready
//!   2. if it answered: observers.status() for the group (GAUGES_TIMEOUT)
//!        ─► backlog, oldest age, DLQ size, group has leader (kept as they were on failure)
//! ```
//!
//! The two are separate on purpose: `status()` counts the backlog (about 0.3 s per million
//! undelivered events; it was seconds before it turned JIT off, and a lock can stall it), so a
//! large backlog must not make a healthy database look unreachable (and the worker "not
//! ready") exactly when it has the most to do. After a slow
//! refresh the next one waits `SLOW_FACTOR` times as long, so the gauges never cost more than
//! a fraction of one database core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::Metrics;
use crate::db::{Db, DbError};

/// How often the database gauges are read (at least).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// The probe must answer within this to count as "database up".
const PING_TIMEOUT: Duration = Duration::from_secs(4);
/// The gauges query is given up after this (the last values stay).
const GAUGES_TIMEOUT: Duration = Duration::from_secs(60);
/// After a refresh that took `d`, the next one starts no sooner than `SLOW_FACTOR × d` later.
const SLOW_FACTOR: u32 = 5;
/// ... and no later than this.
const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// Runs until `stop` fires. Starts at once (before the worker has connected), so
/// `observer_database_up` is 0 while the database cannot be reached at start.
pub async fn run(db: Db, metrics: Arc<Metrics>, stop: CancellationToken) {
    let group = metrics.group().to_owned();
    let mut was_up: Option<bool> = None;
    let mut sql_error_logged = false;
    let mut slow_logged = false;
    loop {
        let mut interval = REFRESH_INTERVAL;
        let up = match tokio::time::timeout(PING_TIMEOUT, db.extension_version()).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                debug!(error = %e, "metrics: database probe failed");
                false
            }
            Err(_) => {
                debug!("metrics: database probe did not answer within {PING_TIMEOUT:?}");
                false
            }
        };
        if up {
            metrics.database_reachable();
            let started = Instant::now();
            match tokio::time::timeout(GAUGES_TIMEOUT, db.observer_gauges(&group)).await {
                Ok(Ok(rows)) => {
                    metrics.database_refreshed(&rows);
                    sql_error_logged = false;
                }
                Ok(Err(e @ (DbError::Unavailable { .. } | DbError::Transient { .. }))) => {
                    debug!(error = %e, "metrics: database gauges not refreshed");
                }
                Ok(Err(e)) => {
                    // reachable, but the query failed (e.g. permissions): keep the last values
                    if !sql_error_logged {
                        warn!(error = %e, "metrics: cannot read backlog and dead letters from observers.status()");
                        sql_error_logged = true;
                    }
                }
                Err(_) => {
                    if !slow_logged {
                        warn!("metrics: observers.status() took longer than {GAUGES_TIMEOUT:?} (a very large backlog?); backlog and DLQ gauges keep their last values");
                        slow_logged = true;
                    }
                }
            }
            let took = started.elapsed();
            interval = (took * SLOW_FACTOR).clamp(REFRESH_INTERVAL, MAX_INTERVAL);
            if interval > REFRESH_INTERVAL {
                debug!(?took, next_in = ?interval, "metrics: database gauges are slow to compute; refreshing less often");
            }
        } else {
            metrics.database_down();
        }
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
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
