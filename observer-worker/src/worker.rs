//! `start`: the build step (the only one with I/O), the services, shutdown in order.
//!
//! ```text
//! build: connect (retry) ─► check extension ─► apply YAML observers ─► load definitions
//!        ─► installation id ─► layers (breakers, dedup, attempt log)
//! start each named service (crate::supervisor):
//!        background: attempt-log │ lease │ listener │ heartbeat │ maintenance │ definitions
//!                    │ parked-pairs │ search-indexer / elasticsearch-sink (when enabled)
//!        with the consumer: job-runner (job_queue; every worker of the group)
//! run:   consumer (until SIGTERM) ─► drain ─► checkpoint
//! shut down in order: job runner drains ─► background services stop ─► release lease
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::actions::egress::Egress;
use crate::config::lookups::evict_observer_lookup;
use crate::config::{Config, LookupSource, ProcessEnv};
use crate::db::{listener, Db, DbError};
use crate::error::WorkerError;
use crate::installation::InstallationId;
use crate::lookups::{LookupStats, Lookups, Sources};
use crate::pipeline::attempt_log::AttemptLog;
use crate::pipeline::consumer::{Consumer, ConsumerSettings, LINGER, WAKE_POLL_INTERVAL};
use crate::pipeline::executor::Layers;
use crate::pipeline::handler::Deliverer;
use crate::pipeline::jobs::JobRunner;
use crate::pipeline::lease::{self, LeaseSettings, LeaseState};
use crate::pipeline::parked::{ParkQueue, ParkedLoop};
use crate::pipeline::pressure::DeliveryPressure;
use crate::pipeline::registry::{LoadSummary, ObserverRegistry, BROKEN_RECHECK};
use crate::resilience::{Breakers, Dedup};
use crate::retry::{sleep_or_cancel, Backoff};
use crate::supervisor::{Stage, Supervisor};
use crate::telemetry::health::Phase;
use crate::telemetry::metrics::{self, Metrics};
use crate::telemetry::{self as telemetry, Stats};

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFINITIONS_REFRESH: Duration = Duration::from_secs(30);

