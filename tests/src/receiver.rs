//! A real HTTP webhook receiver for tests, the demo and the benchmark.
//!
//! It records every request (path, Standard Webhooks headers, body, arrival and reply times,
//! how many requests were in flight) and answers from a per-path *script*: a queue of
//! [`Reply`]s used one per request, then a default reply (normally `200`). Replies can carry a
//! status, a `Retry-After` header, a fixed or random delay and a body, so a test can make the
//! receiver fail, throttle, hang past the worker's timeout or answer garbage.
//!
//! ```no_run
//! # async fn demo() {
//! use observers_tests::receiver::{Receiver, Reply};
//! let rx = Receiver::start().await.unwrap();
//! rx.script("/hooks/a", [Reply::status(500), Reply::ok()]);
//! let url = rx.url("/hooks/a");
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One scripted answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// Value of the `Retry-After` header, sent as is.
    pub retry_after: Option<String>,
    /// Wait this long (uniformly random between the two bounds) before answering.
    pub delay: Option<(Duration, Duration)>,
    /// Response body and its content type; empty body when `None`.
    pub body: Option<(String, String)>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::status(200)
    }
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            delay: None,
            body: None,
        }
    }
    pub fn retry_after(mut self, value: impl Into<String>) -> Reply {
        self.retry_after = Some(value.into());
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = Some((d, d));
        self
    }
    pub fn random_delay(mut self, min: Duration, max: Duration) -> Reply {
        self.delay = Some((min, max.max(min)));
        self
    }
    pub fn body(mut self, content_type: impl Into<String>, body: impl Into<String>) -> Reply {
        self.body = Some((content_type.into(), body.into()));
        self
    }
    fn pick_delay(&self) -> Option<Duration> {
        let (lo, hi) = self.delay?;
        if hi <= lo {
            return Some(lo);
        }
        let span = (hi - lo).as_micros() as u64;
        Some(lo + Duration::from_micros(rand::rng().random_range(0..=span)))
    }
}

/// How one path (or every path without its own behaviour) answers.
#[derive(Clone, Debug)]
struct Behaviour {
    script: VecDeque<Reply>,
    default: Reply,
    /// With this probability (0..=1) answer `fail` instead of `default`.
    fail_rate: f64,
    fail: Reply,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            script: VecDeque::new(),
            default: Reply::ok(),
            fail_rate: 0.0,
            fail: Reply::status(500),
        }
    }
}

impl Behaviour {
    fn next(&mut self) -> Reply {
        if let Some(r) = self.script.pop_front() {
            return r;
        }
        if self.fail_rate > 0.0 && rand::rng().random_bool(self.fail_rate.min(1.0)) {
            return self.fail.clone();
        }
        self.default.clone()
    }
}

/// Everything recorded about one request.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// Arrival order, from 0.
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
    pub content_type: Option<String>,
    /// All request headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Body parsed as JSON; `None` when it was not JSON (see `raw_body`).
    pub body: Option<Value>,
    #[serde(skip)]
    pub raw_body: Bytes,
    #[serde(with = "rfc3339")]
    pub received_at: SystemTime,
    /// When the reply was sent (after any delay); `None` while in flight.
    #[serde(with = "rfc3339_opt")]
    pub responded_at: Option<SystemTime>,
    /// Status we answered with; 0 while in flight.
    pub status: u16,
    /// Signature check against the configured secret; `None` when no secret is configured.
    pub signature_valid: Option<bool>,
    /// Requests in flight at this one's arrival, this one included.
    pub in_flight_at_arrival: usize,
}

impl Delivery {
    /// The event id (`id` field of the body), if the body is an event.
    pub fn event_id(&self) -> Option<i64> {
        self.body.as_ref()?.get("id")?.as_i64()
    }
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Default)]
struct Records {
    deliveries: Vec<Delivery>,
    seen_ids: HashSet<String>,
    unique_by_path: HashMap<String, usize>,
    duplicates: u64,
    by_status: BTreeMap<u16, u64>,
}

/// Options for [`Receiver::start_with`].
#[derive(Default)]
pub struct ReceiverOptions {
    /// Listen address; `127.0.0.1:0` by default.
    pub listen: Option<SocketAddr>,
    /// Verify `webhook-signature` with this Standard Webhooks secret.
    pub secret: Option<String>,
    /// Answer 401 to a request whose signature does not verify (needs `secret`).
    pub reject_invalid_signatures: bool,
    /// Keep every [`Delivery`] in memory (tests: yes; a long-running CLI receiver: no).
    pub keep_deliveries: bool,
    /// Append one JSON line per request to this file (buffered, flushed every 200 ms).
    pub log: Option<File>,
    /// Behaviour of paths without a script of their own.
    pub default_reply: Option<Reply>,
    pub fail_rate: f64,
    pub fail_reply: Option<Reply>,
    pub script: Vec<Reply>,
}

