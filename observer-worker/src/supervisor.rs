//! The worker's long-running services, by name, and the order they stop in.
//!
//! `worker::run` builds everything first (the only step with I/O that can fail), then starts
//! each service here, runs the consumer in the foreground until shutdown, and finally calls
//! [`Supervisor::shut_down`]:
//!
//! ```text
//! start(name, stage, task) ...          each service gets the token of its stage
//! shut_down():
//!   1. Stage::WithConsumer  (stopped by the worker's own stop token, like the consumer: e.g.
//!                            the job runner stops claiming and lets running jobs finish)
//!      wait for each of them, by name
//!   2. Stage::Background    (the lease, the listener, heartbeats...: they keep running while
//!                            stage 1 and the consumer drain, so the lease stays renewed)
//!      cancel their token, wait for each, by name
//! ```
//!
//! A service that panics is reported by name (and the others still stop in order); a service
//! that ends before shutdown was asked for is reported when it is joined.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// When a service is stopped (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stops with the consumer, on the worker's stop token (SIGTERM).
    WithConsumer,
    /// Stops after the consumer and the [`Stage::WithConsumer`] services have finished.
    Background,
}

/// The named services of one worker process.
pub struct Supervisor {
    stop: CancellationToken,
    background: CancellationToken,
    with_consumer: JoinSet<()>,
    rest: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// `stop` is the worker's stop token (cancelled on SIGTERM by the caller).
    pub fn new(stop: CancellationToken) -> Self {
        Supervisor {
            stop,
            background: CancellationToken::new(),
            with_consumer: JoinSet::new(),
            rest: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// The token that stops the services of `stage` (pass it to the service you start).
    pub fn token(&self, stage: Stage) -> CancellationToken {
        match stage {
            Stage::WithConsumer => self.stop.clone(),
            Stage::Background => self.background.clone(),
        }
    }

    /// Starts `service` (built with [`Supervisor::token`] of `stage`) under `name`.
    pub fn start<F>(&mut self, name: &'static str, stage: Stage, service: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let set = match stage {
            Stage::WithConsumer => &mut self.with_consumer,
            Stage::Background => &mut self.rest,
        };
        let handle = set.spawn(service);
        self.names.insert(handle.id(), name);
        debug!(service = name, stage = ?stage, "service started");
    }

    /// The names of the running services, in no particular order.
    pub fn names(&self) -> Vec<&'static str> {
        self.names.values().copied().collect()
    }

    /// Stops everything in order (see the module comment). The caller has already cancelled
    /// the stop token (or the consumer returned on its own, e.g. a fatal error: then the
    /// stop token is cancelled here).
    pub async fn shut_down(mut self) {
        self.stop.cancel();
        Self::join_all(&mut self.with_consumer, &self.names).await;
        self.background.cancel();
        Self::join_all(&mut self.rest, &self.names).await;
    }

    async fn join_all(set: &mut JoinSet<()>, names: &HashMap<Id, &'static str>) {
        while let Some(joined) = set.join_next_with_id().await {
            match joined {
                Ok((id, ())) => {
                    debug!(
                        service = names.get(&id).copied().unwrap_or("?"),
                        "service stopped"
                    )
                }
                Err(e) if e.is_panic() => {
                    error!(
                        service = names.get(&e.id()).copied().unwrap_or("?"),
                        "service panicked"
                    )
                }
                Err(e) => {
                    warn!(service = names.get(&e.id()).copied().unwrap_or("?"), error = %e, "service was cancelled")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// A service that records when it was asked to stop and when it finished.
    fn service(
        log: &Arc<Mutex<Vec<String>>>,
        name: &'static str,
        token: CancellationToken,
        drain: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let log = log.clone();
        async move {
            token.cancelled().await;
            tokio::time::sleep(drain).await;
            log.lock().unwrap().push(format!("{name} stopped"));
        }
    }

    #[tokio::test]
    async fn consumer_stage_stops_first_and_background_outlives_it() {
        let stop = CancellationToken::new();
        let mut s = Supervisor::new(stop.clone());
        let log = Arc::new(Mutex::new(Vec::new()));
        // the background service would stop at once; the job runner takes a while to drain
        s.start(
            "lease",
            Stage::Background,
            service(&log, "lease", s.token(Stage::Background), Duration::ZERO),
        );
        s.start(
            "jobs",
            Stage::WithConsumer,
            service(
                &log,
                "jobs",
                s.token(Stage::WithConsumer),
                Duration::from_millis(100),
            ),
        );
        let mut names = s.names();
        names.sort();
        assert_eq!(names, ["jobs", "lease"]);
        // SIGTERM: only the consumer stage is asked to stop
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(log.lock().unwrap().is_empty(), "nothing stopped yet");
        s.shut_down().await;
        assert_eq!(*log.lock().unwrap(), ["jobs stopped", "lease stopped"]);
    }

    #[tokio::test]
    async fn a_panicking_service_does_not_keep_the_others_running() {
        let stop = CancellationToken::new();
        let mut s = Supervisor::new(stop.clone());
        let log = Arc::new(Mutex::new(Vec::new()));
        s.start("broken", Stage::WithConsumer, async { panic!("boom") });
        s.start(
            "heartbeat",
            Stage::Background,
            service(
                &log,
                "heartbeat",
                s.token(Stage::Background),
                Duration::ZERO,
            ),
        );
        // the consumer returned on its own (no SIGTERM): shut_down cancels the stop token itself
        tokio::time::timeout(Duration::from_secs(5), s.shut_down())
            .await
            .expect("shut_down finished");
        assert_eq!(*log.lock().unwrap(), ["heartbeat stopped"]);
    }
}
