//! Every Prometheus metric of the worker, defined once (names, help, labels, buckets).
//! docs/METRICS.md describes each one; keep the two in step.
//!
//! Three kinds of values:
//! * **hot path** — recorded where they happen (one counter increment or histogram
//!   observation per attempt / pair / event): [`Metrics::attempt`], [`Metrics::pair`],
//!   [`Metrics::event_finished`].
//! * **mirrored at scrape time** — the worker's existing atomic state ([`Stats`], circuit
//!   breakers, deduplication, lookups, the lease) is copied into the registry when `/metrics` is
//!   read ([`Metrics::encode`]), so it costs nothing between scrapes.
//! * **from the database** — backlog, oldest undelivered event and dead letters per observer,
//!   refreshed by one background task every [`super::database::REFRESH_INTERVAL`] (never by a
//!   scrape); when the database is down they keep their last values and
//!   `observer_database_up` is 0.
//!
//! Labels are bounded: `action_type` (a handful of action kinds), `outcome`, `group`,
//! `observer` (observer names, bounded by configuration), `lookup` (declared in the config),
//! `destination` (`scheme://host:port`, what circuit breakers key on). Never event ids or URLs
//! with paths.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::watch;

use super::health::{self, Phase, Readiness};
use super::Stats;
use crate::lookups::{LookupStats, Lookups};
use crate::pipeline::attempt_log::AttemptLog;
use crate::pipeline::lease::LeaseState;
use crate::pipeline::registry::ObserverRegistry;
use crate::resilience::{Breakers, Dedup};

/// Metric names (all `observer_`-prefixed; counters end in `_total`, durations in `_seconds`).
pub mod names {
    pub const WORKER_INFO: &str = "observer_worker_info";
    pub const WORKER_START_TIME: &str = "observer_worker_start_time_seconds";
    pub const READY: &str = "observer_ready";
    pub const LEADER: &str = "observer_leader";
    pub const FAILOVERS: &str = "observer_failovers_total";
    pub const HANDOVER: &str = "observer_handover_seconds";

    pub const EVENTS_MATCHED: &str = "observer_events_matched_total";
    pub const EVENTS_PROCESSED: &str = "observer_events_processed_total";
    pub const EVENT_LATENCY: &str = "observer_event_latency_seconds";
    pub const BATCHES_CLOSED: &str = "observer_batches_closed_total";
    pub const CHECKPOINTS_SAVED: &str = "observer_checkpoints_saved_total";

    pub const ACTIONS: &str = "observer_actions_total";
    pub const ACTION_ATTEMPTS: &str = "observer_action_attempts_total";
    pub const ACTION_DURATION: &str = "observer_action_duration_seconds";

    pub const DEDUP_HITS: &str = "observer_dedup_hits_total";
    pub const DEDUP_DEGRADED: &str = "observer_dedup_degraded";
    pub const PARKED_DELIVERED: &str = "observer_parked_delivered_total";
    pub const BROKEN_OBSERVERS: &str = "observer_broken_observers";
    pub const REDELIVERIES: &str = "observer_redeliveries_total";
    pub const ATTEMPT_LOG_DROPPED: &str = "observer_attempt_log_dropped_total";
    pub const BREAKER_STATE: &str = "observer_circuit_breaker_state";
    pub const BREAKER_OPENED: &str = "observer_circuit_breaker_opened_total";

    pub const LOOKUP_CACHE_HITS: &str = "observer_lookup_cache_hits_total";
    pub const LOOKUP_CACHE_MISSES: &str = "observer_lookup_cache_misses_total";
    pub const LOOKUP_SOURCE_CALLS: &str = "observer_lookup_source_calls_total";
    pub const LOOKUP_SOURCE_ERRORS: &str = "observer_lookup_source_errors_total";
    pub const LOOKUP_CACHE_DEGRADED: &str = "observer_lookup_cache_degraded";