struct Shared {
    records: Mutex<Records>,
    behaviours: Mutex<(Behaviour, HashMap<String, Behaviour>)>,
    secret: Option<Vec<u8>>,
    reject_invalid: bool,
    keep: bool,
    log: Option<Mutex<BufWriter<File>>>,
    seq: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    total: AtomicU64,
}

/// A running receiver. Dropping it stops the server.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid webhook secret: {0}")]
    Secret(String),
}

impl Receiver {
    /// Start on `127.0.0.1:<free port>`, recording everything, answering 200.
    pub async fn start() -> Result<Receiver, ReceiverError> {
        Self::start_with(ReceiverOptions {
            keep_deliveries: true,
            ..Default::default()
        })
        .await
    }

    /// Start recording everything and verifying signatures with `secret`.
    pub async fn start_with_secret(secret: &str) -> Result<Receiver, ReceiverError> {
        Self::start_with(ReceiverOptions {
            keep_deliveries: true,
            secret: Some(secret.to_owned()),
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(opts: ReceiverOptions) -> Result<Receiver, ReceiverError> {
        let addr = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let secret = opts.secret.as_deref().map(secret_key).transpose()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ReceiverError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ReceiverError::Bind { addr, source })?;
        let mut global = Behaviour::default();
        if let Some(r) = opts.default_reply {
            global.default = r;
        }
        global.fail_rate = opts.fail_rate;
        if let Some(r) = opts.fail_reply {
            global.fail = r;
        }
        global.script = opts.script.into();
        let shared = Arc::new(Shared {
            records: Mutex::new(Records::default()),
            behaviours: Mutex::new((global, HashMap::new())),
            secret,
            reject_invalid: opts.reject_invalid_signatures,
            keep: opts.keep_deliveries,
            log: opts
                .log
                .map(|f| Mutex::new(BufWriter::with_capacity(1 << 20, f))),
            seq: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            total: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shared.clone(), shutdown.clone()));
        Ok(Receiver {
            addr,
            shared,
            shutdown,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Queue replies for `path` (used one per request, in order), appended to any queued ones.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut b = self.shared.behaviours.lock();
        b.1.entry(path.to_owned())
            .or_default()
            .script
            .extend(replies);
    }

    /// The reply for `path` once its script is used up.
    pub fn set_default(&self, path: &str, reply: Reply) {
        let mut b = self.shared.behaviours.lock();
        b.1.entry(path.to_owned()).or_default().default = reply;
    }

    /// The reply for paths that have no behaviour of their own.
    pub fn set_global_default(&self, reply: Reply) {
        self.shared.behaviours.lock().0.default = reply;
    }

    /// With probability `rate` answer `fail` instead of the default, for `path`.
    pub fn set_fail_rate(&self, path: &str, rate: f64, fail: Reply) {
        let mut b = self.shared.behaviours.lock();
        let e = b.1.entry(path.to_owned()).or_default();
        e.fail_rate = rate;
        e.fail = fail;
    }

    /// Number of requests received so far (any status, including in flight).
    pub fn count(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// Snapshot of every recorded request, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.records.lock().deliveries.clone()
    }

    /// Recorded requests for one path.
    pub fn deliveries_for(&self, path: &str) -> Vec<Delivery> {
        self.shared
            .records
            .lock()
            .deliveries
            .iter()
            .filter(|d| d.path == path)
            .cloned()
            .collect()
    }

    /// Distinct `webhook-id` values seen (any status).
    pub fn unique_webhook_ids(&self) -> HashSet<String> {
        self.shared.records.lock().seen_ids.clone()
    }

    /// Number of distinct `webhook-id` values seen (cheap; no copy).
    pub fn unique_count(&self) -> usize {
        self.shared.records.lock().seen_ids.len()
    }

    /// Number of distinct `webhook-id` values seen on `path` (cheap; no copy).
    pub fn unique_count_for(&self, path: &str) -> usize {
        self.shared
            .records
            .lock()
            .unique_by_path
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests whose `webhook-id` had been seen before.
    pub fn duplicate_count(&self) -> u64 {
        self.shared.records.lock().duplicates
    }

    /// Distinct event ids (body `id`) that were answered with 2xx.
    pub fn delivered_event_ids(&self) -> HashSet<i64> {
        let r = self.shared.records.lock();
        r.deliveries
            .iter()
            .filter(|d| d.succeeded())
            .filter_map(Delivery::event_id)
            .collect()
    }

    /// Requests per path.
    pub fn counts_by_path(&self) -> BTreeMap<String, u64> {
        let r = self.shared.records.lock();
        let mut m = BTreeMap::new();
        for d in &r.deliveries {
            *m.entry(d.path.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Requests per status we answered with (in-flight ones are not counted).
    pub fn counts_by_status(&self) -> BTreeMap<u16, u64> {
        self.shared.records.lock().by_status.clone()
    }

    /// The largest number of requests that were in flight at the same time.
    pub fn max_concurrency(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Wait until at least `count` requests arrived. `false` on timeout.
    pub async fn wait_for(&self, count: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |_| self.count() >= count).await
    }

    /// Wait until `count` distinct event ids were answered with 2xx. `false` on timeout.
    pub async fn wait_for_events(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |rx| rx.delivered_event_ids().len() >= count)
            .await
    }

    /// Wait until `pred(self)` holds (checked every 10 ms). `false` on timeout.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Receiver) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// No new request for `quiet` (bounded by `timeout`): lets stray retries show up.
    pub async fn settle(&self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = self.count();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.count();
            if now != last || self.in_flight() > 0 {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// A short human summary (for failure messages).
    pub fn summary(&self) -> String {
        let r = self.shared.records.lock();
        format!(
            "{} requests, {} distinct webhook-ids, {} duplicates, statuses {:?}, max concurrency {}",
            self.count(),
            r.seen_ids.len(),
            r.duplicates,
            r.by_status,
            self.max_concurrency()
        )
    }

    /// Flush the log file (if any).
    pub fn flush_log(&self) {
        if let Some(log) = &self.shared.log {
            let _ = log.lock().flush();
        }
    }

    /// Stop accepting and close every connection; flush the log.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        self.flush_log();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.flush_log();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    if shared.log.is_some() {
        let s = shared.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Some(log) = &s.log {
                    let _ = log.lock().flush();
                }
            }
        });
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(_) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, shared.clone()));
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Decrements the in-flight gauge even when the connection is dropped mid-delay.
struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let received_at = SystemTime::now();
    let now_in_flight = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(&shared.in_flight);
    shared
        .max_in_flight
        .fetch_max(now_in_flight, Ordering::SeqCst);
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);

    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let webhook_id = header(&req, "webhook-id");
    let webhook_timestamp = header(&req, "webhook-timestamp");
    let webhook_signature = header(&req, "webhook-signature");
    let content_type = header(&req, "content-type");
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let raw_body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Option<Value> = serde_json::from_slice(&raw_body).ok();
    let signature_valid = shared.secret.as_ref().map(|key| {
        match (&webhook_id, &webhook_timestamp, &webhook_signature) {
            (Some(id), Some(ts), Some(sig)) => verify_with_key(key, id, ts, &raw_body, sig),
            _ => false,
        }
    });
    shared.total.fetch_add(1, Ordering::SeqCst);

    let reply = {
        let mut b = shared.behaviours.lock();
        let (global, per_path) = &mut *b;
        match per_path.get_mut(&path) {
            Some(beh) => beh.next(),
            None => global.next(),
        }
    };
    let reply = if shared.reject_invalid && signature_valid == Some(false) {
        Reply::status(401).body("text/plain", "invalid webhook signature")
    } else {
        reply
    };

    // Record at arrival so a test sees in-flight requests; fill in the outcome after the reply.
    let index = {
        let mut r = shared.records.lock();
        if let Some(id) = &webhook_id {
            if r.seen_ids.insert(id.clone()) {
                *r.unique_by_path.entry(path.clone()).or_insert(0) += 1;
            } else {
                r.duplicates += 1;
            }
        }
        if shared.keep {
            r.deliveries.push(Delivery {
                seq,
                method,
                path: path.clone(),
                webhook_id: webhook_id.clone(),
                webhook_timestamp: webhook_timestamp.clone(),
                webhook_signature,
                content_type,
                headers,
                body: body.clone(),
                raw_body: raw_body.clone(),
                received_at,
                responded_at: None,
                status: 0,
                signature_valid,
                in_flight_at_arrival: now_in_flight,
            });
            Some(r.deliveries.len() - 1)
        } else {
            None
        }
    };

    if let Some(d) = reply.pick_delay() {
        tokio::time::sleep(d).await;
    }
    let responded_at = SystemTime::now();
    {
        let mut r = shared.records.lock();
        *r.by_status.entry(reply.status).or_insert(0) += 1;
        if let Some(i) = index {
            let d = &mut r.deliveries[i];
            d.responded_at = Some(responded_at);
            d.status = reply.status;
        }
    }
    if let Some(log) = &shared.log {
        let line = log_line(
            received_at,
            &path,
            &webhook_id,
            &webhook_timestamp,
            signature_valid,
            reply.status,
            body.as_ref(),
            &raw_body,
        );
        log.lock().write_all(&line).ok();
    }

    let mut resp =
        Response::builder().status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK));
    if let Some(ra) = &reply.retry_after {
        resp = resp.header("retry-after", ra.as_str());
    }
    let body = match reply.body {
        Some((ct, b)) => {
            resp = resp.header("content-type", ct);
            Bytes::from(b)
        }
        None => Bytes::new(),
    };
    Ok(resp
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[derive(Serialize)]
struct LogLine<'a> {
    received_at: String,
    path: &'a str,
    webhook_id: Option<&'a str>,
    webhook_timestamp: Option<&'a str>,
    signature_valid: Option<bool>,
    status: u16,
}

/// One log line: the fields above plus `"body"`, the request body verbatim when it is
/// single-line JSON (numbers keep their formatting), else re-encoded, else as a string.
#[allow(clippy::too_many_arguments)]
fn log_line(
    received_at: SystemTime,
    path: &str,
    webhook_id: &Option<String>,
    webhook_timestamp: &Option<String>,
    signature_valid: Option<bool>,
    status: u16,
    body: Option<&Value>,
    raw_body: &[u8],
) -> Vec<u8> {
    let head = LogLine {
        received_at: fmt_time(received_at),
        path,
        webhook_id: webhook_id.as_deref(),
        webhook_timestamp: webhook_timestamp.as_deref(),
        signature_valid,
        status,
    };
    let mut out = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"body\":");
    match body {
        Some(_) if !raw_body.contains(&b'\n') && !raw_body.contains(&b'\r') => {
            out.extend_from_slice(raw_body.trim_ascii())
        }
        Some(v) => {
            out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()))
        }
        None => out.extend_from_slice(
            &serde_json::to_vec(&String::from_utf8_lossy(raw_body))
                .unwrap_or_else(|_| b"null".to_vec()),
        ),
    }
    out.extend_from_slice(b"}\n");
    out
}

