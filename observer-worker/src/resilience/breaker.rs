//! Circuit breakers, one per destination (`scheme://host:port`).
//!
//! ```text
//!  closed ──(failures/calls >= failure_ratio over the rolling window, calls >= min_requests)──► open
//!  open ──(open_for elapsed)──► half-open: at most half_open_requests probes at a time
//!  half-open ──(half_open_requests probes succeeded)──► closed
//!  half-open ──(a probe failed)──► open
//! ```
//!
//! A failure is what says the destination is unwell: a timeout, a transport error, a 5xx or a
//! 429 (`AttemptError::counts_against_destination`). Other 4xx mean the destination answered:
//! they count as successes here (and go to the dead-letter queue as usual).
//!
//! While a breaker is open, pairs for that destination wait in [`Breakers::admit`] without
//! taking an attempt, a concurrency permit or a dedup claim; other destinations are not
//! affected. The state machine is pure ([`Breaker`], driven with explicit `Instant`s) so it is
//! unit-tested without sleeping.
//!
//! A half-open probe slot is held by a [`Pass`]: it is given back when the pass is recorded,
//! cancelled or simply dropped (a task aborted by `Dispatcher::abort_all` on lease loss or
//! shutdown drops it), never twice, and never into a later half-open period than its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::BreakerConfig;

/// Buckets of the rolling window.
const BUCKETS: usize = 10;
/// How often a waiting pair looks again while its destination's breaker is half-open and full.
const HALF_OPEN_RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The value of the `observer_circuit_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which window slot this bucket currently counts (`elapsed / bucket_len`).
    slot: u64,
    calls: u32,
    failures: u32,
}

/// The state machine of one destination.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    origin: Instant,
    state: State,
    open_until: Instant,
    /// Probes admitted and not yet reported (half-open).
    probes_in_flight: u32,
    /// Probes that succeeded in this half-open period.
    probes_ok: u32,
    /// Counts half-open periods, so that a probe of an earlier period that ends late touches
    /// neither the slots nor the results of the current one.
    period: u64,
    buckets: [Bucket; BUCKETS],
    /// Times it opened (for status).
    pub opened_count: u64,
}

/// What [`Breaker::try_admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `probe` when this call is one of the half-open probes.
    Go { probe: bool },
    /// Not now: ask again at (or after) this instant.
    WaitUntil(Instant),
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, now: Instant) -> Self {
        Breaker {
            cfg,
            origin: now,
            state: State::Closed,
            open_until: now,
            probes_in_flight: 0,
            probes_ok: 0,
            period: 0,
            buckets: [Bucket::default(); BUCKETS],
            opened_count: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    fn bucket_len(&self) -> Duration {
        (self.cfg.window / BUCKETS as u32).max(Duration::from_millis(1))
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket_len().as_nanos())
            as u64
    }

    /// Calls and failures inside the window ending at `now`.
    fn window_counts(&self, now: Instant) -> (u32, u32) {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| b.slot + (BUCKETS as u64) > current && b.slot <= current)
            .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
    }

    fn clear_window(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }

    pub fn try_admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Go { probe: false },
            State::Open if now < self.open_until => Admission::WaitUntil(self.open_until),
            State::Open | State::HalfOpen => {
                if self.state == State::Open {
                    self.state = State::HalfOpen;
                    self.probes_in_flight = 0;
                    self.probes_ok = 0;
                    self.period += 1;
                }
                if self.probes_in_flight + self.probes_ok < self.cfg.half_open_requests {
                    self.probes_in_flight += 1;
                    Admission::Go { probe: true }
                } else {
                    Admission::WaitUntil(now + HALF_OPEN_RECHECK)
                }
            }
        }
    }

    /// Records the outcome of an admitted call. Returns the new state when it changed.
    pub fn record(&mut self, now: Instant, probe: bool, failure: bool) -> Option<State> {
        match (self.state, probe) {
            (State::HalfOpen, true) => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if failure {
                    self.open(now);
                    Some(State::Open)
                } else {
                    self.probes_ok += 1;
                    if self.probes_ok >= self.cfg.half_open_requests {
                        self.state = State::Closed;
                        self.clear_window();
                        Some(State::Closed)
                    } else {
                        None
                    }
                }
            }
            (State::Closed, false) => {
                let slot = self.slot(now);
                let b = &mut self.buckets[(slot % BUCKETS as u64) as usize];
                if b.slot != slot {
                    *b = Bucket {
                        slot,
                        calls: 0,
                        failures: 0,
                    };
                }
                b.calls += 1;
                b.failures += u32::from(failure);
                let (calls, failures) = self.window_counts(now);
                if failure
                    && calls >= self.cfg.min_requests
                    && f64::from(failures) >= self.cfg.failure_ratio * f64::from(calls)
                {
                    self.open(now);
                    Some(State::Open)
                } else {
                    None
                }
            }
            // A call admitted before the breaker opened (or a stale probe): its result says
            // nothing about the current period.
            _ => None,
        }
    }

    /// The current half-open period (a probe admitted now belongs to it).
    fn period(&self) -> u64 {
        self.period
    }

    /// Records the outcome of a probe admitted in half-open period `period`; a probe of an
    /// earlier period is ignored.
    fn record_probe(&mut self, now: Instant, period: u64, failure: bool) -> Option<State> {
        if period != self.period {
            return None;
        }
        self.record(now, true, failure)
    }

    /// Gives back the slot of a probe of `period` that made no call (cancelled, or its task
    /// was aborted).
    fn release_probe(&mut self, period: u64) {
        if self.state == State::HalfOpen && period == self.period {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.open_until = now + self.cfg.open_for;
        self.probes_in_flight = 0;
        self.probes_ok = 0;
        self.clear_window();
        self.opened_count += 1;
    }
}

