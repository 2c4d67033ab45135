//! The job queue's two sides in the worker (docs/JOBS.md):
//!
//! * [`JobRunner`]: runs jobs (`observers.job`) on **every** worker of the group that enables
//!   `job_queue`, leader and standbys alike. One attempt per claim, through the same layers as
//!   inline delivery (`executor::run` with `single_attempt`: breaker, concurrency, dedup,
//!   timeout, attempt log); the job's retry schedule comes from the action's retry policy.
//!
//! ```text
//! LISTEN observers_jobs ─┐  poll (job_queue.poll_interval)  runs finished (a quarter of the slots)
//!                        ▼             ▼                         ▼
//!        free slots? ─► job_claim(free)  (FOR UPDATE SKIP LOCKED, committed at once)
//!                        └─► one task per job (slot = owned semaphore permit, given back in Drop)
//!                              executor::run(single attempt) ─┬► completed: the completer task
//!                                                             │   (job_complete, one statement
//!                                                             │   per batch of completed runs)
//!                                                             └► otherwise: job_finish(id, token, …)
//! beside it: job_runner_beat + job_rescue every rescue_after / 3
//! ```
//!
//! * [`enqueue_pair`]: `mode: async` actions. The leader enqueues the (event, action) pair
//!   (fenced, idempotent per pair) instead of running it; the event counts as finished once the
//!   job is durable.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::executor::{self, ActionOutcome, Layers};
use super::handler::durably;
use super::lease::LeaseState;
use super::registry::{ObserverEntry, ObserverRegistry};
use crate::actions::{Action, Delivery};
use crate::config::JobQueueConfig;
use crate::db::{ClaimedJob, Db, DbError, JobOutcome, PairJob};
use crate::installation::InstallationId;
use crate::resilience::PairKey;
use crate::retry::{sleep_or_cancel, Backoff};

/// How long a job whose destination's breaker is open waits before it is claimed again.
const SNOOZE_WHILE_OPEN: Duration = Duration::from_secs(1);
/// Longest pause between runner heartbeats (and rescue passes).
const MAX_BEAT: Duration = Duration::from_secs(5);
/// Most completions written by one `observers.job_complete` statement.
const MAX_COMPLETE_BATCH: usize = 512;

pub struct JobRunner {
    pub db: Db,
    pub group: String,
    pub worker_id: String,
    pub registry: Arc<ObserverRegistry>,
    /// The worker's layers, with their own soft-stop token (see [`JobRunner::run`]).
    pub layers: Layers,
    pub installation: InstallationId,
    pub config: JobQueueConfig,
    /// Woken by the worker's shared listener on `observers_jobs` for this group (a hint: the
    /// runner polls too).
    pub wake: Arc<Notify>,
    /// `worker.shutdown_timeout`: how long running jobs may take to finish at shutdown; the
    /// ones still running then are abandoned and rescued at once by the other workers (this
    /// runner deregisters).
    pub shutdown_timeout: Duration,
}

