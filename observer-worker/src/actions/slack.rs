//! The Slack action: renders `text` (with the lookups it uses) and posts
//! `{"text": "..."}` to a Slack incoming-webhook URL.
//!
//! Rendering and lookups happen inside the attempt, so a failing lookup is a
//! retryable attempt error that follows the action's retry policy; a template
//! that does not render for an event (undefined or null value) is permanent.
//! Delivery itself is the webhook action's (same response classification,
//! `Retry-After`, `webhook-id` idempotency header, timeout), without signature.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::egress::Egress;
use super::webhook::WebhookAction;
use super::{Action, AttemptError, BoxFuture, Delivered, Delivery};
use crate::config::{SlackConfig, WebhookConfig};
use crate::lookups::Lookups;
use crate::retry::RetryPolicy;
use crate::templates;

pub struct SlackAction {
    post: WebhookAction,
    text: templates::Template,
    lookups: Arc<Lookups>,
    timeout: Duration,
    retry: RetryPolicy,
    asynchronous: bool,
}

impl SlackAction {
    pub fn new(cfg: &SlackConfig, client: Egress, lookups: Arc<Lookups>) -> Self {
        let post = WebhookAction::new(
            &WebhookConfig {
                url: cfg.webhook_url.clone(),
                headers: Vec::new(),
                signing_key: None,
                timeout: cfg.timeout,
                retry: cfg.retry.clone(),
                asynchronous: false,
            },
            client,
        );
        SlackAction {
            post,
            text: cfg.text.clone(),
            lookups,
            timeout: cfg.timeout,
            retry: cfg.retry.clone(),
            asynchronous: cfg.asynchronous,
        }
    }

    /// The message body for this event: `{"text": ...}`.
    pub async fn render(&self, event_body: &[u8]) -> Result<Bytes, AttemptError> {
        let event: serde_json::Value = serde_json::from_slice(event_body)
            .map_err(|e| AttemptError::permanent(format!("the event body is not JSON: {e}")))?;
        let resolved = self
            .lookups
            .resolve_all(self.text.lookups(), &event)
            .await
            .map_err(|e| e.into_attempt())?;
        let ctx = templates::context(&event, Some(&resolved));
        let text = self.text.render(&ctx).map_err(|e| {
            AttemptError::permanent(format!("`text` does not render for this event: {e}"))
        })?;
        let body = serde_json::to_vec(&serde_json::json!({ "text": text }))
            .map_err(|e| AttemptError::permanent(format!("cannot encode the message: {e}")))?;
        Ok(Bytes::from(body))
    }

    async fn attempt(&self, d: &Delivery) -> Result<Delivered, AttemptError> {
        let body = self.render(&d.body).await?;
        let message = Delivery { body, ..d.clone() };
        self.post.execute(&message).await
    }
}

impl Action for SlackAction {
    fn type_name(&self) -> &'static str {
        "slack"
    }

    /// Lookups and the POST share one attempt's time limit.
    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The Slack endpoint (lookup sources are not: their failures are `local`).
    fn destination(&self) -> Option<&str> {
        self.post.destination()
    }

    fn is_async(&self) -> bool {
        self.asynchronous
    }

    fn execute<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<Delivered, AttemptError>> {
        Box::pin(self.attempt(delivery))
    }
}