/// Runs the worker until `stop` fires (clean exit) or a fatal error.
pub async fn run(
    config: Config,
    database_url: &str,
    stop: CancellationToken,
) -> Result<(), WorkerError> {
    let started = Instant::now();
    let group = config.worker.group.clone();
    let worker_id = config.worker.id.clone();
    let db = Db::new(database_url, config.database.connect_timeout)?
        .fetch_days(config.deduplication.enabled || config.circuit_breaker.enabled)
        .lease_statement_timeout(lease::renewal_deadline(config.failover.lease_ttl))?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        group = %group,
        worker_id = %worker_id,
        database = %db.target(),
        observers_in_file = config.observers.len(),
        "fraiseql-observers starting"
    );
    // 0. Metrics and health first, so probes see a starting (or unreachable-database) worker.
    //    Stopped when `run` returns, whichever way.
    let telemetry_stop = CancellationToken::new();
    let _telemetry_guard = telemetry_stop.clone().drop_guard();
    let metrics = if config.metrics.enabled {
        Some(start_telemetry(&config, &db, &stop, &telemetry_stop).await?)
    } else {
        None
    };

    // 1. Database reachable, extension installed.
    let Some(version) = wait_for_database(&db, &stop).await? else {
        info!("stopped before the database became reachable");
        return Ok(());
    };
    info!(database = %db.target(), extension_version = %version, "connected to the database");

    // 1b. `failover: disabled`: the only worker of its group; refuse to run beside another.
    if !config.failover.enabled && !claim_sole_leadership(&db, &config, &stop).await? {
        return Ok(());
    }

    // 2. Observers of the file -> database (actions stored unexpanded).
    if !apply_observers(&db, &config, &stop).await? {
        return Ok(());
    }

    // 3. What we run comes from the database.
    let max_in_flight = config.concurrency.effective_max_in_flight();
    let mailer = match &config.smtp {
        Some(smtp) => {
            let m = crate::actions::email::Mailer::new(smtp)
                .map_err(|e| WorkerError::Fatal(e.to_string()))?;
            info!(host = %smtp.host, port = smtp.port, tls = ?smtp.tls, "smtp: e-mail actions send through this server");
            Some(Arc::new(m))
        }
        None => None,
    };
    let http = Egress::new(max_in_flight, config.destinations.clone())
        .map_err(|e| WorkerError::Http(e.to_string()))?
        .with_mailer(mailer);
    let lookups = Arc::new(build_lookups(&config, &db, &http)?);
    let registry = Arc::new(ObserverRegistry::new(
        db.clone(),
        group.clone(),
        Arc::new(ProcessEnv),
        Arc::new(config.action_secrets.clone()),
        config.retry.clone(),
        http,
        lookups.clone(),
    ));
    let Some(loaded) = load_definitions(&registry, &db, &stop).await? else {
        return Ok(());
    };
    info!(group = %group, observers = loaded.ready, broken = loaded.broken, "observers loaded");
    if loaded.ready + loaded.broken == 0 {
        warn!(group = %group, "no observers in this group: nothing will be delivered until one is created");
    }

    // 4. This installation's id (every webhook-id and dedup key carries it).
    let Some(installation) = load_installation(&db, &stop).await? else {
        return Ok(());
    };
    info!(installation = %installation, "installation id");

    // 5. Services (crate::supervisor). The background ones stop after the consumer and the job
    //    runner have drained, so the lease stays renewed while in-flight work finishes.
    let mut services = Supervisor::new(stop.clone());
    let background = services.token(Stage::Background);
    let Some(mut layers) = build_layers(&config, &db, max_in_flight, &stop, &background).await?
    else {
        return Ok(());
    };
    layers.metrics = metrics.clone();
    // every attempt, for observers.debug_event() (written off the delivery path)
    if config.worker.attempt_log {
        let (attempt_log, attempt_writer) =
            AttemptLog::new(db.clone(), worker_id.clone(), background.clone());
        layers.attempt_log = Some(attempt_log);
        services.start("attempt-log", Stage::Background, attempt_writer);
    }
    let stats = Arc::new(Stats::default());
    let (lease_tx, lease_rx) = watch::channel(LeaseState::Standby);
    let fenced = Arc::new(Notify::new());
    let wake = Arc::new(Notify::new());
    if let Some(m) = &metrics {
        m.attach(metrics::Sources {
            stats: stats.clone(),
            lease: lease_rx.clone(),
            breakers: layers.breakers.clone(),
            dedup: layers.dedup.clone(),
            lookups: lookups.clone(),
            attempt_log: layers.attempt_log.clone(),
            registry: Some(registry.clone()),
        });
    }
    // delivery comes first: the Elasticsearch sink gives way while the consumer has a backlog
    let pressure = Arc::new(DeliveryPressure::default());
    let wiring = Wiring {
        pressure: pressure.clone(),
        db: db.clone(),
        group: group.clone(),
        worker_id: worker_id.clone(),
        registry: registry.clone(),
        lookups: lookups.clone(),
        layers: layers.clone(),
        installation,
        metrics: metrics.clone(),
        stats: stats.clone(),
        lease: lease_rx.clone(),
        fenced: fenced.clone(),
        wake: wake.clone(),
    };
    start_services(&mut services, &config, &wiring, lease_tx);
    // pairs of open destinations (with circuit breakers) and of broken observers
    let parker = Some(Arc::new(ParkQueue::new(
        db.clone(),
        group.clone(),
        lease_rx.clone(),
        fenced.clone(),
    )));

    // 6. Consume until stopped.
    let handler = Arc::new(Deliverer {
        registry: registry.clone(),
        db: db.clone(),
        group: group.clone(),
        lease: lease_rx.clone(),
        fenced: fenced.clone(),
        layers,
        installation,
        parker,
        stats: stats.clone(),
    });
    let consumer = Consumer::new(
        db.clone(),
        ConsumerSettings {
            group: group.clone(),
            batch_size: config.worker.batch_size,
            max_in_flight,
            poll_interval: config.worker.poll_interval,
            wake_poll_interval: WAKE_POLL_INTERVAL,
            linger: LINGER,
            checkpoints: config.checkpoints.clone(),
            shutdown_timeout: config.worker.shutdown_timeout,
        },
        handler,
        lease_rx.clone(),
        fenced,
        wake,
        stop.clone(),
        stats.clone(),
    )
    .report_pressure(pressure);
    if let Some(m) = &metrics {
        m.mark_running();
    }
    let report = consumer.run().await;
    if stop.is_cancelled() {
        info!("consumer stopped: in-flight deliveries finished or given up");
    }

    // 7. Release the lease so a standby takes over at once.
    let last_state = *lease_rx.borrow();
    services.shut_down().await;
    if let LeaseState::Held(epoch) | LeaseState::Unknown(epoch) = last_state {
        match tokio::time::timeout(
            Duration::from_secs(3),
            db.lease_release(&group, &worker_id, epoch),
        )
        .await
        {
            Ok(Ok(true)) => info!(group = %group, epoch, "leader lease released"),
            Ok(Ok(false)) => debug!(group = %group, epoch, "leader lease was no longer ours"),
            Ok(Err(e)) => {
                warn!(group = %group, error = %e, "could not release the leader lease; it expires by itself")
            }
            Err(_) => {
                warn!(group = %group, "releasing the leader lease timed out; it expires by itself")
            }
        }
    }
    // A last heartbeat says we stopped (`status` shows it at once instead of after the 30 s
    // staleness bound). Best effort: a crash leaves the last regular heartbeat, which goes stale.
    let farewell = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "role": "stopped",
    });
    if tokio::time::timeout(
        Duration::from_secs(3),
        db.heartbeat(&group, &worker_id, &farewell),
    )
    .await
    .map_or(true, |r| r.is_err())
    {
        debug!(group = %group, "could not record the stop in observers.worker");
    }

    if !lookups.names().is_empty() {
        let s = lookups.stats();
        info!(
            source_calls = LookupStats::get(&s.source_calls),
            source_errors = LookupStats::get(&s.source_errors),
            cache_hits = LookupStats::get(&s.cache_hits),
            cache_misses = LookupStats::get(&s.cache_misses),
            redis_errors = LookupStats::get(&s.redis_errors),
            evictions = LookupStats::get(&s.evictions),
            "lookup statistics"
        );
    }
    info!(
        uptime = %humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
        events_finished = Stats::get(&stats.events_finished),
        actions_delivered = Stats::get(&stats.actions_delivered),
        actions_dead_lettered = Stats::get(&stats.actions_dead_lettered),
        failed_attempts = Stats::get(&stats.attempts_failed),
        dedup_hits = Stats::get(&stats.dedup_hits),
        actions_parked = Stats::get(&stats.actions_parked),
        unfinished = report.unfinished_at_shutdown,
        final_checkpoint = report.final_checkpoint,
        "fraiseql-observers stopped"
    );
    match report.fatal {
        Some(f) => {
            error!(error = %f, "fatal error");
            Err(WorkerError::Fatal(f))
        }
        None => Ok(()),
    }
}

