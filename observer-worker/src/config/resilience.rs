//! The `redis:`, `deduplication:`, `caching:` and `circuit_breaker:` sections
//! (docs/CONFIGURATION.md, "Resilience"). Read here, checked across sections in
//! [`check_redis_needed`], built (with I/O) in `crate::resilience`.

use std::fmt;
use std::time::Duration;

use super::reader::{Fields, Reader};
use super::yaml::{Mark, Node};

pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_CACHE_CAPACITY: u64 = 100_000;

/// `redis:`: connection settings shared by deduplication and caching.
#[derive(Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Each Redis call gives up after this long (then the feature falls back or retries).
    pub timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // the URL may carry a password
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupBackend {
    Redis,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct DedupConfig {
    pub enabled: bool,
    pub backend: DedupBackend,
    /// How long a succeeded pair is remembered.
    pub ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBackend {
    Redis,
    Memory,
}

#[derive(Debug, Clone)]
pub struct CachingConfig {
    pub enabled: bool,
    pub backend: CacheBackend,
    /// TTL of a lookup that does not set its own.
    pub default_ttl: Duration,
    /// Largest number of entries of the in-process cache (`memory` backend).
    pub max_entries: u64,
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Open when failures / calls in the window reach this ratio...
    pub failure_ratio: f64,
    /// ...and the window holds at least this many calls.
    pub min_requests: u32,
    /// The rolling window the ratio is computed over.
    pub window: Duration,
    /// How long an open breaker stays open before it lets probes through.
    pub open_for: Duration,
    /// Probes allowed while half-open; all must succeed to close.
    pub half_open_requests: u32,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: false,
            backend: DedupBackend::Postgres,
            ttl: DEFAULT_DEDUP_TTL,
        }
    }
}

impl Default for CachingConfig {
    fn default() -> Self {
        CachingConfig {
            enabled: false,
            backend: CacheBackend::Memory,
            default_ttl: DEFAULT_CACHE_TTL,
            max_entries: DEFAULT_CACHE_CAPACITY,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: false,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 3,
        }
    }
}

pub fn read_redis(r: &mut Reader, node: Option<&Node>) -> Option<RedisConfig> {
    let node = node?;
    let f = r.map(node, "redis", &["url", "timeout"])?;
    let mut timeout = Duration::from_secs(1);
    if let Some(n) = f.get("timeout") {
        if let Some(d) = r.duration(n, &f.path_of("timeout"), Duration::from_millis(1)) {
            timeout = d;
        }
    }
    let Some(n) = f.get("url") else {
        r.problem(
            "redis",
            node.mark,
            "missing `url` (e.g. `url: redis://127.0.0.1:6379`)",
        );
        return None;
    };
    let url = r.non_empty_string(n, &f.path_of("url"))?;
    let url = url.trim().to_owned();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        // never echo the URL: it may carry a password
        r.problem(
            &f.path_of("url"),
            n.mark,
            "expected a URL like redis://127.0.0.1:6379",
        );
        return None;
    }
    if redis::parse_redis_url(&url).is_none() {
        r.problem(&f.path_of("url"), n.mark, "not a valid Redis URL");
        return None;
    }
    Some(RedisConfig { url, timeout })
}

pub fn read_dedup(r: &mut Reader, node: Option<&Node>) -> (DedupConfig, Option<Mark>) {
    let mut cfg = DedupConfig::default();
    let Some(node) = node else {
        return (cfg, None);
    };
    let Some(feat) = r.feature(node, "deduplication", &["backend", "ttl"], false) else {
        return (cfg, None);
    };
    cfg.enabled = feat.enabled;
    let f = &feat.fields;
    let (picked, mark) = backend(
        r,
        f,
        feat.mark,
        &[
            ("redis", DedupBackend::Redis),
            ("postgres", DedupBackend::Postgres),
        ],
    );
    cfg.backend = picked.unwrap_or(cfg.backend);
    if let Some(n) = f.get("ttl") {
        if let Some(d) = r.duration(n, &f.path_of("ttl"), Duration::from_secs(1)) {
            cfg.ttl = d;
        }
    }
    (cfg, mark)
}

