//! Configuration: parse (YAML tree) -> read + expand `${VAR}` -> validate.
//! Everything here is pure except [`load_file`] reading the file.
//!
//! The reference for every key is docs/CONFIGURATION.md.

pub mod actions;
pub mod destinations;
pub mod env;
pub mod lookups;
mod parse;
pub mod reader;
pub mod resilience;
pub mod search;
pub mod secrets;
mod validate;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use actions::{ActionConfig, EmailConfig, SlackConfig, WebhookConfig};
pub use destinations::DestinationPolicy;
pub use env::{Env, ProcessEnv};
pub use lookups::{LookupConfig, LookupSource};
pub use reader::Problem;
pub use resilience::{
    BreakerConfig, CacheBackend, CachingConfig, DedupBackend, DedupConfig, RedisConfig,
};
pub use search::{ElasticsearchConfig, EsAuth, SearchConfig};
pub use secrets::ActionSecrets;

use crate::retry::RetryPolicy;

/// `failover:` (docs/CONFIGURATION.md, docs/OPERATIONS.md "Several workers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// `true`: several workers of the group may run; one leads, the others stand by and take
    /// over. `false` (the default): this worker expects to be the only one of its group and
    /// refuses to start while another live worker holds the group's lease.
    pub enabled: bool,
    /// TTL of the group's leader lease: how long a leader that is alive but cut off or frozen
    /// keeps it. A leader whose database session ended loses it at once.
    pub lease_ttl: Duration,
    /// How often a standby asks for the lease (cheap, read-only while the leader is alive).
    pub standby_poll: Duration,
}

/// `job_queue:` (docs/JOBS.md): every worker of the group that enables it runs jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobQueueConfig {
    pub enabled: bool,
    /// Jobs this worker runs at once.
    pub workers: usize,
    /// Safety poll for due jobs (NOTIFY `observers_jobs` wakes the runner sooner).
    pub poll_interval: Duration,
    /// A running job is rescued (retried elsewhere) once it ran this long.
    pub timeout: Duration,
    /// A running job is rescued once its worker has not beaten for this long (kill -9, freeze).
    pub rescue_after: Duration,
}

impl Default for JobQueueConfig {
    fn default() -> Self {
        JobQueueConfig {
            enabled: false,
            workers: 16,
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(300),
            rescue_after: Duration::from_secs(30),
        }
    }
}

/// How the worker talks TLS to its SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), port 587 by default.
    Starttls,
    /// TLS from the first byte (SMTPS), port 465 by default.
    Implicit,
    /// No TLS at all: refused unless the host is a loopback address.
    None,
}

/// `smtp:`: the server of every e-mail action (SPEC §3).
#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub user: Option<String>,
    pub password: Option<String>,
    pub from: String,
    /// Per-command and connect timeout.
    pub timeout: Duration,
    /// Pooled connections kept open to the server.
    pub pool_size: u32,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// The validated configuration of a worker.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub worker: WorkerConfig,
    /// Default retry policy of every action (an action may override fields).
    pub retry: RetryPolicy,
    pub checkpoints: CheckpointConfig,
    pub concurrency: ConcurrencyConfig,
    pub metrics: MetricsConfig,
    /// `failover:`: the group's leader lease and how standbys take it over.
    pub failover: FailoverConfig,
    /// `job_queue:`: run jobs (mode: async actions, observers.job_enqueue) on this worker.
    pub job_queue: JobQueueConfig,
    /// `smtp:`: the server e-mail actions send through.
    pub smtp: Option<SmtpConfig>,
    /// `redis:` connection settings, when a feature uses Redis.
    pub redis: Option<RedisConfig>,
    pub deduplication: DedupConfig,
    pub caching: CachingConfig,
    pub circuit_breaker: BreakerConfig,
    /// `search:`: the worker fills the PostgreSQL search index (docs/SEARCH.md).
    pub search: SearchConfig,
    /// `elasticsearch:`: the Elasticsearch / OpenSearch sink (docs/SEARCH.md).
    pub elasticsearch: ElasticsearchConfig,
    /// `lookups:`: cached enrichment usable from templates as `lookup.<name>`.
    pub lookups: Vec<LookupConfig>,
    /// `action_secrets:` plus what the file's observers use: the variables actions
    /// defined in the database may expand (docs/SECURITY.md).
    pub action_secrets: ActionSecrets,
    /// `destinations:`: where actions and HTTP lookups may connect (docs/SECURITY.md).
    pub destinations: DestinationPolicy,
    /// Observers from the file (plus the internal `lookup_evict_*` observers
    /// of lookups with `table:` when caching is on), applied to the database at start.
    pub observers: Vec<ObserverConfig>,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// `database.url`; may be absent when given on the command line / `DATABASE_URL`.
    pub url: Option<String>,
    pub connect_timeout: Duration,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub group: String,
    /// Largest page fetched from the outbox at once.
    pub batch_size: u32,
    /// Safety poll when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// How long SIGTERM waits for in-flight actions.
    pub shutdown_timeout: Duration,
    /// Record every attempt in `observers.attempt` (for `observers.debug_event()`).
    pub attempt_log: bool,
}

