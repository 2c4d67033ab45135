//! Cached lookups: named queries (SQL on the worker's database, or HTTP GET
//! returning JSON) whose results templates read as `{{ lookup.<name> }}`.
//!
//! ```text
//! template uses lookup.customer
//!   └─ render args against the event ─► key = name + sha256(canonical JSON of the args)
//!        └─ cache (memory: moka │ redis │ none)   ── hit ─► value
//!             └─ miss: single flight per key ─► source (sql │ http) ─► store with the lookup's TTL
//! ```
//!
//! * A lookup that fails is an error of the action's attempt (retryable): it
//!   follows the action's retry policy and ends in the dead-letter queue with
//!   a message naming the lookup. It never renders as an empty value.
//! * An SQL lookup that finds no row is `null`: a real value, cached like any other.
//! * When Redis is unreachable the lookup calls its source directly (logged
//!   once per outage, counted in [`LookupStats::redis_errors`]): a cache outage
//!   never fails an action.
//! * Eviction: every cache key contains a per-lookup *generation*; evicting a
//!   lookup bumps it, so every older entry becomes unreachable at once (and
//!   expires by its TTL). The worker creates an internal observer on a
//!   lookup's `table:` whose `cache_evict` action does that.

pub mod cache;
mod singleflight;
pub mod source;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::actions::AttemptError;
use crate::config::{CacheBackend, CachingConfig, LookupConfig, LookupSource, RedisConfig};
use crate::templates;

pub use cache::{Cache, MemoryCache, RedisCache};
pub use source::Sources;

/// A lookup's value (shared: cached values are not copied per render).
pub type LookupResult = Result<Arc<Value>, LookupError>;

/// Why a lookup could not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("lookup `{0}` is not declared in this worker's `lookups:`")]
    Unknown(String),
    /// An argument (or the URL) does not render for this event: retrying will not help.
    #[error("lookup `{lookup}`: {message}")]
    Render { lookup: String, message: String },
    /// The source failed (HTTP error, timeout, SQL error, bad JSON): may work later.
    #[error("lookup `{lookup}` failed: {message}")]
    Source { lookup: String, message: String },
    /// The cache backend failed (only for eviction; reads fall back to the source).
    #[error("lookup `{lookup}`: cache: {message}")]
    Cache { lookup: String, message: String },
}

impl LookupError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, LookupError::Render { .. })
    }

    /// The error of an action attempt that needed this lookup: `local` (it
    /// says nothing about the action's destination, so circuit breakers ignore it).
    pub fn into_attempt(self) -> AttemptError {
        if self.is_retryable() {
            AttemptError::local(self.to_string())
        } else {
            AttemptError::permanent(self.to_string())
        }
    }
}

/// Counters of the lookup layer (also printed by the bench).
#[derive(Debug, Default)]
pub struct LookupStats {
    /// Cache hits and misses per declared lookup (names fixed at build: bounded).
    by_lookup: HashMap<String, LookupCounters>,
    pub source_calls: AtomicU64,
    pub source_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Redis calls that failed; the lookup then called its source directly.
    pub redis_errors: AtomicU64,
    pub evictions: AtomicU64,
}

