//! The consumer loop: the snapshot cursor of docs/ARCHITECTURE.md.
//!
//! ```text
//! wait for the lease ─► batch_open ─► batch_fetch pages (only as many events as free permits)
//!        ▲                    │            │  while earlier pages are still being delivered
//!        │                    │            ▼
//!        │                    │      dispatcher (per-key FIFO) ─► completions ─► checkpoint tracker
//!        │                    │                                                   │ every interval / N events
//!        │                    ▼                                                   ▼
//!        └── lease lost   batch_close when fetched everything and all finished   checkpoint_save
//! ```
//!
//! Database errors drop back to "wait for the lease / retry" **without**
//! touching in-flight deliveries; when the same batch is still open after
//! the reconnect, progress continues where it was and is saved again. A lost
//! lease (another worker leads) drops everything in flight: the new leader
//! delivers those events again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::checkpoint::{CheckpointTracker, SavePoint};
use super::dispatcher::{Completion, CompletionKind, Dispatcher, EventHandler};
use super::lease::LeaseState;
use super::pressure::DeliveryPressure;
use crate::config::CheckpointConfig;
use crate::db::{Db, DbError, FetchedEvent, OpenBatch};
use crate::retry::Backoff;
use crate::telemetry::Stats;

/// After a full page, the next fetch asks only for ids in
/// `(after, after + limit * FETCH_WINDOW]`, so each call scans a bounded id
/// range however large the rest of the batch is (a fetch over the whole rest
/// of a big batch costs time proportional to that rest). Ids of one group are
/// nearly dense, so a window of 4x the page almost always fills the page. The
/// first fetch of a batch, and the one after a short page, search the whole
/// rest of the batch so gaps in the ids (other groups, a new batch starting
/// far above the last one) are jumped in one call.
pub const FETCH_WINDOW: i64 = 4;

/// After a wake-up, poll this often...
pub const WAKE_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// ...until this long after the last event found.
pub const LINGER: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group: String,
    pub batch_size: u32,
    pub max_in_flight: usize,
    pub poll_interval: Duration,
    pub wake_poll_interval: Duration,
    pub linger: Duration,
    pub checkpoints: CheckpointConfig,
    pub shutdown_timeout: Duration,
}

/// How the consumer ended.
#[derive(Debug, Clone, Default)]
pub struct ConsumerReport {
    /// Events still unfinished when the shutdown timeout ran out (they are
    /// delivered again later).
    pub unfinished_at_shutdown: usize,
    /// The checkpoint saved at shutdown, if one was needed and it succeeded.
    pub final_checkpoint: Option<i64>,
    /// A bug-level failure that ended the worker (exit code 1).
    pub fatal: Option<String>,
}

struct Batch {
    info: Arc<OpenBatch>,
    /// Fetch cursor: every event of the batch with an id up to here has been
    /// handed to the dispatcher.
    fetched_to: i64,
    /// No more events to fetch in this batch.
    fetch_done: bool,
    /// The last fetch returned a full page: the next one may use a window.
    dense: bool,
    tracker: CheckpointTracker,
    last_save: Instant,
}

impl Batch {
    fn new(info: OpenBatch) -> Self {
        let fetch_done = match info.max_id {
            None => true,
            Some(max) => info.last_id >= max,
        };
        Batch {
            fetched_to: info.last_id,
            tracker: CheckpointTracker::new(info.last_id),
            fetch_done,
            dense: false,
            info: Arc::new(info),
            last_save: Instant::now(),
        }
    }

    fn complete(&self) -> bool {
        self.fetch_done && self.tracker.is_idle()
    }
}

enum LeadEnd {
    Shutdown,
    LeaseChanged,
}

enum LeadError {
    Db(DbError),
    Fatal(String),
}

impl From<DbError> for LeadError {
    fn from(e: DbError) -> Self {
        LeadError::Db(e)
    }
}

enum Wake {
    Go,
    Stop,
    LeaseChanged,
}

type FetchTask = JoinHandle<Result<Vec<FetchedEvent>, DbError>>;
type SaveTask = JoinHandle<Result<(), DbError>>;

