//! The dedicated `LISTEN` connection: `observers_wakeup` (new events may exist: wakes the
//! consumer), `observers_lease` (a leader of some group released its lease: wakes this
//! worker's lease loop when the payload names its group, so a standby takes over at once instead
//! of at its next poll) and, with the job queue on, `observers_jobs` (a job of some group was
//! enqueued: wakes the job runner when the payload names its group).
//!
//! A notification is only a hint: the consumer and the lease loop also poll. After every
//! (re)connect both are woken once, because notifications sent while we were disconnected are
//! lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::root_cause;
use crate::retry::Backoff;

pub const WAKEUP_CHANNEL: &str = "observers_wakeup";
/// Sent by `observers.lease_release` with the group's name as payload.
pub const LEASE_CHANNEL: &str = "observers_lease";
/// Sent by `observers.job_enqueue*` (and `job_retry`, `job_queue_resume`) with the group's name.
pub const JOBS_CHANNEL: &str = "observers_jobs";

/// Whom the listener wakes.
pub struct Wakers {
    /// the consumer, on `observers_wakeup`
    pub events: Arc<Notify>,
    /// the lease loop, on `observers_lease` for `group`
    pub lease_released: Arc<Notify>,
    /// the job runner, on `observers_jobs` for `group` (`None`: the job queue is off, no LISTEN)
    pub jobs: Option<Arc<Notify>>,
    pub group: String,
}

/// Runs until `cancel` fires, reconnecting with backoff.
pub async fn run(
    pg: tokio_postgres::Config,
    target: String,
    wakers: Wakers,
    cancel: CancellationToken,
) {
    let wakers = Arc::new(wakers);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut was_connected = false;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match pg.connect(NoTls).await {
            Ok((client, mut connection)) => {
                // Drive the connection, turning notifications into wake-ups.
                let w = wakers.clone();
                let mut driver = tokio::spawn(async move {
                    loop {
                        match poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                if n.channel() == LEASE_CHANNEL {
                                    if n.payload() == w.group {
                                        w.lease_released.notify_one();
                                    }
                                } else if n.channel() == JOBS_CHANNEL {
                                    if let Some(jobs) =
                                        w.jobs.as_ref().filter(|_| n.payload() == w.group)
                                    {
                                        jobs.notify_one();
                                    }
                                } else {
                                    w.events.notify_one();
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Some(root_cause(&e)),
                            None => return None,
                        }
                    }
                });
                let mut listen = format!("LISTEN {WAKEUP_CHANNEL}; LISTEN {LEASE_CHANNEL}");
                if wakers.jobs.is_some() {
                    listen.push_str(&format!("; LISTEN {JOBS_CHANNEL}"));
                }
                match client.batch_execute(&listen).await {
                    Ok(()) => {
                        if was_connected {
                            info!(channel = WAKEUP_CHANNEL, "wake-up listener reconnected");
                        } else {
                            debug!(channel = WAKEUP_CHANNEL, "listening for wake-ups");
                        }
                        was_connected = true;
                        backoff.reset();
                        // catch up on anything notified while we were away
                        wakers.events.notify_one();
                        wakers.lease_released.notify_one();
                        if let Some(jobs) = &wakers.jobs {
                            jobs.notify_one();
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => { driver.abort(); return; }
                            res = &mut driver => {
                                let why = match res { Ok(Some(m)) => m, _ => "connection closed".to_owned() };
                                warn!(target_db = %target, error = %why, "wake-up listener lost its connection; events are still found by polling");
                            }
                        }
                    }
                    Err(e) => {
                        driver.abort();
                        warn!(target_db = %target, error = %root_cause(&e), "LISTEN {WAKEUP_CHANNEL}, {LEASE_CHANNEL} failed");
                    }
                }
                drop(client);
            }
            Err(e) => {
                debug!(target_db = %target, error = %root_cause(&e), retry_in = ?backoff.peek(), "wake-up listener cannot connect");
            }
        }
        if !backoff.wait(&cancel).await {
            return;
        }
    }
}