/// All breakers of a worker, by destination.
pub struct Breakers {
    cfg: BreakerConfig,
    map: Mutex<HashMap<Arc<str>, Arc<Mutex<Breaker>>>>,
}

/// What [`Breakers::admit`] decided.
#[derive(Debug)]
pub enum Admit {
    Go(Pass),
    /// The breaker is open and the caller asked not to wait.
    Open,
    /// Shutdown began while waiting.
    Stopped,
}

/// Permission to make one call to a destination; report its outcome with [`Breakers::record`].
/// A probe's half-open slot is given back when the pass is recorded, cancelled or dropped
/// unreported (RAII: an aborted task cannot keep it).
#[derive(Debug)]
pub struct Pass {
    breaker: Arc<Mutex<Breaker>>,
    destination: Arc<str>,
    /// One of the half-open probes (until its slot was given back or its result recorded).
    probe: bool,
    /// The half-open period the probe belongs to.
    period: u64,
}

impl Pass {
    /// Takes the probe's slot out of the pass (so `Drop` does not give it back again).
    fn take_probe(&mut self) -> Option<u64> {
        std::mem::take(&mut self.probe).then_some(self.period)
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some(period) = self.take_probe() {
            self.breaker.lock().release_probe(period);
        }
    }
}

impl Breakers {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breakers {
            cfg,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn breaker(&self, destination: &str) -> (Arc<str>, Arc<Mutex<Breaker>>) {
        let mut map = self.map.lock();
        if let Some((k, b)) = map.get_key_value(destination) {
            return (k.clone(), b.clone());
        }
        let key: Arc<str> = Arc::from(destination);
        let b = Arc::new(Mutex::new(Breaker::new(self.cfg.clone(), Instant::now())));
        map.insert(key.clone(), b.clone());
        (key, b)
    }

    /// Waits until `destination` may be called. With `park_if_open`, returns
    /// [`Admit::Open`] at once instead of waiting out an open breaker (a half-open one with all
    /// probes taken is only a short wait).
    pub async fn admit(
        &self,
        destination: &str,
        stop: &CancellationToken,
        park_if_open: bool,
    ) -> Admit {
        let (destination, breaker) = self.breaker(destination);
        loop {
            let (decision, state, period) = {
                let mut b = breaker.lock();
                (b.try_admit(Instant::now()), b.state(), b.period())
            };
            match decision {
                Admission::Go { probe } => {
                    return Admit::Go(Pass {
                        breaker,
                        destination,
                        probe,
                        period,
                    })
                }
                Admission::WaitUntil(_) if park_if_open && state == State::Open => {
                    return Admit::Open
                }
                Admission::WaitUntil(at) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Admit::Stopped,
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            }
        }
    }

