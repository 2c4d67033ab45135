//! Cached lookups (`lookups:` / `caching:`) through the `slack` action, end to end: the real
//! worker, a real PostgreSQL (SQL lookups, eviction observers), real Redis, and the recording
//! receiver both as the Slack endpoint and as the HTTP lookup source.
//!
//! SQL source calls are counted with `pg_notify` from the looked-up function: the lookup runs in
//! a READ ONLY transaction, where NOTIFY is allowed and a sequence bump is not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use observers_tests::cluster::TestDb;
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{status_sum, wait_observer_ready};
use observers_tests::RedisServer;
use tokio_postgres::AsyncMessage;

use crate::common::*;

const SCHEMA: &str = "
CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);
INSERT INTO public.customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Bob', 'bob@example.com');
CREATE TABLE public.orders (id serial PRIMARY KEY, customer_id int NOT NULL);
-- the SQL lookup's source: announces every call, then answers
CREATE FUNCTION public.customer_lookup(p int) RETURNS TABLE (name text, email text)
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('lookup_calls', p::text);
  RETURN QUERY SELECT c.name, c.email FROM public.customers c WHERE c.id = p;
END $$;
";

/// Counts NOTIFYs on channel `lookup_calls` (one per SQL lookup call).
async fn count_sql_calls(db: &TestDb) -> (tokio_postgres::Client, Arc<AtomicU64>) {
    let (client, mut conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("listen connection");
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(_) = m {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    client.batch_execute("LISTEN lookup_calls").await.unwrap();
    (client, count)
}

/// SQL calls counted so far, once at least `at_least` arrived and no more came for 300 ms
/// (notifications are asynchronous: an exact count needs both).
async fn settled_calls(calls: &AtomicU64, at_least: u64) -> u64 {
    let _ = observers_tests::util::poll(SHORT, Duration::from_millis(50), || async {
        (calls.load(Ordering::SeqCst) >= at_least).then_some(())
    })
    .await;
    loop {
        let before = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = calls.load(Ordering::SeqCst);
        if after == before {
            return after;
        }
    }
}

/// Texts posted to the Slack endpoint, in arrival order, of successful posts.
fn slack_texts(rx: &Receiver) -> Vec<String> {
    rx.deliveries_for("/slack")
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| d.body.as_ref()?["text"].as_str().map(str::to_owned))
        .collect()
}

fn gets(rx: &Receiver, path: &str) -> usize {
    rx.deliveries_for(path)
        .iter()
        .filter(|d| d.method == "GET")
        .count()
}

async fn insert_orders(db: &TestDb, customer: i32, n: i32) {
    db.client
        .execute(
            "INSERT INTO public.orders (customer_id) SELECT $1 FROM generate_series(1, $2)",
            &[&customer, &n],
        )
        .await
        .unwrap();
}

async fn wait_texts(rx: &Receiver, n: usize) {
    let ok = observers_tests::util::poll(SHORT, Duration::from_millis(50), || async {
        (slack_texts(rx).len() >= n).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "expected {n} slack messages, got {:?}; {}",
        slack_texts(rx),
        rx.summary()
    );
}

/// A worker with `extra` sections and one observer on orders posting `text` to /slack.
async fn start(
    name: &str,
    db: &TestDb,
    rx: &Receiver,
    extra: &str,
    text: &str,
) -> observers_tests::Worker {
    db.client.batch_execute(SCHEMA).await.unwrap();
    let extra = extra.replace("{rx}", &rx.url(""));
    let yaml = config(
        &format!("w-{name}"),
        &extra,
        &format!(
            "  - name: orders_slack\n    table: public.orders\n    events: [INSERT]\n    actions:\n      \
             - type: slack\n        webhook_url: {}\n        timeout: 5s\n        \
             retry: {{ max_attempts: 3, initial_backoff: 200ms, max_backoff: 1s }}\n        text: \"{text}\"\n",
            rx.url("/slack")
        ),
    );
    let worker = start_worker(name, db, &yaml, &[]);
    wait_observer_ready(&db.client, "orders_slack", "public.orders", SHORT).await;
    worker
}

const SQL_LOOKUP: &str = "\
lookups:
  - name: customer
    sql: \"SELECT name, email FROM public.customer_lookup($1)\"
    args: [\"{{ new.customer_id }}\"]
    table: public.customers
    ttl: 1h
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_lookup_is_cached_in_memory_and_evicted_when_its_table_changes() {
    let (db, rx) = setup("lookups_sql_memory").await;
    let extra =
        format!("caching: {{ enabled: true, backend: memory, default_ttl: 1h }}\n{SQL_LOOKUP}");
    let mut worker = start(
        "lookups_sql_memory",
        &db,
        &rx,
        &extra,
        "order {{ new.id }} for {{ lookup.customer.name }} <{{ lookup.customer.email }}>",
    )
    .await;
    // the product observing itself: an internal observer on the lookup's table
    wait_observer_ready(
        &db.client,
        "lookup_evict_customer",
        "public.customers",
        SHORT,
    )
    .await;
    let (_listen, calls) = count_sql_calls(&db).await;

    insert_orders(&db, 1, 1).await;
    wait_texts(&rx, 1).await;
    assert_eq!(slack_texts(&rx), vec!["order 1 for Ada <ada@example.com>"]);
    // same key, many events (one at a time and in one batch): the source is called once
    insert_orders(&db, 1, 1).await;
    wait_texts(&rx, 2).await;
    insert_orders(&db, 1, 10).await;
    wait_texts(&rx, 12).await;
    assert!(
        slack_texts(&rx)
            .iter()
            .all(|t| t.ends_with("for Ada <ada@example.com>")),
        "{:?}",
        slack_texts(&rx)
    );
    assert_eq!(
        settled_calls(&calls, 1).await,
        1,
        "one SQL call for one key"
    );

    // another key: one more call
    insert_orders(&db, 2, 1).await;
    wait_texts(&rx, 13).await;
    assert_eq!(slack_texts(&rx)[12], "order 13 for Bob <bob@example.com>");

    // a change of the source table evicts the lookup's entries
    db.client
        .execute(
            "UPDATE public.customers SET email = 'ada@new.example' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(
        wait_backlog_zero(&db.client, SHORT).await,
        "eviction event not processed"
    );
    insert_orders(&db, 1, 1).await;
    wait_texts(&rx, 14).await;
    assert_eq!(slack_texts(&rx)[13], "order 14 for Ada <ada@new.example>");
    assert_eq!(
        settled_calls(&calls, 3).await,
        3,
        "customer 1, customer 2, customer 1 after eviction"
    );
    assert_eq!(status_sum(&db.client, "dlq_count").await, 0);
    worker.stop(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lookup_single_call_on_concurrent_misses_and_expiry() {
    let (db, rx) = setup("lookups_http_memory").await;
    rx.set_default(
        "/profiles/7",
        Reply::ok()
            .body("application/json", r#"{"tier": "gold"}"#)
            .delay(Duration::from_millis(200)),
    );
    let extra = "caching: { enabled: true, backend: memory }\n\
                 lookups:\n  - name: profile\n    http: \"{rx}/profiles/{{ new.customer_id }}\"\n    ttl: 3s\n";
    let mut worker = start(
        "lookups_http_memory",
        &db,
        &rx,
        extra,
        "order {{ new.id }}: {{ lookup.profile.tier }}",
    )
    .await;

    // 20 events with the same argument, in one transaction: processed concurrently, one GET
    insert_orders(&db, 7, 20).await;
    wait_texts(&rx, 20).await;
    let texts = slack_texts(&rx);
    assert!(texts.iter().all(|t| t.ends_with(": gold")), "{texts:?}");
    assert_eq!(gets(&rx, "/profiles/7"), 1, "{}", rx.summary());

    // after the TTL the source is called again
    tokio::time::sleep(Duration::from_millis(3500)).await;
    rx.set_default(
        "/profiles/7",
        Reply::ok().body("application/json", r#"{"tier": "platinum"}"#),
    );
    insert_orders(&db, 7, 1).await;
    wait_texts(&rx, 21).await;
    assert_eq!(slack_texts(&rx)[20], "order 21: platinum");
    assert_eq!(gets(&rx, "/profiles/7"), 2);
    worker.stop(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_hits_evicts_and_keeps_delivering_when_redis_dies() {
    let (db, rx) = setup("lookups_redis").await;
    let mut redis = RedisServer::start();
    rx.set_default(
        "/profiles/1",
        Reply::ok()
            .body("application/json", r#"{"tier": "gold"}"#)
            .delay(Duration::from_millis(100)),
    );
    let extra = format!(
        "redis: {{ url: {}, timeout: 1s }}\ncaching: {{ enabled: true, backend: redis }}\n{SQL_LOOKUP}  \
         - name: profile\n    http: \"{{rx}}/profiles/{{{{ new.customer_id }}}}\"\n    ttl: 1h\n",
        redis.url()
    );
    let mut worker = start(
        "lookups_redis",
        &db,
        &rx,
        &extra,
        "order {{ new.id }}: {{ lookup.customer.email }} {{ lookup.profile.tier }}",
    )
    .await;
    wait_observer_ready(
        &db.client,
        "lookup_evict_customer",
        "public.customers",
        SHORT,
    )
    .await;
    let (_listen, calls) = count_sql_calls(&db).await;

    insert_orders(&db, 1, 1).await;
    wait_texts(&rx, 1).await;
    insert_orders(&db, 1, 20).await;
    wait_texts(&rx, 21).await;
    assert!(
        slack_texts(&rx)
            .iter()
            .all(|t| t.ends_with(": ada@example.com gold")),
        "{:?}",
        slack_texts(&rx)
    );
    assert_eq!(gets(&rx, "/profiles/1"), 1, "{}", rx.summary());
    assert_eq!(settled_calls(&calls, 1).await, 1);
    // the values live in Redis under fo:lookup:<name>:<generation>:<sha256>
    let keys = redis.command("KEYS fo:lookup:*").unwrap_or_default();
    assert!(
        keys.starts_with("*2"),
        "two cached entries expected, KEYS said {keys}"
    );
    assert_eq!(redis.dbsize(), Some(2));

    // concurrent misses of a new key with the Redis backend: one call per source
    rx.set_default(
        "/profiles/2",
        Reply::ok()
            .body("application/json", r#"{"tier": "silver"}"#)
            .delay(Duration::from_millis(200)),
    );
    insert_orders(&db, 2, 20).await;
    wait_texts(&rx, 41).await;
    assert!(
        slack_texts(&rx)[21..]
            .iter()
            .all(|t| t.ends_with(": bob@example.com silver")),
        "{:?}",
        slack_texts(&rx)
    );
    assert_eq!(gets(&rx, "/profiles/2"), 1, "{}", rx.summary());
    assert_eq!(settled_calls(&calls, 2).await, 2);
    assert_eq!(redis.dbsize(), Some(4));

    // eviction: INCR of the lookup's generation in Redis
    db.client
        .execute(
            "UPDATE public.customers SET email = 'ada@new.example' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(
        redis.command("GET fo:lookup:customer:gen").as_deref(),
        Some("$1"),
        "generation key written"
    );
    insert_orders(&db, 1, 1).await;
    wait_texts(&rx, 42).await;
    assert_eq!(slack_texts(&rx)[41], "order 42: ada@new.example gold");
    assert_eq!(
        gets(&rx, "/profiles/1"),
        1,
        "the other lookup is still cached"
    );

    // Redis killed: lookups call their sources directly, nothing is lost
    redis.stop();
    insert_orders(&db, 1, 2).await;
    wait_texts(&rx, 44).await;
    assert!(slack_texts(&rx)[42..]
        .iter()
        .all(|t| t.ends_with(": ada@new.example gold")));
    assert!(
        gets(&rx, "/profiles/1") >= 2,
        "source called directly while Redis is down"
    );
    assert!(
        worker
            .wait_for_log("Redis is unavailable", Duration::from_secs(5))
            .await,
        "the outage is logged"
    );
    assert_eq!(status_sum(&db.client, "dlq_count").await, 0);
    // and reported in the heartbeat
    let degraded = observers_tests::util::poll(SHORT, Duration::from_millis(200), || async {
        let row = db
            .client
            .query_opt(
                "SELECT info->'lookups' FROM observers.worker WHERE worker_id = 'w-lookups_redis'",
                &[],
            )
            .await
            .ok()
            .flatten()?;
        let v: Option<serde_json::Value> = row.get(0);
        v.filter(|v| v["degraded"] == true)
    })
    .await
    .expect("heartbeat info->'lookups'->'degraded' never became true");
    assert_eq!(degraded["cache"], "redis", "{degraded}");
    assert!(degraded["redis_errors"].as_u64() > Some(0), "{degraded}");

    // Redis back (empty): cached again
    redis.start_again();
    insert_orders(&db, 1, 1).await;
    wait_texts(&rx, 45).await;
    let ok = observers_tests::util::poll(SHORT, Duration::from_millis(100), || async {
        (redis.dbsize().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    assert!(ok.is_some(), "values cached again once Redis is back");
    worker.stop(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_lookup_follows_the_retry_policy_and_is_dead_lettered_by_name() {
    let (db, rx) = setup("lookups_fail").await;
    rx.script(
        "/profiles/1",
        [Reply::status(500).body("text/plain", "boom")],
    );
    rx.set_default(
        "/profiles/1",
        Reply::ok().body("application/json", r#"{"tier": "gold"}"#),
    );
    rx.set_default("/profiles/2", Reply::status(503).body("text/plain", "down"));
    let extra = format!(
        "caching: {{ enabled: true, backend: memory }}\n{SQL_LOOKUP}  \
         - name: profile\n    http: \"{{rx}}/profiles/{{{{ new.customer_id }}}}\"\n"
    );
    let mut worker = start(
        "lookups_fail",
        &db,
        &rx,
        &extra,
        "order {{ new.id }}: {{ lookup.profile.tier }} {{ lookup.customer.name }}",
    )
    .await;

    // 500 then 200: delivered after a retry
    insert_orders(&db, 1, 1).await;
    wait_texts(&rx, 1).await;
    assert_eq!(slack_texts(&rx), vec!["order 1: gold Ada"]);
    assert_eq!(gets(&rx, "/profiles/1"), 2);

    // always failing: dead-lettered after 3 attempts, naming the lookup; nothing posted
    insert_orders(&db, 2, 1).await;
    assert!(wait_dlq(&db.client, 1, SHORT).await, "{}", rx.summary());
    let dlq = dlq_rows(&db.client).await;
    let error = dlq[0]["error"].clone().unwrap_or_default();
    assert!(error.contains("lookup `profile` failed"), "{error}");
    assert!(error.contains("HTTP 503"), "{error}");
    assert_eq!(dlq[0]["attempts"].as_deref(), Some("3"), "{:?}", dlq[0]);
    assert_eq!(dlq[0]["action_type"].as_deref(), Some("slack"));
    assert_eq!(gets(&rx, "/profiles/2"), 3, "failures are not cached");

    // no row is null, and a template that reads a field of null fails (never renders empty)
    rx.set_default(
        "/profiles/3",
        Reply::ok().body("application/json", r#"{"tier": "new"}"#),
    );
    insert_orders(&db, 3, 1).await;
    assert!(wait_dlq(&db.client, 2, SHORT).await, "{}", rx.summary());
    let dlq = dlq_rows(&db.client).await;
    let error = dlq[1]["error"].clone().unwrap_or_default();
    assert!(error.contains("does not render"), "{error}");
    assert_eq!(
        dlq[1]["attempts"].as_deref(),
        Some("1"),
        "rendering errors are permanent"
    );
    assert_eq!(slack_texts(&rx).len(), 1, "{:?}", slack_texts(&rx));
    assert!(slack_texts(&rx).iter().all(|t| !t.trim().is_empty()));
    worker.stop(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_caching_every_render_calls_the_source() {
    let (db, rx) = setup("lookups_nocache").await;
    rx.set_default(
        "/profiles/5",
        Reply::ok().body("application/json", r#"{"tier": "silver"}"#),
    );
    let extra = "caching: disabled\n\
                 lookups:\n  - name: profile\n    http: \"{rx}/profiles/{{ new.customer_id }}\"\n    table: public.customers\n";
    let mut worker = start(
        "lookups_nocache",
        &db,
        &rx,
        extra,
        "order {{ new.id }}: {{ lookup.profile.tier }}",
    )
    .await;
    for i in 1..=3 {
        insert_orders(&db, 5, 1).await;
        wait_texts(&rx, i).await;
    }
    assert_eq!(
        slack_texts(&rx),
        vec!["order 1: silver", "order 2: silver", "order 3: silver"]
    );
    assert_eq!(gets(&rx, "/profiles/5"), 3, "no cache: one GET per render");
    // no cache, nothing to evict: no internal observer either
    let n = observers_tests::util::scalar_i64(
        &db.client,
        "SELECT count(*) FROM observers.observer WHERE name LIKE 'lookup_evict_%'",
        &[],
    )
    .await;
    assert_eq!(n, Some(0));
    worker.stop(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_reports_template_and_lookup_problems_with_path_and_line() {
    let yaml = "\
database: { url: postgres://127.0.0.1:1/nowhere }
caching: { enabled: true, backend: redis }
lookups:
  - name: customer
    sql: \"SELECT name FROM customers WHERE id = $1\"
    args: [\"{{ new.customer_id \"]
observers:
  - name: o
    table: public.orders
    actions:
      - type: slack
        webhook_url: http://127.0.0.1:9/slack
        text: \"{{ lookup.profile.tier }}\"
";
    let file = observers_tests::worker::write_temp_file("lookups-bad.yaml", yaml);
    let out =
        observers_tests::worker::run_cli(&["validate-config", file.to_str().unwrap()], &[], SHORT)
            .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("2:36: caching.backend") && text.contains("needs a `redis:` section"),
        "{text}"
    );
    assert!(
        text.contains("6:12: lookups[0].args[0]") && text.contains("template syntax error"),
        "{text}"
    );
    assert!(
        text.contains("13:15: observers[0].actions[0].text")
            && text.contains("unknown lookup `profile` (declared: customer)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_created_in_sql_use_the_workers_lookups() {
    let (db, rx) = setup("lookups_sql_created").await;
    let extra = format!("caching: {{ enabled: true, backend: memory }}\n{SQL_LOOKUP}");
    let mut worker = start(
        "lookups_sql_created",
        &db,
        &rx,
        &extra,
        "file {{ new.id }}: {{ lookup.customer.name }}",
    )
    .await;
    // created in SQL while the worker runs: one that uses a declared lookup, one that does not
    db.client
        .batch_execute(&format!(
            "CREATE TABLE public.refunds (id serial PRIMARY KEY, customer_id int NOT NULL);
             SELECT observers.create_observer(name => 'refunds_slack', table_name => 'public.refunds',
               events => ARRAY['INSERT'], actions => '[{{\"type\": \"slack\", \"webhook_url\": \"{url}\",
               \"text\": \"refund {{{{ new.id }}}} for {{{{ lookup.customer.email }}}}\"}}]'::jsonb,
               group_name => 'default');
             CREATE TABLE public.notes (id serial PRIMARY KEY);
             SELECT observers.create_observer(name => 'notes_slack', table_name => 'public.notes',
               events => ARRAY['INSERT'], actions => '[{{\"type\": \"slack\", \"webhook_url\": \"{url}\",
               \"text\": \"{{{{ lookup.nope.x }}}}\"}}]'::jsonb, group_name => 'default');",
            url = rx.url("/slack")
        ))
        .await
        .unwrap();
    db.client
        .batch_execute("INSERT INTO public.refunds (customer_id) VALUES (2); INSERT INTO public.notes DEFAULT VALUES;")
        .await
        .unwrap();
    wait_texts(&rx, 1).await;
    assert_eq!(slack_texts(&rx), vec!["refund 1 for bob@example.com"]);
    // the stored action with an undeclared lookup makes its observer broken: held, not dropped
    assert!(
        worker
            .wait_for_log_where(SHORT, |l| l.contains("observer is broken")
                && l.contains("notes_slack")
                && l.contains("unknown lookup `nope`"))
            .await,
        "{}",
        worker.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slack_texts(&rx).len(), 1, "{:?}", slack_texts(&rx));
    assert_eq!(status_sum(&db.client, "dlq_count").await, 0);
    worker.stop(SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_validation_reports_a_missing_lookup_table_at_the_lookup() {
    let db = observers_tests::fresh_db("lookups_live_validate").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let yaml = "\
caching: { enabled: true, backend: memory }
lookups:
  - name: customer
    sql: \"SELECT name FROM public.customers WHERE id = $1\"
    args: [\"{{ new.customer_id }}\"]
    table: public.customerz
observers:
  - name: o
    table: public.orders
    actions:
      - type: slack
        webhook_url: http://127.0.0.1:9/slack
        text: \"{{ lookup.customer.name }}\"
";
    let file = observers_tests::worker::write_temp_file("lookups-live.yaml", yaml);
    let out = observers_tests::worker::run_cli(
        &[
            "validate-config",
            file.to_str().unwrap(),
            "--database-url",
            &db.url,
        ],
        &[],
        SHORT,
    )
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("6:12: lookups[0].table") && text.contains("public.customerz does not exist"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stops_with_exit_2_when_a_lookup_table_does_not_exist() {
    let (db, rx) = setup("lookups_bad_table").await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let yaml = config(
        "w-lookups_bad_table",
        "caching: { enabled: true, backend: memory }\nlookups:\n  - name: customer\n    \
         sql: \"SELECT name FROM public.customers WHERE id = $1\"\n    args: [\"{{ new.customer_id }}\"]\n    \
         table: public.customerz\n",
        &format!(
            "  - name: orders_slack\n    table: public.orders\n    actions:\n      - type: slack\n        \
             webhook_url: {}\n        text: \"{{{{ lookup.customer.name }}}}\"\n",
            rx.url("/slack")
        ),
    );
    let mut worker = start_worker("lookups_bad_table", &db, &yaml, &[]);
    let status = worker
        .wait_exit(SHORT)
        .await
        .expect("the worker must exit, not hang");
    let log = worker.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains(
            "observer `lookup_evict_customer` (lookups[0].table) was rejected by the database"
        ) && log.contains("customerz"),
        "{log}"
    );
}
