//! The layers around every action, in one fixed order:
//!
//! ```text
//! retry (policy, Retry-After, shutdown-aware sleeps)
//!   └─ circuit breaker (wait while the destination's breaker is open: no attempt used)
//!        └─ concurrency (semaphore: one permit per attempt, released while sleeping)
//!             └─ deduplication (claim the pair; skip it if it already succeeded; wait,
//!                without the permit, while another worker runs it; confirm after success,
//!                release after failure)
//!                  └─ timeout (per attempt)
//!                       └─ the action (talks to its service once)
//! ```
//!
//! The permit comes before the claim on purpose: a claim lives for the attempt's time limit
//! plus [`CLAIM_GRACE`], so it must be taken when the attempt can start. Claimed first, a pair
//! could wait for a permit (under load) until its claim expired, and another worker could run
//! the same pair meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::attempt_log::AttemptLog;
use crate::actions::{Action, AttemptError, Delivery};
use crate::db::AttemptRecord;
use crate::resilience::dedup::{claim_backoff, warn_unavailable};
use crate::resilience::{Admit, Breakers, ClaimTry, Dedup, PairKey};
use crate::telemetry::metrics::Metrics;

/// Grace on top of the action's own timeout before the layer cuts it off
/// (the webhook action enforces its timeout itself; this is the safety net).
const TIMEOUT_GRACE: Duration = Duration::from_millis(500);
/// A dedup claim outlives the attempt's time limit by this much: if the worker dies mid
/// attempt, another worker may run the pair once the claim expired.
const CLAIM_GRACE: Duration = Duration::from_secs(5);

/// The end result of running one (event, action) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Delivered {
        attempts: u32,
    },
    /// Deduplication: the pair already succeeded (before a crash, a failover or a replay);
    /// not executed again.
    AlreadyDone,
    /// Permanent failure or retries exhausted: goes to the dead-letter queue.
    Failed {
        error: String,
        attempts: u32,
        last_status: Option<u16>,
    },
    /// Shutdown began while waiting to retry: not finished, delivered again later.
    Abandoned {
        attempts: u32,
    },
    /// `single_attempt` (a job run): the attempt failed and may be retried after `delay`
    /// (the action's policy, or the server's `Retry-After`).
    RetryLater {
        error: String,
        attempts: u32,
        last_status: Option<u16>,
        delay: Duration,
    },
    /// The destination's circuit breaker is open: hand the pair to the parked table (its
    /// attempts so far are kept; it is delivered when the breaker lets calls through).
    Park {
        attempts: u32,
        last_error: Option<String>,
    },
}

/// What wraps every action of a worker (built once at start).
#[derive(Clone)]
pub struct Layers {
    /// One permit per running attempt (`concurrent_execution.max_in_flight`).
    pub limiter: Arc<Semaphore>,
    /// Soft shutdown: no new attempts, no waiting.
    pub stop: CancellationToken,
    pub dedup: Option<Arc<Dedup>>,
    pub breakers: Option<Arc<Breakers>>,
    /// Where every attempt is recorded (`observers.attempt`), when on.
    pub attempt_log: Option<Arc<AttemptLog>>,
    /// Per-attempt duration and outcome (`/metrics`); `None` with metrics disabled.
    pub metrics: Option<Arc<Metrics>>,
}

impl Layers {
    pub fn new(limiter: Arc<Semaphore>, stop: CancellationToken) -> Self {
        Layers {
            limiter,
            stop,
            dedup: None,
            breakers: None,
            attempt_log: None,
            metrics: None,
        }
    }
}