pub fn read_caching(r: &mut Reader, node: Option<&Node>) -> (CachingConfig, Option<Mark>) {
    let mut cfg = CachingConfig::default();
    let Some(node) = node else {
        return (cfg, None);
    };
    let Some(feat) = r.feature(
        node,
        "caching",
        &["backend", "default_ttl", "max_entries"],
        false,
    ) else {
        return (cfg, None);
    };
    cfg.enabled = feat.enabled;
    let f = &feat.fields;
    let (picked, mark) = backend(
        r,
        f,
        feat.mark,
        &[
            ("redis", CacheBackend::Redis),
            ("memory", CacheBackend::Memory),
        ],
    );
    cfg.backend = picked.unwrap_or(cfg.backend);
    if let Some(n) = f.get("default_ttl") {
        if let Some(d) = r.duration(n, &f.path_of("default_ttl"), Duration::from_millis(1)) {
            cfg.default_ttl = d;
        }
    }
    if let Some(n) = f.get("max_entries") {
        if let Some(v) = r.integer(n, &f.path_of("max_entries"), 1, 100_000_000) {
            cfg.max_entries = v;
        }
    }
    (cfg, mark)
}

pub fn read_breaker(r: &mut Reader, node: Option<&Node>) -> BreakerConfig {
    let mut cfg = BreakerConfig::default();
    let Some(node) = node else { return cfg };
    let Some(feat) = r.feature(
        node,
        "circuit_breaker",
        &[
            "failure_ratio",
            "min_requests",
            "window",
            "open_for",
            "half_open_requests",
        ],
        false,
    ) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    let f = &feat.fields;
    if let Some(n) = f.get("failure_ratio") {
        if let Some(v) = r.number(n, &f.path_of("failure_ratio"), 0.01, 1.0) {
            cfg.failure_ratio = v;
        }
    }
    if let Some(n) = f.get("min_requests") {
        if let Some(v) = r.integer(n, &f.path_of("min_requests"), 1, 1_000_000) {
            cfg.min_requests = v as u32;
        }
    }
    if let Some(n) = f.get("half_open_requests") {
        if let Some(v) = r.integer(n, &f.path_of("half_open_requests"), 1, 10_000) {
            cfg.half_open_requests = v as u32;
        }
    }
    if let Some(n) = f.get("window") {
        if let Some(d) = r.duration(n, &f.path_of("window"), Duration::from_millis(100)) {
            cfg.window = d;
        }
    }
    if let Some(n) = f.get("open_for") {
        if let Some(d) = r.duration(n, &f.path_of("open_for"), Duration::from_millis(10)) {
            cfg.open_for = d;
        }
    }
    cfg
}

/// A feature that uses Redis needs the `redis:` section.
pub fn check_redis_needed(
    r: &mut Reader,
    redis: Option<&RedisConfig>,
    section: &str,
    uses_redis: bool,
    mark: Option<Mark>,
) {
    if uses_redis && redis.is_none() {
        r.problem(
            &format!("{section}.backend"),
            mark,
            "backend `redis` needs a `redis:` section (e.g. `redis: { url: redis://127.0.0.1:6379 }`)",
        );
    }
}

/// The `backend:` of a feature section mapped through `choices` (`None` when absent or invalid,
/// the latter reported), and where to report a missing `redis:` section: at `backend:` when it
/// is written, else at the section.
fn backend<B: Copy>(
    r: &mut Reader,
    f: &Fields<'_>,
    section: Option<Mark>,
    choices: &[(&str, B)],
) -> (Option<B>, Option<Mark>) {
    let Some(n) = f.get("backend") else {
        return (None, section);
    };
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let picked = choice(r, f, "backend", &names)
        .and_then(|v| choices.iter().find(|(name, _)| *name == v).map(|(_, b)| *b));
    (picked, n.mark.or(section))
}

fn choice(r: &mut Reader, f: &Fields<'_>, key: &str, choices: &[&str]) -> Option<String> {
    let n = f.get(key)?;
    let path = f.path_of(key);
    let v = r.string(n, &path)?;
    let v = v.trim().to_owned();
    if choices.contains(&v.as_str()) {
        Some(v)
    } else {
        r.problem(
            &path,
            n.mark,
            format!("expected one of {}, found {v:?}", choices.join(", ")),
        );
        None
    }
}
