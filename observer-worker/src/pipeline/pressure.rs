//! Whether delivery is behind: the signal by which work that may lag (the Elasticsearch sink,
//! which has a cursor of its own and catches up later) gives delivery the machine.
//!
//! The consumer reports every fetch that came back full (it asked for as many events as it had
//! free permits, and there were at least that many waiting): delivery has a backlog. The report
//! holds for [`HOLD`]; a consumer that keeps up fetches short pages, and the signal goes quiet.
//! Lock-free: one atomic store per full fetch, one load per question.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long one full fetch counts as "delivery is behind". Longer than the time a busy
/// consumer takes between two fetches (permits come back continuously while it drains).
pub const HOLD: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct DeliveryPressure {
    origin: Instant,
    /// Microseconds after `origin` of the last full fetch, plus one; 0: never.
    last_full: AtomicU64,
}

impl Default for DeliveryPressure {
    fn default() -> Self {
        DeliveryPressure::new(Instant::now())
    }
}

impl DeliveryPressure {
    pub fn new(origin: Instant) -> Self {
        DeliveryPressure {
            origin,
            last_full: AtomicU64::new(0),
        }
    }

    /// The consumer fetched a full page.
    pub fn full_fetch(&self) {
        self.full_fetch_at(Instant::now());
    }

    pub fn full_fetch_at(&self, now: Instant) {
        let us = now.saturating_duration_since(self.origin).as_micros();
        self.last_full.store(
            u64::try_from(us).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
    }

    /// Delivery has a backlog (a full fetch less than [`HOLD`] ago).
    pub fn behind(&self) -> bool {
        self.behind_at(Instant::now())
    }

    pub fn behind_at(&self, now: Instant) -> bool {
        let last = self.last_full.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let at = self.origin + Duration::from_micros(last - 1);
        now.saturating_duration_since(at) < HOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_only_for_a_while_after_a_full_fetch() {
        let t0 = Instant::now();
        let p = DeliveryPressure::new(t0);
        assert!(!p.behind_at(t0), "never fetched");
        assert!(!p.behind_at(t0 + Duration::from_secs(5)));
        p.full_fetch_at(t0 + Duration::from_secs(1));
        assert!(p.behind_at(t0 + Duration::from_secs(1)));
        assert!(p.behind_at(t0 + Duration::from_secs(1) + HOLD - Duration::from_millis(1)));
        assert!(!p.behind_at(t0 + Duration::from_secs(1) + HOLD));
        // a later full fetch extends it
        p.full_fetch_at(t0 + Duration::from_secs(1) + HOLD / 2);
        assert!(p.behind_at(t0 + Duration::from_secs(1) + HOLD));
        assert!(!p.behind_at(t0 + Duration::from_secs(2) + HOLD));
    }
}
