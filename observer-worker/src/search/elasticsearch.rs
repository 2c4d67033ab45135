//! `elasticsearch: enabled`: every captured event into daily indices `<index>-YYYY.MM.DD` (by
//! capture day, UTC) over the bulk API.
//!
//! ```text
//! feed session (own connection, advisory lock: one sink per database)
//!   └─ loop: feed_fetch a page (rows) ─► documents (search::document, in the worker)
//!            ─► bulk requests (count / bytes), at most max_in_flight at once
//!            ─► per item: done (2xx, 409) │ again (429, 5xx) │ dead letter (400 ...)
//!            ─► feed_dead_letter_add ─► feed_save(last id of the page)
//!   (before each page: while this worker's delivery is behind, wait, at most yield_to_delivery)
//! ```
//!
//! Effectively once: each document is written with `create` and `_id` =
//! `evt_<installation>_<event id>` into the index of its capture day, so a page sent again after a
//! crash (the cursor had not moved) answers 409 for what was already in, which counts as done.
//! The cursor moves only when every item of the page is acknowledged or dead-lettered.
//! 401/403, connection failures and timeouts open a breaker that holds every request of the
//! sink until a try succeeds (backoff `initial_backoff` .. `max_backoff`).
//!
//! Plain `reqwest` rather than the official `elasticsearch` crate: that crate is still published
//! as an alpha, pulls its own HTTP stack, and the bulk API is a single endpoint whose answers we
//! classify ourselves anyway (docs/SEARCH.md).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::bulk::{self, Answer, Item, ItemAnswer};
use super::document::{self, Document};
use crate::config::{ElasticsearchConfig, EsAuth};
use crate::db::{Db, DbError, FeedDeadLetter, FeedSession};
use crate::installation::InstallationId;
use crate::pipeline::pressure::DeliveryPressure;
use crate::retry::{sleep_or_cancel, Backoff};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::search_metrics::{ItemOutcome, SearchMetrics};

/// The feed (cursor) of the sink in `observers.feed_cursor`.
pub const FEED: &str = "elasticsearch";
/// How often a worker that does not hold the sink's lock tries again.
const STANDBY_RETRY: Duration = Duration::from_secs(2);
/// How often the sink looks whether delivery is still behind while it gives way.
const YIELD_POLL: Duration = Duration::from_millis(50);
/// How long the sink waits, with the first full page of a burst in hand, for delivery to say
/// whether the burst gave it a backlog (the consumer's first fetch of it; usually milliseconds).
const BURST_GRACE: Duration = crate::pipeline::pressure::HOLD;

#[derive(Debug, thiserror::Error)]
pub enum EsError {
    #[error("cannot build the Elasticsearch client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("invalid Elasticsearch credentials: {0}")]
    Credentials(String),
}

/// The HTTP side: knows only how to talk to Elasticsearch.
pub struct EsClient {
    http: reqwest::Client,
    base: String,
    gzip: bool,
}

/// The answer to one bulk request, or why there was none.
enum Sent {
    Answer(Answer),
    /// No answer: connection failure or timeout.
    NoAnswer(String),
}

impl EsClient {
    pub fn new(cfg: &ElasticsearchConfig) -> Result<EsClient, EsError> {
        let mut headers = HeaderMap::new();
        match &cfg.auth {
            EsAuth::None => {}
            EsAuth::ApiKey(k) => {
                let v = HeaderValue::from_str(&format!("ApiKey {k}")).map_err(|_| {
                    EsError::Credentials("api_key is not a valid header value".into())
                })?;
                headers.insert(AUTHORIZATION, sensitive(v));
            }
            EsAuth::Basic { user, password } => {
                use base64::Engine as _;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                let v = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| EsError::Credentials("user/password".into()))?;
                headers.insert(AUTHORIZATION, sensitive(v));
            }
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(cfg.max_in_flight as usize)
            .build()
            .map_err(EsError::Build)?;
        Ok(EsClient {
            http,
            base: cfg.url.clone(),
            gzip: cfg.gzip,
        })
    }