/// Runs `action` for `delivery` until it succeeds, fails permanently, runs
/// out of attempts, or `stop` fires while it waits.
pub async fn run(action: &dyn Action, delivery: &Delivery, layers: &Layers) -> ActionOutcome {
    let policy = action.retry_policy();
    let stop = &layers.stop;
    let breaker = layers.breakers.as_deref().zip(action.destination());
    let dedup = layers.dedup.as_deref().zip(delivery.dedup_key.as_ref());
    let mut attempts: u32 = delivery.attempts_used;
    let mut last_error: Option<String> = None;
    loop {
        let pass = match breaker {
            Some((b, dest)) => match b.admit(dest, stop, delivery.may_park).await {
                Admit::Go(p) => Some(p),
                Admit::Open => {
                    return ActionOutcome::Park {
                        attempts,
                        last_error,
                    }
                }
                Admit::Stopped => return ActionOutcome::Abandoned { attempts },
            },
            None => None,
        };
        let claim_ttl = action.timeout() + TIMEOUT_GRACE + CLAIM_GRACE;
        let permit = match permit_then_claim(layers, dedup, claim_ttl).await {
            Ready::Go(permit) => permit,
            // an unused probe pass gives its breaker slot back when dropped
            Ready::AlreadyDone => return ActionOutcome::AlreadyDone,
            Ready::Stopped => return ActionOutcome::Abandoned { attempts },
        };
        attempts += 1;
        let limit = action.timeout();
        let (started_at, started) = (SystemTime::now(), Instant::now());
        let result =
            match tokio::time::timeout(limit + TIMEOUT_GRACE, action.execute(delivery)).await {
                Ok(r) => r,
                Err(_) => Err(AttemptError::retryable(format!(
                    "timeout after {}",
                    humantime::format_duration(limit)
                ))),
            };
        drop(permit);
        let elapsed = started.elapsed();
        if let Some(log) = &layers.attempt_log {
            let (outcome, error, status) = match &result {
                Ok(d) => ("delivered", None, d.status.map(i32::from)),
                Err(e) => (
                    if e.retryable && policy.allows_another(attempts) {
                        "retry"
                    } else {
                        "failed"
                    },
                    Some(e.message.clone()),
                    e.status.map(i32::from),
                ),
            };
            log.record(AttemptRecord {
                event_id: delivery.event_id,
                observer_id: delivery.observer_id,
                action_index: delivery.action_index as i32,
                attempt: attempts as i32,
                at: started_at,
                duration_ms: elapsed.as_secs_f32() * 1000.0,
                status,
                outcome,
                error,
            });
        }
        if let Some(m) = &layers.metrics {
            m.attempt(action.type_name(), elapsed, result.is_ok());
        }
        if let (Some((b, _)), Some(p)) = (breaker, pass) {
            let failure = result
                .as_ref()
                .err()
                .is_some_and(AttemptError::counts_against_destination);
            b.record(p, failure);
        }
        if let Some((d, key)) = dedup {
            match &result {
                Ok(_) => d.confirm(key).await,
                Err(_) => d.release(key).await,
            }
        }

        let err = match result {
            Ok(_) => return ActionOutcome::Delivered { attempts },
            Err(e) => e,
        };
        if !err.retryable || !policy.allows_another(attempts) {
            return ActionOutcome::Failed {
                error: err.message,
                attempts,
                last_status: err.status,
            };
        }
        let delay = policy.delay(attempts, err.retry_after);
        if delivery.single_attempt {
            return ActionOutcome::RetryLater {
                error: err.message,
                attempts,
                last_status: err.status,
                delay,
            };
        }
        last_error = Some(err.message.clone());
        debug!(
            event_id = delivery.event_id,
            action_index = delivery.action_index,
            attempt = attempts,
            error = %err.message,
            retry_in = ?delay,
            "attempt failed; will retry"
        );
        if stop.is_cancelled() {
            return ActionOutcome::Abandoned { attempts };
        }
        tokio::select! {
            _ = stop.cancelled() => return ActionOutcome::Abandoned { attempts },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// What [`permit_then_claim`] got.
enum Ready<'a> {
    /// A concurrency permit, and the pair's claim when deduplication is on.
    Go(SemaphorePermit<'a>),
    AlreadyDone,
    Stopped,
}

/// Takes a concurrency permit, then (with deduplication) claims the pair, so the claim's TTL
/// starts when the attempt can start. While another worker holds the claim, or the store does
/// not answer, the permit is given back and the pair waits without one.
async fn permit_then_claim<'a>(
    layers: &'a Layers,
    dedup: Option<(&Dedup, &PairKey)>,
    claim_ttl: Duration,
) -> Ready<'a> {
    let mut backoff = claim_backoff();
    let mut warned = false;
    loop {
        let Ok(permit) = layers.limiter.acquire().await else {
            return Ready::Stopped;
        };
        let Some((d, key)) = dedup else {
            return Ready::Go(permit);
        };
        match d.try_claim(key, claim_ttl).await {
            ClaimTry::Run => return Ready::Go(permit),
            ClaimTry::AlreadyDone => return Ready::AlreadyDone,
            ClaimTry::Stopped => return Ready::Stopped,
            ClaimTry::Busy => {}
            ClaimTry::Unavailable(e) => warn_unavailable(&e, &mut warned),
        }
        drop(permit);
        if !backoff.wait(&layers.stop).await {
            return Ready::Stopped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{BoxFuture, Delivered};
    use crate::retry::{Jitter, RetryPolicy};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    /// Returns scripted results, one per attempt.
    struct Scripted {
        results: Mutex<Vec<Result<Delivered, AttemptError>>>,
        calls: AtomicU32,
        policy: RetryPolicy,
        delay: Duration,
    }

    impl Scripted {
        fn new(results: Vec<Result<Delivered, AttemptError>>, max_attempts: u32) -> Self {
            Scripted {
                results: Mutex::new(results),
                calls: AtomicU32::new(0),
                policy: RetryPolicy {
                    max_attempts,
                    initial_backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(5),
                    multiplier: 2.0,
                    jitter: Jitter::Full,
                },
                delay: Duration::ZERO,
            }
        }
    }

    impl Action for Scripted {
        fn type_name(&self) -> &'static str {
            "scripted"
        }
        fn timeout(&self) -> Duration {
            Duration::from_millis(50)
        }
        fn retry_policy(&self) -> &RetryPolicy {
            &self.policy
        }
        fn execute<'a>(
            &'a self,
            _d: &'a Delivery,
        ) -> BoxFuture<'a, Result<Delivered, AttemptError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                let mut r = self.results.lock().unwrap();
                if r.is_empty() {
                    Ok(Delivered::default())
                } else {
                    r.remove(0)
                }
            })
        }
    }

    fn http(status: u16, retryable: bool) -> Result<Delivered, AttemptError> {
        Err(AttemptError {
            retryable,
            message: format!("HTTP {status}"),
            status: Some(status),
            retry_after: None,
            local: false,
        })
    }

    fn layers() -> Layers {
        Layers::new(Arc::new(Semaphore::new(1)), CancellationToken::new())
    }

    fn delivery() -> Delivery {
        Delivery::new(
            &crate::installation::InstallationId::from_bytes([1; 16]),
            7,
            0,
            Bytes::from_static(b"{}"),
        )
    }

    #[tokio::test]
    async fn retries_until_success() {
        let a = Scripted::new(vec![http(503, true), http(429, true)], 5);
        let out = run(&a, &delivery(), &layers()).await;
        assert_eq!(out, ActionOutcome::Delivered { attempts: 3 });
    }

    #[tokio::test]
    async fn permanent_failure_is_not_retried() {
        let a = Scripted::new(vec![http(400, false)], 5);
        let out = run(&a, &delivery(), &layers()).await;
        assert_eq!(
            out,
            ActionOutcome::Failed {
                error: "HTTP 400".into(),
                attempts: 1,
                last_status: Some(400)
            }
        );
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn exhausted_retries_fail_with_the_last_error() {
        let a = Scripted::new(
            vec![
                http(500, true),
                http(502, true),
                http(503, true),
                http(504, true),
            ],
            3,
        );
        let out = run(&a, &delivery(), &layers()).await;
        assert_eq!(
            out,
            ActionOutcome::Failed {
                error: "HTTP 503".into(),
                attempts: 3,
                last_status: Some(503)
            }
        );
    }

    #[tokio::test]
    async fn timeouts_are_retryable_failures() {
        let mut a = Scripted::new(vec![], 2);
        a.delay = Duration::from_secs(5);
        let out = run(&a, &delivery(), &layers()).await;
        match out {
            ActionOutcome::Failed {
                error,
                attempts: 2,
                last_status: None,
            } => {
                assert!(error.starts_with("timeout after 50ms"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn shutdown_abandons_instead_of_sleeping() {
        let mut a = Scripted::new(vec![http(503, true)], 5);
        a.policy.initial_backoff = Duration::from_secs(60);
        a.policy.max_backoff = Duration::from_secs(60);
        a.policy.jitter = Jitter::None;
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s2.cancel();
        });
        let started = std::time::Instant::now();
        let out = run(
            &a,
            &delivery(),
            &Layers::new(Arc::new(Semaphore::new(1)), stop.clone()),
        )
        .await;
        assert_eq!(out, ActionOutcome::Abandoned { attempts: 1 });
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_single_attempt_hands_the_retry_back() {
        let a = Scripted::new(vec![http(503, true)], 5);
        let mut d = delivery();
        d.single_attempt = true;
        d.attempts_used = 2;
        match run(&a, &d, &layers()).await {
            ActionOutcome::RetryLater {
                error,
                attempts: 3,
                last_status: Some(503),
                ..
            } => assert_eq!(error, "HTTP 503"),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
        // out of attempts: failed, not handed back
        let a = Scripted::new(vec![http(503, true)], 3);
        let out = run(&a, &d, &layers()).await;
        assert!(
            matches!(out, ActionOutcome::Failed { attempts: 3, .. }),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let mut a = Scripted::new(
            vec![Err(AttemptError {
                retryable: true,
                message: "HTTP 429".into(),
                status: Some(429),
                retry_after: Some(Duration::from_millis(150)),
                local: false,
            })],
            3,
        );
        a.policy.max_backoff = Duration::from_secs(1);
        let started = std::time::Instant::now();
        let out = run(&a, &delivery(), &layers()).await;
        assert_eq!(out, ActionOutcome::Delivered { attempts: 2 });
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