/// Cache hits and misses of one lookup.
#[derive(Debug, Default)]
struct LookupCounters {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl LookupStats {
    /// Counters with a hit/miss pair for each of `lookups`.
    pub fn for_lookups(lookups: &[String]) -> LookupStats {
        LookupStats {
            by_lookup: lookups
                .iter()
                .map(|n| (n.clone(), LookupCounters::default()))
                .collect(),
            ..LookupStats::default()
        }
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A cache hit of `lookup` (counted in total and per lookup).
    pub(crate) fn hit(&self, lookup: &str) {
        Self::bump(&self.cache_hits);
        if let Some(c) = self.by_lookup.get(lookup) {
            Self::bump(&c.hits);
        }
    }

    /// A cache miss of `lookup` (counted in total and per lookup).
    pub(crate) fn miss(&self, lookup: &str) {
        Self::bump(&self.cache_misses);
        if let Some(c) = self.by_lookup.get(lookup) {
            Self::bump(&c.misses);
        }
    }

    /// `(lookup, cache hits, cache misses)` of every declared lookup.
    pub fn per_lookup(&self) -> Vec<(&str, u64, u64)> {
        let mut v: Vec<(&str, u64, u64)> = self
            .by_lookup
            .iter()
            .map(|(n, c)| (n.as_str(), Self::get(&c.hits), Self::get(&c.misses)))
            .collect();
        v.sort_unstable();
        v
    }
}

/// A declared lookup, ready to run.
pub struct Lookup {
    pub config: LookupConfig,
}

/// What one call of a source needs, owned (it may run in a spawned task
/// shared by concurrent misses).
#[derive(Clone)]
pub struct Request {
    pub lookup: Arc<Lookup>,
    pub args: Vec<String>,
    /// The rendered URL of an HTTP lookup.
    pub url: Option<String>,
}

/// Every declared lookup with its cache: built once at start, shared by all actions.
pub struct Lookups {
    defs: HashMap<String, Arc<Lookup>>,
    cache: Option<Arc<dyn Cache>>,
    sources: Arc<Sources>,
    stats: Arc<LookupStats>,
}

impl Lookups {
    /// No lookups (a worker without a `lookups:` section, and tests).
    pub fn empty() -> Lookups {
        Lookups {
            defs: HashMap::new(),
            cache: None,
            sources: Arc::new(Sources::new(
                crate::actions::webhook::http_client(1).expect("cannot build an HTTP client"),
                None,
            )),
            stats: Arc::new(LookupStats::default()),
        }
    }

