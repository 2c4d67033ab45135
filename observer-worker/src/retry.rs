//! Retry policy: exponential backoff with full jitter, `Retry-After`, and the
//! classification of outcomes into success / retryable / permanent.
//!
//! Pure logic; the retry *loop* of actions lives in `pipeline::executor`. Every other loop
//! that waits for something to come back (the database, Redis, the lease, a durable write)
//! uses [`Backoff`] and [`sleep_or_cancel`]: one way to wait and retry.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How the computed backoff is randomised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Wait a uniformly random time in `[0, backoff]` ("full jitter").
    Full,
    /// Wait exactly the computed backoff.
    None,
}

impl Jitter {
    pub fn parse(s: &str) -> Option<Jitter> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Some(Jitter::Full),
            "none" => Some(Jitter::None),
            _ => None,
        }
    }
}

/// When and how often an action is retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first one (1 = never retry).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// True if another attempt may be made after `attempts_made` attempts.
    pub fn allows_another(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// The un-jittered backoff after the `failed`-th failed attempt (1-based):
    /// `initial * multiplier^(failed-1)`, capped at `max_backoff`.
    pub fn backoff_ceiling(&self, failed: u32) -> Duration {
        let exp = failed.saturating_sub(1).min(1_000) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let cap = self.max_backoff.as_secs_f64();
        let secs = if secs.is_finite() { secs.min(cap) } else { cap };
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The backoff for a given uniform random number `unit` in `[0, 1]`.
    pub fn backoff_with(&self, failed: u32, unit: f64) -> Duration {
        let ceiling = self.backoff_ceiling(failed);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(unit.clamp(0.0, 1.0)),
        }
    }

    /// The (randomised) backoff after the `failed`-th failed attempt.
    pub fn backoff(&self, failed: u32) -> Duration {
        self.backoff_with(failed, rand::random::<f64>())
    }

    /// How long to wait before the next attempt. A server's `Retry-After` is
    /// honoured as asked instead of the computed backoff, even beyond
    /// `max_backoff` (the receiver knows its own limits; retrying earlier only
    /// burns an attempt), up to [`RETRY_AFTER_CEILING`].
    pub fn delay(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(ra) => ra.min(RETRY_AFTER_CEILING),
            None => self.backoff(failed),
        }
    }
}

/// The longest `Retry-After` honoured: a receiver cannot park an event (and
/// the checkpoint behind it) for longer than this.
pub const RETRY_AFTER_CEILING: Duration = Duration::from_secs(3600);

/// Exponential backoff of an internal retry loop (reconnects, durable writes, claims): the first
/// wait is `initial`, each further one doubles, up to `max`; [`Backoff::reset`] after a success.
/// No jitter: these loops are few per process and wait for one shared resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// `initial` is capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait that [`Backoff::next_delay`] returns next (for "retrying in ..." logs).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The wait before the next try; the one after is twice as long (at most `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// Back to `initial` (the resource answered).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps [`Backoff::next_delay`] unless `stop` fires first. False when stopped.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let d = self.next_delay();
        sleep_or_cancel(stop, d).await
    }
}

/// Sleeps `d`, or less if `stop` fires. True when the whole time passed, false when stopped
/// (also when `stop` had fired before the call).
pub async fn sleep_or_cancel(stop: &CancellationToken, d: Duration) -> bool {
    if stop.is_cancelled() {
        return false;
    }
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// What an HTTP status means for delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    Success,
    /// Try again later (429, 5xx; timeouts and connection errors too).
    Retryable,
    /// Never retry; dead-letter (other 4xx, 1xx/3xx: redirects are not followed).
    Permanent,
}