    /// `PUT _index_template/<prefix>`; `Err` with the reason, and whether it is worth retrying.
    pub async fn install_template(&self, prefix: &str) -> Result<(), (bool, String)> {
        let body = bulk::index_template(prefix).to_string();
        let r = self
            .http
            .put(format!("{}/_index_template/{prefix}", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| (true, crate::db::root_cause(&e)))?;
        let status = r.status().as_u16();
        if r.status().is_success() {
            return Ok(());
        }
        let text = r.text().await.unwrap_or_default();
        let retry = matches!(status, 401 | 403 | 429 | 500..=599);
        Err((
            retry,
            format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ),
        ))
    }

    async fn bulk(&self, items: &[Item]) -> Sent {
        let body = bulk::ndjson(items);
        let mut req = self
            .http
            .post(format!("{}/_bulk", self.base))
            .header(CONTENT_TYPE, "application/x-ndjson");
        let body = if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            match enc.write_all(&body).and_then(|_| enc.finish()) {
                Ok(z) => {
                    req = req.header(CONTENT_ENCODING, "gzip");
                    z
                }
                Err(_) => body,
            }
        } else {
            body
        };
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return Sent::NoAnswer(describe(&e)),
        };
        let status = resp.status().as_u16();
        match resp.bytes().await {
            Ok(b) => Sent::Answer(bulk::classify_response(status, &b, items.len())),
            Err(e) => Sent::NoAnswer(describe(&e)),
        }
    }
}

fn sensitive(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out: {}", crate::db::root_cause(e))
    } else {
        crate::db::root_cause(e)
    }
}

/// Holds every request of the sink while Elasticsearch refuses us (401/403) or cannot be
/// reached; the first request after the wait is the probe.
struct Breaker {
    state: Mutex<(Option<Instant>, Backoff)>,
    metrics: Option<SearchMetrics>,
}

impl Breaker {
    fn new(initial: Duration, max: Duration, metrics: Option<SearchMetrics>) -> Breaker {
        Breaker {
            state: Mutex::new((None, Backoff::new(initial, max))),
            metrics,
        }
    }

    /// Waits while open. False when stopped.
    async fn pass(&self, stop: &CancellationToken) -> bool {
        loop {
            let until = self.state.lock().0;
            match until {
                Some(t) if t > Instant::now() => {
                    if !sleep_or_cancel(stop, t - Instant::now()).await {
                        return false;
                    }
                }
                _ => return !stop.is_cancelled(),
            }
        }
    }

    fn trip(&self, reason: &str) {
        let mut s = self.state.lock();
        let wait = s.1.next_delay();
        let was_open = s.0.is_some();
        s.0 = Some(Instant::now() + wait);
        drop(s);
        if let Some(m) = &self.metrics {
            m.es_breaker_open.set(1);
        }
        if was_open {
            debug!(reason, retry_in = ?wait, "Elasticsearch still unavailable; holding");
        } else {
            warn!(reason, retry_in = ?wait, "Elasticsearch unavailable: the sink holds every document until it answers");
        }
    }

    fn close(&self) {
        let mut s = self.state.lock();
        if s.0.take().is_some() {
            info!("Elasticsearch answers again: the sink goes on");
        }
        s.1.reset();
        drop(s);
        if let Some(m) = &self.metrics {
            m.es_breaker_open.set(0);
        }
    }
}

/// Everything a page needs.
struct Ctx {
    client: EsClient,
    installation: InstallationId,
    cfg: ElasticsearchConfig,
    breaker: Breaker,
    metrics: Option<SearchMetrics>,
}

impl Ctx {
    fn count(&self, o: ItemOutcome, n: usize) {
        if let Some(m) = &self.metrics {
            m.item(o, n as u64);
        }
    }
    fn request(&self, result: &str, took: Duration) {
        if let Some(m) = &self.metrics {
            m.es_requests.with_label_values(&[result]).inc();
            m.es_bulk_duration.observe(took.as_secs_f64());
        }
    }
}

