//! What happens to one event: run each action of its observer (concurrently),
//! dead-letter the ones that fail, and report the event finished only when
//! every action succeeded or its dead letter is durable.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{watch, Notify};
use tracing::{debug, error, warn};

use super::dispatcher::{EventHandler, EventOutcome};
use super::executor::{self, ActionOutcome, Layers};
use super::jobs;
use super::lease::LeaseState;
use super::parked::ParkQueue;
use super::registry::{ObserverRegistry, Runnable, RuntimeObserver};
use crate::actions::{Action, BoxFuture, Delivery};
use crate::db::{Db, DbError, DeadLetterRecord, FetchedEvent, PairJob, ParkRecord};
use crate::installation::InstallationId;
use crate::resilience::PairKey;
use crate::retry::Backoff;
use crate::telemetry::metrics::PairOutcome;
use crate::telemetry::Stats;

pub struct Deliverer {
    pub registry: Arc<ObserverRegistry>,
    pub db: Db,
    pub group: String,
    pub lease: watch::Receiver<LeaseState>,
    pub fenced: Arc<Notify>,
    /// Concurrency, circuit breakers, deduplication (and the soft shutdown token).
    pub layers: Layers,
    /// This installation's id: part of every webhook-id and, with deduplication, of dedup keys.
    pub installation: InstallationId,
    /// Where pairs of open destinations (circuit breakers) and of broken observers go.
    pub parker: Option<Arc<ParkQueue>>,
    pub stats: Arc<Stats>,
}

impl EventHandler for Deliverer {
    fn handle(self: Arc<Self>, event: FetchedEvent) -> BoxFuture<'static, EventOutcome> {
        Box::pin(async move { self.deliver(event).await })
    }
}

impl Deliverer {
    async fn deliver(&self, event: FetchedEvent) -> EventOutcome {
        // events of ordered observers are never parked: that would reorder them
        let may_park = event.ordering_key.is_none();
        let observer = match self
            .registry
            .runnable(event.observer_id, event.id, may_park, &self.layers.stop)
            .await
        {
            Some(Runnable::Ready(o)) => o,
            Some(Runnable::Broken(b)) => return self.park_broken(&b, &event).await,
            None => return EventOutcome::Unfinished,
        };
        let results = if observer.actions.len() == 1 {
            vec![
                self.deliver_action(&observer, &observer.actions[0], &event, 0)
                    .await,
            ]
        } else {
            join_all(
                observer
                    .actions
                    .iter()
                    .enumerate()
                    .map(|(i, a)| self.deliver_action(&observer, a, &event, i)),
            )
            .await
        };
        if results.iter().all(|done| *done) {
            Stats::add(&self.stats.events_finished, 1);
            if let Some(m) = &self.layers.metrics {
                m.event_finished(event.captured_at);
            }
            EventOutcome::Finished
        } else {
            EventOutcome::Unfinished
        }
    }

    /// True when the pair is finished (delivered, durably dead-lettered, or durably parked).
    async fn deliver_action(
        &self,
        observer: &RuntimeObserver,
        action: &Arc<dyn Action>,
        event: &FetchedEvent,
        index: usize,
    ) -> bool {
        let mut delivery = Delivery::new(&self.installation, event.id, index, event.body.clone())
            .for_observer(observer.id);
        // ordered observers wait for their destination instead: parking would reorder them
        delivery.may_park = event.ordering_key.is_none();
        if self.layers.dedup.is_some() {
            delivery = delivery.with_dedup_key(PairKey::new(
                self.installation.bytes(),
                observer.id,
                index,
                event.id,
                &event.day,
            ));
        }
        if action.is_async() {
            return self
                .enqueue(observer, action.as_ref(), event, index, &delivery)
                .await;
        }
        match executor::run(action.as_ref(), &delivery, &self.layers).await {
            ActionOutcome::AlreadyDone => {
                Stats::add(&self.stats.dedup_hits, 1);
                self.count(action.as_ref(), PairOutcome::DedupSkipped);
                debug!(observer = %observer.name, event_id = event.id, action_index = index, "already succeeded (deduplication): not executed again");
                true
            }
            ActionOutcome::Delivered { attempts } => {
                Stats::add(&self.stats.actions_delivered, 1);
                self.count(action.as_ref(), PairOutcome::Delivered);
                Stats::add(&self.stats.attempts_failed, u64::from(attempts - 1));
                debug!(observer = %observer.name, event_id = event.id, action_index = index, attempts, "delivered");
                true
            }
            // only job runs ask for a single attempt; not reached here
            ActionOutcome::RetryLater { .. } => false,
            ActionOutcome::Abandoned { attempts } => {
                Stats::add(&self.stats.attempts_failed, u64::from(attempts));
                debug!(observer = %observer.name, event_id = event.id, action_index = index, "not finished at shutdown; will be delivered again");
                false
            }
            ActionOutcome::Park {
                attempts,
                last_error,
            } => {
                let destination = action.destination().unwrap_or("");
                debug!(observer = %observer.name, event_id = event.id, action_index = index, destination, attempts, "destination's circuit breaker is open: parking the pair");
                let Some(parker) = &self.parker else {
                    return false; // the worker always builds the queue; not reached
                };
                let record = ParkRecord {
                    event_id: event.id,
                    observer_id: observer.id,
                    action_index: index as i32,
                    action_type: action.type_name().into(),
                    webhook_id: delivery.webhook_id.clone(),
                    day: event.day.clone(),
                    destination: destination.to_owned(),
                    body: String::from_utf8_lossy(&event.body).into_owned(),
                    attempts: attempts as i32,
                    last_error,
                };
                let done = parker.park(record).await;
                if done {
                    Stats::add(&self.stats.actions_parked, 1);
                    self.count(action.as_ref(), PairOutcome::Parked);
                }
                done
            }
            ActionOutcome::Failed {
                error,
                attempts,
                last_status,
            } => {
                Stats::add(&self.stats.attempts_failed, u64::from(attempts));
                warn!(
                    observer = %observer.name,
                    event_id = event.id,
                    action_index = index,
                    webhook_id = %delivery.webhook_id,
                    attempts,
                    last_status = last_status.map(i64::from),
                    error = %error,
                    "action failed; moving it to the dead-letter queue"
                );
                let record = DeadLetterRecord {
                    event_id: event.id,
                    observer_id: observer.id,
                    action_index: index as i32,
                    action_type: action.type_name(),
                    webhook_id: &delivery.webhook_id,
                    payload: std::str::from_utf8(&event.body).unwrap_or("null"),
                    error: &error,
                    attempts: attempts as i32,
                    last_status: last_status.map(i32::from),
                };
                let record = &record;
                let done = self
                    .durably(event.id, "dead letter", |db, group, epoch| async move {
                        db.dlq_add(&group, epoch, record).await
                    })
                    .await;
                if done {
                    Stats::add(&self.stats.actions_dead_lettered, 1);
                    self.count(action.as_ref(), PairOutcome::DeadLettered);
                }
                done
            }
        }
    }

