//! Deduplication of (observer, action, event) pairs: claim before executing, confirm after
//! success, release after a failed attempt (docs/RESILIENCE.md).
//!
//! * The key of a pair is the SHA-256 of a fixed-width encoding of (installation id, observer
//!   id, action index, event id): unambiguous, so two different pairs never share a key, and
//!   two databases sharing one Redis never see each other's pairs.
//! * Backends: `redis` (one Lua script call per batch) and `postgres`
//!   (`observers.dedup_claim/confirm/release`). Every request goes through a [`Batcher`], so
//!   concurrent pairs share round trips.
//! * With `backend: redis`, a failed or slow Redis call switches the worker to the PostgreSQL
//!   table at once (the same batch is re-run there: nothing is skipped, nothing runs twice
//!   because of the switch); a probe reconnects in the background and switches back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::batcher::Batcher;
use crate::config::{DedupBackend, DedupConfig, RedisConfig};
use crate::db::{ClaimState, Db};
use crate::installation::InstallationId;
use crate::retry::Backoff;

/// Largest batch sent in one round trip.
const MAX_BATCH: usize = 512;
/// Requests that may wait for a batch (callers beyond it wait for room).
const QUEUE: usize = 4096;
/// Batches in flight at once.
const CONCURRENT_BATCHES: usize = 4;
/// How often a degraded worker tries Redis again.
const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a worker on Redis looks whether `observers.dedup` still holds done-marks in force.
const PG_DONE_RECHECK: Duration = Duration::from_secs(60);
/// Prefix of every key this worker writes to Redis.
pub const REDIS_PREFIX: &str = "fo:dedup:";

/// How a pair waits while another worker holds its claim (or the store does not answer):
/// 25 ms, doubling, at most 1 s.
pub fn claim_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(25), Duration::from_secs(1))
}

/// Logs once per pair that it waits for the dedup store.
pub fn warn_unavailable(e: &DedupError, warned: &mut bool) {
    if !*warned {
        warn!(error = %e, "deduplication store unavailable; waiting for it before executing (nothing is skipped)");
        *warned = true;
    }
}

/// The identity of one pair in the dedup store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairKey {
    pub hash: [u8; 32],
    /// UTC capture day of the event (`YYYY-MM-DD`): the partition of `observers.dedup`.
    pub day: String,
}

impl PairKey {
    pub fn new(
        installation: &[u8; 16],
        observer_id: i32,
        action_index: usize,
        event_id: i64,
        day: &str,
    ) -> PairKey {
        let mut h = Sha256::new();
        h.update(b"fraiseql-observers/dedup/v1\0");
        h.update(installation);
        h.update(observer_id.to_be_bytes());
        h.update((action_index as u64).to_be_bytes());
        h.update(event_id.to_be_bytes());
        PairKey {
            hash: h.finalize().into(),
            day: day.to_owned(),
        }
    }

    pub fn redis_key(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(REDIS_PREFIX.len() + 64);
        s.push_str(REDIS_PREFIX);
        for b in self.hash {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }
}

/// Parses the installation UUID text into its 16 bytes.
pub fn installation_bytes(uuid: &str) -> Option<[u8; 16]> {
    InstallationId::parse(uuid).map(|i| *i.bytes())
}

#[derive(Debug, Clone)]
enum Op {
    Claim { key: PairKey, ttl: Duration },
    Confirm { key: PairKey },
    Release { key: PairKey },
}

impl Op {
    fn key(&self) -> &PairKey {
        match self {
            Op::Claim { key, .. } | Op::Confirm { key } | Op::Release { key } => key,
        }
    }
}

/// Why the dedup store could not answer (both backends, when Redis falls back).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DedupError(Arc<str>);

/// What to do with a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It is claimed for this worker: execute it, then confirm or release.
    Run,
    /// It already succeeded inside the TTL: do not execute it again.
    AlreadyDone,
    /// Shutdown began while waiting for another worker's claim.
    Stopped,
}

