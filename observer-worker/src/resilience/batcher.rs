//! Coalesces concurrent single requests into batches: one round trip for everything that
//! queued while the previous batches were in flight (a 500-event batch costs a handful of
//! round trips, not 500). Under no load a request goes out alone at once: batching never adds
//! waiting.
//!
//! Bounded: the queue holds at most `queue` requests (callers wait for room) and at most
//! `concurrency` batches are in flight.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

type Job<Req, Resp, E> = (Req, oneshot::Sender<Result<Resp, E>>);

pub struct Batcher<Req, Resp, E> {
    tx: mpsc::Sender<Job<Req, Resp, E>>,
}

impl<Req, Resp, E> Clone for Batcher<Req, Resp, E> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

/// The batcher's task is gone (the runtime is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batching task stopped")]
pub struct Closed;

impl<Req, Resp, E> Batcher<Req, Resp, E>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Spawns the batching task. `run` gets a batch of at most `max_batch` requests and returns
    /// one response per request, in order (or one error for all of them).
    pub fn spawn<F, Fut>(max_batch: usize, queue: usize, concurrency: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Resp>, E>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job<Req, Resp, E>>(queue.max(1));
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else { return };
                let mut jobs = vec![first];
                while jobs.len() < max_batch {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (reqs, replies): (Vec<Req>, Vec<_>) = jobs.into_iter().unzip();
                    let n = reqs.len();
                    match run(reqs).await {
                        Ok(resps) if resps.len() == n => {
                            for (reply, r) in replies.into_iter().zip(resps) {
                                let _ = reply.send(Ok(r));
                            }
                        }
                        Ok(_) => {
                            // a backend bug: answer nothing rather than the wrong thing
                            drop(replies);
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Batcher { tx }
    }

    /// Queues one request and waits for its response.
    pub async fn call(&self, req: Req) -> Result<Result<Resp, E>, Closed> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((req, reply)).await.map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_share_round_trips_and_keep_their_answers() {
        let batches = Arc::new(AtomicUsize::new(0));
        let b2 = batches.clone();
        let batcher: Batcher<u32, u32, String> = Batcher::spawn(100, 1000, 1, move |reqs| {
            let b2 = b2.clone();
            async move {
                b2.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(reqs.into_iter().map(|r| r * 2).collect())
            }
        });
        let handles: Vec<_> = (0..300u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.call(i).await.unwrap().unwrap()) })
            })
            .collect();
        for h in handles {
            let (i, r) = h.await.unwrap();
            assert_eq!(r, i * 2);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!((3..30).contains(&n), "300 calls took {n} batches");
    }

    #[tokio::test]
    async fn an_error_reaches_every_caller_of_the_batch() {
        let batcher: Batcher<u32, u32, String> =
            Batcher::spawn(10, 10, 2, |_reqs| async { Err("down".to_owned()) });
        assert_eq!(batcher.call(1).await.unwrap(), Err("down".to_owned()));
    }
}
