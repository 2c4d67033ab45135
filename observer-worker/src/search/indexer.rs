//! `search: enabled`: the worker fills the PostgreSQL search index.
//!
//! Every worker that has it enabled runs the loop; `observers.search_index()` serialises them on
//! the feed's cursor row, so two workers only take turns. A full page is followed at once by the
//! next one; otherwise the loop sleeps `search.interval`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::SearchConfig;
use crate::db::{Db, DbError};
use crate::retry::{sleep_or_cancel, Backoff};
use crate::telemetry::metrics::Metrics;

/// How often the index's partitions are maintained (creation ahead, retention).
pub const SEARCH_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

pub async fn run(
    db: Db,
    cfg: SearchConfig,
    metrics: Option<Arc<Metrics>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut maintained: Option<Instant> = None;
    let mut total: u64 = 0;
    info!(batch_size = cfg.batch_size, interval = ?cfg.interval, "search indexer started");
    loop {
        if maintained.is_none_or(|t| t.elapsed() >= SEARCH_MAINTENANCE_INTERVAL) {
            match db.search_maintain().await {
                Ok(summary) => {
                    info!(summary = %summary, "search index maintenance done");
                    maintained = Some(Instant::now());
                }
                Err(e) => debug!(error = %e, "search index maintenance failed; retried later"),
            }
        }
        let wait = match db.search_index(cfg.batch_size as i32).await {
            Ok(n) => {
                backoff.reset();
                if n > 0 {
                    total += n as u64;
                    if let Some(m) = &metrics {
                        m.search.indexed.inc_by(n as u64);
                    }
                    debug!(indexed = n, total, "search index page");
                }
                if n as u32 >= cfg.batch_size {
                    Duration::ZERO
                } else {
                    cfg.interval
                }
            }
            Err(e @ DbError::Unavailable { .. }) | Err(e @ DbError::Transient { .. }) => {
                debug!(error = %e, "search indexing: database unavailable, retrying");
                backoff.next_delay()
            }
            Err(e) => {
                warn!(error = %e, "search indexing failed; retrying");
                backoff.next_delay()
            }
        };
        if stop.is_cancelled() || (!wait.is_zero() && !sleep_or_cancel(&stop, wait).await) {
            info!(indexed = total, "search indexer stopped");
            return;
        }
    }
}
