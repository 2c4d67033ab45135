//! Actions: each one knows only how to talk to its service, once.
//!
//! Retry, timeout and concurrency are layers applied around every action in
//! one place (`pipeline::executor`), in one fixed order.

pub mod cache_evict;
pub mod egress;
pub mod email;
pub mod slack;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::ActionConfig;
use crate::installation::InstallationId;
use crate::lookups::Lookups;
use crate::resilience::PairKey;
use crate::retry::RetryPolicy;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One (event, action) pair to execute.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: i64,
    /// The observer the pair belongs to (for the attempt log; 0 when not known).
    pub observer_id: i32,
    pub action_index: usize,
    /// The pair's idempotency key ([`InstallationId::pair_id`]): identical on every attempt and
    /// redelivery.
    pub webhook_id: String,
    /// The event body (JSON text), sent as is.
    pub body: Bytes,
    /// The pair's deduplication key, when deduplication is on.
    pub dedup_key: Option<PairKey>,
    /// Attempts already used (a parked pair resumes with its count).
    pub attempts_used: u32,
    /// May be parked when its destination's breaker is open (not for ordered observers,
    /// not for a pair that is being delivered from the parked table).
    pub may_park: bool,
    /// A job run (`pipeline::jobs`): one attempt only; a retryable failure comes back as
    /// `ActionOutcome::RetryLater` and the job queue schedules the next attempt.
    pub single_attempt: bool,
}

impl Delivery {
    pub fn new(
        installation: &InstallationId,
        event_id: i64,
        action_index: usize,
        body: Bytes,
    ) -> Self {
        Delivery {
            event_id,
            observer_id: 0,
            action_index,
            webhook_id: installation.pair_id(event_id, action_index),
            body,
            dedup_key: None,
            attempts_used: 0,
            may_park: false,
            single_attempt: false,
        }
    }

    pub fn for_observer(mut self, observer_id: i32) -> Self {
        self.observer_id = observer_id;
        self
    }

    pub fn with_dedup_key(mut self, key: PairKey) -> Self {
        self.dedup_key = Some(key);
        self
    }

    /// A redelivery from `observers.parked` (a parked pair, a DLQ retry, a replay) sends the
    /// webhook-id stored with it: the one the receiver saw when the pair was first attempted.
    pub fn with_webhook_id(mut self, webhook_id: String) -> Self {
        if !webhook_id.is_empty() {
            self.webhook_id = webhook_id;
        }
        self
    }
}
/// A successful attempt: what the destination answered, for the attempt log
/// (`observers.attempt.status`); `None` for actions without a status (cache eviction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    pub status: Option<u16>,
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AttemptError {
    /// Retrying may help (429, 5xx, timeout, connection problems).
    pub retryable: bool,
    /// Operator-readable; never contains secrets or header values.
    pub message: String,
    /// HTTP status, when a response was received.
    pub status: Option<u16>,
    /// The server's `Retry-After`, if it sent a usable one.
    pub retry_after: Option<Duration>,
    /// The failure happened before the destination was called (e.g. rendering a template):
    /// it says nothing about the destination's health.
    pub local: bool,
}

impl AttemptError {
    pub fn retryable(message: impl Into<String>) -> Self {
        AttemptError {
            retryable: true,
            message: message.into(),
            status: None,
            retry_after: None,
            local: false,
        }
    }
    /// Retryable, and not the destination's fault (circuit breakers ignore it).
    pub fn local(message: impl Into<String>) -> Self {
        AttemptError {
            local: true,
            ..AttemptError::retryable(message)
        }
    }
    /// Timeouts, transport errors, 5xx and 429 count as failures of the destination for its
    /// circuit breaker; other 4xx mean it answered.
    pub fn counts_against_destination(&self) -> bool {
        self.retryable && !self.local
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        AttemptError {
            retryable: false,
            message: message.into(),
            status: None,
            retry_after: None,
            local: false,
        }
    }
}

/// Something that runs for an event: talks to one service, one attempt at a time.
pub trait Action: Send + Sync + 'static {
    /// `webhook`, `slack`, ... (recorded with dead letters).
    fn type_name(&self) -> &'static str;
    /// Per-attempt time limit.
    fn timeout(&self) -> Duration;
    fn retry_policy(&self) -> &RetryPolicy;
    /// `scheme://host:port` of the service it calls: the unit of circuit breaking.
    /// `None` for actions without a remote destination.
    fn destination(&self) -> Option<&str> {
        None
    }
    /// `mode: async`: the leader enqueues the pair as a job instead of running it inline
    /// (`pipeline::jobs`).
    fn is_async(&self) -> bool {
        false
    }
    /// One attempt.
    fn execute<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<Delivered, AttemptError>>;
}

/// Builds the runtime action for a validated configuration. `lookups` are the
/// worker's declared lookups (templated actions resolve them).
pub fn build(
    config: &ActionConfig,
    http: &egress::Egress,
    lookups: &Arc<Lookups>,
) -> Arc<dyn Action> {
    match config {
        ActionConfig::Webhook(w) => Arc::new(webhook::WebhookAction::new(w, http.clone())),
        ActionConfig::Slack(s) => {
            Arc::new(slack::SlackAction::new(s, http.clone(), lookups.clone()))
        }
        ActionConfig::Email(e) => {
            Arc::new(email::EmailAction::new(e, http.mailer(), lookups.clone()))
        }
        ActionConfig::CacheEvict(c) => {
            Arc::new(cache_evict::CacheEvictAction::new(c, lookups.clone()))
        }
    }
}