/// Classifies an HTTP status code. The response body is irrelevant: a 200
/// with garbage is a success, a 500 with garbage is retryable.
pub fn classify_status(status: u16) -> Classification {
    match status {
        200..=299 => Classification::Success,
        429 | 500..=599 => Classification::Retryable,
        _ => Classification::Permanent,
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP-date. A date in the
/// past means "now" (zero). Garbage yields `None` (the normal backoff applies).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.peek(), ms(100));
        let seen: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            seen,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        // an initial above the cap starts at the cap
        let mut c = Backoff::new(ms(500), ms(300));
        assert_eq!((c.next_delay(), c.next_delay()), (ms(300), ms(300)));
        // no overflow however long it runs
        let mut d = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            d.next_delay();
        }
        assert_eq!(d.peek(), Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_waits_its_delay_unless_cancelled() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        let t0 = tokio::time::Instant::now();
        assert!(b.wait(&stop).await);
        assert!(b.wait(&stop).await);
        // paused clock: exactly the two delays passed (2 s + 4 s)
        assert_eq!(t0.elapsed(), Duration::from_secs(6));
        // cancelled mid-sleep: returns false at once, without the 8 s
        let s2 = stop.clone();
        let waiter = tokio::spawn(async move { b.wait(&s2).await });
        tokio::task::yield_now().await;
        stop.cancel();
        assert!(!waiter.await.unwrap());
        assert_eq!(t0.elapsed(), Duration::from_secs(6));
        // already cancelled: no sleep at all
        assert!(!sleep_or_cancel(&stop, Duration::from_secs(3600)).await);
        assert_eq!(t0.elapsed(), Duration::from_secs(6));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn ceiling_grows_exponentially_and_is_capped() {
        let p = policy();
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(500));
        assert_eq!(p.backoff_ceiling(2), Duration::from_secs(1));
        assert_eq!(p.backoff_ceiling(3), Duration::from_secs(2));
        assert_eq!(p.backoff_ceiling(10), Duration::from_millis(500 * 512));
        assert_eq!(p.backoff_ceiling(11), Duration::from_secs(300));
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn huge_multiplier_does_not_overflow() {
        let p = RetryPolicy {
            multiplier: 1e300,
            ..policy()
        };
        assert_eq!(p.backoff_ceiling(50), Duration::from_secs(300));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_ceiling() {
        let p = policy();
        for failed in 1..15 {
            let ceiling = p.backoff_ceiling(failed);
            assert_eq!(p.backoff_with(failed, 0.0), Duration::ZERO);
            assert_eq!(p.backoff_with(failed, 1.0), ceiling);
            for _ in 0..200 {
                let d = p.backoff(failed);
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn full_jitter_actually_spreads() {
        let p = policy();
        let samples: Vec<Duration> = (0..200).map(|_| p.backoff(5)).collect();
        let min = samples.iter().min().copied().unwrap_or_default();
        let max = samples.iter().max().copied().unwrap_or_default();
        let ceiling = p.backoff_ceiling(5);
        // 200 uniform samples: the spread is essentially certain to exceed half the range.
        assert!(max - min > ceiling / 2, "min {min:?} max {max:?}");
    }

    #[test]
    fn no_jitter_is_exact() {
        let p = RetryPolicy {
            jitter: Jitter::None,
            ..policy()
        };
        assert_eq!(p.backoff(3), Duration::from_secs(2));
        assert_eq!(p.backoff_with(3, 0.1), Duration::from_secs(2));
    }

    #[test]
    fn attempts_budget() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..policy()
        };
        assert!(p.allows_another(1));
        assert!(p.allows_another(2));
        assert!(!p.allows_another(3));
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert!(!once.allows_another(1));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_after_is_honoured_beyond_max_backoff_up_to_the_ceiling() {
        let p = RetryPolicy {
            max_backoff: Duration::from_secs(10),
            ..policy()
        };
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(600))),
            Duration::from_secs(600)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400))),
            RETRY_AFTER_CEILING
        );
        assert!(p.delay(1, None) <= Duration::from_millis(500));
    }

    #[test]
    fn status_classification() {
        for s in [200, 201, 204, 299] {
            assert_eq!(classify_status(s), Classification::Success, "{s}");
        }
        for s in [429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_status(s), Classification::Retryable, "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 408, 410, 422, 499] {
            assert_eq!(classify_status(s), Classification::Permanent, "{s}");
        }
    }
}
