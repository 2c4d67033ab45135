//! The operators' control plane with the real worker: a dead letter retried with
//! `observers.dlq_retry()` is delivered again with the same webhook-id and leaves the DLQ only
//! when it succeeds; `observers.replay()` delivers past events again, skipping pairs that
//! deduplication remembers unless forced; `observers.debug_event()` shows the attempts the
//! worker recorded.

use std::time::Duration;

use observers_tests::cluster::TestDb;
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{poll, scalar_i64, wait_observer_ready};
use observers_tests::worker::Worker;
use tokio_postgres::Client;

use crate::common::*;

async fn start(name: &str, extra: &str) -> (TestDb, Receiver, Worker) {
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute("CREATE TABLE public.things (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let yaml = config(
        &format!("w-{name}"),
        extra,
        &format!(
            "  - name: things\n    table: public.things\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n        timeout: 5s\n",
            rx.url("/h")
        ),
    );
    let worker = start_worker(name, &db, &yaml, &[]);
    wait_observer_ready(&db.client, "things", "public.things", SHORT).await;
    (db, rx, worker)
}

const TWO_ATTEMPTS: &str =
    "retry: { max_attempts: 2, initial_backoff: 50ms, max_backoff: 100ms, multiplier: 2 }\n";

async fn count(client: &Client, sql: &str) -> i64 {
    scalar_i64(client, sql, &[]).await.unwrap_or(-1)
}