    pub const DATABASE_UP: &str = "observer_database_up";
    pub const DATABASE_REFRESHED: &str = "observer_database_gauges_refreshed_timestamp_seconds";
    pub const BACKLOG: &str = "observer_backlog_events";
    pub const BACKLOG_OLDEST_AGE: &str = "observer_backlog_oldest_age_seconds";
    pub const DLQ_SIZE: &str = "observer_dlq_size";
    pub const CAPTURE_BROKEN: &str = "observer_capture_broken";
    pub const GROUP_HAS_LEADER: &str = "observer_group_has_leader";

    pub const JOBS_ENQUEUED: &str = "observer_jobs_enqueued_total";
    pub const JOBS_FINISHED: &str = "observer_jobs_finished_total";
    pub const JOB_DURATION: &str = "observer_job_duration_seconds";
    pub const JOB_WAIT: &str = "observer_job_wait_seconds";
    pub const JOBS_RUNNING: &str = "observer_jobs_running";
    pub const JOBS_RESCUED: &str = "observer_jobs_rescued_total";
    pub const SEARCH_INDEXED: &str = "observer_search_indexed_total";
    pub const ES_ITEMS: &str = "observer_elasticsearch_items_total";
    pub const ES_REQUESTS: &str = "observer_elasticsearch_requests_total";
    pub const ES_BULK_DURATION: &str = "observer_elasticsearch_bulk_duration_seconds";
    pub const ES_BREAKER_OPEN: &str = "observer_elasticsearch_breaker_open";
    pub const ES_LAG: &str = "observer_elasticsearch_lag_seconds";
    pub const ES_YIELDED: &str = "observer_elasticsearch_yielded_seconds_total";

    /// Every family above (docs/METRICS.md lists the same).
    pub const ALL: &[&str] = &[
        WORKER_INFO,
        WORKER_START_TIME,
        READY,
        LEADER,
        FAILOVERS,
        HANDOVER,
        EVENTS_MATCHED,
        EVENTS_PROCESSED,
        EVENT_LATENCY,
        BATCHES_CLOSED,
        CHECKPOINTS_SAVED,
        ACTIONS,
        ACTION_ATTEMPTS,
        ACTION_DURATION,
        DEDUP_HITS,
        DEDUP_DEGRADED,
        PARKED_DELIVERED,
        BROKEN_OBSERVERS,
        REDELIVERIES,
        ATTEMPT_LOG_DROPPED,
        BREAKER_STATE,
        BREAKER_OPENED,
        LOOKUP_CACHE_HITS,
        LOOKUP_CACHE_MISSES,
        LOOKUP_SOURCE_CALLS,
        LOOKUP_SOURCE_ERRORS,
        LOOKUP_CACHE_DEGRADED,
        DATABASE_UP,
        DATABASE_REFRESHED,
        BACKLOG,
        BACKLOG_OLDEST_AGE,
        DLQ_SIZE,
        CAPTURE_BROKEN,
        GROUP_HAS_LEADER,
        JOBS_ENQUEUED,
        JOBS_FINISHED,
        JOB_DURATION,
        JOB_WAIT,
        JOBS_RUNNING,
        JOBS_RESCUED,
        SEARCH_INDEXED,
        ES_ITEMS,
        ES_REQUESTS,
        ES_BULK_DURATION,
        ES_BREAKER_OPEN,
        ES_LAG,
        ES_YIELDED,
    ];
}

/// Final outcome of one (event, action) pair, the `outcome` label of `observer_actions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOutcome {
    Delivered,
    DeadLettered,
    Parked,
    DedupSkipped,
    /// `mode: async`: durably enqueued as a job.
    Enqueued,
}

impl PairOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PairOutcome::Delivered => "delivered",
            PairOutcome::DeadLettered => "dead_lettered",
            PairOutcome::Parked => "parked",
            PairOutcome::DedupSkipped => "dedup_skipped",
            PairOutcome::Enqueued => "enqueued",
        }
    }
}

/// Seconds per attempt: a fast webhook is a few ms, a timeout is the action's `timeout`.
const ACTION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Seconds from capture to finished: milliseconds when healthy, hours after an outage.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0,
];