/// Sends one bulk request's items until each is done or dead-lettered. `None` when stopped.
async fn deliver(
    ctx: &Ctx,
    items: Vec<Item>,
    stop: &CancellationToken,
) -> Option<Vec<FeedDeadLetter>> {
    let mut dead = Vec::new();
    // requests still to send (a 413 splits one into two); items with their attempt counts
    let mut queue: VecDeque<Vec<(Item, u32)>> =
        VecDeque::from([items.into_iter().map(|i| (i, 0)).collect::<Vec<_>>()]);
    let mut backoff = Backoff::new(ctx.cfg.initial_backoff, ctx.cfg.max_backoff);
    while let Some(mut pending) = queue.pop_front() {
        while !pending.is_empty() {
            if !ctx.breaker.pass(stop).await {
                return None;
            }
            let batch: Vec<Item> = pending.iter().map(|(i, _)| i.clone()).collect();
            let started = Instant::now();
            let sent = ctx.client.bulk(&batch).await;
            let took = started.elapsed();
            let retry_wait = match sent {
                Sent::NoAnswer(reason) => {
                    ctx.request("held", took);
                    ctx.breaker.trip(&reason);
                    continue;
                }
                Sent::Answer(Answer::Hold { reason }) => {
                    ctx.request("held", took);
                    ctx.breaker.trip(&reason);
                    continue;
                }
                Sent::Answer(Answer::TooLarge) => {
                    ctx.request("too_large", took);
                    ctx.breaker.close();
                    if pending.len() == 1 {
                        let (i, _) = pending.pop().expect("one item");
                        ctx.count(ItemOutcome::DeadLettered, 1);
                        dead.push(dead_letter(i, Some(413), "413: the document alone is larger than the cluster accepts (http.max_content_length)"));
                    } else {
                        let second = pending.split_off(pending.len() / 2);
                        queue.push_front(second);
                        queue.push_front(std::mem::take(&mut pending));
                    }
                    break;
                }
                Sent::Answer(Answer::RetryAll { status, reason }) => {
                    ctx.request("retry", took);
                    ctx.breaker.close();
                    ctx.count(ItemOutcome::Retried, pending.len());
                    let mut keep = Vec::new();
                    for (i, n) in pending.drain(..) {
                        if give_up(ctx, n + 1) {
                            ctx.count(ItemOutcome::DeadLettered, 1);
                            dead.push(dead_letter(
                                i,
                                Some(i32::from(status)),
                                &format!("{status} after {} attempts: {reason}", n + 1),
                            ));
                        } else {
                            keep.push((i, n + 1));
                        }
                    }
                    pending = keep;
                    debug!(status, reason = %reason, items = pending.len(), "bulk request answered for every item: sending again");
                    true
                }
                Sent::Answer(Answer::Items(answers)) => {
                    ctx.request("ok", took);
                    ctx.breaker.close();
                    let mut keep = Vec::new();
                    for ((i, n), a) in pending.drain(..).zip(answers) {
                        match a {
                            ItemAnswer::Created => ctx.count(ItemOutcome::Created, 1),
                            ItemAnswer::Exists => ctx.count(ItemOutcome::Exists, 1),
                            ItemAnswer::DeadLetter { status, reason } => {
                                ctx.count(ItemOutcome::DeadLettered, 1);
                                dead.push(dead_letter(i, Some(i32::from(status)), &reason));
                            }
                            ItemAnswer::Retry { status, reason } => {
                                ctx.count(ItemOutcome::Retried, 1);
                                if give_up(ctx, n + 1) {
                                    ctx.count(ItemOutcome::DeadLettered, 1);
                                    dead.push(dead_letter(
                                        i,
                                        Some(i32::from(status)),
                                        &format!("{status} after {} attempts: {reason}", n + 1),
                                    ));
                                } else {
                                    keep.push((i, n + 1));
                                }
                            }
                        }
                    }
                    pending = keep;
                    !pending.is_empty()
                }
            };
            if retry_wait && !pending.is_empty() && !backoff.wait(stop).await {
                return None;
            }
        }
    }
    Some(dead)
}

fn give_up(ctx: &Ctx, attempts: u32) -> bool {
    ctx.cfg.max_attempts > 0 && attempts >= ctx.cfg.max_attempts
}

fn dead_letter(i: Item, status: Option<i32>, reason: &str) -> FeedDeadLetter {
    FeedDeadLetter {
        event_id: i.event_id,
        target: i.index,
        status,
        error: reason.to_owned(),
        document: i.source,
    }
}

