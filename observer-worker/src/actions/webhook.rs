//! The webhook action: one signed `POST` per attempt (docs/WEBHOOKS.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use super::egress::{denied_in, Egress};
use super::{Action, AttemptError, BoxFuture, Delivered, Delivery};
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

/// The shared HTTP client with the default destination policy (built-in denies only);
/// the worker builds its own with the file's `destinations:` ([`Egress::new`]).
pub fn http_client(max_in_flight: usize) -> Result<Egress, reqwest::Error> {
    Egress::new(max_in_flight, crate::config::DestinationPolicy::default())
}

pub struct WebhookAction {
    client: Egress,
    url: reqwest::Url,
    /// Content-Type plus the configured headers (marked sensitive).
    headers: HeaderMap,
    key: Option<SigningKey>,
    timeout: Duration,
    retry: RetryPolicy,
    destination: String,
    asynchronous: bool,
}

/// `scheme://host:port` (port made explicit): the circuit breaker's unit. Never the path or
/// query, which may carry tokens.
pub fn destination_of(url: &reqwest::Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

impl WebhookAction {
    pub fn new(cfg: &WebhookConfig, client: Egress) -> Self {
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
            destination: destination_of(&cfg.url),
            asynchronous: cfg.asynchronous,
        }
    }

    async fn attempt(&self, d: &Delivery) -> Result<Delivered, AttemptError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
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
        // a denied destination is a permanent failure: dead-lettered with the reason, no retries
        let client = self
            .client
            .check(&self.url)
            .map_err(|denied| AttemptError::permanent(denied.to_string()))?;
        let request = client
            .post(self.url.clone())
            .headers(headers)
            .timeout(self.timeout)
            .body(d.body.clone());
        let mut response = request.send().await.map_err(|e| self.transport_error(e))?;

        let status = response.status();
        let class = classify_status(status.as_u16());
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let keep = if class == Classification::Success {
            0
        } else {
            ERROR_BODY_KEEP
        };
        let body = read_bounded(&mut response, keep, RESPONSE_DRAIN_LIMIT).await;

        match class {
            Classification::Success => Ok(Delivered {
                status: Some(status.as_u16()),
            }),
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
                    local: false,
                })
            }
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> AttemptError {
        let e = e.without_url();
        // the resolver refused every address of the host: permanent, like a denied URL
        if let Some(denied) = denied_in(&e) {
            return AttemptError::permanent(denied.to_string());
        }
        if e.is_timeout() {
            return AttemptError::retryable(format!(
                "timeout after {}",
                humantime::format_duration(self.timeout)
            ));
        }
        if e.is_builder() {
            return AttemptError::permanent(format!(
                "cannot build the request: {}",
                crate::db::root_cause(&e)
            ));
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

    fn destination(&self) -> Option<&str> {
        Some(&self.destination)
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
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
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
    use crate::config::WebhookConfig;
    use crate::installation::InstallationId;
    use bytes::Bytes;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the test server saw: request head (lowercased header names) and body.
    #[derive(Debug, Default, Clone)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        }
    }

    /// A one-connection-at-a-time HTTP/1.1 server answering every request
    /// with `response` (raw bytes) after `delay`.
    async fn server(response: &'static str, delay: Duration) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + len {
                            let n = match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let body = buf[end + 4..end + 4 + len].to_vec();
                        buf.drain(..end + 4 + len);
                        seen.lock().unwrap().push(Seen { head, body });
                        tokio::time::sleep(delay).await;
                        if sock.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/hook?token=abc"), seen)
    }

    fn action(url: &str, secret: Option<&str>, timeout: Duration) -> WebhookAction {
        let cfg = WebhookConfig {
            url: url::Url::parse(url).unwrap(),
            headers: vec![(
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("Bearer t0ken"),
            )],
            signing_key: secret.map(|s| SigningKey::from_secret(s).unwrap()),
            timeout,
            retry: RetryPolicy::default(),
            asynchronous: false,
        };
        WebhookAction::new(&cfg, http_client(4).unwrap())
    }

    const BODY: &str = r#"{"id" : 42, "op" : "INSERT"}"#;
    const INST: InstallationId = InstallationId::from_bytes([0xab; 16]);

    #[tokio::test]
    async fn sends_body_as_is_with_standard_webhooks_headers() {
        let (url, seen) = server(
            "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let a = action(&url, Some(secret), Duration::from_secs(5));
        let d = Delivery::new(&INST, 42, 1, Bytes::from_static(BODY.as_bytes()));
        a.execute(&d).await.unwrap();
        a.execute(&d).await.unwrap(); // a retry: same id, same body

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        let r = &seen[0];
        assert!(
            r.head.starts_with("POST /hook?token=abc HTTP/1.1"),
            "{}",
            r.head
        );
        assert_eq!(r.body, BODY.as_bytes(), "body must be sent byte for byte");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header("authorization").as_deref(), Some("Bearer t0ken"));
        let id = "evt_abababababababab_42_1";
        assert_eq!(r.header("webhook-id").as_deref(), Some(id));
        assert_eq!(seen[1].header("webhook-id").as_deref(), Some(id));
        let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - ts).abs() < 60);
        let expected = SigningKey::from_secret(secret)
            .unwrap()
            .sign(id, ts, BODY.as_bytes());
        assert_eq!(r.header("webhook-signature"), Some(expected));
    }

    #[tokio::test]
    async fn no_signature_without_secret() {
        let (url, seen) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngarbage",
            Duration::ZERO,
        )
        .await;
        let a = action(&url, None, Duration::from_secs(5));
        a.execute(&Delivery::new(&INST, 1, 0, Bytes::from_static(b"{}")))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap()[0].header("webhook-signature"), None);
    }

    #[tokio::test]
    async fn client_errors_are_permanent_with_status_and_body_snippet() {
        let (url, _) = server(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 28\r\n\r\n{\"error\":\"unknown\ncustomer\"}",
            Duration::ZERO,
        )
        .await;
        let err = action(&url, None, Duration::from_secs(5))
            .execute(&Delivery::new(&INST, 1, 0, Bytes::new()))
            .await
            .unwrap_err();
        assert!(!err.retryable);
        assert_eq!(err.status, Some(400));
        assert_eq!(
            err.message,
            r#"HTTP 400 Bad Request: {"error":"unknown customer"}"#
        );
    }

    #[tokio::test]
    async fn server_errors_are_retryable_and_retry_after_is_read() {
        let (url, _) = server(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\ndown",
            Duration::ZERO,
        )
        .await;
        let err = action(&url, None, Duration::from_secs(5))
            .execute(&Delivery::new(&INST, 1, 0, Bytes::new()))
            .await
            .unwrap_err();
        assert!(err.retryable);
        assert_eq!(err.status, Some(503));
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(err.message, "HTTP 503 Service Unavailable: down");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (url, seen) = server(
            "HTTP/1.1 301 Moved Permanently\r\nlocation: http://127.0.0.1:1/elsewhere\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let err = action(&url, None, Duration::from_secs(5))
            .execute(&Delivery::new(&INST, 1, 0, Bytes::new()))
            .await
            .unwrap_err();
        assert!(!err.retryable);
        assert!(
            err.message
                .starts_with("HTTP 301 Moved Permanently (redirects are not followed)"),
            "{}",
            err.message
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn slow_servers_time_out_as_retryable() {
        let (url, _) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Duration::from_secs(10),
        )
        .await;
        let err = action(&url, None, Duration::from_millis(200))
            .execute(&Delivery::new(&INST, 1, 0, Bytes::new()))
            .await
            .unwrap_err();
        assert!(err.retryable);
        assert_eq!(err.message, "timeout after 200ms");
        assert_eq!(err.status, None);
    }

    #[tokio::test]
    async fn connection_refused_is_retryable_and_does_not_leak_the_url() {
        // bind then drop: nothing listens on that port any more
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/hook?token=s3cr3t");
        let err = action(&url, None, Duration::from_secs(5))
            .execute(&Delivery::new(&INST, 1, 0, Bytes::new()))
            .await
            .unwrap_err();
        assert!(err.retryable);
        assert_eq!(err.message, "connection refused");
        assert!(!err.message.contains("s3cr3t"));
    }

    #[tokio::test]
    async fn garbage_instead_of_http_is_retryable() {
        let (url, _) = server("this is not HTTP at all\r\n\r\n", Duration::ZERO).await;
        let err = action(&url, None, Duration::from_secs(5))
            .execute(&Delivery::new(&INST, 1, 0, Bytes::new()))
            .await
            .unwrap_err();
        assert!(err.retryable, "{err:?}");
        assert!(err.message.starts_with("request failed"), "{}", err.message);
    }

    #[test]
    fn snippets_are_single_line_and_printable() {
        assert_eq!(
            body_snippet(b"  bad\r\n\tinput \x00 here  "),
            "bad input here"
        );
        assert_eq!(body_snippet(&[0xff, 0xfe, b'x']), "\u{fffd}\u{fffd}x");
        assert_eq!(body_snippet(b""), "");
    }
}