/// Fetch and save run as tasks next to the loop so delivery never waits for them.
#[derive(Default)]
struct Background {
    /// The running fetch, its row limit and the end of its id window.
    fetch: Option<(FetchTask, usize, i64)>,
    /// The running checkpoint save and what it makes durable.
    save: Option<(SaveTask, SavePoint)>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some((h, _, _)) = &self.fetch {
            h.abort();
        }
        if let Some((h, _)) = &self.save {
            h.abort();
        }
    }
}

async fn join_fetch(
    slot: &mut Option<(FetchTask, usize, i64)>,
) -> Result<Result<Vec<FetchedEvent>, DbError>, tokio::task::JoinError> {
    match slot {
        Some((h, _, _)) => h.await,
        None => std::future::pending().await,
    }
}

async fn join_save(
    slot: &mut Option<(SaveTask, SavePoint)>,
) -> Result<Result<(), DbError>, tokio::task::JoinError> {
    match slot {
        Some((h, _)) => h.await,
        None => std::future::pending().await,
    }
}

fn join_failed(context: &'static str, e: tokio::task::JoinError) -> LeadError {
    LeadError::Fatal(format!("{context} task failed: {e}"))
}

pub struct Consumer<H: EventHandler> {
    db: Db,
    s: ConsumerSettings,
    dispatcher: Dispatcher<H>,
    lease: watch::Receiver<LeaseState>,
    fenced: Arc<Notify>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    stats: Arc<Stats>,
    batch: Option<Batch>,
    linger_until: Option<Instant>,
    pressure: Option<Arc<DeliveryPressure>>,
}