/// Runs the sink until `stop`. `pressure`: this worker's delivery, which the sink gives way to
/// while it is behind (`yield_to_delivery`).
pub async fn run(
    db: Db,
    cfg: ElasticsearchConfig,
    installation: InstallationId,
    metrics: Option<Arc<Metrics>>,
    pressure: Arc<DeliveryPressure>,
    stop: CancellationToken,
) {
    let client = match EsClient::new(&cfg) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "Elasticsearch sink not started");
            return;
        }
    };
    let search_metrics = metrics.as_ref().map(|m| m.search.clone());
    let ctx = Ctx {
        breaker: Breaker::new(cfg.initial_backoff, cfg.max_backoff, search_metrics.clone()),
        client,
        installation,
        cfg,
        metrics: search_metrics,
    };
    info!(url = %ctx.cfg.url, index = %ctx.cfg.index, "Elasticsearch sink started");
    if ctx.cfg.install_template && !install_template(&ctx, &stop).await {
        return;
    }
    let mut session: Option<FeedSession> = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut standby_logged = false;
    let page_size = (ctx.cfg.batch_size as usize * ctx.cfg.max_in_flight as usize).min(100_000);
    let mut copied: u64 = 0;
    // the last page was not full: the sink had caught up
    let mut idle = true;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let s = match session.take().filter(|s| !s.is_closed()) {
            Some(s) => s,
            None => match db.feed_session(FEED).await {
                Ok(Some(s)) => {
                    info!(feed = FEED, "this worker feeds Elasticsearch");
                    standby_logged = false;
                    s
                }
                Ok(None) => {
                    if !standby_logged {
                        info!(
                            feed = FEED,
                            "another worker feeds Elasticsearch; standing by"
                        );
                        standby_logged = true;
                    }
                    if !sleep_or_cancel(&stop, STANDBY_RETRY).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    debug!(error = %e, "Elasticsearch sink: database unavailable");
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            },
        };
        // a page, after delivery; or, when delivery stayed behind, one request without more waiting
        let (size, give_way) = match yield_to_delivery(&ctx, &pressure, &stop).await {
            Turn::Page => (page_size, Some(&*pressure)),
            Turn::OneRequest => (ctx.cfg.batch_size as usize, None),
            Turn::Stop => break,
        };
        match copy_page(&ctx, &s, size, idle, give_way, &stop).await {
            Ok(Some(n)) => {
                backoff.reset();
                copied += n as u64;
                idle = n < size;
                session = Some(s);
                if n < size
                    && !sleep_or_cancel(&stop, ctx.cfg.linger.max(Duration::from_millis(10))).await
                {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                if e.is_retryable() {
                    debug!(error = %e, "Elasticsearch sink: database unavailable");
                } else {
                    warn!(error = %e, "Elasticsearch sink: database error");
                }
                // a fresh session (and lock) next time
                if !backoff.wait(&stop).await {
                    break;
                }
            }
        }
    }
    info!(documents = copied, "Elasticsearch sink stopped");
}

/// What the sink does after giving way to delivery.
enum Turn {
    /// A whole page (`batch_size × max_in_flight`).
    Page,
    /// Delivery is still behind after `yield_to_delivery`: one bulk request's worth, so the index
    /// keeps moving under a backlog that never ends, at the smallest cost to delivery.
    OneRequest,
    Stop,
}

/// Waits while delivery is behind, at most `yield_to_delivery`.
///
/// Why: on a small machine the sink's work (reading the page, building and compressing the
/// documents, and, when the cluster runs on the same host, the cluster's own indexing) takes
/// CPU from the webhooks. The index may lag: its cursor is its own, and it catches up once the
/// backlog is gone (docs/SEARCH.md, "Priority").
async fn yield_to_delivery(ctx: &Ctx, p: &DeliveryPressure, stop: &CancellationToken) -> Turn {
    let max = ctx.cfg.yield_to_delivery;
    if stop.is_cancelled() {
        return Turn::Stop;
    }
    if max.is_zero() || !p.behind() {
        return Turn::Page;
    }
    let started = Instant::now();
    debug!(max = ?max, "delivery is behind: the Elasticsearch sink waits");
    let turn = loop {
        if !p.behind() {
            break Turn::Page;
        }
        let left = max.saturating_sub(started.elapsed());
        if left.is_zero() {
            break Turn::OneRequest;
        }
        if !sleep_or_cancel(stop, YIELD_POLL.min(left)).await {
            break Turn::Stop;
        }
    };
    if let Some(m) = &ctx.metrics {
        m.es_yielded.inc_by(started.elapsed().as_secs_f64());
    }
    turn
}

