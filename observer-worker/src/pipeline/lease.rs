//! The group's leader lease: acquire, renew every `ttl/3`, publish the state.
//! A standby asks every `standby_poll` (250 ms by default): it gets the lease as
//! soon as the leader released it (SIGTERM) or the leader's database session
//! ended (crash), and only after `ttl` when the leader is alive but frozen or cut
//! off. Each call has a deadline ([`renewal_deadline`]): a renewal that has not
//! answered by then counts as failed.
//!
//! The consumer only claims events while the state is [`LeaseState::Held`].
//! Every write that matters is fenced by the epoch in the database, so a
//! worker that *thinks* it still leads can never move the checkpoint of a
//! group someone else took over.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::db::{Db, DbError};
use crate::retry::Backoff;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Another worker holds the lease (or we have not asked yet).
    Standby,
    /// We hold the lease with this epoch.
    Held(i64),
    /// We held it with this epoch, but the last renewal failed (database
    /// unreachable): claim nothing until it is confirmed again.
    Unknown(i64),
}

impl LeaseState {
    pub fn held_epoch(&self) -> Option<i64> {
        match self {
            LeaseState::Held(e) => Some(*e),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub group: String,
    pub worker_id: String,
    pub ttl: Duration,
    /// How often a standby asks for the lease.
    pub standby_poll: Duration,
}

/// How long a lease call may take before it counts as failed: a third of the TTL, so that a
/// leader whose renewals hang stops claiming events well before a standby may take over.
pub fn renewal_deadline(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// Runs until `stop` fires. `fenced` is signalled by anyone who got SQLSTATE
/// OB001: the lease is then re-checked immediately. `released` is signalled by the listener
/// when the group's leader released its lease (`NOTIFY observers_lease`): a standby then asks
/// at once instead of at its next `standby_poll`. A takeover of a lease this worker has seen
/// held by another worker counts in `metrics` (`observer_failovers_total`,
/// `observer_handover_seconds`: the time from the first answer "held by another worker" to the
/// takeover).
pub async fn run(
    db: Db,
    s: LeaseSettings,
    metrics: Option<Arc<Metrics>>,
    tx: watch::Sender<LeaseState>,
    fenced: Arc<Notify>,
    released: Arc<Notify>,
    stop: CancellationToken,
) {
    let renew_every = (s.ttl / 3).max(Duration::from_millis(100));
    let standby_poll = s.standby_poll.min(renew_every);
    let deadline = renewal_deadline(s.ttl);
    let mut error_backoff = Backoff::new(
        Duration::from_millis(100),
        renew_every.min(Duration::from_secs(1)),
    );
    let mut announced_standby = false;
    let mut failures = 0u32;
    let mut standby_since: Option<std::time::Instant> = None;
    loop {
        let current = *tx.borrow();
        let answer =
            match tokio::time::timeout(deadline, db.lease_acquire(&s.group, &s.worker_id, s.ttl))
                .await
            {
                Ok(a) => a,
                Err(_) => Err(DbError::Transient {
                    context: "observers.lease_acquire",
                    message: format!(
                        "no answer within {} (a third of failover.lease_ttl)",
                        humantime::format_duration(deadline)
                    ),
                }),
            };
        let wait = match answer {
            Ok(Some(epoch)) => {
                error_backoff.reset();
                if failures > 0 {
                    info!(group = %s.group, "database reachable again");
                    failures = 0;
                }
                match current {
                    LeaseState::Held(e) if e == epoch => {}
                    LeaseState::Unknown(e) if e == epoch => {
                        info!(group = %s.group, epoch, "leader lease confirmed again; resuming");
                        tx.send_replace(LeaseState::Held(epoch));
                    }
                    _ => {
                        match standby_since.take() {
                            Some(since) => {
                                if let Some(m) = &metrics {
                                    m.failover(since.elapsed());
                                }
                                info!(group = %s.group, worker_id = %s.worker_id, epoch, ttl = ?s.ttl,
                                standby_for = ?since.elapsed(),
                                "leader lease acquired (taken over: the previous leader released it, its session ended or its lease expired); consuming events")
                            }
                            None => {
                                info!(group = %s.group, worker_id = %s.worker_id, epoch, ttl = ?s.ttl, "leader lease acquired; consuming events")
                            }
                        }
                        tx.send_replace(LeaseState::Held(epoch));
                    }
                }
                announced_standby = false;
                renew_every
            }
            Ok(None) => {
                error_backoff.reset();
                failures = 0;
                match current {
                    LeaseState::Held(epoch) | LeaseState::Unknown(epoch) => {
                        warn!(group = %s.group, epoch, "leader lease lost: another worker holds it now; stopped claiming events");
                        announced_standby = true;
                    }
                    LeaseState::Standby if !announced_standby => {
                        info!(group = %s.group, retry_every = ?standby_poll, "standby: another worker holds the leader lease");
                        announced_standby = true;
                    }
                    LeaseState::Standby => {}
                }
                standby_since.get_or_insert_with(std::time::Instant::now);
                tx.send_replace(LeaseState::Standby);
                standby_poll
            }
            Err(e) => {
                failures += 1;
                if let LeaseState::Held(epoch) = current {
                    warn!(group = %s.group, epoch, error = %e, "leader lease renewal failed; stopped claiming events until it is renewed");
                    tx.send_replace(LeaseState::Unknown(epoch));
                } else if failures == 1 {
                    warn!(group = %s.group, error = %e, "cannot reach the database for the leader lease; retrying");
                } else {
                    debug!(group = %s.group, error = %e, "leader lease: still cannot reach the database");
                }
                error_backoff.next_delay()
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = fenced.notified() => {
                debug!(group = %s.group, "fenced: re-checking the leader lease now");
                mark_fenced(&tx);
            }
            // a leader released its lease (NOTIFY observers_lease): a standby asks at once
            _ = released.notified(), if matches!(*tx.borrow(), LeaseState::Standby) => {
                debug!(group = %s.group, "the leader released its lease: asking for it now");
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Someone got SQLSTATE OB001: our epoch is stale whatever we believed, so
/// stop claiming until the lease is confirmed again.
fn mark_fenced(tx: &watch::Sender<LeaseState>) {
    // Copy the state out first: sending while a `borrow()` guard is alive
    // would deadlock on the channel's lock.
    let state = *tx.borrow();
    if let LeaseState::Held(epoch) = state {
        tx.send_replace(LeaseState::Unknown(epoch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_turns_held_into_unknown_without_deadlocking() {
        let (tx, rx) = watch::channel(LeaseState::Held(7));
        mark_fenced(&tx);
        assert_eq!(*rx.borrow(), LeaseState::Unknown(7));
        // standby stays standby
        tx.send_replace(LeaseState::Standby);
        mark_fenced(&tx);
        assert_eq!(*rx.borrow(), LeaseState::Standby);
    }

    #[test]
    fn renewal_deadline_is_a_third_of_the_ttl() {
        assert_eq!(
            renewal_deadline(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        assert_eq!(
            renewal_deadline(Duration::from_millis(150)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn held_epoch() {
        assert_eq!(LeaseState::Held(3).held_epoch(), Some(3));
        assert_eq!(LeaseState::Unknown(3).held_epoch(), None);
        assert_eq!(LeaseState::Standby.held_epoch(), None);
    }
}