    /// Destinations whose breaker is open right now (their parked pairs wait).
    pub fn open_destinations(&self) -> Vec<String> {
        let now = Instant::now();
        self.map
            .lock()
            .iter()
            .filter(|(_, b)| {
                let b = b.lock();
                b.state() == State::Open && now < b.open_until
            })
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Reports the outcome of a call admitted by `pass`.
    pub fn record(&self, mut pass: Pass, failure: bool) {
        let now = Instant::now();
        let changed = match pass.take_probe() {
            Some(period) => pass.breaker.lock().record_probe(now, period, failure),
            None => pass.breaker.lock().record(now, false, failure),
        };
        match changed {
            Some(State::Open) => warn!(
                destination = %pass.destination,
                open_for = %humantime::format_duration(self.cfg.open_for),
                "circuit breaker opened: holding this destination's deliveries (they keep their attempts)"
            ),
            Some(State::Closed) => {
                info!(destination = %pass.destination, "circuit breaker closed: destination healthy again")
            }
            _ => {}
        }
    }

    /// Gives back a pass that was not used (the pair turned out to need no call). The same
    /// as dropping it; spelled out where the caller decides so.
    pub fn cancel(&self, pass: Pass) {
        drop(pass);
    }

    /// `{destination: {"state": ..., "opened": n}}` for heartbeats and status.
    pub fn snapshot(&self) -> serde_json::Value {
        let map = self.map.lock();
        let mut out = serde_json::Map::new();
        for (k, b) in map.iter() {
            let b = b.lock();
            out.insert(
                k.to_string(),
                serde_json::json!({ "state": b.state().as_str(), "opened": b.opened_count }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// `(destination, state, times opened)` of every breaker (for `/metrics`).
    pub fn states(&self) -> Vec<(String, State, u64)> {
        self.map
            .lock()
            .iter()
            .map(|(k, b)| {
                let b = b.lock();
                (k.to_string(), b.state(), b.opened_count)
            })
            .collect()
    }

    /// How many breakers are open or half-open right now.
    pub fn not_closed(&self) -> usize {
        self.map
            .lock()
            .values()
            .filter(|b| b.lock().state() != State::Closed)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 2,
        }
    }

    fn call(b: &mut Breaker, now: Instant, failure: bool) -> Option<State> {
        match b.try_admit(now) {
            Admission::Go { probe } => b.record(now, probe, failure),
            Admission::WaitUntil(_) => panic!("not admitted"),
        }
    }

    #[test]
    fn opens_only_with_enough_calls_and_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        // 3 failures: below min_requests
        for _ in 0..3 {
            assert_eq!(call(&mut b, t0, true), None);
        }
        assert_eq!(b.state(), State::Closed);
        // 4th call fails: 4/4 >= 0.5 and 4 >= min_requests
        assert_eq!(call(&mut b, t0, true), Some(State::Open));
        assert_eq!(
            b.try_admit(t0),
            Admission::WaitUntil(t0 + Duration::from_secs(30))
        );
    }

    #[test]
    fn successes_keep_it_closed_below_the_ratio() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for i in 0..100 {
            // 1 failure in 3 calls: 33% < 50%
            assert_eq!(call(&mut b, t0, i % 3 == 2), None);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for _ in 0..3 {
            call(&mut b, t0, true);
        }
        // 11s later the three failures are out of the 10s window
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(call(&mut b, t1, true), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn half_open_probes_close_or_reopen() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for _ in 0..4 {
            call(&mut b, t0, true);
        }
        let t1 = t0 + Duration::from_secs(31);
        // two probes admitted, the third waits
        assert_eq!(b.try_admit(t1), Admission::Go { probe: true });
        assert_eq!(b.try_admit(t1), Admission::Go { probe: true });
        assert!(matches!(b.try_admit(t1), Admission::WaitUntil(_)));
        assert_eq!(b.state(), State::HalfOpen);
        // a stale non-probe result is ignored
        assert_eq!(b.record(t1, false, true), None);
        assert_eq!(b.record(t1, true, false), None);
        assert_eq!(b.record(t1, true, false), Some(State::Closed));
        assert_eq!(b.try_admit(t1), Admission::Go { probe: false });

        // open again, and a failing probe re-opens it for another open_for
        for _ in 0..4 {
            call(&mut b, t1, true);
        }
        let t2 = t1 + Duration::from_secs(31);
        assert_eq!(b.try_admit(t2), Admission::Go { probe: true });
        assert_eq!(b.record(t2, true, true), Some(State::Open));
        assert_eq!(
            b.try_admit(t2),
            Admission::WaitUntil(t2 + Duration::from_secs(30))
        );
        assert_eq!(b.opened_count, 3);
    }

    #[tokio::test]
    async fn admit_waits_while_open_and_stops_on_shutdown() {
        let mut c = cfg();
        c.open_for = Duration::from_millis(200);
        c.min_requests = 1;
        let breakers = Breakers::new(c);
        let stop = CancellationToken::new();
        let go = |a: Admit| match a {
            Admit::Go(p) => p,
            other => panic!("{other:?}"),
        };
        let pass = go(breakers.admit("http://a:1", &stop, false).await);
        breakers.record(pass, true);
        // another destination is not affected
        let started = Instant::now();
        let other = go(breakers.admit("http://b:1", &stop, false).await);
        assert!(started.elapsed() < Duration::from_millis(100));
        breakers.record(other, false);
        // the open one waits about open_for
        let started = Instant::now();
        assert!(matches!(
            breakers.admit("http://a:1", &stop, true).await,
            Admit::Open
        ));
        assert_eq!(breakers.open_destinations(), vec!["http://a:1".to_owned()]);
        let probe = go(breakers.admit("http://a:1", &stop, false).await);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        assert!(probe.probe);
        assert_eq!(breakers.not_closed(), 1);
        breakers.record(probe, true); // re-open
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s2.cancel();
        });
        assert!(matches!(
            breakers.admit("http://a:1", &stop, false).await,
            Admit::Stopped
        ));
        let snap = breakers.snapshot();
        assert_eq!(snap["http://a:1"]["state"], "open");
        assert_eq!(snap["http://b:1"]["state"], "closed");
    }

    fn probe_cfg() -> BreakerConfig {
        // opens on the first failure; open_for 0: the next admission is already half-open
        BreakerConfig {
            min_requests: 1,
            open_for: Duration::ZERO,
            ..cfg()
        }
    }

    /// Admission without waiting: a cancelled token turns "wait for a slot" into `Stopped`.
    async fn admit_now(breakers: &Breakers, dest: &str) -> Admit {
        let stopped = CancellationToken::new();
        stopped.cancel();
        breakers.admit(dest, &stopped, false).await
    }

    /// A probe whose task is aborted (`dispatcher.abort_all()` on lease loss or shutdown)
    /// gives its half-open slot back: the destination does not stay half-open for good.
    #[tokio::test]
    async fn an_aborted_probe_gives_its_slot_back() {
        let breakers = Arc::new(Breakers::new(probe_cfg()));
        let Admit::Go(p) = admit_now(&breakers, "http://a:1").await else {
            panic!("closed breaker refused")
        };
        breakers.record(p, true);
        // both half-open slots taken by tasks that are then aborted mid-call
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (b, (tx, rx)) = (breakers.clone(), tokio::sync::oneshot::channel());
            tasks.push(tokio::spawn(async move {
                let Admit::Go(pass) = admit_now(&b, "http://a:1").await else {
                    panic!("no probe slot")
                };
                assert!(pass.probe);
                tx.send(()).unwrap();
                std::future::pending::<()>().await;
                drop(pass);
            }));
            rx.await.unwrap();
        }
        assert!(matches!(
            admit_now(&breakers, "http://a:1").await,
            Admit::Stopped
        ));
        for t in tasks {
            t.abort();
            assert!(t.await.unwrap_err().is_cancelled());
        }
        // the slots are free again: a new probe goes, and its success counts
        for _ in 0..2 {
            let Admit::Go(p) = admit_now(&breakers, "http://a:1").await else {
                panic!("the aborted probes kept their half-open slots")
            };
            breakers.record(p, false);
        }
        assert_eq!(breakers.not_closed(), 0, "two probes succeeded: closed");
    }

    /// A pass that was recorded or cancelled is not given back a second time when dropped.
    #[tokio::test]
    async fn a_recorded_probe_is_not_given_back_twice() {
        let breakers = Breakers::new(probe_cfg());
        let Admit::Go(p) = admit_now(&breakers, "http://a:1").await else {
            panic!()
        };
        breakers.record(p, true);
        let go = |a| match a {
            Admit::Go(p) => p,
            other => panic!("{other:?}"),
        };
        let p1 = go(admit_now(&breakers, "http://a:1").await);
        let p2 = go(admit_now(&breakers, "http://a:1").await);
        breakers.record(p1, false); // in flight 1, ok 1
        breakers.cancel(p2); // in flight 0
        let p3 = go(admit_now(&breakers, "http://a:1").await); // in flight 1, ok 1: full
        assert!(
            matches!(admit_now(&breakers, "http://a:1").await, Admit::Stopped),
            "a slot was given back twice"
        );
        drop(p3);
        let p4 = go(admit_now(&breakers, "http://a:1").await);
        assert!(p4.probe);
    }

    /// A probe of an earlier half-open period that ends late neither frees a slot of the
    /// current period nor counts as one of its results.
    #[tokio::test]
    async fn a_stale_probe_does_not_touch_the_next_half_open_period() {
        let breakers = Breakers::new(probe_cfg());
        let go = |a| match a {
            Admit::Go(p) => p,
            other => panic!("{other:?}"),
        };
        let p = go(admit_now(&breakers, "http://a:1").await);
        breakers.record(p, true); // open
        let stale = go(admit_now(&breakers, "http://a:1").await); // period 1
        let failing = go(admit_now(&breakers, "http://a:1").await);
        breakers.record(failing, true); // open again; period 2 starts at the next admission
        let q1 = go(admit_now(&breakers, "http://a:1").await);
        let q2 = go(admit_now(&breakers, "http://a:1").await);
        assert!(matches!(
            admit_now(&breakers, "http://a:1").await,
            Admit::Stopped
        ));
        drop(stale);
        assert!(
            matches!(admit_now(&breakers, "http://a:1").await, Admit::Stopped),
            "a stale probe freed a slot of the new period"
        );
        breakers.record(q1, false);
        breakers.record(q2, false);
        assert_eq!(breakers.not_closed(), 0);
    }
}