async fn install_template(ctx: &Ctx, stop: &CancellationToken) -> bool {
    loop {
        if !ctx.breaker.pass(stop).await {
            return false;
        }
        match ctx.client.install_template(&ctx.cfg.index).await {
            Ok(()) => {
                ctx.breaker.close();
                info!(template = %ctx.cfg.index, "Elasticsearch index template installed");
                return true;
            }
            Err((true, reason)) => ctx
                .breaker
                .trip(&format!("installing the index template: {reason}")),
            Err((false, reason)) => {
                warn!(template = %ctx.cfg.index, reason = %reason, "the index template was refused; indexing goes on without it (docs/SEARCH.md)");
                return true;
            }
        }
    }
}

/// One page: fetch, build, send, dead-letter, save. `Ok(Some(n))`: n events copied (0: none
/// waiting); `Ok(None)`: stopped (nothing saved: the page is sent again by the next run, 409s).
/// `give_way`: wait for a backlogged delivery once the page is read (`idle`: the sink had caught
/// up, so a full page is a burst that delivery may not have looked at yet).
async fn copy_page(
    ctx: &Ctx,
    s: &FeedSession,
    page_size: usize,
    idle: bool,
    give_way: Option<&DeliveryPressure>,
    stop: &CancellationToken,
) -> Result<Option<usize>, DbError> {
    let rows = s.fetch_rows(page_size as i32).await?;
    if rows.is_empty() {
        if let Some(m) = &ctx.metrics {
            m.es_lag.set(0.0);
        }
        return Ok(Some(0));
    }
    let n = rows.len();
    let last_id = rows.iter().map(|r| r.event_id).max().unwrap_or(0);
    let mut dead = Vec::new();
    let mut items: Vec<Item> = Vec::with_capacity(n);
    let mut oldest: Option<f64> = None;
    for r in &rows {
        match document::build(r) {
            Ok(d) => {
                oldest.get_or_insert(d.captured_at);
                items.push(to_item(ctx, r.event_id, d));
            }
            // not reachable with the database's jsonb::text; kept for the operator, never lost
            Err(e) => {
                ctx.count(ItemOutcome::DeadLettered, 1);
                dead.push(FeedDeadLetter {
                    event_id: r.event_id,
                    target: ctx.cfg.index.clone(),
                    status: None,
                    error: e.to_string(),
                    document: format!(
                        "{{\"new\": {}, \"old\": {}}}",
                        r.new.as_deref().unwrap_or("null"),
                        r.old.as_deref().unwrap_or("null")
                    ),
                });
            }
        }
    }
    drop(rows);
    if let (Some(m), Some(first)) = (&ctx.metrics, oldest) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        m.es_lag.set((now - first).max(0.0));
    }
    if let Some(pressure) = give_way {
        // A full page after a short one: a burst arrived, and it woke delivery too. Give
        // delivery the time to look at it (its first full fetch says it is behind) first.
        if idle && n >= page_size && !ctx.cfg.yield_to_delivery.is_zero() {
            let until = Instant::now() + BURST_GRACE;
            while !pressure.behind() && Instant::now() < until {
                if !sleep_or_cancel(stop, Duration::from_millis(10)).await {
                    return Ok(None);
                }
            }
        }
        // delivery goes first (also when it found a backlog while this page was read)
        if matches!(yield_to_delivery(ctx, pressure, stop).await, Turn::Stop) {
            return Ok(None);
        }
    }
    let requests = bulk::chunks(
        items,
        ctx.cfg.batch_size as usize,
        ctx.cfg.batch_bytes as usize,
    );
    let results: Vec<Option<Vec<FeedDeadLetter>>> = stream::iter(requests)
        .map(|r| deliver(ctx, r, stop))
        .buffer_unordered(ctx.cfg.max_in_flight as usize)
        .collect()
        .await;
    for r in results {
        match r {
            Some(d) => dead.extend(d),
            None => return Ok(None),
        }
    }
    if !dead.is_empty() {
        warn!(items = dead.len(), first_error = %dead[0].error, "Elasticsearch refused documents: they are in observers.feed_dead_letter");
    }
    s.dead_letter(&dead).await?;
    s.save(last_id, n as i64).await?;
    Ok(Some(n))
}

fn to_item(ctx: &Ctx, event_id: i64, d: Document) -> Item {
    Item {
        event_id,
        index: format!("{}-{}", ctx.cfg.index, d.day),
        id: ctx.installation.document_id(event_id),
        source: d.source,
    }
}