impl<H: EventHandler> Consumer<H> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        settings: ConsumerSettings,
        handler: Arc<H>,
        lease: watch::Receiver<LeaseState>,
        fenced: Arc<Notify>,
        wake: Arc<Notify>,
        stop: CancellationToken,
        stats: Arc<Stats>,
    ) -> Self {
        Consumer {
            db,
            s: settings,
            dispatcher: Dispatcher::new(handler),
            lease,
            fenced,
            wake,
            stop,
            stats,
            batch: None,
            linger_until: None,
            pressure: None,
        }
    }

    /// Reports every full fetch (delivery has a backlog) to `p`.
    pub fn report_pressure(mut self, p: Arc<DeliveryPressure>) -> Self {
        self.pressure = Some(p);
        self
    }

    /// Runs until `stop` fires (then drains and saves) or a fatal error.
    pub async fn run(mut self) -> ConsumerReport {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut fatal = None;
        loop {
            let epoch = match self.wait_for_lease().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(f) => {
                    fatal = Some(f);
                    break;
                }
            };
            match self.lead(epoch).await {
                Ok(LeadEnd::Shutdown) => break,
                Ok(LeadEnd::LeaseChanged) => backoff.reset(),
                Err(LeadError::Fatal(f)) => {
                    fatal = Some(f);
                    break;
                }
                Err(LeadError::Db(e)) => {
                    if e.is_fenced() {
                        warn!(group = %self.s.group, epoch, error = %e, "fenced: stopped processing the batch; re-checking the leader lease");
                        self.fenced.notify_one();
                    } else if e.is_retryable() {
                        warn!(group = %self.s.group, retry_in = %humantime::format_duration(backoff.peek()), "{e}; in-flight deliveries continue");
                    } else {
                        error!(group = %self.s.group, retry_in = %humantime::format_duration(backoff.peek()), error = %e, "database call failed");
                    }
                    match self.pause(backoff.next_delay()).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(f) => {
                            fatal = Some(f);
                            break;
                        }
                    }
                }
            }
        }
        self.finish(fatal).await
    }

    /// Handles one completed event. Errors are fatal (bugs).
    fn on_completion(&mut self, c: Completion) -> Result<(), String> {
        match c.kind {
            CompletionKind::Finished => {
                if let Some(b) = &mut self.batch {
                    b.tracker.finish(c.event_id);
                }
                Ok(())
            }
            CompletionKind::Unfinished if self.stop.is_cancelled() => Ok(()),
            CompletionKind::Unfinished => Err(format!(
                "event {} could not be finished and the worker is not shutting down",
                c.event_id
            )),
            CompletionKind::Panicked(msg) => {
                Err(format!("delivering event {} panicked: {msg}", c.event_id))
            }
        }
    }

    fn drain_ready_completions(&mut self) -> Result<(), String> {
        while let Some(c) = self.dispatcher.try_next_completion() {
            self.on_completion(c)?;
        }
        Ok(())
    }

    /// Waits until we hold the lease. While the lease state is unknown
    /// (database unreachable), in-flight work keeps running; when another
    /// worker holds the lease, everything in flight is dropped.
    async fn wait_for_lease(&mut self) -> Result<Option<i64>, String> {
        loop {
            let state = *self.lease.borrow_and_update();
            match state {
                LeaseState::Held(epoch) => return Ok(Some(epoch)),
                LeaseState::Standby => {
                    let dropped = self.dispatcher.abort_all();
                    if dropped > 0 {
                        warn!(group = %self.s.group, dropped, "lease lost: dropped in-flight events (the leader delivers them again)");
                    }
                    self.batch = None;
                }
                LeaseState::Unknown(_) => {}
            }
            if self.stop.is_cancelled() {
                return Ok(None);
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(None),
                changed = self.lease.changed() => if changed.is_err() { return Ok(None) },
                Some(c) = self.dispatcher.next_completion() => {
                    self.on_completion(c)?;
                    self.drain_ready_completions()?;
                }
            }
        }
    }

    /// Sleeps `d` while completing in-flight events. `Ok(false)` on shutdown.
    async fn pause(&mut self, d: Duration) -> Result<bool, String> {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(false),
                Some(c) = self.dispatcher.next_completion() => {
                    self.on_completion(c)?;
                    self.drain_ready_completions()?;
                }
                _ = tokio::time::sleep_until(until) => return Ok(true),
            }
        }
    }

    /// Leads the group with `epoch` until shutdown, lease change or error.
    async fn lead(&mut self, epoch: i64) -> Result<LeadEnd, LeadError> {
        let open = self.db.batch_open(&self.s.group, epoch).await?;
        self.adopt(open);
        // A new leader polls fast for a moment: a stream of writes was going on under the
        // previous leader (its NOTIFYs went by while this worker stood by, and a backend notifies
        // at most once per observers.notify_interval), so waiting for the next one or for
        // the safety poll would add up to poll_interval to the handover.
        self.linger_until = Some(Instant::now() + self.s.linger);
        let mut bg = Background::default();
        let group = self.s.group.clone();

        loop {
            // A. The batch is done: close it, wait if it was empty, open the next one.
            let complete = self.batch.as_ref().is_none_or(Batch::complete);
            if complete && bg.fetch.is_none() {
                if let Some((h, point)) = bg.save.take() {
                    match h.await {
                        Ok(Ok(())) => self.saved(point),
                        Ok(Err(e)) => return Err(e.into()),
                        Err(e) => return Err(join_failed("checkpoint", e)),
                    }
                }
                let mut had_events = false;
                if let Some(b) = &self.batch {
                    // Close only after the batch's last save landed (above):
                    // a save arriving after the close would corrupt the next batch.
                    self.db.batch_close(&group, epoch).await?;
                    if let Some(max_id) = b.info.max_id {
                        had_events = true;
                        Stats::add(&self.stats.batches_closed, 1);
                        debug!(group = %group, max_id, "batch closed");
                    }
                    self.batch = None;
                }
                if had_events {
                    self.linger_until = Some(Instant::now() + self.s.linger);
                } else {
                    match self.idle_wait(epoch).await {
                        Wake::Go => {}
                        Wake::Stop => return Ok(LeadEnd::Shutdown),
                        Wake::LeaseChanged => return Ok(LeadEnd::LeaseChanged),
                    }
                }
                let open = self.db.batch_open(&group, epoch).await?;
                if open.max_id.is_some() {
                    debug!(group = %group, last_id = open.last_id, max_id = open.max_id, "batch opened");
                }
                self.batch = Some(Batch::new(open));
                continue;
            }

            let Some(b) = self.batch.as_mut() else {
                continue;
            };

            // B. Claim more events if there are free permits.
            if bg.fetch.is_none() && !b.fetch_done {
                let held = self.dispatcher.held();
                let free = self.s.max_in_flight.saturating_sub(held);
                let page = (self.s.batch_size as usize)
                    .min(self.s.max_in_flight)
                    .max(1);
                let threshold = if held == 0 { 1 } else { (page / 4).max(1) };
                if free >= threshold {
                    let limit = free.min(self.s.batch_size as usize);
                    let (db, g, info, after) =
                        (self.db.clone(), group.clone(), b.info.clone(), b.fetched_to);
                    let max_id = info.max_id.unwrap_or(after);
                    let window_end = if b.dense {
                        after
                            .saturating_add((limit as i64).saturating_mul(FETCH_WINDOW))
                            .min(max_id)
                    } else {
                        max_id
                    };
                    let handle = tokio::spawn(async move {
                        db.batch_fetch(&g, &info, after, window_end, limit as i32)
                            .await
                    });
                    bg.fetch = Some((handle, limit, window_end));
                }
            }

            // C. Make progress durable every interval / every N events.
            if self.s.checkpoints.enabled
                && bg.save.is_none()
                && b.tracker.has_unsaved_progress()
                && (b.tracker.unsaved_events() >= u64::from(self.s.checkpoints.every_events)
                    || b.last_save.elapsed() >= self.s.checkpoints.interval)
            {
                let point = b.tracker.save_point();
                let (db, g) = (self.db.clone(), group.clone());
                let handle =
                    tokio::spawn(
                        async move { db.checkpoint_save(&g, epoch, point.position).await },
                    );
                bg.save = Some((handle, point));
                b.last_save = Instant::now();
            }
            let save_due = (self.s.checkpoints.enabled
                && bg.save.is_none()
                && b.tracker.has_unsaved_progress())
            .then(|| b.last_save + self.s.checkpoints.interval);

            // D. Wait for the next thing to happen.
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(LeadEnd::Shutdown),
                changed = self.lease.changed() => {
                    if changed.is_err() || self.lease.borrow().held_epoch() != Some(epoch) {
                        return Ok(LeadEnd::LeaseChanged);
                    }
                }
                Some(c) = self.dispatcher.next_completion() => {
                    self.on_completion(c).map_err(LeadError::Fatal)?;
                    self.drain_ready_completions().map_err(LeadError::Fatal)?;
                }
                r = join_fetch(&mut bg.fetch) => {
                    let (limit, window_end) = bg.fetch.take().map(|(_, l, w)| (l, w)).unwrap_or((0, 0));
                    let rows = r.map_err(|e| join_failed("fetch", e))??;
                    self.on_rows(rows, limit, window_end);
                }
                r = join_save(&mut bg.save) => {
                    let point = bg.save.take().map(|(_, p)| p);
                    match r {
                        Ok(Ok(())) => if let Some(p) = point { self.saved(p) },
                        Ok(Err(e)) => return Err(e.into()),
                        Err(e) => return Err(join_failed("checkpoint", e)),
                    }
                }
                _ = tokio::time::sleep_until(save_due.unwrap_or_else(Instant::now)), if save_due.is_some() => {}
            }
        }
    }

    /// Takes over the batch the database reports as open. If it is the batch
    /// we were working on (we reconnected), keep all in-memory progress and
    /// in-flight work and save progress again; otherwise start over from it.
    fn adopt(&mut self, open: OpenBatch) {
        match self.batch.take() {
            Some(mut b) if b.info.same_batch(&open) => {
                debug!(group = %self.s.group, position = b.tracker.position(), "continuing the open batch");
                // save again right away what we finished while disconnected
                b.last_save = Instant::now() - self.s.checkpoints.interval;
                self.batch = Some(b);
            }
            other => {
                let dropped = self.dispatcher.abort_all();
                if dropped > 0 || other.is_some_and(|b| !b.complete()) {
                    warn!(
                        group = %self.s.group,
                        dropped,
                        "the open batch changed while this worker was not leading; in-flight events were dropped and are delivered again"
                    );
                }
                self.batch = Some(Batch::new(open));
            }
        }
    }

    /// Hands fetched events to the dispatcher and moves the fetch cursor:
    /// to the last row if the page is full, else to the end of the window
    /// (every event of the batch up to there has been returned).
    fn on_rows(&mut self, rows: Vec<FetchedEvent>, limit: usize, window_end: i64) {
        let Some(b) = self.batch.as_mut() else { return };
        let n = rows.len();
        let mut last = None;
        for ev in rows {
            if b.tracker.register(ev.id) {
                last = Some(ev.id);
                self.dispatcher.submit(ev);
            } else {
                warn!(
                    event_id = ev.id,
                    after = b.fetched_to,
                    "batch_fetch returned an event out of order; ignored"
                );
            }
        }
        Stats::add(&self.stats.events_fetched, n as u64);
        if n >= limit {
            if let Some(p) = &self.pressure {
                p.full_fetch();
            }
        }
        b.dense = n >= limit;
        b.fetched_to = if n >= limit {
            last.unwrap_or(b.fetched_to)
        } else {
            window_end.max(b.fetched_to)
        };
        if b.info.max_id.is_none_or(|m| b.fetched_to >= m) {
            b.fetch_done = true;
        }
        if n > 0 {
            self.linger_until = Some(Instant::now() + self.s.linger);
        }
    }

    fn saved(&mut self, point: SavePoint) {
        if let Some(b) = &mut self.batch {
            b.tracker.mark_saved(point);
        }
        Stats::add(&self.stats.checkpoints_saved, 1);
    }

    /// Nothing to do: poll fast while lingering after recent activity,
    /// otherwise wait for a NOTIFY or the safety poll.
    async fn idle_wait(&mut self, epoch: i64) -> Wake {
        let now = Instant::now();
        let lingering = self.linger_until.is_some_and(|t| now < t);
        let wait = if lingering {
            self.s.wake_poll_interval
        } else {
            self.s.poll_interval
        };
        let deadline = now + wait;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Wake::Stop,
                changed = self.lease.changed() => {
                    if changed.is_err() || self.lease.borrow().held_epoch() != Some(epoch) {
                        return Wake::LeaseChanged;
                    }
                }
                _ = self.wake.notified() => {
                    if !lingering {
                        self.linger_until = Some(Instant::now() + self.s.linger);
                    }
                    return Wake::Go;
                }
                _ = tokio::time::sleep_until(deadline) => return Wake::Go,
            }
        }
    }

    /// Shutdown: start nothing new, let in-flight events finish within
    /// `shutdown_timeout`, save the checkpoint.
    async fn finish(mut self, fatal: Option<String>) -> ConsumerReport {
        self.dispatcher.stop_starting();
        let deadline = Instant::now() + self.s.shutdown_timeout;
        // said at once (not after the drain): nothing new is fetched or started from here on
        if self.stop.is_cancelled() {
            info!(
                in_flight = self.dispatcher.held(),
                timeout = %humantime::format_duration(self.s.shutdown_timeout),
                "shutdown requested: stopped fetching; waiting for in-flight deliveries"
            );
        } else if self.dispatcher.held() > 0 {
            info!(
                in_flight = self.dispatcher.held(),
                timeout = %humantime::format_duration(self.s.shutdown_timeout),
                "waiting for in-flight deliveries"
            );
        }
        while self.dispatcher.held() > 0 {
            tokio::select! {
                c = self.dispatcher.next_completion() => match c {
                    Some(c) => {
                        if let (CompletionKind::Finished, Some(b)) = (&c.kind, &mut self.batch) {
                            b.tracker.finish(c.event_id);
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let unfinished = self.dispatcher.abort_all();
        if unfinished > 0 {
            warn!(unfinished, "shutdown timeout reached: unfinished events stay unacknowledged and are delivered again");
        }

        let mut report = ConsumerReport {
            unfinished_at_shutdown: unfinished,
            final_checkpoint: None,
            fatal,
        };
        let Some(b) = self.batch.as_mut() else {
            return report;
        };
        if !self.s.checkpoints.enabled || !b.tracker.has_unsaved_progress() {
            return report;
        }
        let position = b.tracker.position();
        let state = *self.lease.borrow();
        let Some(epoch) = state.held_epoch() else {
            warn!(position, "cannot save the final checkpoint: the leader lease is not confirmed; events after the last saved checkpoint will be delivered again");
            return report;
        };
        for attempt in 1..=3 {
            match tokio::time::timeout(
                Duration::from_secs(5),
                self.db.checkpoint_save(&self.s.group, epoch, position),
            )
            .await
            {
                Ok(Ok(())) => {
                    report.final_checkpoint = Some(position);
                    Stats::add(&self.stats.checkpoints_saved, 1);
                    break;
                }
                Ok(Err(e)) if e.is_retryable() && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Ok(Err(e)) => {
                    warn!(position, error = %e, "cannot save the final checkpoint; events after the last saved checkpoint will be delivered again");
                    break;
                }
                Err(_) => {
                    warn!(position, "saving the final checkpoint timed out; events after the last saved checkpoint will be delivered again");
                    break;
                }
            }
        }
        report
    }
}
