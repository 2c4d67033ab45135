//! Lookup caches: `memory` (moka, bounded, per-entry TTL) and `redis`.
//!
//! Keys are `<lookup>:<generation>:<sha256 of the arguments>`; Redis keys are
//! prefixed with [`REDIS_PREFIX`] and the generation lives in
//! `fo:lookup:<lookup>:gen` (`INCR` evicts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use serde_json::Value;
use tracing::{info, warn};

use super::singleflight::SingleFlight;
use super::{LookupError, LookupResult, LookupStats};
use crate::actions::BoxFuture;
use crate::config::RedisConfig;

/// Prefix of every Redis key the lookup cache writes.
pub const REDIS_PREFIX: &str = "fo:lookup:";
/// Least time between two attempts to (re)connect to Redis.
const REDIS_RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// Largest value written to Redis (bigger values are served but not cached there).
pub const MAX_REDIS_VALUE: usize = 1024 * 1024;

/// A call of the source, run on a miss.
pub type Fetch = BoxFuture<'static, LookupResult>;

/// A cache in front of lookup sources.
pub trait Cache: Send + Sync + 'static {
    /// The cached value of (`lookup`, `key`), or the result of `fetch` (stored
    /// for `ttl` when it succeeded). Concurrent misses of one key run `fetch` once.
    fn get_or_fetch<'a>(
        &'a self,
        lookup: &'a str,
        key: &'a str,
        ttl: Duration,
        fetch: Fetch,
    ) -> BoxFuture<'a, LookupResult>;

    /// Makes every entry of `lookup` unreachable.
    fn evict<'a>(&'a self, lookup: &'a str) -> BoxFuture<'a, Result<(), LookupError>>;

    /// `memory` or `redis`.
    fn backend(&self) -> &'static str;

    /// The backend is failing and lookups call their sources directly.
    fn degraded(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------- memory

#[derive(Clone)]
struct Entry {
    value: Arc<Value>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The in-process cache: bounded by `max_entries`, each entry expiring after
/// its lookup's TTL. Concurrent misses of one key make one call (moka's
/// `try_get_with`).
pub struct MemoryCache {
    cache: moka::future::Cache<String, Entry>,
    /// Generation per lookup (names known at build time).
    generations: HashMap<String, AtomicU64>,
    stats: Arc<LookupStats>,
}

impl MemoryCache {
    pub fn new(max_entries: u64, lookups: &[String], stats: Arc<LookupStats>) -> MemoryCache {
        MemoryCache {
            cache: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            generations: lookups
                .iter()
                .map(|n| (n.clone(), AtomicU64::new(0)))
                .collect(),
            stats,
        }
    }

    fn generation(&self, lookup: &str) -> u64 {
        self.generations
            .get(lookup)
            .map(|g| g.load(Ordering::Acquire))
            .unwrap_or(0)
    }
}

impl Cache for MemoryCache {
    fn get_or_fetch<'a>(
        &'a self,
        lookup: &'a str,
        key: &'a str,
        ttl: Duration,
        fetch: Fetch,
    ) -> BoxFuture<'a, LookupResult> {
        Box::pin(async move {
            let full = format!("{lookup}:{}:{key}", self.generation(lookup));
            let missed = AtomicBool::new(false);
            let r = self
                .cache
                .try_get_with(full, async {
                    missed.store(true, Ordering::Relaxed);
                    fetch.await.map(|value| Entry { value, ttl })
                })
                .await;
            if missed.load(Ordering::Relaxed) {
                self.stats.miss(lookup);
            } else {
                self.stats.hit(lookup);
            }
            r.map(|e| e.value).map_err(|e| LookupError::clone(&e))
        })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn evict<'a>(&'a self, lookup: &'a str) -> BoxFuture<'a, Result<(), LookupError>> {
        Box::pin(async move {
            if let Some(g) = self.generations.get(lookup) {
                g.fetch_add(1, Ordering::AcqRel);
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- redis

/// Reads the generation and the value in one round trip.
const GET_SCRIPT: &str = r#"
local gen = redis.call('GET', KEYS[1]) or '0'
local value = redis.call('GET', ARGV[1] .. gen .. ':' .. ARGV[2])
return {gen, value}
"#;

/// The Redis cache: `GET`/`SET PX` of the JSON value. Misses are coalesced in
/// this process (one source call per key per worker; two workers may both
/// call the source once). When Redis fails, lookups call their source directly.
pub struct RedisCache {
    client: redis::Client,
    timeout: Duration,
    conn: tokio::sync::Mutex<(Option<ConnectionManager>, Option<Instant>)>,
    script: redis::Script,
    flights: SingleFlight,
    degraded: AtomicBool,
    stats: Arc<LookupStats>,
}

impl RedisCache {
    /// No I/O: connects on first use. `Err` only for an unusable URL.
    pub fn new(cfg: &RedisConfig, stats: Arc<LookupStats>) -> Result<RedisCache, String> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| format!("invalid Redis URL ({})", e.category()))?;
        Ok(RedisCache {
            client,
            timeout: cfg.timeout,
            conn: tokio::sync::Mutex::new((None, None)),
            script: redis::Script::new(GET_SCRIPT),
            flights: SingleFlight::default(),
            degraded: AtomicBool::new(false),
            stats,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &guard.0 {
            return Ok(c.clone());
        }
        if guard.1.is_some_and(|t| t.elapsed() < REDIS_RECONNECT_EVERY) {
            return Err("not connected (reconnecting)".to_owned());
        }
        guard.1 = Some(Instant::now());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                guard.0 = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(redis_error(&e)),
            Err(_) => Err(format!(
                "connecting timed out after {}",
                humantime::format_duration(self.timeout * 2)
            )),
        }
    }

    /// Records a Redis failure: warns once per outage, counts every one.
    fn failed(&self, what: &str, message: &str) {
        LookupStats::bump(&self.stats.redis_errors);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            warn!(
                operation = what,
                error = %message,
                "lookup cache: Redis is unavailable; lookups call their sources directly until it is back"
            );
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            info!("lookup cache: Redis is available again");
        }
    }

    async fn read(
        &self,
        lookup: &str,
        key: &str,
    ) -> Result<(String, Option<String>, ConnectionManager), String> {
        let mut conn = self.connection().await?;
        let gen_key = format!("{REDIS_PREFIX}{lookup}:gen");
        let prefix = format!("{REDIS_PREFIX}{lookup}:");
        let call = async {
            self.script
                .key(gen_key)
                .arg(prefix)
                .arg(key)
                .invoke_async::<(String, Option<String>)>(&mut conn)
                .await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((generation, value))) => Ok((generation, value, conn)),
            Ok(Err(e)) => Err(redis_error(&e)),
            Err(_) => Err(format!(
                "timed out after {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }
}

fn redis_error(e: &redis::RedisError) -> String {
    // never the URL (it may hold a password): kind and detail only
    match e.detail() {
        Some(d) => format!("{}: {d}", e.category()),
        None if e.is_timeout() => "timed out".to_owned(),
        None => e.category().to_owned(),
    }
}

impl Cache for RedisCache {
    fn get_or_fetch<'a>(
        &'a self,
        lookup: &'a str,
        key: &'a str,
        ttl: Duration,
        fetch: Fetch,
    ) -> BoxFuture<'a, LookupResult> {
        Box::pin(async move {
            match self.read(lookup, key).await {
                Ok((generation, value, conn)) => {
                    self.recovered();
                    if let Some(text) = value {
                        if let Ok(v) = serde_json::from_str::<Value>(&text) {
                            self.stats.hit(lookup);
                            return Ok(Arc::new(v));
                        }
                    }
                    self.stats.miss(lookup);
                    let redis_key = format!("{REDIS_PREFIX}{lookup}:{generation}:{key}");
                    let timeout = self.timeout;
                    let stats = self.stats.clone();
                    let name = lookup.to_owned();
                    let call: Fetch = Box::pin(async move {
                        let mut conn = conn;
                        // A caller that read before another flight's SET and registered after
                        // that flight finished would call the source again: look once more.
                        let get = conn.get::<_, Option<String>>(&redis_key);
                        if let Ok(Ok(Some(text))) = tokio::time::timeout(timeout, get).await {
                            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                                stats.hit(&name);
                                return Ok(Arc::new(v));
                            }
                        }
                        let value = fetch.await?;
                        let text = value.to_string();
                        if text.len() <= MAX_REDIS_VALUE {
                            let px = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
                            let mut cmd = redis::cmd("SET");
                            cmd.arg(&redis_key).arg(text).arg("PX").arg(px);
                            let set = cmd.query_async::<()>(&mut conn);
                            match tokio::time::timeout(timeout, set).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    warn!(error = %redis_error(&e), "lookup cache: storing a value in Redis failed")
                                }
                                Err(_) => warn!("lookup cache: storing a value in Redis timed out"),
                            }
                        }
                        Ok(value)
                    });
                    self.flights
                        .run(format!("{lookup}:{generation}:{key}"), lookup, call)
                        .await
                }
                Err(message) => {
                    self.failed("read", &message);
                    self.flights
                        .run(format!("{lookup}:direct:{key}"), lookup, fetch)
                        .await
                }
            }
        })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn evict<'a>(&'a self, lookup: &'a str) -> BoxFuture<'a, Result<(), LookupError>> {
        Box::pin(async move {
            let err = |message: String| LookupError::Cache {
                lookup: lookup.to_owned(),
                message: format!("Redis: {message}"),
            };
            let mut conn = self.connection().await.map_err(err)?;
            let mut cmd = redis::cmd("INCR");
            cmd.arg(format!("{REDIS_PREFIX}{lookup}:gen"));
            let incr = cmd.query_async::<i64>(&mut conn);
            match tokio::time::timeout(self.timeout, incr).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(err(redis_error(&e))),
                Err(_) => Err(err("timed out".to_owned())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fetch_counting(calls: Arc<AtomicU64>, v: Value) -> Fetch {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Arc::new(v))
        })
    }

    #[tokio::test]
    async fn memory_hit_miss_expiry_and_eviction() {
        let stats = Arc::new(LookupStats::default());
        let c = MemoryCache::new(100, &["a".to_owned()], stats.clone());
        let calls = Arc::new(AtomicU64::new(0));
        let ttl = Duration::from_millis(300);
        let v = c
            .get_or_fetch("a", "k", ttl, fetch_counting(calls.clone(), json!(1)))
            .await
            .unwrap();
        assert_eq!(*v, json!(1));
        let v = c
            .get_or_fetch("a", "k", ttl, fetch_counting(calls.clone(), json!(2)))
            .await
            .unwrap();
        assert_eq!(*v, json!(1), "hit");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let v = c
            .get_or_fetch("a", "k", ttl, fetch_counting(calls.clone(), json!(3)))
            .await
            .unwrap();
        assert_eq!(*v, json!(3), "expired");
        c.evict("a").await.unwrap();
        let v = c
            .get_or_fetch("a", "k", ttl, fetch_counting(calls.clone(), json!(4)))
            .await
            .unwrap();
        assert_eq!(*v, json!(4), "evicted");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(LookupStats::get(&stats.cache_hits), 1);
    }

    #[tokio::test]
    async fn memory_concurrent_misses_make_one_call_and_errors_are_not_cached() {
        let stats = Arc::new(LookupStats::default());
        let c = Arc::new(MemoryCache::new(100, &["a".to_owned()], stats));
        let calls = Arc::new(AtomicU64::new(0));
        let mut hs = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            let calls = calls.clone();
            hs.push(tokio::spawn(async move {
                c.get_or_fetch(
                    "a",
                    "k",
                    Duration::from_secs(60),
                    fetch_counting(calls, json!(7)),
                )
                .await
            }));
        }
        for h in hs {
            assert_eq!(*h.await.unwrap().unwrap(), json!(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let failing: Fetch = Box::pin(async {
            Err(LookupError::Source {
                lookup: "a".into(),
                message: "HTTP 500".into(),
            })
        });
        let e = c
            .get_or_fetch("a", "other", Duration::from_secs(60), failing)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
        let v = c
            .get_or_fetch(
                "a",
                "other",
                Duration::from_secs(60),
                fetch_counting(calls.clone(), json!(8)),
            )
            .await
            .unwrap();
        assert_eq!(*v, json!(8), "a failure is not cached");
    }
}