/// RFC 3339 UTC with microseconds.
pub fn fmt_time(t: SystemTime) -> String {
    let dt: time::OffsetDateTime = t.into();
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

mod rfc3339 {
    pub fn serialize<S: serde::Serializer>(
        t: &std::time::SystemTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::fmt_time(*t))
    }
}
mod rfc3339_opt {
    pub fn serialize<S: serde::Serializer>(
        t: &Option<std::time::SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::fmt_time(*t)),
            None => s.serialize_none(),
        }
    }
}

/// The HMAC key of a Standard Webhooks secret: `whsec_<base64>` decodes to the key bytes;
/// any other string is used as raw bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, ReceiverError> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ReceiverError::Secret(format!("whsec_ secret is not valid base64: {e}"))),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Result<String, ReceiverError> {
    Ok(format!(
        "v1,{}",
        sign_with_key(&secret_key(secret)?, id, timestamp, body)
    ))
}

fn sign_with_key(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Standard Webhooks verification: the header holds space-separated `v1,<sig>` entries; one
/// must match (constant-time compare).
pub fn verify_signature(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> bool {
    match secret_key(secret) {
        Ok(key) => verify_with_key(&key, id, timestamp, body, header),
        Err(_) => false,
    }
}

fn verify_with_key(key: &[u8], id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    header.split_whitespace().any(|entry| {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            return false;
        };
        mac.clone().verify_slice(&bytes).is_ok()
    })
}

/// Open `path` for appending (the CLI's `--log`).
pub fn open_log(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn standard_webhooks_reference_vector() {
        // The test vector from the Standard Webhooks reference implementations.
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = "1614265330";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(SECRET, id, ts, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify_signature(
            SECRET,
            id,
            ts,
            body,
            &format!("v1,bogus {sig}")
        ));
        assert!(!verify_signature(SECRET, id, ts, b"{}", &sig));
        assert!(!verify_signature(SECRET, "other", ts, body, &sig));
        assert!(!verify_signature("whsec_AAAA", id, ts, body, &sig));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripted_replies_and_recording() {
        let rx = Receiver::start_with_secret(SECRET).await.unwrap();
        rx.script(
            "/a",
            [
                Reply::status(500),
                Reply::status(429).retry_after("1"),
                Reply::status(502).body("text/html", "<html>bad gateway</html>"),
            ],
        );
        let http = reqwest::Client::new();
        let body = r#"{"id": 7, "op": "INSERT"}"#;
        let sig = sign(SECRET, "evt_7_0", "1700000000", body.as_bytes()).unwrap();
        let mut statuses = vec![];
        for _ in 0..4 {
            let r = http
                .post(rx.url("/a"))
                .header("webhook-id", "evt_7_0")
                .header("webhook-timestamp", "1700000000")
                .header("webhook-signature", &sig)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let ra = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            statuses.push((r.status().as_u16(), ra, r.text().await.unwrap()));
        }
        assert_eq!(statuses[0].0, 500);
        assert_eq!(statuses[1], (429, Some("1".into()), String::new()));
        assert_eq!(statuses[2].0, 502);
        assert_eq!(statuses[2].2, "<html>bad gateway</html>");
        assert_eq!(statuses[3].0, 200);
        // another path is unaffected by /a's script
        let r = http
            .post(rx.url("/b"))
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);

        assert!(rx.wait_for(5, Duration::from_secs(5)).await);
        let d = rx.deliveries();
        assert_eq!(d.len(), 5);
        assert_eq!(d[0].webhook_id.as_deref(), Some("evt_7_0"));
        assert_eq!(d[0].event_id(), Some(7));
        assert_eq!(d[0].signature_valid, Some(true));
        assert_eq!(d[4].path, "/b");
        assert_eq!(d[4].body, None);
        assert_eq!(&d[4].raw_body[..], b"not json");
        assert_eq!(d[4].signature_valid, Some(false));
        assert_eq!(rx.duplicate_count(), 3);
        assert_eq!(rx.unique_webhook_ids().len(), 1);
        assert_eq!(rx.delivered_event_ids(), HashSet::from([7]));
        assert_eq!(rx.counts_by_path().get("/a"), Some(&4));
        assert_eq!(rx.counts_by_status().get(&200), Some(&2));
        assert!(d.iter().all(|x| x.responded_at.is_some()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delays_are_observed_and_concurrency_measured() {
        let rx = Receiver::start().await.unwrap();
        rx.set_default("/slow", Reply::ok().delay(Duration::from_millis(300)));
        let http = reqwest::Client::new();
        let started = Instant::now();
        let reqs = (0..4).map(|_| http.post(rx.url("/slow")).body("{}").send());
        let results = futures_util::future::join_all(reqs).await;
        assert!(results
            .iter()
            .all(|r| r.as_ref().map(|r| r.status() == 200).unwrap_or(false)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "delay not applied: {took:?}"
        );
        assert!(
            rx.max_concurrency() >= 2,
            "requests were not concurrent: {}",
            rx.summary()
        );
        assert_eq!(rx.in_flight(), 0);
        for d in rx.deliveries() {
            let dt = d
                .responded_at
                .unwrap()
                .duration_since(d.received_at)
                .unwrap();
            assert!(dt >= Duration::from_millis(290), "{dt:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reject_invalid_signatures_and_log_lines() {
        let dir = std::env::temp_dir().join(format!("rx-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("log.jsonl");
        let _ = std::fs::remove_file(&log_path);
        let rx = Receiver::start_with(ReceiverOptions {
            secret: Some(SECRET.into()),
            reject_invalid_signatures: true,
            log: Some(open_log(&log_path).unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let r = http
            .post(rx.url("/x"))
            .header("webhook-id", "a")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let sig = sign(SECRET, "b", "1", b"{\"id\":1}").unwrap();
        let r = http
            .post(rx.url("/x"))
            .header("webhook-id", "b")
            .header("webhook-timestamp", "1")
            .header("webhook-signature", sig)
            .body("{\"id\":1}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            rx.deliveries().is_empty(),
            "keep_deliveries=false must not record"
        );
        rx.shutdown().await;
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 401);
        assert_eq!(lines[0]["signature_valid"], false);
        assert_eq!(lines[1]["status"], 200);
        assert_eq!(lines[1]["webhook_id"], "b");
        assert_eq!(lines[1]["body"]["id"], 1);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with(r#","body":{"id":1}}"#),
            "body verbatim: {text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