/// The handles the services share with each other and with the consumer (built once by `run`).
struct Wiring {
    db: Db,
    group: String,
    worker_id: String,
    registry: Arc<ObserverRegistry>,
    lookups: Arc<Lookups>,
    layers: Layers,
    installation: InstallationId,
    metrics: Option<Arc<Metrics>>,
    stats: Arc<Stats>,
    lease: watch::Receiver<LeaseState>,
    /// a fenced write: the lease loop re-checks at once
    fenced: Arc<Notify>,
    /// new events may exist: wakes the consumer (the listener notifies it)
    wake: Arc<Notify>,
    /// the consumer reports full fetches (a backlog); the Elasticsearch sink waits meanwhile
    pressure: Arc<DeliveryPressure>,
}

/// Starts every service but the consumer, each under its name (the module comment lists them).
fn start_services(
    services: &mut Supervisor,
    config: &Config,
    w: &Wiring,
    lease_tx: watch::Sender<LeaseState>,
) {
    let background = services.token(Stage::Background);
    let lease_released = Arc::new(Notify::new());
    let jobs_wake = Arc::new(Notify::new());
    services.start(
        "lease",
        Stage::Background,
        lease::run(
            w.db.clone(),
            LeaseSettings {
                group: w.group.clone(),
                worker_id: w.worker_id.clone(),
                ttl: config.failover.lease_ttl,
                standby_poll: config.failover.standby_poll,
            },
            w.metrics.clone(),
            lease_tx,
            w.fenced.clone(),
            lease_released.clone(),
            background.clone(),
        ),
    );
    services.start(
        "listener",
        Stage::Background,
        listener::run(
            w.db.pg_config().clone(),
            w.db.target().to_owned(),
            listener::Wakers {
                events: w.wake.clone(),
                lease_released,
                jobs: config.job_queue.enabled.then(|| jobs_wake.clone()),
                group: w.group.clone(),
            },
            background.clone(),
        ),
    );
    services.start(
        "heartbeat",
        Stage::Background,
        heartbeat(
            w.db.clone(),
            w.group.clone(),
            w.worker_id.clone(),
            w.lease.clone(),
            Reported {
                stats: w.stats.clone(),
                layers: w.layers.clone(),
                lookups: w.lookups.clone(),
                registry: w.registry.clone(),
            },
            background.clone(),
        ),
    );
    services.start(
        "maintenance",
        Stage::Background,
        maintenance(w.db.clone(), background.clone()),
    );
    // the audit trail, off the delivery path (docs/SEARCH.md)
    if config.search.enabled {
        services.start(
            "search-indexer",
            Stage::Background,
            crate::search::indexer::run(
                w.db.clone(),
                config.search.clone(),
                w.metrics.clone(),
                background.clone(),
            ),
        );
    }
    if config.elasticsearch.enabled {
        services.start(
            "elasticsearch-sink",
            Stage::Background,
            crate::search::elasticsearch::run(
                w.db.clone(),
                config.elasticsearch.clone(),
                w.installation,
                w.metrics.clone(),
                w.pressure.clone(),
                background.clone(),
            ),
        );
    }
    services.start(
        "definitions",
        Stage::Background,
        refresh_definitions(w.registry.clone(), background.clone()),
    );
    // parked pairs, dead-letter retries (observers.dlq_retry) and replays (observers.replay)
    services.start(
        "parked-pairs",
        Stage::Background,
        Arc::new(ParkedLoop {
            db: w.db.clone(),
            group: w.group.clone(),
            registry: w.registry.clone(),
            lease: w.lease.clone(),
            fenced: w.fenced.clone(),
            layers: w.layers.clone(),
            installation: w.installation,
            stats: w.stats.clone(),
        })
        .run(background),
    );
    // jobs (mode: async actions, observers.job_enqueue): every worker of the group runs them,
    // leader or standby; it stops claiming at the worker's stop and finishes its running jobs
    if config.job_queue.enabled {
        services.start(
            "job-runner",
            Stage::WithConsumer,
            Arc::new(JobRunner {
                db: w.db.clone(),
                group: w.group.clone(),
                worker_id: w.worker_id.clone(),
                registry: w.registry.clone(),
                layers: w.layers.clone(),
                installation: w.installation,
                config: config.job_queue.clone(),
                wake: jobs_wake,
                shutdown_timeout: config.worker.shutdown_timeout,
            })
            .run(services.token(Stage::WithConsumer)),
        );
    }
}