/// The answer of one claim round trip ([`Dedup::try_claim`]).
#[derive(Debug, Clone)]
pub enum ClaimTry {
    /// Claimed for this worker: execute it, then confirm or release.
    Run,
    /// It already succeeded inside the TTL.
    AlreadyDone,
    /// Another worker holds the claim: try again later.
    Busy,
    /// Neither store answered: try again later (never run a pair unclaimed).
    Unavailable(DedupError),
    /// The worker is shutting down.
    Stopped,
}

struct Redis {
    client: redis::Client,
    timeout: Duration,
    conn: RwLock<Option<redis::aio::MultiplexedConnection>>,
    script: redis::Script,
}

/// One Lua call per batch. ARGV[1] = owner, ARGV[2] = done TTL (ms); then one op per key:
/// `c<ttl ms>` claim, `d` confirm, `r` release. Returns per key 1 claimed, 2 done, 3 busy, 0 ok.
const SCRIPT: &str = r#"
local owner = 'c:' .. ARGV[1]
local out = {}
for i, k in ipairs(KEYS) do
  local op = ARGV[2 + i]
  local kind = string.sub(op, 1, 1)
  if kind == 'c' then
    local v = redis.call('GET', k)
    if (not v) or v == owner then
      redis.call('SET', k, owner, 'PX', string.sub(op, 2))
      out[i] = 1
    elseif v == 'd' then
      out[i] = 2
    else
      out[i] = 3
    end
  elseif kind == 'd' then
    redis.call('SET', k, 'd', 'PX', ARGV[2])
    out[i] = 0
  else
    if redis.call('GET', k) == owner then redis.call('DEL', k) end
    out[i] = 0
  end
end
return out
"#;

struct Shared {
    db: Db,
    redis: Option<Redis>,
    degraded: AtomicBool,
    /// `observers.dedup` may hold done-marks in force that Redis lacks (made during a fallback,
    /// maybe by an earlier process): pairs Redis lets us claim are checked there too.
    pg_may_hold_done: AtomicBool,
    owner: String,
    ttl: Duration,
    hits: AtomicU64,
    fallback_batches: AtomicU64,
}

/// The deduplication layer of one worker.
pub struct Dedup {
    shared: Arc<Shared>,
    batcher: Batcher<Op, ClaimState, DedupError>,
}

impl Dedup {
    /// Builds the layer. With `backend: redis` it connects in the background: until Redis
    /// answers, the PostgreSQL table serves (and the worker reports itself degraded).
    pub fn start(
        cfg: &DedupConfig,
        redis: Option<&RedisConfig>,
        db: Db,
        worker_id: &str,
        stop: CancellationToken,
    ) -> Result<Arc<Dedup>, String> {
        let redis = match (cfg.backend, redis) {
            (DedupBackend::Redis, Some(r)) => Some(Redis {
                client: redis::Client::open(r.url.as_str())
                    .map_err(|e| format!("redis.url: invalid ({:?})", e.kind()))?,
                timeout: r.timeout,
                conn: RwLock::new(None),
                script: redis::Script::new(SCRIPT),
            }),
            (DedupBackend::Redis, None) => {
                return Err("deduplication.backend is redis but there is no redis: section".into())
            }
            (DedupBackend::Postgres, _) => None,
        };
        let shared = Arc::new(Shared {
            db,
            degraded: AtomicBool::new(redis.is_some()),
            // until the probe has looked: assume it may
            pg_may_hold_done: AtomicBool::new(redis.is_some()),
            redis,
            owner: format!("{worker_id}/{:016x}", rand::random::<u64>()),
            ttl: cfg.ttl,
            hits: AtomicU64::new(0),
            fallback_batches: AtomicU64::new(0),
        });
        let s2 = shared.clone();
        let batcher = Batcher::spawn(MAX_BATCH, QUEUE, CONCURRENT_BATCHES, move |ops| {
            let s = s2.clone();
            async move { s.run_batch(ops).await }
        });
        if shared.redis.is_some() {
            tokio::spawn(probe_redis(shared.clone(), stop));
        }
        Ok(Arc::new(Dedup { shared, batcher }))
    }

