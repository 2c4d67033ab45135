//! Logging setup, the worker's internal counters ([`Stats`]: heartbeats, the shutdown summary)
//! and the Prometheus endpoint: [`metrics`] defines every metric, [`server`] serves `/metrics`,
//! `/health/live` and `/health/ready` on `metrics.listen`, [`health`] decides readiness and
//! [`database`] refreshes the database-derived gauges. See docs/METRICS.md.

pub mod database;
pub mod health;
pub mod metrics;
pub mod search_metrics;
pub mod server;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

use crate::cli::Format;

/// Installs the global subscriber: stderr, `RUST_LOG` filter (default `info`),
/// text or JSON lines.
pub fn init_logging(format: Format) {
    // Without RUST_LOG: info, minus the connection pool's own per-connection
    // warnings (the worker reports database problems itself, once per retry).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,deadpool=error,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    // a second init (tests) is harmless
    let _ = result;
}

/// Counters since start (heartbeats, shutdown summary). `/metrics` mirrors them at scrape
/// time into the `observer_*` families of [`metrics`].
#[derive(Debug, Default)]
pub struct Stats {
    pub events_fetched: AtomicU64,
    pub events_finished: AtomicU64,
    pub actions_delivered: AtomicU64,
    pub actions_dead_lettered: AtomicU64,
    pub attempts_failed: AtomicU64,
    pub batches_closed: AtomicU64,
    pub checkpoints_saved: AtomicU64,
    /// Pairs not executed because they had already succeeded (deduplication).
    pub dedup_hits: AtomicU64,
    /// Pairs parked because their destination's circuit breaker was open.
    pub actions_parked: AtomicU64,
    /// Pairs parked because their observer was broken (its actions could not be built).
    pub broken_parked: AtomicU64,
    /// Parked pairs delivered later.
    pub parked_delivered: AtomicU64,
    /// Dead letters delivered by `observers.dlq_retry()` (they left the DLQ).
    pub dlq_retries_delivered: AtomicU64,
    /// Dead-letter retries that failed again (the entries stayed in the DLQ).
    pub dlq_retries_failed: AtomicU64,
    /// Pairs delivered again by `observers.replay()`.
    pub replays_delivered: AtomicU64,
    /// Replayed pairs that failed for good (dead-lettered).
    pub replays_failed: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "events_fetched": Self::get(&self.events_fetched),
            "events_finished": Self::get(&self.events_finished),
            "actions_delivered": Self::get(&self.actions_delivered),
            "actions_dead_lettered": Self::get(&self.actions_dead_lettered),
            "attempts_failed": Self::get(&self.attempts_failed),
            "batches_closed": Self::get(&self.batches_closed),
            "checkpoints_saved": Self::get(&self.checkpoints_saved),
            "dedup_hits": Self::get(&self.dedup_hits),
            "actions_parked": Self::get(&self.actions_parked),
            "broken_parked": Self::get(&self.broken_parked),
            "parked_delivered": Self::get(&self.parked_delivered),
            "dlq_retries_delivered": Self::get(&self.dlq_retries_delivered),
            "dlq_retries_failed": Self::get(&self.dlq_retries_failed),
            "replays_delivered": Self::get(&self.replays_delivered),
            "replays_failed": Self::get(&self.replays_failed),
        })
    }
}