/// Binds `metrics.listen` (a taken address is fatal: the operator asked for it) and starts
/// the HTTP server and the database-gauge refresher; both stop with `telemetry_stop`.
async fn start_telemetry(
    config: &Config,
    db: &Db,
    stop: &CancellationToken,
    telemetry_stop: &CancellationToken,
) -> Result<Arc<Metrics>, WorkerError> {
    let m = Metrics::new(&config.worker.group, &config.worker.id)
        .map(Arc::new)
        .map_err(|e| WorkerError::Fatal(format!("metrics registry: {e}")))?;
    let listener = telemetry::server::bind(&config.metrics.listen)
        .await
        .map_err(WorkerError::Fatal)?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.metrics.listen.clone());
    info!(listen = %addr, "metrics: serving /metrics, /health/live and /health/ready");
    tokio::spawn(telemetry::server::run(
        listener,
        m.clone(),
        telemetry_stop.clone(),
    ));
    tokio::spawn(telemetry::database::run(
        db.clone(),
        m.clone(),
        telemetry_stop.clone(),
    ));
    // not ready from the moment shutdown is requested (in-flight work still drains)
    let (m2, stop, done) = (m.clone(), stop.clone(), telemetry_stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => m2.set_phase(Phase::Stopping),
            _ = done.cancelled() => {}
        }
    });
    Ok(m)
}

