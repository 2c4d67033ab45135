//! What `/health/ready` answers (pure: unit-tested here, served by [`super::server`]).
//!
//! Ready means "this worker does its job right now":
//! * it has started (database reached, observers applied and loaded, consumer running) and is
//!   not shutting down;
//! * the database answered the last refresh of the database gauges (every few seconds);
//! * the lease task has a confirmed answer: this worker **leads** (it consumes) or it is a
//!   **standby** (another worker leads and this one follows, ready to take over). A leader that
//!   could not renew its lease (`unknown`) claims nothing and is not ready.
//!
//! Degraded dependencies do not make a worker unready when it still delivers correctly: Redis
//! down (deduplication falls back to PostgreSQL, lookups call their sources directly) is
//! reported as `"degraded": ["redis"]` with status 200.

use serde::Serialize;

use crate::pipeline::lease::LeaseState;

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting, applying and loading observers.
    Starting = 0,
    /// The consumer runs.
    Running = 1,
    /// Shutdown requested: draining in-flight work.
    Stopping = 2,
}

impl Phase {
    pub fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Running,
            2 => Phase::Stopping,
            _ => Phase::Starting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
        }
    }
}

/// Everything readiness depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    pub phase: Phase,
    pub database_up: bool,
    /// `None` before the lease task exists.
    pub lease: Option<LeaseState>,
    pub redis_degraded: bool,
    pub open_breakers: usize,
}

/// The `/health/ready` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `"ready"` or `"not_ready"`.
    pub status: &'static str,
    #[serde(skip)]
    pub ready: bool,
    pub phase: &'static str,
    /// `leader`, `standby`, `unknown` (lease not confirmed) or `none` (not started).
    pub role: &'static str,
    /// `up` or `down`.
    pub database: &'static str,
    /// Dependencies that fail while the worker still delivers (e.g. `redis`).
    pub degraded: Vec<&'static str>,
    /// Why the worker is not ready (empty when ready).
    pub reasons: Vec<&'static str>,
    /// Destinations whose circuit breaker is open (their pairs are parked).
    pub open_circuit_breakers: usize,
}

pub fn readiness(i: Inputs) -> Readiness {
    let mut reasons = Vec::new();
    match i.phase {
        Phase::Starting => reasons.push("starting: database, observers or consumer not ready yet"),
        Phase::Stopping => reasons.push("shutting down"),
        Phase::Running => {}
    }
    if !i.database_up {
        reasons.push("database unreachable");
    }
    let role = match i.lease {
        None => "none",
        Some(LeaseState::Held(_)) => "leader",
        Some(LeaseState::Standby) => "standby",
        Some(LeaseState::Unknown(_)) => {
            reasons.push("leader lease not confirmed (renewal failed)");
            "unknown"
        }
    };
    let mut degraded = Vec::new();
    if i.redis_degraded {
        degraded.push("redis");
    }
    let ready = reasons.is_empty();
    Readiness {
        status: if ready { "ready" } else { "not_ready" },
        ready,
        phase: i.phase.as_str(),
        role,
        database: if i.database_up { "up" } else { "down" },
        degraded,
        reasons,
        open_circuit_breakers: i.open_breakers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(lease: LeaseState) -> Inputs {
        Inputs {
            phase: Phase::Running,
            database_up: true,
            lease: Some(lease),
            redis_degraded: false,
            open_breakers: 0,
        }
    }

    #[test]
    fn leader_and_standby_are_ready() {
        assert!(readiness(running(LeaseState::Held(3))).ready);
        let r = readiness(running(LeaseState::Standby));
        assert!(r.ready);
        assert_eq!(r.role, "standby");
    }

    #[test]
    fn database_down_or_unconfirmed_lease_is_not_ready() {
        let mut i = running(LeaseState::Held(1));
        i.database_up = false;
        let r = readiness(i);
        assert!(!r.ready);
        assert_eq!(r.reasons, ["database unreachable"]);
        let r = readiness(running(LeaseState::Unknown(1)));
        assert!(!r.ready);
        assert_eq!(r.role, "unknown");
    }

    #[test]
    fn starting_and_stopping_are_not_ready() {
        let mut i = running(LeaseState::Held(1));
        i.phase = Phase::Starting;
        assert!(!readiness(i).ready);
        i.phase = Phase::Stopping;
        assert_eq!(readiness(i).reasons, ["shutting down"]);
    }

    #[test]
    fn redis_down_is_degraded_but_ready() {
        let mut i = running(LeaseState::Held(1));
        i.redis_degraded = true;
        let r = readiness(i);
        assert!(r.ready);
        assert_eq!(r.degraded, ["redis"]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["status"], "ready");
        assert_eq!(json["degraded"][0], "redis");
    }
}