    /// Builds the lookups and their cache. No I/O: database and Redis
    /// connections are opened on first use.
    pub fn build(
        configs: &[LookupConfig],
        caching: &CachingConfig,
        redis: Option<&RedisConfig>,
        sources: Sources,
    ) -> Result<Lookups, LookupError> {
        let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
        let stats = Arc::new(LookupStats::for_lookups(&names));
        let cache: Option<Arc<dyn Cache>> = match (caching.enabled, caching.backend, redis) {
            (false, _, _) => None,
            (true, CacheBackend::Memory, _) => Some(Arc::new(MemoryCache::new(
                caching.max_entries,
                &names,
                stats.clone(),
            ))),
            (true, CacheBackend::Redis, Some(r)) => Some(Arc::new(
                RedisCache::new(r, stats.clone()).map_err(|message| LookupError::Cache {
                    lookup: "*".to_owned(),
                    message,
                })?,
            )),
            (true, CacheBackend::Redis, None) => {
                return Err(LookupError::Cache {
                    lookup: "*".to_owned(),
                    message: "caching backend `redis` needs a `redis:` section".to_owned(),
                })
            }
        };
        let defs = configs
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Lookup { config: c.clone() })))
            .collect();
        Ok(Lookups {
            defs,
            cache,
            sources: Arc::new(sources),
            stats,
        })
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.defs.keys().cloned().collect();
        n.sort();
        n
    }

    pub fn stats(&self) -> &LookupStats {
        &self.stats
    }

    /// True while the Redis cache is failing (lookups call their sources directly).
    pub fn cache_degraded(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.degraded())
    }

    /// For the heartbeat (`observers.worker.info->'lookups'`); `null` without lookups.
    pub fn snapshot(&self) -> Value {
        if self.defs.is_empty() {
            return Value::Null;
        }
        let s = &self.stats;
        serde_json::json!({
            "lookups": self.names(),
            "cache": self.cache.as_ref().map(|c| c.backend()),
            "degraded": self.cache.as_ref().is_some_and(|c| c.degraded()),
            "source_calls": LookupStats::get(&s.source_calls),
            "source_errors": LookupStats::get(&s.source_errors),
            "cache_hits": LookupStats::get(&s.cache_hits),
            "cache_misses": LookupStats::get(&s.cache_misses),
            "redis_errors": LookupStats::get(&s.redis_errors),
            "evictions": LookupStats::get(&s.evictions),
        })
    }

    /// The value of lookup `name` for `event` (the event's JSON body).
    pub async fn resolve(&self, name: &str, event: &Value) -> Result<Arc<Value>, LookupError> {
        let lookup = self
            .defs
            .get(name)
            .ok_or_else(|| LookupError::Unknown(name.to_owned()))?
            .clone();
        let ctx = templates::event_context(event);
        let render_err = |what: &str, e: templates::RenderError| LookupError::Render {
            lookup: name.to_owned(),
            message: format!("{what} does not render for this event: {e}"),
        };
        let mut args = Vec::with_capacity(lookup.config.args.len());
        for (i, t) in lookup.config.args.iter().enumerate() {
            args.push(
                t.render(&ctx)
                    .map_err(|e| render_err(&format!("args[{i}]"), e))?,
            );
        }
        let url = match &lookup.config.source {
            LookupSource::Http { url } => {
                Some(url.render(&ctx).map_err(|e| render_err("the URL", e))?)
            }
            LookupSource::Sql { .. } => None,
        };
        let key = cache_key(&args, url.as_deref());
        let ttl = lookup.config.ttl;
        let request = Request { lookup, args, url };
        let fetch = source::fetch(self.sources.clone(), request, self.stats.clone());
        match &self.cache {
            None => fetch.await,
            Some(cache) => cache.get_or_fetch(name, &key, ttl, fetch).await,
        }
    }

    /// Resolves `names` (concurrently) into the `lookup` map of a template context.
    pub async fn resolve_all(
        &self,
        names: &BTreeSet<String>,
        event: &Value,
    ) -> Result<Value, LookupError> {
        let results =
            futures_util::future::join_all(names.iter().map(|n| self.resolve(n, event))).await;
        let mut map = serde_json::Map::with_capacity(names.len());
        for (name, r) in names.iter().zip(results) {
            map.insert(name.clone(), Value::clone(&*r?));
        }
        Ok(Value::Object(map))
    }

    /// Makes every cached entry of `name` unreachable. Unknown names are a
    /// no-op (`false`): an eviction observer may outlive its lookup.
    pub async fn evict(&self, name: &str) -> Result<bool, LookupError> {
        if !self.defs.contains_key(name) {
            return Ok(false);
        }
        LookupStats::bump(&self.stats.evictions);
        match &self.cache {
            None => Ok(true),
            Some(c) => c.evict(name).await.map(|_| true),
        }
    }
}

/// The cache key of a lookup call: hex sha256 of the canonical JSON of the
/// rendered arguments (and URL). The lookup name and generation are added by
/// the cache. Arguments are strings, so the JSON text is canonical.
pub fn cache_key(args: &[String], url: Option<&str>) -> String {
    let material = serde_json::json!({ "args": args, "url": url });
    let digest = Sha256::digest(material.to_string().as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_argument_and_their_order() {
        let a = cache_key(&["1".into(), "2".into()], None);
        assert_eq!(a.len(), 64);
        assert_eq!(a, cache_key(&["1".into(), "2".into()], None), "stable");
        assert_ne!(a, cache_key(&["2".into(), "1".into()], None));
        assert_ne!(a, cache_key(&["1".into(), "2".into()], Some("http://x/")));
        // no ambiguity from joining: ["1,2"] vs ["1","2"]
        assert_ne!(a, cache_key(&["1\",\"2".into()], None));
        assert_ne!(cache_key(&[], None), cache_key(&["".into()], None));
        // pinned: the key format is shared between workers through Redis
        assert_eq!(
            cache_key(&["3".into()], None),
            format!("{:x}", Sha256::digest(br#"{"args":["3"],"url":null}"#))
        );
    }
}