/// The declared lookups and their cache (no I/O: connections open on first use).
fn build_lookups(config: &Config, db: &Db, http: &Egress) -> Result<Lookups, WorkerError> {
    if config.lookups.is_empty() {
        return Ok(Lookups::empty());
    }
    let needs_sql = config
        .lookups
        .iter()
        .any(|l| matches!(l.source, LookupSource::Sql { .. }));
    let pool = if needs_sql {
        Some(
            Sources::sql_pool(
                db.pg_config(),
                config.database.connect_timeout + Duration::from_secs(1),
            )
            .map_err(WorkerError::Lookups)?,
        )
    } else {
        None
    };
    let lookups = Lookups::build(
        &config.lookups,
        &config.caching,
        config.redis.as_ref(),
        Sources::new(http.clone(), pool),
    )
    .map_err(|e| WorkerError::Lookups(e.to_string()))?;
    info!(
        lookups = ?lookups.names(),
        caching = config.caching.enabled,
        backend = ?config.caching.backend,
        "lookups ready"
    );
    Ok(lookups)
}

/// This installation's id (`observers.installation`), retried while the database is unreachable.
/// `Ok(None)` if stopped first.
async fn load_installation(
    db: &Db,
    stop: &CancellationToken,
) -> Result<Option<InstallationId>, WorkerError> {
    let mut backoff = startup_backoff();
    let id = loop {
        match db.installation_id().await {
            Ok(id) => break id,
            Err(e) if e.is_retryable() => {
                warn!(retry_in = %humantime::format_duration(backoff.peek()), "{e}");
                if !backoff.wait(stop).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(WorkerError::Db(e)),
        }
    };
    match id.as_deref().and_then(InstallationId::parse) {
        Some(installation) => Ok(Some(installation)),
        None => Err(WorkerError::Fatal(format!(
            "observers.installation holds {}, not one UUID: restore it from a dump of this \
             database, or (a new identity: webhook-ids change) run as a superuser \
             INSERT INTO observers.installation DEFAULT VALUES",
            id.map_or_else(|| "no row".to_owned(), |s| format!("{s:?}"))
        ))),
    }
}

/// The resilience layers of `config` (concurrency, circuit breakers, deduplication).
/// `Ok(None)` if stopped first.
async fn build_layers(
    config: &Config,
    db: &Db,
    max_in_flight: usize,
    stop: &CancellationToken,
    background: &CancellationToken,
) -> Result<Option<Layers>, WorkerError> {
    let mut layers = Layers::new(Arc::new(Semaphore::new(max_in_flight)), stop.clone());
    let cb = &config.circuit_breaker;
    if cb.enabled {
        info!(
            failure_ratio = cb.failure_ratio,
            min_requests = cb.min_requests,
            window = %humantime::format_duration(cb.window),
            open_for = %humantime::format_duration(cb.open_for),
            half_open_requests = cb.half_open_requests,
            "circuit breakers on (one per destination)"
        );
        layers.breakers = Some(Arc::new(Breakers::new(cb.clone())));
    }
    let dd = &config.deduplication;
    if !dd.enabled {
        return Ok(Some(layers));
    }
    let dedup = Dedup::start(
        dd,
        config.redis.as_ref(),
        db.clone(),
        &config.worker.id,
        background.clone(),
    )
    .map_err(WorkerError::Fatal)?;
    info!(
        backend = ?dd.backend,
        ttl = %humantime::format_duration(dd.ttl),
        "deduplication on"
    );
    layers.dedup = Some(dedup);
    Ok(Some(layers))
}

/// Retries until the database answers. `Ok(None)` if stopped first.
async fn wait_for_database(
    db: &Db,
    stop: &CancellationToken,
) -> Result<Option<String>, WorkerError> {
    let mut backoff = startup_backoff();
    loop {
        match db.extension_version().await {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {
                return Err(WorkerError::ExtensionMissing {
                    target: db.target().to_owned(),
                })
            }
            Err(e) if e.is_retryable() => {
                warn!(
                    retry_in = %humantime::format_duration(backoff.peek()),
                    "{e}; retrying in {} (check that PostgreSQL is running and that database.url / DATABASE_URL points to it)",
                    humantime::format_duration(backoff.peek())
                );
            }
            Err(e) => return Err(WorkerError::Db(e)),
        }
        if !backoff.wait(stop).await {
            return Ok(None);
        }
    }
}

/// With `failover: disabled` a worker expects to be alone in its group: it takes the lease
/// before anything else, and refuses to start while another worker holds it from a live
/// database session (a crashed worker's lease is taken over at once). `Ok(false)` if stopped
/// first.
async fn claim_sole_leadership(
    db: &Db,
    config: &Config,
    stop: &CancellationToken,
) -> Result<bool, WorkerError> {
    let group = &config.worker.group;
    let ttl = config.failover.lease_ttl;
    let deadline = lease::renewal_deadline(ttl);
    loop {
        let answer =
            tokio::time::timeout(deadline, db.lease_acquire(group, &config.worker.id, ttl)).await;
        match answer {
            Ok(Ok(Some(epoch))) => {
                debug!(group = %group, epoch, "failover disabled: this worker holds the group's lease");
                return Ok(true);
            }
            Ok(Ok(None)) => {
                return Err(WorkerError::NotAlone {
                    group: group.clone(),
                })
            }
            Ok(Err(e)) if e.is_retryable() => {
                warn!(group = %group, error = %e, "cannot take the leader lease yet; retrying");
            }
            Ok(Err(e)) => return Err(WorkerError::Db(e)),
            Err(_) => {
                warn!(group = %group, "taking the leader lease did not answer within {}; retrying",
                    humantime::format_duration(deadline));
            }
        }
        if !sleep_or_cancel(stop, Duration::from_millis(500)).await {
            return Ok(false);
        }
    }
}

/// Creates/replaces every observer of the file. `Ok(false)` if stopped first.
async fn apply_observers(
    db: &Db,
    config: &Config,
    stop: &CancellationToken,
) -> Result<bool, WorkerError> {
    for (i, o) in config.observers.iter().enumerate() {
        let mut backoff = startup_backoff();
        loop {
            match db.create_observer(o, &config.worker.group).await {
                Ok(()) => {
                    info!(observer = %o.name, table = %o.table, events = ?o.events, actions = o.actions.len(), "observer applied");
                    break;
                }
                Err(e) if e.is_retryable() => {
                    warn!(observer = %o.name, retry_in = %humantime::format_duration(backoff.peek()), "{e}");
                    if !backoff.wait(stop).await {
                        return Ok(false);
                    }
                }
                Err(e) => {
                    return Err(WorkerError::ObserverRejected {
                        name: o.name.clone(),
                        path: observer_path(config, i),
                        source: e,
                    })
                }
            }
        }
    }
    Ok(true)
}

/// Where observer `i` of `config.observers` was written (internal eviction
/// observers point at their lookup's `table`).
fn observer_path(config: &Config, i: usize) -> String {
    match evict_observer_lookup(config, i) {
        Some(j) => format!("lookups[{j}].table"),
        None => format!("observers[{i}]"),
    }
}

async fn load_definitions(
    registry: &ObserverRegistry,
    db: &Db,
    stop: &CancellationToken,
) -> Result<Option<LoadSummary>, WorkerError> {
    let mut backoff = startup_backoff();
    loop {
        match registry.reload().await {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.is_retryable() => {
                warn!(database = %db.target(), retry_in = %humantime::format_duration(backoff.peek()), "{e}");
            }
            Err(e) => return Err(WorkerError::Db(e)),
        }
        if !backoff.wait(stop).await {
            return Ok(None);
        }
    }
}

/// How the start-up steps wait for the database: 0.5 s, doubling, at most 10 s.
fn startup_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
}