    /// Claims `key` for this worker, waiting while another worker holds it. `claim_ttl` bounds
    /// how long the claim survives a crash of this worker (an attempt's timeout plus grace).
    pub async fn claim(
        &self,
        key: &PairKey,
        claim_ttl: Duration,
        stop: &CancellationToken,
    ) -> Verdict {
        let mut backoff = claim_backoff();
        let mut warned = false;
        loop {
            match self.try_claim(key, claim_ttl).await {
                ClaimTry::Run => return Verdict::Run,
                ClaimTry::AlreadyDone => return Verdict::AlreadyDone,
                ClaimTry::Stopped => return Verdict::Stopped,
                ClaimTry::Busy => {}
                ClaimTry::Unavailable(e) => warn_unavailable(&e, &mut warned),
            }
            if !backoff.wait(stop).await {
                return Verdict::Stopped;
            }
        }
    }

    /// One claim round trip, without waiting: the executor takes its concurrency permit first
    /// and claims only then, so that `claim_ttl` starts when the attempt can start (a claim
    /// taken before a long wait for a permit could expire and let another worker run the pair).
    pub async fn try_claim(&self, key: &PairKey, claim_ttl: Duration) -> ClaimTry {
        let op = Op::Claim {
            key: key.clone(),
            ttl: claim_ttl,
        };
        match self.batcher.call(op).await {
            Ok(Ok(ClaimState::Claimed)) => ClaimTry::Run,
            Ok(Ok(ClaimState::Done)) => {
                self.shared.hits.fetch_add(1, Ordering::Relaxed);
                ClaimTry::AlreadyDone
            }
            Ok(Ok(ClaimState::Busy)) => ClaimTry::Busy,
            Ok(Err(e)) => ClaimTry::Unavailable(e),
            Err(_) => ClaimTry::Stopped,
        }
    }

    /// Marks `key` done (it succeeded). Best effort: a lost confirmation only reopens the
    /// crash window that `webhook-id` covers.
    pub async fn confirm(&self, key: &PairKey) {
        self.finish(Op::Confirm { key: key.clone() }, "confirm")
            .await
    }

    /// Gives the claim up (the attempt failed) so a retry can run.
    pub async fn release(&self, key: &PairKey) {
        self.finish(Op::Release { key: key.clone() }, "release")
            .await
    }

    async fn finish(&self, op: Op, what: &'static str) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        for attempt in 1..=4 {
            match self.batcher.call(op.clone()).await {
                Ok(Ok(_)) | Err(_) => return,
                Ok(Err(e)) if attempt == 4 => {
                    warn!(error = %e, operation = what, "deduplication state not updated; the pair may run again after a crash (receivers dedup by webhook-id)");
                }
                Ok(Err(_)) => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Pairs skipped because they had already succeeded.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::Relaxed)
    }

    /// True while `backend: redis` is configured but the PostgreSQL table is serving.
    pub fn degraded(&self) -> bool {
        self.shared.redis.is_some() && self.shared.degraded.load(Ordering::Relaxed)
    }

    /// For heartbeats / health.
    pub fn snapshot(&self) -> serde_json::Value {
        let configured = if self.shared.redis.is_some() {
            "redis"
        } else {
            "postgres"
        };
        let active = if self.shared.redis.is_some() && !self.degraded() {
            "redis"
        } else {
            "postgres"
        };
        serde_json::json!({
            "backend": configured,
            "active": active,
            "degraded": self.degraded(),
            "hits": self.hits(),
            "fallback_batches": self.shared.fallback_batches.load(Ordering::Relaxed),
        })
    }
}