/// Seconds a standby waited before it took the lease over: about `standby_poll` after a crash or
/// a graceful release, about `lease_ttl` after a frozen or cut-off leader, more if the database
/// was unreachable meanwhile.
const HANDOVER_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// The worker state read at scrape time; attached once it is built ([`Metrics::attach`]).
pub struct Sources {
    pub stats: Arc<Stats>,
    pub lease: watch::Receiver<LeaseState>,
    pub breakers: Option<Arc<Breakers>>,
    pub dedup: Option<Arc<Dedup>>,
    pub lookups: Arc<Lookups>,
    pub attempt_log: Option<Arc<AttemptLog>>,
    /// The observers the worker runs (`observer_broken_observers`).
    pub registry: Option<Arc<ObserverRegistry>>,
}

/// One row of database-derived gauges (an observer of this worker's group).
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverGauges {
    pub observer: String,
    pub backlog: i64,
    /// Age of the oldest undelivered event; 0 when the backlog is empty.
    pub oldest_age_seconds: f64,
    pub dlq: i64,
    /// Some worker holds the group's lease right now.
    pub has_leader: bool,
    /// Its capture triggers do not match its definition (`observers.status().capture_error`).
    pub capture_broken: bool,
}

/// The registry and every family. One per worker process, shared by the pipeline (hot path),
/// the database refresher and the HTTP server.
pub struct Metrics {
    registry: Registry,
    group: String,
    phase: AtomicU8,
    sources: OnceLock<Sources>,
    database_up: IntGauge,
    /// Serialises scrape-time mirroring and database updates (never held on the hot path).
    scrape: Mutex<()>,

    actions: IntCounterVec,
    attempts: IntCounterVec,
    action_duration: HistogramVec,
    event_latency: Histogram,

    ready: IntGauge,
    leader: IntGaugeVec,
    failovers: IntCounterVec,
    handover: HistogramVec,
    events_matched: IntCounter,
    events_processed: IntCounter,
    batches_closed: IntCounter,
    checkpoints_saved: IntCounter,
    dedup_hits: IntCounter,
    dedup_degraded: IntGauge,
    parked_delivered: IntCounter,
    broken_observers: IntGaugeVec,
    redeliveries: IntCounterVec,
    attempt_log_dropped: IntCounter,
    breaker_state: IntGaugeVec,
    breaker_opened: IntCounterVec,
    lookup_hits: IntCounterVec,
    lookup_misses: IntCounterVec,
    lookup_calls: IntCounter,
    lookup_errors: IntCounter,
    lookup_degraded: IntGauge,

    database_refreshed: Gauge,
    backlog: IntGaugeVec,
    backlog_age: GaugeVec,
    dlq: IntGaugeVec,
    capture_broken: IntGaugeVec,
    group_has_leader: IntGauge,