/// What the heartbeat reports besides the lease role.
struct Reported {
    stats: Arc<Stats>,
    layers: Layers,
    lookups: Arc<Lookups>,
    /// Its broken observers (`info.broken_observers`, shown by `observers.status()`).
    registry: Arc<ObserverRegistry>,
}

/// Best-effort `observers.heartbeat` every few seconds.
async fn heartbeat(
    db: Db,
    group: String,
    worker_id: String,
    lease: watch::Receiver<LeaseState>,
    reported: Reported,
    stop: CancellationToken,
) {
    let Reported {
        stats,
        layers,
        lookups,
        registry,
    } = reported;
    let started_at = httpdate::fmt_http_date(std::time::SystemTime::now());
    loop {
        let state = *lease.borrow();
        let (role, epoch) = match state {
            LeaseState::Held(e) => ("leader", Some(e)),
            LeaseState::Unknown(e) => ("unknown", Some(e)),
            LeaseState::Standby => ("standby", None),
        };
        let info = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "role": role,
            "epoch": epoch,
            "started_at": started_at,
            "stats": stats.snapshot(),
            "dedup": layers.dedup.as_ref().map(|d| d.snapshot()),
            "breakers": layers.breakers.as_ref().map(|b| b.snapshot()),
            "lookups": lookups.snapshot(),
            "attempt_log": layers.attempt_log.as_ref().map(|l| l.snapshot()),
            "broken_observers": registry.broken_report(),
        });
        if let Err(e) = db.heartbeat(&group, &worker_id, &info).await {
            debug!(error = %e, "heartbeat failed");
        }
        if !sleep_or_cancel(&stop, HEARTBEAT_INTERVAL).await {
            return;
        }
    }
}

/// `observers.maintain()` at start and hourly (best effort).
async fn maintenance(db: Db, stop: CancellationToken) {
    loop {
        match db.maintain().await {
            Ok(summary) => info!(summary = %summary, "outbox maintenance done"),
            Err(DbError::Unavailable { .. }) => {
                debug!("outbox maintenance skipped: database unreachable")
            }
            Err(e) => warn!(error = %e, "outbox maintenance failed"),
        }
        if !sleep_or_cancel(&stop, MAINTENANCE_INTERVAL).await {
            return;
        }
    }
}

/// Picks up observers changed in SQL while running (sooner while one is broken, so that its
/// parked events go out soon after the fix).
async fn refresh_definitions(registry: Arc<ObserverRegistry>, stop: CancellationToken) {
    loop {
        let every = if registry.broken().is_empty() {
            DEFINITIONS_REFRESH
        } else {
            BROKEN_RECHECK
        };
        if !sleep_or_cancel(&stop, every).await {
            return;
        }
        if let Err(e) = registry.reload().await {
            debug!(error = %e, "refreshing observer definitions failed");
        }
    }
}
