//! The webhook action: one signed `POST` per attempt (docs/WEBHOOKS.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use super::{Action, AttemptError, BoxFuture, Delivery};
use crate::config::WebhookConfig;
use crate::retry::{classify_status, parse_retry_after, Classification, RetryPolicy};
use crate::signing::SigningKey;

/// How much of an error response body is kept for the dead letter's message.
pub const ERROR_BODY_KEEP: usize = 1024;
/// How much of a response body is read (and discarded) so the connection can
/// be reused; larger bodies close the connection instead.
pub const RESPONSE_DRAIN_LIMIT: usize = 64 * 1024;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The shared HTTP client: keep-alive pool sized for `max_in_flight`,
/// redirects not followed (a redirected POST would silently become a GET).
pub fn http_client(max_in_flight: usize) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("fraiseql-observers/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(max_in_flight.max(1))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
}

pub struct WebhookAction {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Content-Type plus the configured headers (marked sensitive).
    headers: HeaderMap,
    key: Option<SigningKey>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl WebhookAction {
    pub fn new(cfg: &WebhookConfig, client: reqwest::Client) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &cfg.headers {
            headers.insert(name.clone(), value.clone());
        }
        WebhookAction {
            client,
            url: cfg.url.clone(),
            headers,
            key: cfg.signing_key.clone(),
            timeout: cfg.timeout,
            retry: cfg.retry.clone(),
        }
    }

    async fn attempt(&self, d: &Delivery) -> Result<(), AttemptError> {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let mut headers = self.headers.clone();
        // The webhook-* headers are built from ids and digits: always valid header values.
        if let Ok(v) = HeaderValue::from_str(&d.webhook_id) {
            headers.insert(WEBHOOK_ID, v);
        }
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        if let Some(key) = &self.key {
            if let Ok(v) = HeaderValue::from_str(&key.sign(&d.webhook_id, timestamp, &d.body)) {
                headers.insert(WEBHOOK_SIGNATURE, v);
            }
        }
        let request = self.client.post(self.url.clone()).headers(headers).timeout(self.timeout).body(d.body.clone());
        let mut response = request.send().await.map_err(|e| self.transport_error(e))?;

        let status = response.status();
        let class = classify_status(status.as_u16());
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let keep = if class == Classification::Success { 0 } else { ERROR_BODY_KEEP };
        let body = read_bounded(&mut response, keep, RESPONSE_DRAIN_LIMIT).await;

        match class {
            Classification::Success => Ok(()),
            Classification::Retryable | Classification::Permanent => {
                let mut message = format!("HTTP {}", status.as_u16());
                if let Some(reason) = status.canonical_reason() {
                    message.push(' ');
                    message.push_str(reason);
                }
                if status.is_redirection() {
                    message.push_str(" (redirects are not followed)");
                }
                let snippet = body_snippet(&body);
                if !snippet.is_empty() {
                    message.push_str(": ");
                    message.push_str(&snippet);
                }
                Err(AttemptError {
                    retryable: class == Classification::Retryable,
                    message,
                    status: Some(status.as_u16()),
                    retry_after,
                })
            }
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> AttemptError {
        let e = e.without_url();
        if e.is_timeout() {
            return AttemptError::retryable(format!("timeout after {}", humantime::format_duration(self.timeout)));
        }
        if e.is_builder() {
            return AttemptError::permanent(format!("cannot build the request: {}", crate::db::root_cause(&e)));
        }
        let cause = crate::db::root_cause(&e);
        let lower = cause.to_ascii_lowercase();
        let message = if lower.contains("connection refused") {
            "connection refused".to_owned()
        } else if lower.contains("connection reset") {
            "connection reset by peer".to_owned()
        } else if e.is_connect() {
            format!("connection failed: {cause}")
        } else {
            format!("request failed: {cause}")
        };
        // Anything on the transport (refused, reset, DNS, TLS, invalid HTTP
        // from the server) is worth retrying.
        AttemptError::retryable(message)
    }
}

impl Action for WebhookAction {
    fn type_name(&self) -> &'static str {
        "webhook"
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    fn execute<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(self.attempt(delivery))
    }
}

/// Reads at most `drain` bytes of the body, keeping the first `keep`. Errors
/// while reading are ignored: the status code already decided the outcome.
async fn read_bounded(response: &mut reqwest::Response, keep: usize, drain: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        if kept.len() < keep {
            let take = (keep - kept.len()).min(chunk.len());
            kept.extend_from_slice(&chunk[..take]);
        }
        total += chunk.len();
        if total > drain {
            break; // dropping the response closes the connection
        }
    }
    kept
}

/// A single-line, printable rendering of the start of a response body.
pub fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len().min(ERROR_BODY_KEEP));
    let mut last_space = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() { ' ' } else { c };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        out.push(c);
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_single_line_and_printable() {
        assert_eq!(body_snippet(b"  bad\r\n\tinput \x00 here  "), "bad input here");
        assert_eq!(body_snippet(&[0xff, 0xfe, b'x']), "\u{fffd}\u{fffd}x");
        assert_eq!(body_snippet(b""), "");
    }
}