impl Shared {
    async fn run_batch(&self, ops: Vec<Op>) -> Result<Vec<ClaimState>, DedupError> {
        if let Some(r) = &self.redis {
            if !self.degraded.load(Ordering::Relaxed) {
                match self.run_redis(r, &ops).await {
                    Ok(v) if self.pg_may_hold_done.load(Ordering::Relaxed) => {
                        return self.check_pg_done(r, &ops, v).await
                    }
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        *r.conn.write() = None;
                        self.pg_may_hold_done.store(true, Ordering::Relaxed);
                        if !self.degraded.swap(true, Ordering::Relaxed) {
                            warn!(error = %e, "redis unreachable: deduplication falls back to PostgreSQL (observers.dedup) until it answers again");
                        }
                    }
                }
            }
            self.fallback_batches.fetch_add(1, Ordering::Relaxed);
        }
        self.run_pg(&ops).await
    }

    /// Pairs Redis let us claim that `observers.dedup` knows as done (confirmed during a
    /// fallback) are done: answer so, and teach Redis. An error of the check fails the batch
    /// (its pairs wait): never run a pair whose state is unknown.
    async fn check_pg_done(
        &self,
        r: &Redis,
        ops: &[Op],
        mut states: Vec<ClaimState>,
    ) -> Result<Vec<ClaimState>, DedupError> {
        let claimed: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i], Op::Claim { .. }) && states[i] == ClaimState::Claimed)
            .collect();
        if claimed.is_empty() {
            return Ok(states);
        }
        let keys: Vec<Vec<u8>> = claimed
            .iter()
            .map(|&i| ops[i].key().hash.to_vec())
            .collect();
        let days: Vec<String> = claimed.iter().map(|&i| ops[i].key().day.clone()).collect();
        let done = self
            .db
            .dedup_done(Some((&keys, &days)))
            .await
            .map_err(|e| DedupError(Arc::from(e.to_string())))?;
        if done.is_empty() {
            return Ok(states);
        }
        let mut learned = Vec::new();
        for &i in &claimed {
            if done.iter().any(|k| k.as_slice() == ops[i].key().hash) {
                states[i] = ClaimState::Done;
                learned.push(Op::Confirm {
                    key: ops[i].key().clone(),
                });
            }
        }
        // best effort: the next claim would ask PostgreSQL again anyway
        let _ = self.run_redis(r, &learned).await;
        Ok(states)
    }

    async fn run_redis(&self, r: &Redis, ops: &[Op]) -> Result<Vec<ClaimState>, String> {
        let Some(mut conn) = r.conn.read().clone() else {
            return Err("not connected".into());
        };
        let mut inv = r.script.prepare_invoke();
        inv.arg(&self.owner).arg(self.ttl.as_millis().max(1) as u64);
        for op in ops {
            inv.key(op.key().redis_key());
            match op {
                Op::Claim { ttl, .. } => inv.arg(format!("c{}", ttl.as_millis().max(1))),
                Op::Confirm { .. } => inv.arg("d"),
                Op::Release { .. } => inv.arg("r"),
            };
        }
        let codes: Vec<i64> = tokio::time::timeout(r.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(r.timeout)))?
            .map_err(|e| e.to_string())?;
        if codes.len() != ops.len() {
            return Err(format!(
                "script returned {} results for {} keys",
                codes.len(),
                ops.len()
            ));
        }
        Ok(codes
            .into_iter()
            .map(|c| match c {
                1 => ClaimState::Claimed,
                2 => ClaimState::Done,
                3 => ClaimState::Busy,
                _ => ClaimState::Claimed, // confirm/release: the value is not read
            })
            .collect())
    }

    async fn run_pg(&self, ops: &[Op]) -> Result<Vec<ClaimState>, DedupError> {
        let mut claims = (Vec::new(), Vec::new(), Duration::ZERO);
        let mut confirms = (Vec::new(), Vec::new());
        let mut releases = (Vec::new(), Vec::new());
        for op in ops {
            let k = op.key();
            match op {
                Op::Claim { ttl, .. } => {
                    claims.0.push(k.hash.to_vec());
                    claims.1.push(k.day.clone());
                    claims.2 = claims.2.max(*ttl);
                }
                Op::Confirm { .. } => {
                    confirms.0.push(k.hash.to_vec());
                    confirms.1.push(k.day.clone());
                }
                Op::Release { .. } => {
                    releases.0.push(k.hash.to_vec());
                    releases.1.push(k.day.clone());
                }
            }
        }
        let err = |e: crate::db::DbError| DedupError(Arc::from(e.to_string()));
        let (claimed, confirmed, released) = tokio::join!(
            async {
                if claims.0.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.db
                        .dedup_claim(&claims.0, &claims.1, &self.owner, claims.2, self.ttl)
                        .await
                }
            },
            async {
                if confirms.0.is_empty() {
                    Ok(())
                } else {
                    self.db
                        .dedup_confirm(&confirms.0, &confirms.1, self.ttl)
                        .await
                }
            },
            async {
                if releases.0.is_empty() {
                    Ok(())
                } else {
                    self.db
                        .dedup_release(&releases.0, &releases.1, &self.owner)
                        .await
                }
            },
        );
        let mut claimed = claimed.map_err(err)?.into_iter();
        confirmed.map_err(err)?;
        released.map_err(err)?;
        Ok(ops
            .iter()
            .map(|op| match op {
                Op::Claim { .. } => claimed.next().unwrap_or(ClaimState::Busy),
                _ => ClaimState::Claimed,
            })
            .collect())
    }
}