/// Waits until `sql` (a count) returns `want`.
async fn wait_count(client: &Client, sql: &str, want: i64, timeout: Duration) -> bool {
    poll(timeout, Duration::from_millis(100), || async {
        (count(client, sql).await == want).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_redelivers_with_the_same_webhook_id_and_leaves_the_dlq_only_on_success() {
    let (db, rx, mut worker) = start("ops_dlq_retry", TWO_ATTEMPTS).await;
    rx.set_default("/h", Reply::status(500));
    db.client
        .batch_execute(
            "INSERT INTO public.things (label) SELECT 'x' || g FROM generate_series(1, 3) g",
        )
        .await
        .unwrap();
    assert!(wait_dlq(&db.client, 3, SHORT).await, "{}", rx.summary());
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    let first: i64 = count(&db.client, "SELECT min(id) FROM observers.dlq").await;
    let first_event = count(
        &db.client,
        &format!("SELECT event_id FROM observers.dlq WHERE id = {first}"),
    )
    .await;
    let before = rx.deliveries().len();

    // the endpoint still fails: the entry stays, with one more retry and its attempts added
    let queued: bool = db
        .client
        .query_one("SELECT observers.dlq_retry($1)", &[&first])
        .await
        .unwrap()
        .get(0);
    assert!(queued);
    assert!(
        wait_count(
            &db.client,
            &format!("SELECT count(*) FROM observers.dlq_list() WHERE id = {first} AND retries = 1 AND NOT retry_pending"),
            1,
            SHORT
        )
        .await,
        "the failed retry was not recorded on the entry; {}",
        rx.summary()
    );
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM observers.dlq").await,
        3
    );
    assert_eq!(
        count(
            &db.client,
            &format!("SELECT attempts FROM observers.dlq WHERE id = {first}")
        )
        .await,
        4,
        "2 attempts at first, 2 more in the retry"
    );
    let retried: Vec<_> = rx.deliveries()[before..].to_vec();
    assert_eq!(retried.len(), 2, "{}", rx.summary());
    let want_id = webhook_id(&db.client, first_event, 0).await;
    assert!(retried
        .iter()
        .all(|d| d.webhook_id.as_deref() == Some(want_id.as_str())));

    // fixed: retry everything; each entry is delivered once more and leaves the DLQ
    rx.set_default("/h", Reply::ok());
    let n = count(&db.client, "SELECT observers.dlq_retry_all()").await;
    assert_eq!(n, 3);
    assert!(
        wait_count(&db.client, "SELECT count(*) FROM observers.dlq", 0, SHORT).await,
        "{}",
        rx.summary()
    );
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM observers.parked").await,
        0
    );
    let ok: Vec<_> = rx
        .deliveries()
        .into_iter()
        .filter(|d| d.succeeded())
        .collect();
    assert_eq!(ok.len(), 3, "{}", rx.summary());
    for d in &ok {
        assert_eq!(
            d.webhook_id.as_deref(),
            Some(
                webhook_id(&db.client, d.event_id().unwrap(), 0)
                    .await
                    .as_str()
            ),
            "a retried dead letter keeps its webhook-id"
        );
    }

    // debug_event shows what the worker recorded for the first pair: 4 failures, 1 success
    // (the attempt log is written asynchronously: wait for the fifth row)
    let logged = |n: usize| {
        let c = &db.client;
        async move {
            let v: serde_json::Value = c
                .query_one("SELECT observers.debug_event($1)", &[&first_event])
                .await
                .unwrap()
                .get(0);
            (v["attempts"].as_array().map_or(0, Vec::len) >= n).then_some(())
        }
    };
    assert!(poll(SHORT, Duration::from_millis(200), || logged(5))
        .await
        .is_some());
    let dbg: serde_json::Value = db
        .client
        .query_one("SELECT observers.debug_event($1)", &[&first_event])
        .await
        .unwrap()
        .get(0);
    let outcomes: Vec<(String, Option<i64>)> = dbg["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap().to_owned(),
                a["status"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("retry".to_owned(), Some(500)),
            ("failed".to_owned(), Some(500)),
            ("retry".to_owned(), Some(500)),
            ("failed".to_owned(), Some(500)),
            // the status of a delivered attempt is recorded too (it was NULL before issue 9)
            ("delivered".to_owned(), Some(200)),
        ]
    );
    assert_eq!(dbg["actions"][0]["result"], "delivered");
    // the worker counted them (its heartbeat, every 5 s; /metrics mirrors the same counters as
    // observer_redeliveries_total{reason="dlq_retry"})
    assert!(
        wait_count(
            &db.client,
            "SELECT count(*) FROM observers.worker \
              WHERE (info->'stats'->>'dlq_retries_failed')::int = 1 \
                AND (info->'stats'->>'dlq_retries_delivered')::int = 3",
            1,
            SHORT
        )
        .await,
        "heartbeat counters: {:?}",
        db.client
            .query_one("SELECT info->'stats' FROM observers.worker LIMIT 1", &[])
            .await
            .map(|r| r.get::<_, serde_json::Value>(0))
    );
    assert_eq!(dbg["state"], "finished");
    assert_eq!(dbg["dlq"].as_array().map(Vec::len), Some(0));
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_skips_pairs_deduplication_remembers_unless_forced() {
    let (db, rx, mut worker) = start(
        "ops_replay",
        "deduplication: { backend: postgres, ttl: 1h }\n",
    )
    .await;
    db.client
        .batch_execute(
            "INSERT INTO public.things (label) SELECT 'x' || g FROM generate_series(1, 4) g",
        )
        .await
        .unwrap();
    assert!(rx.wait_for(4, SHORT).await, "{}", rx.summary());
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    let (lo, hi) = (
        count(&db.client, "SELECT min(id) FROM observers.event").await,
        count(&db.client, "SELECT max(id) FROM observers.event").await,
    );

    // without force: every pair already succeeded, so none is sent again
    let queued = count(
        &db.client,
        &format!("SELECT observers.replay('things', {lo}, {hi})"),
    )
    .await;
    assert_eq!(queued, 4);
    assert!(
        wait_count(
            &db.client,
            "SELECT count(*) FROM observers.parked",
            0,
            SHORT
        )
        .await
    );
    rx.settle(Duration::from_secs(1), SHORT).await;
    assert_eq!(
        rx.count(),
        4,
        "replay without force re-sent done pairs; {}",
        rx.summary()
    );

    // forced: all four again, same webhook-ids and bodies
    let queued = count(
        &db.client,
        &format!("SELECT observers.replay('things', {lo}, {hi}, force => true)"),
    )
    .await;
    assert_eq!(queued, 4);
    assert!(rx.wait_for(8, SHORT).await, "{}", rx.summary());
    assert!(
        wait_count(
            &db.client,
            "SELECT count(*) FROM observers.parked",
            0,
            SHORT
        )
        .await
    );
    let d = rx.deliveries();
    for a in &d[..4] {
        let again = d[4..]
            .iter()
            .find(|x| x.event_id() == a.event_id())
            .expect("every event replayed");
        assert_eq!(again.webhook_id, a.webhook_id);
        assert_eq!(again.body, a.body, "a replay sends the original body");
    }
    assert_eq!(rx.duplicate_count(), 4);
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM observers.dlq").await,
        0
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

/// The worker needs nothing beyond `observers_worker` (plus SELECT on the tables it observes):
/// a login role with only that delivers, dead-letters, writes the attempt log and heartbeats,
/// keeps deduplication state, serves /metrics (its database gauges come from status()), and
/// delivers a DLQ retry an operator queued; and nothing in its log says "permission denied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_with_only_observers_worker() {
    let (db, rx) = setup("ops_least_privilege").await;
    let role = format!("ops_worker_{}", std::process::id());
    db.client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN IN ROLE observers_worker;
             CREATE TABLE public.things (id serial PRIMARY KEY, label text);
             GRANT SELECT ON public.things TO {role};"
        ))
        .await
        .unwrap();
    let url = db.url.replacen("://postgres@", &format!("://{role}@"), 1);
    assert_ne!(url, db.url, "unexpected test URL shape: {}", db.url);
    let port = observers_tests::cluster::free_port();
    let yaml = format!(
        "{}metrics: {{ enabled: true, listen: 127.0.0.1:{port} }}\n{TWO_ATTEMPTS}\
         deduplication: {{ backend: postgres, ttl: 1h }}\n\
         circuit_breaker: {{ failure_ratio: 0.5, min_requests: 20, open_for: 30s }}\n\
         observers:\n  - name: things\n    table: public.things\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n        timeout: 5s\n",
        observers_tests::util::config_head(&format!("w-{role}")),
        rx.url("/h")
    );
    let mut worker = Worker::start(
        "ops_least_privilege",
        &yaml,
        &[("DATABASE_URL", url.as_str())],
    );
    wait_observer_ready(&db.client, "things", "public.things", SHORT).await;
    // the role can neither read payloads nor purge: it really is the worker role only
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert!(c
        .query("SELECT new FROM observers.event LIMIT 1", &[])
        .await
        .is_err());
    assert!(c
        .query("SELECT observers.dlq_purge(all_entries => true)", &[])
        .await
        .is_err());

    // the first event fails twice: dead-lettered; then four more are delivered
    rx.script("/h", [Reply::status(500), Reply::status(500)]);
    db.client
        .batch_execute("INSERT INTO public.things (label) VALUES ('first')")
        .await
        .unwrap();
    assert!(
        wait_dlq(&db.client, 1, SHORT).await,
        "{}\n{}",
        rx.summary(),
        worker.log()
    );
    db.client
        .batch_execute(
            "INSERT INTO public.things (label) SELECT 'x' || g FROM generate_series(1, 4) g",
        )
        .await
        .unwrap();
    assert!(
        wait_backlog_zero(&db.client, SHORT).await,
        "{}",
        worker.log()
    );
    assert!(rx.wait_for_events(4, SHORT).await, "{}", rx.summary());
    // an operator retries the dead letter; the worker role delivers it and removes the entry
    assert_eq!(
        count(&db.client, "SELECT observers.dlq_retry_all()").await,
        1
    );
    assert!(
        wait_count(&db.client, "SELECT count(*) FROM observers.dlq", 0, SHORT).await,
        "{}\n{}",
        rx.summary(),
        worker.log()
    );
    assert!(rx.wait_for_events(5, SHORT).await, "{}", rx.summary());
    // its writes landed: attempts, dedup done-marks, heartbeat
    assert!(
        wait_count(
            &db.client,
            "SELECT count(*) FROM observers.attempt WHERE outcome = 'delivered'",
            5,
            SHORT
        )
        .await,
        "attempt log incomplete; {}",
        worker.log()
    );
    assert_eq!(
        count(
            &db.client,
            "SELECT count(*) FROM observers.dedup WHERE state = 'd'"
        )
        .await,
        5
    );
    assert!(
        wait_count(
            &db.client,
            &format!("SELECT count(*) FROM observers.worker WHERE worker_id = 'w-{role}'"),
            1,
            SHORT
        )
        .await
    );
    // /metrics: the database gauges (from status(), as the worker role) are up to date
    let body = poll(SHORT, Duration::from_millis(200), || async {
        let b = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (b.lines().any(|l| l == "observer_database_up 1")
            && b.lines()
                .any(|l| l.starts_with("observer_dlq_size{") && l.ends_with(" 0")))
        .then_some(b)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "/metrics never showed the database gauges (refreshed every 5 s); {}",
            worker.log()
        )
    });
    assert!(body.contains("observer_backlog_events{"), "{body}");
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
    let log = worker.log();
    assert!(
        !log.to_lowercase().contains("permission denied"),
        "the worker role lacks a privilege:\n{log}"
    );
    db.client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .ok();
}
