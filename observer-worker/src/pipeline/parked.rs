//! Delivers the pairs waiting in `observers.parked`: parked while their destination's circuit
//! breaker was open or while their observer was broken (`super::broken`; delivered once it is
//! fixed), queued by `observers.dlq_retry()` (a dead letter: delivered, it leaves the
//! DLQ; failed again, it stays there with its new error) or by `observers.replay()` (past
//! events; `force` skips deduplication). Runs on the leader only, beside the consumer, with the same layers
//! (dedup, breaker, concurrency, retry) and at most [`MAX_IN_FLIGHT`] pairs at a time:
//!
//! ```text
//! every POLL: leader? ─► park_fetch (skip destinations whose breaker is open, skip pairs in
//!     flight) ─► executor::run (breaker waits here instead of parking again)
//!     ─► delivered / already done: park_finish(NULL)    failed for good: park_finish(error) → DLQ
//! ```
//!
//! A parked pair keeps the attempts it used before it was parked, and its `webhook-id`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::broken::parked_destination;
use super::executor::{self, ActionOutcome, Layers};
use super::handler::{durable_write_backoff, durably};
use super::lease::LeaseState;
use super::registry::{ObserverEntry, ObserverRegistry};
use crate::actions::Delivery;
use crate::db::{Db, ParkRecord, ParkedPair};
use crate::installation::InstallationId;
use crate::resilience::batcher::Batcher;
use crate::resilience::PairKey;
use crate::telemetry::metrics::PairOutcome;
use crate::telemetry::Stats;

/// Parked pairs delivered at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// How often the loop looks for parked pairs it can deliver.
pub const POLL: Duration = Duration::from_millis(500);

/// Largest number of pairs parked in one round trip.
const PARK_BATCH: usize = 512;

#[derive(Debug, Clone)]
enum ParkError {
    NotLeader,
    Fenced,
    Db { message: Arc<str>, retryable: bool },
}

/// Parks pairs durably, batching concurrent requests into one fenced `park_add` call.
pub struct ParkQueue {
    batcher: Batcher<ParkRecord, (), ParkError>,
    lease: watch::Receiver<LeaseState>,
    fenced: Arc<Notify>,
}

impl ParkQueue {
    pub fn new(
        db: Db,
        group: String,
        lease: watch::Receiver<LeaseState>,
        fenced: Arc<Notify>,
    ) -> Self {
        let l2 = lease.clone();
        let batcher = Batcher::spawn(
            PARK_BATCH,
            4 * PARK_BATCH,
            2,
            move |recs: Vec<ParkRecord>| {
                let (db, group) = (db.clone(), group.clone());
                let epoch = l2.borrow().held_epoch();
                async move {
                    let Some(epoch) = epoch else {
                        return Err(ParkError::NotLeader);
                    };
                    match db.park_add(&group, epoch, &recs).await {
                        Ok(_) => Ok(vec![(); recs.len()]),
                        Err(e) if e.is_fenced() => Err(ParkError::Fenced),
                        Err(e) => Err(ParkError::Db {
                            retryable: e.is_retryable(),
                            message: Arc::from(e.to_string()),
                        }),
                    }
                }
            },
        );
        ParkQueue {
            batcher,
            lease,
            fenced,
        }
    }