/// Connects to Redis while the worker is degraded; switches back when it answers.
async fn probe_redis(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(r) = &shared.redis else { return };
    let mut warned_at_start = false;
    let mut last_pg_check: Option<std::time::Instant> = None;
    loop {
        if shared.degraded.load(Ordering::Relaxed) {
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(r.timeout))
                .set_response_timeout(Some(r.timeout));
            let attempt = async {
                let mut c = r
                    .client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?;
                let _: String = redis::cmd("PING").query_async(&mut c).await?;
                Ok::<_, redis::RedisError>(c)
            };
            match tokio::time::timeout(r.timeout * 2, attempt).await {
                Ok(Ok(conn)) => {
                    *r.conn.write() = Some(conn);
                    shared.degraded.store(false, Ordering::Relaxed);
                    info!("redis reachable: deduplication uses redis");
                }
                Ok(Err(e)) if !warned_at_start => {
                    warn!(error = %e, "redis unreachable: deduplication uses PostgreSQL (observers.dedup) until it answers");
                    warned_at_start = true;
                }
                _ => {}
            }
        }
        // Does observers.dedup hold done-marks in force (from a fallback, maybe of an earlier
        // process)? Looked at as soon as Redis serves, then once a minute. Only this lowers the
        // flag, and not when a fallback happened while it looked.
        if !shared.degraded.load(Ordering::Relaxed)
            && last_pg_check.is_none_or(|t| t.elapsed() >= PG_DONE_RECHECK)
        {
            let fallbacks = shared.fallback_batches.load(Ordering::Relaxed);
            if let Ok(rows) = shared.db.dedup_done(None).await {
                if !rows.is_empty() {
                    shared.pg_may_hold_done.store(true, Ordering::Relaxed);
                } else if shared.fallback_batches.load(Ordering::Relaxed) == fallbacks
                    && !shared.degraded.load(Ordering::Relaxed)
                {
                    shared.pg_may_hold_done.store(false, Ordering::Relaxed);
                }
                last_pg_check = Some(std::time::Instant::now());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REDIS_PROBE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_and_distinct() {
        let inst = [7u8; 16];
        let a = PairKey::new(&inst, 1, 12, 3, "2026-11-29");
        let b = PairKey::new(&inst, 11, 2, 3, "2026-11-29");
        let c = PairKey::new(&inst, 1, 1, 23, "2026-11-29");
        let d = PairKey::new(&[8u8; 16], 1, 12, 3, "2026-11-29");
        assert_ne!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
        assert_ne!(a.hash, d.hash, "another installation never shares a key");
        assert_eq!(a, PairKey::new(&inst, 1, 12, 3, "2026-11-29"));
        assert_eq!(a.redis_key().len(), REDIS_PREFIX.len() + 64);
        let hex: String = a.hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a.redis_key(), format!("{REDIS_PREFIX}{hex}"));
    }

    #[test]
    fn installation_ids_parse() {
        let b = installation_bytes("0b0e5a3c-0f5a-4c1e-9d3a-1f2e3d4c5b6a").unwrap();
        assert_eq!(b[0], 0x0b);
        assert_eq!(b[15], 0x6a);
        assert!(installation_bytes("not-a-uuid").is_none());
    }
}