    jobs_enqueued: IntCounter,
    jobs_finished: IntCounterVec,
    job_duration: HistogramVec,
    job_wait: Histogram,
    jobs_running: IntGauge,
    jobs_rescued: IntCounter,
    /// The search index and the Elasticsearch sink (recorded by `crate::search`).
    pub search: super::search_metrics::SearchMetrics,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Builds the registry. `Err` only if two metrics were given the same name (a bug).
    pub fn new(group: &str, worker_id: &str) -> Result<Metrics, prometheus::Error> {
        use names::*;
        let r = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: T,
        ) -> Result<T, prometheus::Error> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let info = reg(
            &r,
            IntGaugeVec::new(
                opts(
                    WORKER_INFO,
                    "Always 1; the labels say which worker this is.",
                ),
                &["version", "group", "worker_id"],
            )?,
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), group, worker_id])
            .set(1);
        let start = reg(
            &r,
            Gauge::with_opts(opts(
                WORKER_START_TIME,
                "Unix time the worker process started.",
            ))?,
        )?;
        start.set(unix_now());
        let m = Metrics {
            group: group.to_owned(),
            phase: AtomicU8::new(Phase::Starting as u8),
            sources: OnceLock::new(),
            scrape: Mutex::new(()),
            actions: reg(
                &r,
                IntCounterVec::new(
                    opts(ACTIONS, "(event, action) pairs finished, by action type and final outcome (delivered, dead_lettered, parked, dedup_skipped)."),
                    &["action_type", "outcome"],
                )?,
            )?,
            attempts: reg(
                &r,
                IntCounterVec::new(
                    opts(ACTION_ATTEMPTS, "Calls of an action's service (one per attempt), by action type and outcome (delivered, failed)."),
                    &["action_type", "outcome"],
                )?,
            )?,
            action_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(ACTION_DURATION, "Duration of one attempt of an action, in seconds.")
                        .buckets(ACTION_BUCKETS.to_vec()),
                    &["action_type"],
                )?,
            )?,
            event_latency: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(EVENT_LATENCY, "Seconds from an event's capture (captured_at, the database clock) to the moment every action of it is finished (worker clock).")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            ready: reg(&r, IntGauge::with_opts(opts(READY, "1 when /health/ready answers 200."))?)?,
            leader: reg(
                &r,
                IntGaugeVec::new(opts(LEADER, "1 while this worker holds its group's leader lease."), &["group"])?,
            )?,
            failovers: reg(
                &r,
                IntCounterVec::new(opts(FAILOVERS, "Times this worker took over its group's leader lease after it had seen another worker hold it (counted by the worker that takes over)."), &["group"])?,
            )?,
            handover: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(HANDOVER, "Seconds this worker stood by between first seeing another worker hold the group's lease and taking it over (one observation per failover).")
                        .buckets(HANDOVER_BUCKETS.to_vec()),
                    &["group"],
                )?,
            )?,
            events_matched: reg(&r, IntCounter::with_opts(opts(EVENTS_MATCHED, "Outbox events (a row change matched by an observer) fetched by this worker."))?)?,
            events_processed: reg(&r, IntCounter::with_opts(opts(EVENTS_PROCESSED, "Events whose every action is finished (delivered, dead-lettered, parked or skipped as already done)."))?)?,
            batches_closed: reg(&r, IntCounter::with_opts(opts(BATCHES_CLOSED, "Snapshot batches closed."))?)?,
            checkpoints_saved: reg(&r, IntCounter::with_opts(opts(CHECKPOINTS_SAVED, "Checkpoints written."))?)?,
            dedup_hits: reg(&r, IntCounter::with_opts(opts(DEDUP_HITS, "Pairs not executed because they had already succeeded (deduplication)."))?)?,
            dedup_degraded: reg(&r, IntGauge::with_opts(opts(DEDUP_DEGRADED, "1 while deduplication is configured with Redis but falls back to PostgreSQL."))?)?,
            parked_delivered: reg(&r, IntCounter::with_opts(opts(PARKED_DELIVERED, "Parked pairs delivered later (their circuit breaker let calls through, or their broken observer was fixed)."))?)?,
            broken_observers: reg(
                &r,
                IntGaugeVec::new(opts(BROKEN_OBSERVERS, "1 for each observer of the group this worker cannot build (unset ${VAR}, unknown action type, undeclared lookup): it delivers nothing until it is fixed."), &["group", "observer"])?,
            )?,
            redeliveries: reg(
                &r,
                IntCounterVec::new(opts(REDELIVERIES, "Pairs redelivered on an operator's request (observers.dlq_retry, observers.replay), by reason and outcome."), &["reason", "outcome"])?,
            )?,
            attempt_log_dropped: reg(&r, IntCounter::with_opts(opts(ATTEMPT_LOG_DROPPED, "Attempt records not written to observers.attempt (the database was slower than the deliveries, or failed)."))?)?,
            breaker_state: reg(
                &r,
                IntGaugeVec::new(opts(BREAKER_STATE, "Circuit breaker state by destination: 0 closed, 1 half-open, 2 open."), &["destination"])?,
            )?,
            breaker_opened: reg(
                &r,
                IntCounterVec::new(opts(BREAKER_OPENED, "Times a destination's circuit breaker opened."), &["destination"])?,
            )?,
            lookup_hits: reg(
                &r,
                IntCounterVec::new(opts(LOOKUP_CACHE_HITS, "Lookup calls answered by the cache, by lookup."), &["lookup"])?,
            )?,
            lookup_misses: reg(
                &r,
                IntCounterVec::new(opts(LOOKUP_CACHE_MISSES, "Lookup calls the cache could not answer, by lookup."), &["lookup"])?,
            )?,
            lookup_calls: reg(&r, IntCounter::with_opts(opts(LOOKUP_SOURCE_CALLS, "Calls of lookup sources (SQL or HTTP)."))?)?,
            lookup_errors: reg(&r, IntCounter::with_opts(opts(LOOKUP_SOURCE_ERRORS, "Lookup source calls that failed."))?)?,
            lookup_degraded: reg(&r, IntGauge::with_opts(opts(LOOKUP_CACHE_DEGRADED, "1 while the Redis lookup cache is unreachable (lookups call their sources directly)."))?)?,
            database_up: reg(&r, IntGauge::with_opts(opts(DATABASE_UP, "1 if the database answered the last probe (every 5 s), 0 if it was unreachable."))?)?,
            database_refreshed: reg(&r, Gauge::with_opts(opts(DATABASE_REFRESHED, "Unix time of the last successful refresh of the database gauges (backlog, DLQ)."))?)?,
            backlog: reg(
                &r,
                IntGaugeVec::new(opts(BACKLOG, "Events of this worker's group not finished yet, by observer (from observers.status())."), &["group", "observer"])?,
            )?,
            backlog_age: reg(
                &r,
                GaugeVec::new(opts(BACKLOG_OLDEST_AGE, "Age in seconds of the oldest unfinished event, by observer; 0 when the backlog is empty."), &["group", "observer"])?,
            )?,
            dlq: reg(
                &r,
                IntGaugeVec::new(opts(DLQ_SIZE, "Dead letters in observers.dlq, by observer."), &["group", "observer"])?,
            )?,
            capture_broken: reg(
                &r,
                IntGaugeVec::new(opts(CAPTURE_BROKEN, "1 if the observer does not capture as defined (a capture trigger dropped, disabled or renamed, or its table or a columns column dropped: observers.status().capture_error), by observer."), &["group", "observer"])?,
            )?,
            group_has_leader: reg(&r, IntGauge::with_opts(opts(GROUP_HAS_LEADER, "1 if some worker holds this group's leader lease (from the database)."))?)?,
            jobs_enqueued: reg(&r, IntCounter::with_opts(opts(JOBS_ENQUEUED, "(event, action) pairs of `mode: async` actions this worker enqueued as jobs (as leader)."))?)?,
            jobs_finished: reg(
                &r,
                IntCounterVec::new(opts(JOBS_FINISHED, "Job runs ended by this worker, by action type and outcome (completed, retry, discarded, snoozed, stale: the run had been rescued)."), &["action_type", "outcome"])?,
            )?,
            job_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(JOB_DURATION, "Seconds one job run took (claim to finish), by action type.")
                        .buckets(ACTION_BUCKETS.to_vec()),
                    &["action_type"],
                )?,
            )?,
            job_wait: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(JOB_WAIT, "Seconds from a job's run_at (when it became due) to its claim by this worker.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            jobs_running: reg(&r, IntGauge::with_opts(opts(JOBS_RUNNING, "Jobs this worker is running now."))?)?,
            jobs_rescued: reg(&r, IntCounter::with_opts(opts(JOBS_RESCUED, "Running jobs this worker rescued (their worker stopped beating, or they ran past job_queue.timeout)."))?)?,
            search: super::search_metrics::SearchMetrics::register(&r)?,
            registry: r,
        };
        m.leader.with_label_values(&[group]).set(0);
        // present (at 0) from the start, so that `increase()` sees the first failover
        m.failovers.with_label_values(&[group]);
        m.handover.with_label_values(&[group]);
        Ok(m)
    }

    /// Connects the scrape-time sources once the worker has built them.
    pub fn attach(&self, sources: Sources) {
        let _ = self.sources.set(sources);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Starting -> running (a shutdown requested meanwhile wins).
    pub fn mark_running(&self) {
        let _ = self.phase.compare_exchange(
            Phase::Starting as u8,
            Phase::Running as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// This worker took the lease over from another worker after standing by for `standby_for`.
    pub fn failover(&self, standby_for: Duration) {
        let labels = [self.group.as_str()];
        self.failovers.with_label_values(&labels).inc();
        self.handover
            .with_label_values(&labels)
            .observe(standby_for.as_secs_f64());
    }

    // ---- hot path -------------------------------------------------------------------------

    /// One attempt of an action: its duration and whether the service accepted it.
    pub fn attempt(&self, action_type: &str, took: Duration, ok: bool) {
        self.action_duration
            .with_label_values(&[action_type])
            .observe(took.as_secs_f64());
        let outcome = if ok { "delivered" } else { "failed" };
        self.attempts
            .with_label_values(&[action_type, outcome])
            .inc();
    }

    /// The final outcome of one (event, action) pair.
    pub fn pair(&self, action_type: &str, outcome: PairOutcome) {
        self.actions
            .with_label_values(&[action_type, outcome.as_str()])
            .inc();
    }

    /// A `mode: async` pair was enqueued as a job.
    pub fn job_enqueued(&self) {
        self.jobs_enqueued.inc();
    }

    /// A job was claimed after waiting `wait` since it became due.
    pub fn job_started(&self, wait: Duration) {
        self.job_wait.observe(wait.as_secs_f64());
        self.jobs_running.inc();
    }

    /// A job run ended with `outcome` after `took`.
    pub fn job_finished(&self, action_type: &str, outcome: &str, took: Duration) {
        self.jobs_running.dec();
        self.job_duration
            .with_label_values(&[action_type])
            .observe(took.as_secs_f64());
        self.jobs_finished
            .with_label_values(&[action_type, outcome])
            .inc();
    }

    /// Running jobs rescued by this worker.
    pub fn jobs_rescued(&self, n: u64) {
        self.jobs_rescued.inc_by(n);
    }

    /// An event is finished; `captured_at` is its capture time in Unix seconds (0: unknown).
    pub fn event_finished(&self, captured_at: f64) {
        if captured_at > 0.0 {
            // clocks of database and worker may differ slightly: never a negative latency
            self.event_latency
                .observe((unix_now() - captured_at).max(0.0));
        }
    }

    // ---- database-derived -----------------------------------------------------------------

    /// A successful refresh: replaces the per-observer gauges (observers that are gone vanish).
    pub fn database_refreshed(&self, rows: &[ObserverGauges]) {
        let _g = self.scrape.lock();
        self.backlog.reset();
        self.backlog_age.reset();
        self.dlq.reset();
        self.capture_broken.reset();
        let mut has_leader = false;
        for row in rows {
            let labels = [self.group.as_str(), row.observer.as_str()];
            self.backlog.with_label_values(&labels).set(row.backlog);
            self.backlog_age
                .with_label_values(&labels)
                .set(row.oldest_age_seconds);
            self.dlq.with_label_values(&labels).set(row.dlq);
            self.capture_broken
                .with_label_values(&labels)
                .set(i64::from(row.capture_broken));
            has_leader |= row.has_leader;
        }
        self.group_has_leader.set(i64::from(has_leader));
        self.database_up.set(1);
        self.database_refreshed.set(unix_now());
    }

    /// The database answered the probe (the gauges may still be refreshing).
    pub fn database_reachable(&self) {
        self.database_up.set(1);
    }

    /// The database could not be reached: keep the last values, say so.
    pub fn database_down(&self) {
        self.database_up.set(0);
    }

    pub fn database_is_up(&self) -> bool {
        self.database_up.get() == 1
    }

    // ---- scrape ---------------------------------------------------------------------------

    /// Readiness right now (also what `/health/ready` answers).
    pub fn readiness(&self) -> Readiness {
        let sources = self.sources.get();
        let lease = sources.map(|s| *s.lease.borrow());
        let dedup_degraded = sources
            .and_then(|s| s.dedup.as_ref())
            .is_some_and(|d| d.degraded());
        let cache_degraded = sources.is_some_and(|s| s.lookups.cache_degraded());
        health::readiness(health::Inputs {
            phase: self.phase(),
            database_up: self.database_is_up(),
            lease,
            redis_degraded: dedup_degraded || cache_degraded,
            open_breakers: sources
                .and_then(|s| s.breakers.as_ref())
                .map(|b| b.open_destinations().len())
                .unwrap_or(0),
        })
    }

    /// The Prometheus text exposition of everything, after mirroring the worker's state.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let _g = self.scrape.lock();
        self.mirror();
        let mut out = String::with_capacity(16 * 1024);
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        Ok(out)
    }

    fn mirror(&self) {
        self.ready.set(i64::from(self.readiness().ready));
        let Some(s) = self.sources.get() else { return };
        let leader = matches!(*s.lease.borrow(), LeaseState::Held(_));
        self.leader
            .with_label_values(&[self.group.as_str()])
            .set(i64::from(leader));
        let st = &s.stats;
        mirror(&self.events_matched, Stats::get(&st.events_fetched));
        mirror(&self.events_processed, Stats::get(&st.events_finished));
        mirror(&self.batches_closed, Stats::get(&st.batches_closed));
        mirror(&self.checkpoints_saved, Stats::get(&st.checkpoints_saved));
        mirror(&self.dedup_hits, Stats::get(&st.dedup_hits));
        mirror(&self.parked_delivered, Stats::get(&st.parked_delivered));
        for (reason, outcome, counter) in [
            ("dlq_retry", "delivered", &st.dlq_retries_delivered),
            ("dlq_retry", "failed", &st.dlq_retries_failed),
            ("replay", "delivered", &st.replays_delivered),
            ("replay", "failed", &st.replays_failed),
        ] {
            mirror(
                &self.redeliveries.with_label_values(&[reason, outcome]),
                Stats::get(counter),
            );
        }
        if let Some(log) = &s.attempt_log {
            mirror(&self.attempt_log_dropped, log.dropped());
        }
        // a fixed observer's series goes away
        self.broken_observers.reset();
        if let Some(registry) = &s.registry {
            for b in registry.broken() {
                self.broken_observers
                    .with_label_values(&[self.group.as_str(), b.name.as_str()])
                    .set(1);
            }
        }
        self.dedup_degraded
            .set(i64::from(s.dedup.as_ref().is_some_and(|d| d.degraded())));
        if let Some(b) = &s.breakers {
            for (destination, state, opened) in b.states() {
                self.breaker_state
                    .with_label_values(&[destination.as_str()])
                    .set(state.gauge_value());
                mirror(
                    &self
                        .breaker_opened
                        .with_label_values(&[destination.as_str()]),
                    opened,
                );
            }
        }
        let ls = s.lookups.stats();
        for (name, hits, misses) in ls.per_lookup() {
            mirror(&self.lookup_hits.with_label_values(&[name]), hits);
            mirror(&self.lookup_misses.with_label_values(&[name]), misses);
        }
        mirror(&self.lookup_calls, LookupStats::get(&ls.source_calls));
        mirror(&self.lookup_errors, LookupStats::get(&ls.source_errors));
        self.lookup_degraded
            .set(i64::from(s.lookups.cache_degraded()));
    }
}

/// Moves a Prometheus counter up to `value` (an atomic counted elsewhere; never goes down).
fn mirror(c: &IntCounter, value: u64) {
    let current = c.get();
    if value > current {
        c.inc_by(value - current);
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn hot_path_values_are_exposed_with_their_labels() {
        let m = Metrics::new("g1", "w1").unwrap();
        m.attempt("webhook", Duration::from_millis(3), false);
        m.attempt("webhook", Duration::from_millis(4), true);
        m.pair("webhook", PairOutcome::Delivered);
        m.event_finished(unix_now() - 0.5);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"observer_action_attempts_total{action_type="webhook",outcome="failed"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"observer_actions_total{action_type="webhook",outcome="delivered"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"observer_action_duration_seconds_count{action_type="webhook"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "observer_event_latency_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"observer_leader{group="g1"}"#),
            Some(0.0),
            "{text}"
        );
        assert!(text.contains(r#"observer_worker_info{group="g1",version=""#));
    }

    #[test]
    fn database_gauges_keep_their_values_while_the_database_is_down() {
        let m = Metrics::new("g", "w").unwrap();
        m.database_refreshed(&[ObserverGauges {
            observer: "orders".into(),
            backlog: 7,
            oldest_age_seconds: 2.5,
            dlq: 3,
            has_leader: true,
            capture_broken: true,
        }]);
        m.database_down();
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "observer_database_up"), Some(0.0));
        assert_eq!(
            sample(
                &text,
                r#"observer_backlog_events{group="g",observer="orders"}"#
            ),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, r#"observer_dlq_size{group="g",observer="orders"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"observer_capture_broken{group="g",observer="orders"}"#
            ),
            Some(1.0)
        );
        // a refresh without the observer removes its series
        m.database_refreshed(&[]);
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "observer_database_up"), Some(1.0));
        assert!(!text.contains(r#"observer="orders""#), "{text}");
    }

    /// `observer_*` names in a text, histogram suffixes removed.
    fn referenced(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("observer_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            // `observer_worker` is also the crate name in docs: only metric-shaped names
            let preceded_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
            if preceded_ok && base != "observer_" {
                out.insert(base.to_owned());
            }
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn alerts_dashboard_and_docs_use_only_defined_metrics() {
        let defined: std::collections::BTreeSet<String> =
            names::ALL.iter().map(|s| s.to_string()).collect();
        for (file, text) in [
            (
                "deploy/prometheus/alerts.yml",
                include_str!("../../../deploy/prometheus/alerts.yml"),
            ),
            (
                "deploy/grafana/fraiseql-observers.json",
                include_str!("../../../deploy/grafana/fraiseql-observers.json"),
            ),
        ] {
            let unknown: Vec<String> = referenced(text)
                .into_iter()
                .filter(|n| !defined.contains(n))
                .collect();
            assert!(
                unknown.is_empty(),
                "{file} uses undefined metrics {unknown:?}"
            );
        }
        // and every metric is documented
        let doc = include_str!("../../../docs/METRICS.md");
        let undocumented: Vec<&&str> = names::ALL
            .iter()
            .filter(|n| !doc.contains(&format!("`{n}`")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "docs/METRICS.md does not list {undocumented:?}"
        );
    }

    #[test]
    fn a_failover_counts_once_with_its_standby_time() {
        let m = Metrics::new("g", "w").unwrap();
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, r#"observer_failovers_total{group="g"}"#),
            Some(0.0),
            "present from the start"
        );
        m.failover(Duration::from_millis(1500));
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, r#"observer_failovers_total{group="g"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"observer_handover_seconds_count{group="g"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"observer_handover_seconds_sum{group="g"}"#),
            Some(1.5)
        );
        assert_eq!(
            sample(
                &text,
                r#"observer_handover_seconds_bucket{group="g",le="1"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"observer_handover_seconds_bucket{group="g",le="2.5"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn every_name_is_registered() {
        let m = Metrics::new("g", "w").unwrap();
        m.attempt("webhook", Duration::from_millis(1), true);
        m.pair("webhook", PairOutcome::Delivered);
        let text = m.encode().unwrap();
        let vec_families_without_children = [
            names::BREAKER_STATE,
            names::BREAKER_OPENED,
            names::LOOKUP_CACHE_HITS,
            names::LOOKUP_CACHE_MISSES,
            names::BACKLOG,
            names::BACKLOG_OLDEST_AGE,
            names::DLQ_SIZE,
            names::CAPTURE_BROKEN,
            names::REDELIVERIES,
            names::BROKEN_OBSERVERS,
            names::JOBS_FINISHED,
            names::JOB_DURATION,
        ];
        for n in names::ALL {
            if !vec_families_without_children.contains(n) {
                assert!(
                    text.contains(&format!("# TYPE {n} ")),
                    "{n} missing:\n{text}"
                );
            }
        }
    }

    #[test]
    fn mirrored_counters_only_move_up() {
        let c = IntCounter::new("x_total", "x").unwrap();
        mirror(&c, 5);
        mirror(&c, 3);
        assert_eq!(c.get(), 5);
        mirror(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