    /// `mode: async`: the pair becomes a job (fenced, idempotent per pair); the event counts
    /// as finished once the job is durable.
    async fn enqueue(
        &self,
        observer: &RuntimeObserver,
        action: &dyn Action,
        event: &FetchedEvent,
        index: usize,
        delivery: &Delivery,
    ) -> bool {
        let job = PairJob {
            event_id: event.id,
            observer_id: observer.id,
            action_index: index as i32,
            day: &event.day,
            webhook_id: &delivery.webhook_id,
            body: std::str::from_utf8(&event.body).unwrap_or("null"),
            max_attempts: action.retry_policy().max_attempts.min(i32::MAX as u32) as i32,
        };
        let done = jobs::enqueue_pair(&self.db, &self.group, &self.lease, &self.fenced, job).await;
        if done {
            debug!(observer = %observer.name, event_id = event.id, action_index = index, "enqueued as a job (mode: async)");
            self.count(action, PairOutcome::Enqueued);
            if let Some(m) = &self.layers.metrics {
                m.job_enqueued();
            }
        }
        done
    }

    fn count(&self, action: &dyn Action, outcome: PairOutcome) {
        if let Some(m) = &self.layers.metrics {
            m.pair(action.type_name(), outcome);
        }
    }

    /// Runs a fenced write (`write(db, group, epoch)`), retrying until it is durable. The
    /// event is not finished before that, so a database outage cannot lose a failure or a
    /// parked pair. Returns false only if the lease is lost for good (the task is then
    /// aborted by the consumer) — in practice it returns true or never.
    pub(crate) async fn durably<'r, F, Fut>(
        &self,
        event_id: i64,
        what: &'static str,
        write: F,
    ) -> bool
    where
        F: Fn(Db, String, i64) -> Fut,
        Fut: std::future::Future<Output = Result<i64, DbError>> + 'r,
    {
        durably(
            &self.db,
            &self.group,
            &self.lease,
            &self.fenced,
            event_id,
            what,
            write,
        )
        .await
    }
}

/// How a write that must become durable (a dead letter, a parked pair) waits between tries:
/// 100 ms, doubling, at most 5 s.
pub(crate) fn durable_write_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// See [`Deliverer::durably`] (shared with the parked-pairs loop).
pub(crate) async fn durably<'r, F, Fut>(
    db: &Db,
    group: &str,
    lease: &watch::Receiver<LeaseState>,
    fenced: &Notify,
    event_id: i64,
    what: &'static str,
    write: F,
) -> bool
where
    F: Fn(Db, String, i64) -> Fut,
    Fut: std::future::Future<Output = Result<i64, DbError>> + 'r,
{
    let mut lease = lease.clone();
    let mut backoff = durable_write_backoff();
    let mut warned = false;
    loop {
        let epoch = match lease.wait_for(|s| s.held_epoch().is_some()).await {
            Ok(state) => match state.held_epoch() {
                Some(e) => e,
                None => continue,
            },
            Err(_) => return false, // lease task gone: we are shutting down
        };
        match write(db.clone(), group.to_owned(), epoch).await {
            Ok(id) => {
                if warned {
                    warn!(event_id, id, "{what} recorded after retrying");
                }
                return true;
            }
            Err(e) if e.is_fenced() => {
                fenced.notify_one();
                let _ = tokio::time::timeout(Duration::from_secs(1), lease.changed()).await;
            }
            Err(e) => {
                if !warned {
                    if e.is_retryable() {
                        warn!(event_id, error = %e, "cannot record {what} yet; retrying until it is durable");
                    } else {
                        error!(event_id, error = %e, "cannot record {what}; retrying until it is durable");
                    }
                    warned = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
