//! Writes every delivery attempt to `observers.attempt` (read by `observers.debug_event()`),
//! off the delivery path:
//!
//! ```text
//! executor ── try_send ──► bounded channel ──► writer task: what arrived within LINGER of the
//!                                                first record, up to BATCH rows per attempt_add
//! ```
//!
//! The log is a diagnostic record, not part of the delivery guarantee, so it never slows
//! delivery down: when the channel is full (the database is slower than the deliveries) or a
//! write fails, records are dropped and counted (`dropped()`, shown in the heartbeat), and the
//! first failure of a streak is logged. Hand-written rather than [`Batcher`]: that one answers
//! every caller, this one answers nobody.
//!
//! [`Batcher`]: crate::resilience::batcher::Batcher

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::db::{AttemptRecord, Db};

/// Records waiting to be written, at most.
const CAPACITY: usize = 16_384;
/// Records per `attempt_add` call, at most.
const BATCH: usize = 2_000;
/// After the first record of a batch, wait this long for more: fewer, larger writes (a record
/// shows in `debug_event` at most this much later).
const LINGER: Duration = Duration::from_millis(100);

pub struct AttemptLog {
    tx: mpsc::Sender<AttemptRecord>,
    dropped: AtomicU64,
    written: AtomicU64,
}

impl AttemptLog {
    /// The log and its writer (spawn it; once `stop` fires it writes what is queued and ends).
    pub fn new(
        db: Db,
        worker_id: String,
        stop: CancellationToken,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let log = Arc::new(AttemptLog {
            tx,
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let task = writer(log.clone(), db, worker_id, rx, stop);
        (log, task)
    }

    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({ "written": self.written(), "dropped": self.dropped() })
    }

    /// Queues one record; never waits.
    pub fn record(&self, rec: AttemptRecord) {
        if self.tx.try_send(rec).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

async fn writer(
    log: Arc<AttemptLog>,
    db: Db,
    worker_id: String,
    mut rx: mpsc::Receiver<AttemptRecord>,
    stop: CancellationToken,
) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut failing = false;
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => n,
            _ = stop.cancelled() => {
                // what is queued at shutdown is written once, then the task ends
                rx.close();
                rx.recv_many(&mut buf, CAPACITY).await
            }
        };
        if n == 0 && buf.is_empty() {
            return;
        }
        if buf.len() < BATCH && !stop.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = stop.cancelled() => {}
            }
            while buf.len() < BATCH {
                match rx.try_recv() {
                    Ok(rec) => buf.push(rec),
                    Err(_) => break,
                }
            }
        }
        for chunk in buf.chunks(BATCH) {
            match db.attempt_add(&worker_id, chunk).await {
                Ok(_) => {
                    log.written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    failing = false;
                }
                Err(e) => {
                    log.dropped.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if !failing {
                        warn!(error = %e, records = chunk.len(), "cannot write the attempt log; dropping these records (delivery is not affected)");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        buf.clear();
        if stop.is_cancelled() && rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}