impl JobRunner {
    /// Runs until `stop` fires: then claims nothing more, lets running jobs finish their
    /// attempt (a job whose attempt had not started is given back, attempt uncounted), waits
    /// for them, and deregisters the runner so nothing of it needs rescuing.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(runner) = self.runner_id(&stop).await else {
            return;
        };
        info!(group = %self.group, runner = %runner, workers = self.config.workers, "job runner started");
        let runner: Arc<str> = Arc::from(runner);
        // `wake`: a hint that due jobs may exist (NOTIFY from an enqueue, the listener's
        // reconnect); `freed`: a run ended and gave its slot back
        let wake = self.wake.clone();
        let freed = Arc::new(Notify::new());
        let (complete_tx, complete_rx) = mpsc::channel(self.config.workers.max(1));
        let completer = tokio::spawn(complete_in_batches(self.db.clone(), complete_rx));
        let side = CancellationToken::new();
        let beat = tokio::spawn(self.clone().beat(runner.clone(), side.clone()));
        let slots = Arc::new(Semaphore::new(self.config.workers));
        let mut tasks = JoinSet::new();
        let mut warned = false;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        // Claim in batches: when only freed slots woke us, wait until a quarter of the slots
        // are free (one claim statement per batch of jobs, not per finished job), and claim
        // nothing while the last claim found fewer jobs than it asked for (the queue has no
        // more due jobs until an enqueue notifies, or the poll finds a retry that came due).
        let min_claim = (self.config.workers / 4).max(1);
        let mut more_due = true;
        let mut hinted = true;
        while !stop.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots.available_permits();
            let mut full_batch = false;
            if free > 0 && (hinted || (more_due && free >= min_claim)) {
                match self
                    .db
                    .job_claim(
                        &self.group,
                        &self.worker_id,
                        &runner,
                        free as i32,
                        self.config.timeout,
                    )
                    .await
                {
                    Ok(jobs) => {
                        if warned {
                            info!(group = %self.group, "job queue reachable again");
                        }
                        warned = false;
                        backoff.reset();
                        full_batch = jobs.len() == free;
                        more_due = full_batch;
                        for job in jobs {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                // not reached: we claimed at most the free slots; the job is
                                // rescued once its deadline passes
                                warn!(job_id = job.id, "no free slot for a claimed job");
                                continue;
                            };
                            let me = self.clone();
                            let done = freed.clone();
                            let complete = complete_tx.clone();
                            tasks.spawn(async move {
                                me.execute(job, slot, &complete).await;
                                done.notify_one();
                            });
                        }
                    }
                    Err(e) => {
                        if !warned {
                            warn!(group = %self.group, error = %e, "cannot claim jobs; retrying");
                            warned = true;
                        }
                        if !backoff.wait(&stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if full_batch && slots.available_permits() > 0 {
                hinted = false;
                continue;
            }
            hinted = tokio::select! {
                _ = stop.cancelled() => break,
                _ = wake.notified() => true,
                _ = freed.notified() => false,
                _ = tokio::time::sleep(self.config.poll_interval) => true,
            };
        }
        // running jobs finish their attempt (layers.stop makes waiting ones give up), within
        // the shutdown timeout
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(group = %self.group, running = tasks.len(), "jobs still running at the shutdown timeout: abandoned; another worker runs them again");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // every run has recorded its outcome: the completer writes what it holds and ends
        drop(complete_tx);
        let _ = completer.await;
        side.cancel();
        let _ = beat.await;
        if let Err(e) = self
            .db
            .job_runner_beat(&runner, &self.group, &self.worker_id, true)
            .await
        {
            debug!(error = %e, "could not deregister the job runner; it goes stale by itself");
        }
        info!(group = %self.group, "job runner stopped");
    }

    /// A fresh runner id, registered (beaten once) before the first claim: a job claimed by a
    /// runner without a heartbeat row would look abandoned and be rescued while it runs.
    async fn runner_id(&self, stop: &CancellationToken) -> Option<String> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let registered = match self.db.job_runner_id().await {
                Ok(id) => self
                    .db
                    .job_runner_beat(&id, &self.group, &self.worker_id, false)
                    .await
                    .map(|()| id),
                Err(e) => Err(e),
            };
            match registered {
                Ok(id) => return Some(id),
                Err(e) => {
                    debug!(error = %e, "job runner: cannot register yet");
                    if !backoff.wait(stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Heartbeat of this runner, and rescue of other runners' jobs, every `rescue_after / 3`
    /// (at most [`MAX_BEAT`]).
    async fn beat(self: Arc<Self>, runner: Arc<str>, stop: CancellationToken) {
        let every = (self.config.rescue_after / 3).min(MAX_BEAT);
        let mut last_maintain: Option<Instant> = None;
        loop {
            if let Err(e) = self
                .db
                .job_runner_beat(&runner, &self.group, &self.worker_id, false)
                .await
            {
                debug!(error = %e, "job runner heartbeat failed");
            }
            match self
                .db
                .job_rescue(&self.group, self.config.rescue_after)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    warn!(group = %self.group, rescued = n, "rescued running jobs whose worker stopped or that ran past job_queue.timeout");
                    if let Some(m) = &self.layers.metrics {
                        m.jobs_rescued(n as u64);
                    }
                }
                Err(e) => debug!(error = %e, "job rescue failed"),
            }
            if last_maintain.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                match self.db.job_maintain().await {
                    Ok(s) => {
                        debug!(summary = %s, "job history maintenance");
                        last_maintain = Some(Instant::now());
                    }
                    Err(e) => debug!(error = %e, "job history maintenance failed"),
                }
            }
            if !sleep_or_cancel(&stop, every).await {
                return;
            }
        }
    }

    /// One run of one claimed job; `_slot` is given back when the run ends, however it ends.
    async fn execute(&self, job: ClaimedJob, _slot: OwnedSemaphorePermit, complete: &Completer) {
        let started = Instant::now();
        if let Some(m) = &self.layers.metrics {
            m.job_started(job.wait);
        }
        let index = job.action_index.max(0) as usize;
        let action = match self.registry.get(job.observer_id) {
            Some(ObserverEntry::Ready(o)) => o.actions.get(index).cloned(),
            Some(ObserverEntry::Broken(_)) => {
                // waits for the fix like the observer's parked pairs; the attempt is given back
                self.finish(
                    &job,
                    "none",
                    started,
                    complete,
                    JobOutcome::Snooze {
                        reason: "its observer is broken (see observers.status())".into(),
                        retry_in: Duration::from_secs(30),
                    },
                )
                .await;
                return;
            }
            None => None,
        };
        let Some(action) = action else {
            // maybe created after our last refresh: reload once before giving up
            let _ = self.registry.reload().await;
            let again = match self.registry.get(job.observer_id) {
                Some(ObserverEntry::Ready(o)) => o.actions.get(index).cloned(),
                _ => None,
            };
            match again {
                Some(a) => return self.run_action(job, a, started, complete).await,
                None => {
                    self.finish(
                        &job,
                        "none",
                        started,
                        complete,
                        JobOutcome::Discard {
                            error: "the observer or its action no longer exists".into(),
                            status: None,
                        },
                    )
                    .await;
                    return;
                }
            }
        };
        self.run_action(job, action, started, complete).await
    }

    async fn run_action(
        &self,
        job: ClaimedJob,
        action: Arc<dyn Action>,
        started: Instant,
        complete: &Completer,
    ) {
        let index = job.action_index.max(0) as usize;
        // an SQL job has no event: its dead letter and dedup key use -id
        let event_id = job.event_id.unwrap_or(-job.id);
        let mut delivery = Delivery::new(
            &self.installation,
            event_id,
            index,
            Bytes::from(job.body.clone()),
        )
        .with_webhook_id(job.webhook_id.clone())
        .for_observer(job.observer_id);
        delivery.attempts_used = (job.attempts - 1).max(0) as u32;
        delivery.may_park = true;
        delivery.single_attempt = true;
        if self.layers.dedup.is_some() {
            delivery = delivery.with_dedup_key(PairKey::new(
                self.installation.bytes(),
                job.observer_id,
                index,
                event_id,
                &job.day,
            ));
        }
        let outcome = match executor::run(action.as_ref(), &delivery, &self.layers).await {
            ActionOutcome::Delivered { .. } | ActionOutcome::AlreadyDone => JobOutcome::Completed,
            // permanent, or the action's retry policy has no attempt left
            ActionOutcome::Failed {
                error, last_status, ..
            } => JobOutcome::Discard {
                error,
                status: last_status.map(i32::from),
            },
            ActionOutcome::RetryLater {
                error,
                last_status,
                delay,
                ..
            } => JobOutcome::Retry {
                error,
                status: last_status.map(i32::from),
                retry_in: delay,
            },
            ActionOutcome::Park { last_error, .. } => JobOutcome::Snooze {
                reason: last_error
                    .unwrap_or_else(|| "its destination's circuit breaker is open".into()),
                retry_in: SNOOZE_WHILE_OPEN,
            },
            ActionOutcome::Abandoned { .. } => JobOutcome::Snooze {
                reason: "the worker shut down before the attempt".into(),
                retry_in: Duration::ZERO,
            },
        };
        self.finish(&job, action.type_name(), started, complete, outcome)
            .await;
    }

    /// Records the end of the run, retrying while the database is unreachable (the job's
    /// deadline bounds how long that matters: after it, another worker runs it again).
    async fn finish(
        &self,
        job: &ClaimedJob,
        action_type: &str,
        started: Instant,
        complete: &Completer,
        o: JobOutcome,
    ) {
        let label = match &o {
            JobOutcome::Completed => "completed",
            JobOutcome::Retry { .. } => "retry",
            JobOutcome::Discard { .. } => "discarded",
            JobOutcome::Snooze { .. } => "snoozed",
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let deadline = Instant::now() + self.config.timeout;
        let result = loop {
            let recorded = match &o {
                JobOutcome::Completed => record_completion(complete, &self.db, job).await,
                _ => self
                    .db
                    .job_finish(job.id, &job.token, &o)
                    .await
                    .map(|state| state.is_some())
                    .map_err(Arc::new),
            };
            match recorded {
                Ok(changed) => break if changed { label } else { "stale" },
                Err(e) if Instant::now() < deadline => {
                    warn!(job_id = job.id, error = %e, "cannot record the job's outcome yet; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    warn!(job_id = job.id, error = %e, "gave up recording the job's outcome; it is rescued and runs again");
                    break "stale";
                }
            }
        };
        match &o {
            JobOutcome::Discard { error, .. } => {
                warn!(job_id = job.id, webhook_id = %job.webhook_id, attempts = job.attempts, error = %error, "job failed; moved to the dead-letter queue")
            }
            JobOutcome::Retry {
                error, retry_in, ..
            } => {
                debug!(job_id = job.id, attempts = job.attempts, error = %error, retry_in = ?retry_in, "job attempt failed; will retry")
            }
            _ => debug!(job_id = job.id, outcome = result, "job run ended"),
        }
        if result == "stale" {
            info!(
                job_id = job.id,
                "job was rescued while it ran; this run's outcome is not recorded"
            );
        }
        if let Some(m) = &self.layers.metrics {
            m.job_finished(action_type, result, started.elapsed());
        }
    }
}

/// The way a run hands its completion to [`complete_in_batches`].
type Completer = mpsc::Sender<Completion>;

/// A successful run waiting to be recorded; `done` gets whether it changed the job (`false`: the
/// token was stale) or the database error that kept the batch from being written.
struct Completion {
    id: i64,
    token: String,
    done: oneshot::Sender<Result<bool, Arc<DbError>>>,
}

/// Records a successful run through the completer (in its next batch); directly when the
/// completer is gone.
async fn record_completion(
    complete: &Completer,
    db: &Db,
    job: &ClaimedJob,
) -> Result<bool, Arc<DbError>> {
    let (done, answer) = oneshot::channel();
    let c = Completion {
        id: job.id,
        token: job.token.clone(),
        done,
    };
    if complete.send(c).await.is_ok() {
        if let Ok(r) = answer.await {
            return r;
        }
    }
    db.job_complete(&[(job.id, job.token.as_str())])
        .await
        .map(|ids| ids.contains(&job.id))
        .map_err(Arc::new)
}

/// Writes the completions of this runner's jobs: one `observers.job_complete` statement for
/// whatever completed while the previous one was being written (up to [`MAX_COMPLETE_BATCH`]),
/// so a draining queue costs one round trip and one commit per batch, not per job. Ends when
/// every sender is gone (the runner has stopped and its runs have ended). A failed batch
/// answers each run with the error; the run retries (`JobRunner::finish`).
async fn complete_in_batches(db: Db, mut rx: mpsc::Receiver<Completion>) {
    let mut batch = Vec::with_capacity(MAX_COMPLETE_BATCH);
    while rx.recv_many(&mut batch, MAX_COMPLETE_BATCH).await > 0 {
        let runs: Vec<(i64, &str)> = batch.iter().map(|c| (c.id, c.token.as_str())).collect();
        match db.job_complete(&runs).await {
            Ok(ids) => {
                let completed: HashSet<i64> = ids.into_iter().collect();
                for c in batch.drain(..) {
                    let _ = c.done.send(Ok(completed.contains(&c.id)));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for c in batch.drain(..) {
                    let _ = c.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// `mode: async`: enqueue the pair as a job (fenced; retried until durable). True when the job
/// exists (new, or already enqueued before a crash or failover).
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_pair(
    db: &Db,
    group: &str,
    lease: &watch::Receiver<LeaseState>,
    fenced: &Notify,
    job: PairJob<'_>,
) -> bool {
    let job = &job;
    durably(
        db,
        group,
        lease,
        fenced,
        job.event_id,
        "job",
        |db, group, epoch| async move { db.job_enqueue_pair(&group, epoch, job).await },
    )
    .await
}
