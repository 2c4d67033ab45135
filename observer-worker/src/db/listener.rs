//! The dedicated `LISTEN observers_wakeup` connection.
//!
//! A notification is only a hint that new events may exist: the consumer also
//! polls. After every (re)connect the consumer is woken once, because
//! notifications sent while we were disconnected are lost.

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

/// Runs until `cancel` fires, reconnecting with backoff.
pub async fn run(
    pg: tokio_postgres::Config,
    target: String,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut was_connected = false;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match pg.connect(NoTls).await {
            Ok((client, mut connection)) => {
                // Drive the connection, turning notifications into wake-ups.
                let wake_conn = wake.clone();
                let mut driver = tokio::spawn(async move {
                    loop {
                        match poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(_))) => wake_conn.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Some(root_cause(&e)),
                            None => return None,
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {WAKEUP_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        if was_connected {
                            info!(channel = WAKEUP_CHANNEL, "wake-up listener reconnected");
                        } else {
                            debug!(channel = WAKEUP_CHANNEL, "listening for wake-ups");
                        }
                        was_connected = true;
                        backoff.reset();
                        // catch up on anything notified while we were away
                        wake.notify_one();
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
                        warn!(target_db = %target, error = %root_cause(&e), "LISTEN {WAKEUP_CHANNEL} failed");
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