#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// When false, progress is only made durable when a whole batch is closed.
    pub enabled: bool,
    /// Save progress inside a batch at least this often...
    pub interval: Duration,
    /// ...or as soon as this many events finished since the last save.
    pub every_events: u32,
}

#[derive(Debug, Clone)]
pub struct ConcurrencyConfig {
    pub enabled: bool,
    pub max_in_flight: usize,
}

impl ConcurrencyConfig {
    /// `concurrent_execution: disabled` runs one event at a time.
    pub fn effective_max_in_flight(&self) -> usize {
        if self.enabled {
            self.max_in_flight
        } else {
            1
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: String,
}

/// An observer as written in the file.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    pub name: String,
    pub table: String,
    pub events: Vec<String>,
    pub condition: Option<String>,
    pub columns: Option<Vec<String>>,
    pub ordering_key: Option<Vec<String>>,
    /// The actions, validated with `${VAR}` expanded (never stored anywhere).
    pub actions: Vec<ActionConfig>,
    /// The `actions` subtree exactly as written (placeholders NOT expanded):
    /// this is what is stored in the database.
    pub actions_raw: serde_json::Value,
}

/// Defaults that depend on the running process.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub worker_id: String,
}

impl Defaults {
    /// `hostname:pid`.
    pub fn for_this_process() -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let host = if host.is_empty() {
            "localhost".to_owned()
        } else {
            host
        };
        Defaults {
            worker_id: format!("{host}:{}", std::process::id()),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(.file, .problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// `config.yaml:12:5: observers[0].table: must not be empty`, one per line.
pub fn render_problems(file: &str, problems: &[Problem]) -> String {
    let mut out = format!(
        "invalid configuration {file}: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(file);
        out.push(':');
        out.push_str(&p.to_string());
    }
    out
}

/// Parses, expands and validates a configuration text. Pure.
pub fn parse_str(source: &str, env: &dyn Env, defaults: &Defaults) -> Result<Config, Vec<Problem>> {
    let tree = match yaml::parse(source) {
        Ok(t) => t,
        Err(e) => {
            let message = match e.kind {
                yaml::SyntaxErrorKind::Syntax => format!("YAML syntax error: {}", e.message),
                yaml::SyntaxErrorKind::AliasLimit => e.message,
            };
            return Err(vec![Problem {
                path: String::new(),
                mark: Some(e.mark),
                message,
            }]);
        }
    };
    let mut reader = reader::Reader::new(env);
    let config = parse::read_config(&mut reader, &tree, defaults);
    if let Some(config) = &config {
        validate::validate(&mut reader, config, &tree);
    }
    let mut problems = reader.into_problems();
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => {
            // file order: by position, positionless last
            problems.sort_by_key(|p| {
                p.mark
                    .map(|m| (m.line, m.column))
                    .unwrap_or((usize::MAX, 0))
            });
            Err(problems)
        }
    }
}

/// Reads and parses a configuration file.
pub fn load_file(path: &Path, env: &dyn Env, defaults: &Defaults) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_str(&source, env, defaults).map_err(|problems| ConfigError::Invalid {
        file: path.display().to_string(),
        problems,
    })
}

#[cfg(test)]
mod tests;
