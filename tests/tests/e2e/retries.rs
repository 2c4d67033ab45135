//! SPEC §4 delivery outcomes: 2xx success; 429/5xx/timeouts retried (Retry-After honoured);
//! other 4xx dead-lettered at once; exhausted retries dead-lettered with every attempt counted;
//! garbage responses handled.

use std::time::Duration;

use observers_tests::cluster::TestDb;
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{status_sum, wait_observer_ready};
use observers_tests::worker::Worker;

use crate::common::*;

/// A database with table `public.things`, an INSERT observer `things` whose actions are the
/// given YAML list items, and a running worker.
async fn start(name: &str, retry: &str, actions: &str) -> (TestDb, Receiver, Worker) {
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute("CREATE TABLE public.things (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let actions = actions.replace("{rx}", &rx.url(""));
    let yaml = config(
        &format!("w-{name}"),
        retry,
        &format!("  - name: things\n    table: public.things\n    events: [INSERT]\n    actions:\n{actions}"),
    );
    let worker = start_worker(name, &db, &yaml, &[]);
    wait_observer_ready(&db.client, "things", "public.things", SHORT).await;
    (db, rx, worker)
}

const FAST_RETRY: &str =
    "retry: { max_attempts: 5, initial_backoff: 100ms, max_backoff: 1s, multiplier: 2 }\n";

fn webhook(path: &str, extra: &str) -> String {
    format!("      - type: webhook\n        url: {{rx}}{path}\n        timeout: 5s\n{extra}")
}

async fn insert(db: &TestDb, label: &str) -> i64 {
    db.client
        .execute("INSERT INTO public.things (label) VALUES ($1)", &[&label])
        .await
        .unwrap();
    observers_tests::util::scalar_i64(&db.client, "SELECT max(id) FROM observers.event", &[])
        .await
        .expect("event id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_then_success_is_retried_with_the_same_webhook_id() {
    let (db, rx, mut worker) = start("retry_500", FAST_RETRY, &webhook("/h", "")).await;
    rx.script("/h", [Reply::status(500).body("text/plain", "boom")]);
    let event = insert(&db, "x").await;
    assert!(
        rx.wait_for_events(1, SHORT).await,
        "never delivered after a 500; {}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(2), SHORT).await;
    let d = rx.deliveries();
    assert_eq!(
        d.iter().map(|x| x.status).collect::<Vec<_>>(),
        [500, 200],
        "{}",
        rx.summary()
    );
    assert_eq!(
        d[0].webhook_id, d[1].webhook_id,
        "webhook-id must be stable across retries"
    );
    assert_eq!(
        d[0].webhook_id.as_deref(),
        Some(webhook_id(&db.client, event, 0).await.as_str())
    );
    assert_eq!(d[0].body, d[1].body, "the retry sends the same body");
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(status_sum(&db.client, "dlq_count").await, 0);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_is_dead_lettered_after_one_attempt() {
    let (db, rx, mut worker) = start("retry_400", FAST_RETRY, &webhook("/h", "")).await;
    rx.set_default(
        "/h",
        Reply::status(400).body("application/json", r#"{"error":"missing field sku"}"#),
    );
    let event = insert(&db, "bad").await;
    assert!(
        wait_dlq(&db.client, 1, SHORT).await,
        "a 400 was not dead-lettered; {}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(3), SHORT).await;
    assert_eq!(rx.count(), 1, "a 400 must not be retried; {}", rx.summary());
    let dlq = dlq_rows(&db.client).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let row = &dlq[0];
    assert_eq!(
        row["event_id"].as_deref(),
        Some(event.to_string().as_str()),
        "{row:?}"
    );
    assert_eq!(row["attempts"].as_deref(), Some("1"), "{row:?}");
    assert_eq!(row["last_status"].as_deref(), Some("400"), "{row:?}");
    assert_eq!(
        row["webhook_id"].as_deref(),
        Some(webhook_id(&db.client, event, 0).await.as_str()),
        "{row:?}"
    );
    let err = row["error"].clone().unwrap_or_default();
    assert!(
        err.contains("400"),
        "DLQ error should say what happened (status 400): {err:?}"
    );
    let payload: serde_json::Value =
        serde_json::from_str(row["payload"].as_deref().unwrap_or("null")).unwrap();
    assert_eq!(
        payload["new"]["label"], "bad",
        "DLQ keeps a full copy of the payload: {payload}"
    );
    assert!(
        wait_backlog_zero(&db.client, SHORT).await,
        "a dead-lettered event is finished"
    );
    assert_eq!(
        status_sum(&db.client, "dlq_count").await,
        1,
        "status() dlq_count"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_honours_retry_after() {
    // Backoff alone would retry after <= 50 ms (full jitter); Retry-After says 1 s. max_backoff
    // stays above 1 s: the worker documents Retry-After as clamped to max_backoff
    // (docs/WEBHOOKS.md), see FINDINGS-tests.md.
    let retry =
        "retry: { max_attempts: 5, initial_backoff: 50ms, max_backoff: 5s, multiplier: 1 }\n";
    let (db, rx, mut worker) = start("retry_429", retry, &webhook("/h", "")).await;
    rx.script("/h", [Reply::status(429).retry_after("1")]);
    insert(&db, "x").await;
    assert!(
        rx.wait_for_events(1, SHORT).await,
        "never delivered after a 429; {}",
        rx.summary()
    );
    let d = rx.deliveries();
    assert_eq!(d.len(), 2, "{}", rx.summary());
    assert_eq!((d[0].status, d[1].status), (429, 200));
    assert_eq!(d[0].webhook_id, d[1].webhook_id);
    let gap = d[1]
        .received_at
        .duration_since(d[0].responded_at.unwrap())
        .unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(950),
        "retried {gap:?} after a 429 with Retry-After: 1"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_retried() {
    let (db, rx, mut worker) = start(
        "retry_timeout",
        FAST_RETRY,
        "      - type: webhook\n        url: {rx}/h\n        timeout: 500ms\n",
    )
    .await;
    rx.script("/h", [Reply::ok().delay(Duration::from_secs(4))]);
    insert(&db, "x").await;
    // The first request hangs past the 500ms timeout; the retry answers at once.
    assert!(
        rx.wait_for(2, SHORT).await,
        "a timed-out request was not retried; {}",
        rx.summary()
    );
    let d = rx.deliveries();
    assert_eq!(d[0].webhook_id, d[1].webhook_id);
    let gap = d[1]
        .received_at
        .duration_since(d[0].received_at)
        .unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(450),
        "retry came {gap:?} after the first attempt, before the 500ms timeout"
    );
    assert!(
        gap < Duration::from_secs(4),
        "the worker waited for the slow answer instead of timing out ({gap:?})"
    );
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    rx.settle(Duration::from_secs(5), SHORT).await;
    assert_eq!(rx.count(), 2, "{}", rx.summary());
    assert_eq!(status_sum(&db.client, "dlq_count").await, 0);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_dead_lettered_with_every_attempt() {
    // The action overrides the global max_attempts.
    let (db, rx, mut worker) = start(
        "retry_exhaust",
        FAST_RETRY,
        &webhook("/h", "        retry: { max_attempts: 3 }\n"),
    )
    .await;
    rx.set_default("/h", Reply::status(503));
    let event = insert(&db, "x").await;
    assert!(
        wait_dlq(&db.client, 1, SHORT).await,
        "not dead-lettered after exhausting retries; {}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(3), SHORT).await;
    assert_eq!(
        rx.count(),
        3,
        "exactly max_attempts requests; {}",
        rx.summary()
    );
    let ids: std::collections::HashSet<_> = rx
        .deliveries()
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "one webhook-id for all attempts: {ids:?}");
    let dlq = dlq_rows(&db.client).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0]["event_id"].as_deref(),
        Some(event.to_string().as_str())
    );
    assert_eq!(dlq[0]["attempts"].as_deref(), Some("3"), "{:?}", dlq[0]);
    assert_eq!(
        dlq[0]["last_status"].as_deref(),
        Some("503"),
        "{:?}",
        dlq[0]
    );
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(status_sum(&db.client, "dlq_count").await, 1);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_responses_200_is_success_502_html_is_retried() {
    let actions = format!(
        "{}{}",
        webhook("/garbage-ok", ""),
        webhook("/bad-gateway", "")
    );
    let (db, rx, mut worker) = start("retry_garbage", FAST_RETRY, &actions).await;
    rx.set_default(
        "/garbage-ok",
        Reply::ok().body("text/plain", "\u{0}\u{1}<<not json at all>>"),
    );
    rx.script(
        "/bad-gateway",
        [Reply::status(502).body(
            "text/html",
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )],
    );
    let event = insert(&db, "x").await;
    assert!(
        rx.wait_until(SHORT, |rx| rx
            .deliveries()
            .iter()
            .filter(|d| d.succeeded())
            .count()
            >= 2)
            .await,
        "{}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(2), SHORT).await;
    let ok = rx.deliveries_for("/garbage-ok");
    assert_eq!(
        ok.len(),
        1,
        "a 200 with a garbage body is a success, not retried"
    );
    assert_eq!(
        ok[0].webhook_id.as_deref(),
        Some(webhook_id(&db.client, event, 0).await.as_str()),
        "action index 0"
    );
    let bg = rx.deliveries_for("/bad-gateway");
    assert_eq!(
        bg.iter().map(|d| d.status).collect::<Vec<_>>(),
        [502, 200],
        "502 with HTML is retried"
    );
    assert_eq!(
        bg[0].webhook_id.as_deref(),
        Some(webhook_id(&db.client, event, 1).await.as_str()),
        "action index 1"
    );
    assert_eq!(bg[1].webhook_id, bg[0].webhook_id);
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(status_sum(&db.client, "dlq_count").await, 0);
    assert!(worker.is_running());
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