    /// Parks `rec`, retrying until it is durable. False only when the worker is shutting down
    /// or lost the lease for good (the event is then delivered again by the next leader).
    pub async fn park(&self, rec: ParkRecord) -> bool {
        let mut lease = self.lease.clone();
        let mut backoff = durable_write_backoff();
        let mut warned = false;
        loop {
            match self.batcher.call(rec.clone()).await {
                Ok(Ok(())) => return true,
                Err(_) => return false,
                Ok(Err(ParkError::NotLeader)) => {
                    if lease.wait_for(|s| s.held_epoch().is_some()).await.is_err() {
                        return false;
                    }
                }
                Ok(Err(ParkError::Fenced)) => {
                    self.fenced.notify_one();
                    let _ = tokio::time::timeout(Duration::from_secs(1), lease.changed()).await;
                }
                Ok(Err(ParkError::Db { message, retryable })) => {
                    if !warned {
                        warn!(event_id = rec.event_id, retryable, error = %message, "cannot park the pair yet; retrying until it is durable");
                        warned = true;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

pub struct ParkedLoop {
    pub db: Db,
    pub group: String,
    pub registry: Arc<ObserverRegistry>,
    pub lease: watch::Receiver<LeaseState>,
    pub fenced: Arc<Notify>,
    pub layers: Layers,
    /// This installation's id (dedup keys; the webhook-id comes stored with the pair).
    pub installation: InstallationId,
    pub stats: Arc<Stats>,
}

impl ParkedLoop {
    /// Runs until `background` fires; in-flight pairs stop at the soft shutdown (`layers.stop`)
    /// and stay parked.
    pub async fn run(self: Arc<Self>, background: CancellationToken) {
        let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let mut warned = false;
        loop {
            while tasks.try_join_next().is_some() {}
            let leader = self.lease.borrow().held_epoch().is_some();
            if !leader && !tasks.is_empty() {
                // the new leader delivers them; never two workers on one parked pair
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                in_flight.lock().clear();
            }
            let free = MAX_IN_FLIGHT.saturating_sub(in_flight.lock().len());
            if leader && free > 0 && !self.layers.stop.is_cancelled() {
                let mut skip_destinations = self
                    .layers
                    .breakers
                    .as_ref()
                    .map(|b| b.open_destinations())
                    .unwrap_or_default();
                // pairs of broken observers wait for the fix (their rows name the observer)
                skip_destinations.extend(self.registry.broken_destinations());
                let skip_ids: Vec<i64> = in_flight.lock().iter().copied().collect();
                match self
                    .db
                    .park_fetch(&self.group, &skip_destinations, &skip_ids, free as i32)
                    .await
                {
                    Ok(pairs) => {
                        warned = false;
                        if !pairs.is_empty() {
                            debug!(count = pairs.len(), "delivering parked pairs");
                        }
                        for p in pairs {
                            in_flight.lock().insert(p.id);
                            let me = self.clone();
                            let in_flight = in_flight.clone();
                            tasks.spawn(async move {
                                let id = p.id;
                                me.deliver(p).await;
                                in_flight.lock().remove(&id);
                            });
                        }
                    }
                    Err(e) if !warned => {
                        warn!(error = %e, "cannot read parked pairs; retrying");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = background.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn deliver(&self, p: ParkedPair) {
        let index = p.action_index as usize;
        let action = match self.registry.get(p.observer_id) {
            Some(ObserverEntry::Ready(o)) => match o.actions.get(index) {
                Some(a) => a.clone(),
                None => {
                    return self
                        .dead_letter(&p, "the observer no longer has this action")
                        .await
                }
            },
            // broken: it stays parked until the observer is fixed. A DLQ retry or replay
            // queued meanwhile (no destination yet) is named after the broken observer, so
            // park_fetch skips it like the observer's own parked pairs instead of returning it
            // on every poll
            Some(ObserverEntry::Broken(b)) => {
                if p.destination.is_none() {
                    let dest = parked_destination(b.id);
                    if let Err(e) = self.db.park_set_destination(&self.group, p.id, &dest).await {
                        debug!(error = %e, "cannot mark a queued redelivery of a broken observer");
                    }
                }
                return;
            }
            None => {
                return self
                    .dead_letter(&p, "the observer was dropped while the pair was parked")
                    .await
            }
        };
        // a DLQ retry or replay (queued from SQL) learns its destination here; while that
        // destination's breaker is open it stays queued and park_fetch skips it, instead of
        // waiting in here and holding a delivery slot
        if let (None, Some(dest)) = (&p.destination, action.destination()) {
            if let Err(e) = self.db.park_set_destination(&self.group, p.id, dest).await {
                warn!(error = %e, "cannot record the destination of a queued redelivery (only park_fetch skipping it while its breaker is open is affected)");
            }
            let open = self
                .layers
                .breakers
                .as_ref()
                .is_some_and(|b| b.open_destinations().iter().any(|d| d == dest));
            if open {
                return;
            }
        }
        // the webhook-id stored with the pair: the one its earlier attempts were sent with (a
        // pair dead-lettered before the id format changed keeps its old id)
        let mut delivery = Delivery::new(
            &self.installation,
            p.event_id,
            index,
            Bytes::from(p.body.clone()),
        )
        .with_webhook_id(p.webhook_id.clone())
        .for_observer(p.observer_id);
        delivery.attempts_used = p.attempts.max(0) as u32;
        // replay(..., force => true): deliver even if deduplication remembers it as done
        if !p.force && self.layers.dedup.is_some() {
            delivery = delivery.with_dedup_key(PairKey::new(
                self.installation.bytes(),
                p.observer_id,
                index,
                p.event_id,
                &p.day,
            ));
        }
        match executor::run(action.as_ref(), &delivery, &self.layers).await {
            ActionOutcome::Delivered { .. } => {
                let counter = match p.reason.as_str() {
                    "dlq_retry" => &self.stats.dlq_retries_delivered,
                    "replay" => &self.stats.replays_delivered,
                    _ => &self.stats.parked_delivered,
                };
                Stats::add(counter, 1);
                if let Some(m) = &self.layers.metrics {
                    m.pair(action.type_name(), PairOutcome::Delivered);
                }
                debug!(event_id = p.event_id, action_index = index, reason = %p.reason, "redelivered");
                self.finish(&p, None, 0, None).await;
            }
            ActionOutcome::AlreadyDone => {
                Stats::add(&self.stats.dedup_hits, 1);
                if let Some(m) = &self.layers.metrics {
                    m.pair(action.type_name(), PairOutcome::DedupSkipped);
                }
                debug!(event_id = p.event_id, action_index = index, reason = %p.reason, "already succeeded (deduplication): not executed again");
                self.finish(&p, None, 0, None).await;
            }
            ActionOutcome::Failed {
                error,
                attempts,
                last_status,
            } => {
                if p.reason == "dlq_retry" {
                    warn!(event_id = p.event_id, action_index = index, webhook_id = %p.webhook_id, attempts, error = %error, "dead-letter retry failed; the entry stays in the dead-letter queue");
                    Stats::add(&self.stats.dlq_retries_failed, 1);
                } else {
                    warn!(event_id = p.event_id, action_index = index, webhook_id = %p.webhook_id, reason = %p.reason, attempts, error = %error, "redelivery failed; moving the pair to the dead-letter queue");
                    Stats::add(&self.stats.actions_dead_lettered, 1);
                    if p.reason == "replay" {
                        Stats::add(&self.stats.replays_failed, 1);
                    }
                    if let Some(m) = &self.layers.metrics {
                        m.pair(action.type_name(), PairOutcome::DeadLettered);
                    }
                }
                self.finish(
                    &p,
                    Some(&error),
                    attempts as i32,
                    last_status.map(i32::from),
                )
                .await;
            }
            // shutdown, or (not asked for here) parked again: it stays parked
            ActionOutcome::Abandoned { .. }
            | ActionOutcome::Park { .. }
            | ActionOutcome::RetryLater { .. } => {}
        }
    }

    async fn dead_letter(&self, p: &ParkedPair, error: &str) {
        info!(event_id = p.event_id, webhook_id = %p.webhook_id, error, "parked pair moved to the dead-letter queue");
        self.finish(p, Some(error), p.attempts, None).await
    }

    async fn finish(
        &self,
        p: &ParkedPair,
        error: Option<&str>,
        attempts: i32,
        status: Option<i32>,
    ) {
        let id = p.id;
        durably(
            &self.db,
            &self.group,
            &self.lease,
            &self.fenced,
            p.event_id,
            "parked pair outcome",
            |db, group, epoch| async move {
                db.park_finish(&group, epoch, id, error, attempts, status)
                    .await
                    .map(|_| id)
            },
        )
        .await;
    }
}
