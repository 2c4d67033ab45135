//! Issue 12, the searchable audit trail: the worker fills the PostgreSQL search index
//! (`search: enabled`) and the CLI finds events in it (`fraiseql-observers search`, the real
//! binary); the Elasticsearch sink copies every event effectively once into a real
//! OpenSearch-API server (`osmem-server`) while the worker is killed with SIGKILL three times,
//! and handles a scripted bulk API's failure matrix (timeouts, 503, 413, 429 items, 400 items,
//! 401). Where ELASTICSEARCH_URL is set, the kill -9 test also runs against that cluster.

use std::process::Output;
use std::time::Duration;

use observers_tests::cluster::TestDb;
use observers_tests::osmem::OsMem;
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{poll, scalar_i64, wait_observer_ready};
use observers_tests::worker::run_cli;
use serde_json::{json, Value};

use crate::common::*;

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn cli(db: &TestDb, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--database-url", db.url.as_str()]);
    run_cli(&all, &[], SHORT).await
}

async fn cli_json(db: &TestDb, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--format", "json"]);
    let out = cli(db, &all).await;
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {}", text(&out)))
}

fn event_ids(v: &Value) -> Vec<i64> {
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_i64().expect("event_id"))
        .collect()
}

async fn ids(db: &TestDb, sql: &str) -> Vec<i64> {
    db.client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

const ORDERS_OBSERVER: &str = "  - name: orders\n    table: public.orders\n    events: [INSERT, UPDATE, DELETE]\n    actions:\n      - type: webhook\n        url: URL\n";

#[tokio::test(flavor = "multi_thread")]
async fn cli_search_finds_what_the_worker_indexed() {
    let (db, rx) = setup("search_cli").await;
    db.client
        .batch_execute(
            "CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int, status text, note text);
             CREATE TABLE public.other (id int PRIMARY KEY, note text);",
        )
        .await
        .unwrap();
    let observers = format!(
        "{}  - name: other\n    table: public.other\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n",
        ORDERS_OBSERVER.replace("URL", &rx.url("/orders")),
        rx.url("/other")
    );
    let yaml = config(
        "w-search-cli",
        "search: { batch_size: 3, interval: 100ms }\n",
        &observers,
    );
    let mut worker = start_worker("search_cli", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "orders", "public.orders", SHORT).await;
    wait_observer_ready(&db.client, "other", "public.other", SHORT).await;
    db.client
        .batch_execute(
            "INSERT INTO public.orders VALUES (1, 42, 'new', 'customer asked for a refund'),
                                             (2, 42, 'new', 'gift wrap'),
                                             (3, 7, 'new', 'refund of shipping');
             UPDATE public.orders SET status = 'paid' WHERE id = 1;
             DELETE FROM public.orders WHERE id = 2;
             INSERT INTO public.other VALUES (1, 'refund elsewhere');",
        )
        .await
        .unwrap();
    // pages of 3: the worker needs several calls; every event gets indexed
    let total = scalar_i64(&db.client, "SELECT count(*) FROM observers.event", &[])
        .await
        .unwrap();
    assert_eq!(total, 6);
    let indexed = poll(LONG, Duration::from_millis(100), || async {
        let n = scalar_i64(&db.client, "SELECT count(*) FROM observers.search_doc", &[])
            .await
            .unwrap_or(0);
        (n == total).then_some(n)
    })
    .await;
    assert_eq!(indexed, Some(total), "{}", worker.log());

    // text + table + since, newest first, as JSON: exactly what SQL finds
    let v = cli_json(
        &db,
        &["search", "refund", "--table", "orders", "--since", "1h"],
    )
    .await;
    let want = ids(
        &db,
        "SELECT event_id FROM observers.search('refund', table_name => 'public.orders') ORDER BY captured_at DESC, event_id DESC",
    )
    .await;
    assert_eq!(want.len(), 3, "insert 1, insert 3, update 1");
    assert_eq!(event_ids(&v), want);
    assert_eq!(v["next_page"], Value::Null);
    assert_eq!(v["events"][0]["table_label"], "public.orders");
    // the payload comes along with its numbers
    assert!(v["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["new"]["customer_id"] == json!(42)));

    // the text output: one line per event and the count
    let out = cli(&db, &["search", "refund", "--table", "orders"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("3 events, newest first"), "{s}");
    assert!(
        s.contains("public.orders") && !s.contains("public.other"),
        "{s}"
    );

    // a field filter and an op filter
    let v = cli_json(
        &db,
        &["search", "--field", "new.customer_id=42", "--op", "insert"],
    )
    .await;
    assert_eq!(
        event_ids(&v),
        ids(&db, "SELECT id FROM observers.event WHERE op = 'INSERT' AND new->>'customer_id' = '42' ORDER BY id DESC").await
    );
    // facets and time series
    let v = cli_json(&db, &["search", "--facet", "op"]).await;
    let mut facets: Vec<(String, i64)> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["value"].as_str().unwrap().to_owned(),
                r["events"].as_i64().unwrap(),
            )
        })
        .collect();
    facets.sort();
    assert_eq!(
        facets,
        vec![
            ("DELETE".to_owned(), 1),
            ("INSERT".to_owned(), 4),
            ("UPDATE".to_owned(), 1)
        ]
    );
    let out = cli(&db, &["search", "refund", "--facet", "table"]).await;
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("public.orders") && s.contains("public.other"),
        "{}",
        text(&out)
    );
    let v = cli_json(&db, &["search", "--timeseries", "minute"]).await;
    let sum: i64 = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["events"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, total);

    // paging: 3 pages of at most 3, no overlap, newest first throughout
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..5 {
        let mut args = vec!["search", "--limit", "3"];
        if let Some(p) = &page {
            args.extend(["--page", p.as_str()]);
        }
        let v = cli_json(&db, &args).await;
        seen.extend(event_ids(&v));
        match v["next_page"].as_str() {
            Some(p) => page = Some(p.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ids(
            &db,
            "SELECT event_id FROM observers.search_doc ORDER BY captured_at DESC, event_id DESC"
        )
        .await
    );

    // bad arguments: exit 2 before connecting (even to a database that does not exist)
    for args in [
        vec!["search", "--op", "truncate"],
        vec!["search", "--field", "customer_id=1"],
        vec!["search", "--since", "yesterday-ish"],
        vec!["search", "--facet", "op", "--timeseries", "hour"],
    ] {
        let mut all = args.clone();
        all.extend(["--database-url", "postgres://nobody@127.0.0.1:1/nothing"]);
        let out = run_cli(&all, &[], SHORT).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    // an error from the database (not a field path) is reported, not a crash
    let out = cli(&db, &["search", "--facet", "nonsense"]).await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a field path"),
        "{}",
        text(&out)
    );
    worker.stop(SHORT).await;
    rx.shutdown().await;
}

/// Event ids indexed more than once (a terms aggregation with min_doc_count 2).
async fn es_duplicates(http: &reqwest::Client, url: &str, prefix: &str) -> Value {
    let v: Value = http
        .post(format!("{url}/{prefix}-*/_search"))
        .json(&json!({"size": 0, "aggs": {"dups": {"terms": {"field": "event_id", "min_doc_count": 2, "size": 10}}}}))
        .send()
        .await
        .expect("_search")
        .json()
        .await
        .expect("_search JSON");
    v["aggregations"]["dups"]["buckets"].clone()
}

/// 20,000 events written in a stream while the worker is killed with SIGKILL three times; in
/// the end the index holds each event exactly once.
async fn kill9_stream_into(es_url: &str, prefix: &str, name: &str) {
    const EVENTS: i64 = 20_000;
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute("CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int, status text, note text);")
        .await
        .unwrap();
    let yaml = config(
        &format!("w-{name}"),
        &format!(
            // yield_to_delivery 1s: the stream keeps delivery busy at times; the default (10s per
            // page) would stretch the test, not change what it checks
            "elasticsearch:\n  url: {es_url}\n  index: {prefix}\n  batch_size: 500\n  max_in_flight: 2\n  linger: 50ms\n  initial_backoff: 50ms\n  max_backoff: 1s\n  yield_to_delivery: 1s\n"
        ),
        &ORDERS_OBSERVER.replace("URL", &rx.url("/orders")),
    );
    let mut worker = start_worker(name, &db, &yaml, &[("ELASTICSEARCH_URL", es_url)]);
    wait_observer_ready(&db.client, "orders", "public.orders", SHORT).await;
    let http = reqwest::Client::new();

    let writer_url = db.url.clone();
    let writer = tokio::spawn(async move {
        let c = observers_tests::cluster::connect(&writer_url)
            .await
            .expect("writer connection");
        let mut next = 1i64;
        while next <= EVENTS {
            let hi = (next + 199).min(EVENTS);
            c.execute(
                "INSERT INTO public.orders SELECT g, g % 97, 'new', 'order ' || g FROM generate_series($1::int, $2::int) AS g",
                &[&(next as i32), &(hi as i32)],
            )
            .await
            .expect("insert");
            next = hi + 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    for round in 1..=3 {
        // kill while documents are flowing: once the index has grown by 2,000 since the last
        // restart (spreads the three kills over the stream)
        let before = es_count(&http, es_url, prefix).await.unwrap_or(0);
        poll(LONG, Duration::from_millis(20), || async {
            (es_count(&http, es_url, prefix).await.unwrap_or(0) >= before + 2_000).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("round {round}: nothing indexed\n{}", worker.log()));
        worker.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        worker.restart();
    }
    writer.await.expect("writer");
    let done = poll(LONG, Duration::from_millis(250), || async {
        (es_count(&http, es_url, prefix).await == Some(EVENTS)).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "_count {:?} != {EVENTS}\n{}",
        es_count(&http, es_url, prefix).await,
        worker.log()
    );
    assert_eq!(
        es_duplicates(&http, es_url, prefix).await,
        json!([]),
        "an event id indexed twice"
    );
    assert_eq!(
        scalar_i64(
            &db.client,
            "SELECT count(*) FROM observers.feed_dead_letter",
            &[]
        )
        .await,
        Some(0)
    );
    // one document per event, under its stable _id, in the index of its capture day
    let id: i64 = db
        .client
        .query_one("SELECT min(id) FROM observers.event", &[])
        .await
        .unwrap()
        .get(0);
    let (want_id, want_index): (String, String) = {
        let r = db
            .client
            .query_one(
                "SELECT 'evt_' || left(replace(i.id::text, '-', ''), 16) || '_' || e.id, \
                        $2 || '-' || to_char(e.captured_at AT TIME ZONE 'UTC', 'YYYY.MM.DD') \
                   FROM observers.event e, observers.installation i WHERE e.id = $1",
                &[&id, &prefix],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let doc: Value = http
        .get(format!("{es_url}/{want_index}/_doc/{want_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["found"], true, "{doc}");
    assert_eq!(doc["_source"]["event_id"], json!(id), "{doc}");
    assert_eq!(doc["_source"]["table"], "public.orders", "{doc}");
    assert!(
        doc["_source"]["payload_fields"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("new.id={id}"))),
        "{doc}"
    );
    // full text over the payload works on our documents
    let hits: Value = http
        .post(format!("{es_url}/{prefix}-*/_search"))
        .json(&json!({"query": {"match": {"payload_text": format!("order {id}")}}, "size": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        hits["hits"]["total"]["value"].as_i64().unwrap_or(0) >= 1,
        "{hits}"
    );
    worker.stop(LONG).await;
    rx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_sink_is_effectively_once_across_kill9() {
    let os = OsMem::start();
    kill9_stream_into(os.url(), "observer-events", "es_kill9").await;
}

/// The documents the sink builds in the worker (`search::document`) are byte for byte what the
/// SQL that built them before wrote (`jsonb_build_object` over `feed_fetch()`, kept here as the
/// reference): the same key order, separators, escapes and numbers, for payloads with every
/// kind of value (numeric digits, unicode, quotes and control characters, nested json, arrays,
/// nulls, empty strings) and every op. `payload_fields` is compared with `COLLATE "C"` (the
/// worker sorts bytewise; the SQL sorted by the database's collation).
#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_documents_are_the_bytes_the_sql_built() {
    const REFERENCE: &str = "SELECT f.id, \
       to_char(f.captured_at AT TIME ZONE 'UTC', 'YYYY.MM.DD'), \
       jsonb_build_object( \
         'event_id', f.id, 'observer', f.observer, 'observer_id', f.observer_id, \
         'table', f.table_name, 'op', f.op, 'txid', f.txid, \
         'captured_at', to_char(f.captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         'new', f.new, 'old', f.old, 'changed', to_jsonb(f.changed), \
         'payload_text', (SELECT string_agg(v #>> '{}', ' ') \
                            FROM jsonb_path_query(jsonb_build_array(f.new, f.old), \
                                 'strict $.** ? (@.type() == \"string\" || @.type() == \"number\" || @.type() == \"boolean\")') AS v), \
         'payload_fields', (SELECT jsonb_agg(p.k || '=' || (p.v #>> '{}') ORDER BY p.k COLLATE \"C\") \
                              FROM (SELECT 'new.' || key AS k, value AS v FROM jsonb_each(f.new) \
                                    UNION ALL SELECT 'old.' || key, value FROM jsonb_each(f.old)) AS p \
                             WHERE jsonb_typeof(p.v) IN ('string', 'number', 'boolean')) \
       )::text \
     FROM observers.feed_fetch('elasticsearch', 1000) AS f";
    use observer_worker::db::Db;
    use observer_worker::search::document;

    let db = observers_tests::fresh_db("es_doc_bytes").await;
    db.client
        .batch_execute(
            r#"CREATE TABLE public."Odd ""tbl""" (id int PRIMARY KEY, total numeric(12,4), ratio float8,
                   big numeric, flag boolean, note text, "Ünïcode key" text, "a""b\c" text,
                   "ab" int, tags text[], meta jsonb, at timestamptz, empty text, nothing int);
               SELECT observers.create_observer('odd', 'public."Odd ""tbl"""');
               INSERT INTO public."Odd ""tbl""" VALUES
                 (1, 1500.0000, 0.1, 12345678901234567890.123456789, true,
                  E'refund "asap"\\ line\nnext\ttab\x01\x1f end', 'héllo wörld ✓', 'q"b', 7,
                  ARRAY['a b', 'c"d'], '{"z": [1, 2.50, {"deep": "x y"}], "a": null, "n": -0.0, "e": 1e-7}',
                  '2026-05-01 10:00:00.000001+00', '', NULL),
                 (2, -0.5, 1e300, 0, false, '', '', '', -1, '{}', '[]', NULL, NULL, NULL),
                 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null', NULL, NULL, NULL);
               UPDATE public."Odd ""tbl""" SET note = 'changed ' || id, flag = NOT coalesce(flag, false) WHERE id <= 2;
               DELETE FROM public."Odd ""tbl""" WHERE id = 3;"#,
        )
        .await
        .unwrap_or_else(|e| panic!("setup: {}", observers_tests::cluster::pg_error(&e)));
    let want: Vec<(i64, String, String)> = db
        .client
        .query(REFERENCE, &[])
        .await
        .unwrap_or_else(|e| panic!("reference: {}", observers_tests::cluster::pg_error(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(want.len(), 6, "3 inserts, 2 updates, 1 delete: {want:?}");
    // feed_fetch does not move the cursor: the worker's read gets the same page
    let pool = Db::new(&db.url, Duration::from_secs(5)).unwrap();
    let session = pool
        .feed_session("elasticsearch")
        .await
        .expect("feed session")
        .expect("the feed's lock");
    let rows = session.fetch_rows(1000).await.expect("fetch_rows");
    let got: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| {
            let d = document::build(r).unwrap_or_else(|e| panic!("{e}"));
            (r.event_id, d.day, d.source)
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "\nworker: {}\nSQL:    {}", g.2, w.2);
    }
}

/// The same against a real Elasticsearch/OpenSearch cluster when ELASTICSEARCH_URL is set
/// (a fresh index prefix per run); without it there is nothing to run against and the test says so.
#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_sink_against_elasticsearch_url_when_set() {
    let Ok(url) = std::env::var("ELASTICSEARCH_URL") else {
        eprintln!("ELASTICSEARCH_URL is not set: the real-cluster run is skipped (osmem-server covers the path)");
        return;
    };
    let prefix = format!(
        "observer-events-test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    kill9_stream_into(url.trim_end_matches('/'), &prefix, "es_kill9_real").await;
}

fn bulk_items(statuses: &[(u16, &str)]) -> Reply {
    let items: Vec<Value> = statuses
        .iter()
        .map(|(s, err)| {
            if *s < 300 {
                json!({"create": {"status": s, "result": "created"}})
            } else {
                json!({"create": {"status": s, "error": {"type": err, "reason": format!("scripted {s}")}}})
            }
        })
        .collect();
    Reply::ok().body(
        "application/json",
        json!({"errors": true, "items": items}).to_string(),
    )
}

/// The documents (`_id`s) of every NDJSON request to `/_bulk`, in arrival order.
fn bulk_requests(rx: &Receiver) -> Vec<Vec<String>> {
    rx.deliveries_for("/_bulk")
        .iter()
        .map(|d| {
            String::from_utf8_lossy(&d.raw_body)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["create"]["_id"].as_str().map(str::to_owned))
                .collect()
        })
        .collect()
}

async fn feed_passed(db: &TestDb) -> i64 {
    scalar_i64(
        &db.client,
        "SELECT coalesce((SELECT passed FROM observers.feed_cursor WHERE feed = 'elasticsearch'), 0)",
        &[],
    )
    .await
    .unwrap_or(0)
}

/// The failure matrix against a scripted bulk API: a timeout and a 401 hold everything (nothing
/// moves), a 503 resends the whole request, a 413 splits it, a 429 item is resent alone, a 400
/// item is dead-lettered with its reason, a 409 item counts as done; the cursor moves only past
/// items that were acknowledged or dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_sink_failure_matrix() {
    let (db, es) = setup("es_matrix").await;
    db.client
        .batch_execute("CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int, status text, note text);")
        .await
        .unwrap();
    let hooks = Receiver::start().await.expect("receiver");
    // answers scripted in the order the sink will need them
    es.script(
        "/_bulk",
        [
            // 1. all three: no answer within the timeout -> held (breaker), sent again
            Reply::ok().delay(Duration::from_secs(3)),
            // 2. all three: 503 for the whole request -> sent again
            Reply::status(503).body("application/json", r#"{"error":{"type":"unavailable","reason":"scripted"}}"#),
            // 3. all three: 413 -> split into [1] and [2, 3]
            Reply::status(413),
            // 4. [1]: 429 for the item -> resent alone
            bulk_items(&[(429, "es_rejected_execution_exception")]),
            // 5. [1]: created
            bulk_items(&[(201, "")]),
            // 6. [2, 3]: 400 mapping error (dead letter) and 409 (already there: done)
            bulk_items(&[(400, "strict_dynamic_mapping_exception"), (409, "version_conflict_engine_exception")]),
            // 7. the fourth event: 401 -> held, nothing moves
            Reply::status(401).body("application/json", r#"{"error":{"type":"security_exception","reason":"missing authentication credentials"}}"#),
            // 8. the fourth event: created
            bulk_items(&[(201, "")]),
        ],
    );
    let yaml = config(
        "w-es-matrix",
        &format!(
            "elasticsearch:\n  url: {}\n  batch_size: 3\n  max_in_flight: 1\n  gzip: false\n  timeout: 1s\n  linger: 50ms\n  initial_backoff: 50ms\n  max_backoff: 200ms\n",
            es.url("").trim_end_matches('/')
        ),
        &ORDERS_OBSERVER.replace("URL", &hooks.url("/orders")),
    );
    let mut worker = start_worker("es_matrix", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "orders", "public.orders", SHORT).await;
    // the template goes in first
    assert!(
        poll(SHORT, Duration::from_millis(50), || async {
            es.deliveries()
                .iter()
                .any(|d| d.method == "PUT" && d.path == "/_index_template/observer-events")
                .then_some(())
        })
        .await
        .is_some(),
        "no index template\n{}",
        worker.log()
    );
    db.client
        .batch_execute("INSERT INTO public.orders VALUES (1, 1, 'new', 'a'), (2, 2, 'new', 'b'), (3, 3, 'new', 'c');")
        .await
        .unwrap();
    let ev = ids(&db, "SELECT id FROM observers.event ORDER BY id").await;
    assert_eq!(ev.len(), 3);
    assert!(
        poll(LONG, Duration::from_millis(50), || async {
            (feed_passed(&db).await == 3).then_some(())
        })
        .await
        .is_some(),
        "the cursor did not pass the page\n{}\n{:?}",
        worker.log(),
        bulk_requests(&es)
    );
    let reqs = bulk_requests(&es);
    let id = |i: usize| reqs[0][i].clone();
    assert_eq!(reqs.len(), 6, "{reqs:?}");
    assert_eq!(reqs[0], reqs[1], "timeout: the same request again");
    assert_eq!(reqs[1], reqs[2], "503: the same request again");
    assert_eq!(reqs[3], vec![id(0)], "413: the first half");
    assert_eq!(reqs[4], vec![id(0)], "429: the item alone, again");
    assert_eq!(reqs[5], vec![id(1), id(2)], "413: the second half");
    // the 400 item is a dead letter with its reason; nothing else is
    let dead = db
        .client
        .query(
            "SELECT event_id, status, error, target FROM observers.feed_dead_letter ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<_, i64>(0), ev[1]);
    assert_eq!(dead[0].get::<_, Option<i32>>(1), Some(400));
    assert!(dead[0]
        .get::<_, String>(2)
        .contains("strict_dynamic_mapping_exception"));
    assert!(dead[0].get::<_, String>(3).starts_with("observer-events-"));

    // 401: held until the next try succeeds; the cursor stays until then
    db.client
        .batch_execute("INSERT INTO public.orders VALUES (4, 4, 'new', 'd');")
        .await
        .unwrap();
    assert!(
        poll(LONG, Duration::from_millis(50), || async {
            (feed_passed(&db).await == 4).then_some(())
        })
        .await
        .is_some(),
        "{}",
        worker.log()
    );
    let reqs = bulk_requests(&es);
    assert_eq!(reqs.len(), 8, "{reqs:?}");
    assert_eq!(reqs[6], reqs[7], "401: held, then the same request");
    let log = worker.log();
    assert!(
        log.contains("Elasticsearch unavailable"),
        "the breaker says so:\n{log}"
    );
    // webhooks were delivered all along: the sink is off the delivery path
    assert!(hooks.wait_for_events(4, SHORT).await, "{}", hooks.summary());
    worker.stop(SHORT).await;
    es.shutdown().await;
    hooks.shutdown().await;
}

/// Delivery first: while the worker's consumer has a backlog of webhooks (it keeps fetching full
/// pages), the sink waits (`yield_to_delivery`) and sends its pages after the backlog is
/// delivered, then catches up with every event. A slow webhook receiver (30 ms per request, 4 in
/// flight) makes a 300-event backlog take about 2 s; the sink's pages are 10 documents. Without
/// the wait, nearly all 300 documents go out while the webhooks are still being delivered; with
/// it, at most the page the sink may have started before the consumer's first fetch (the bound
/// allows three, for a worker stalled longer than the signal's hold by the machine).
#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_sink_gives_way_to_a_webhook_backlog() {
    const EVENTS: usize = 300;
    const PAGE: usize = 10;
    let (db, es) = setup("es_yield").await;
    db.client
        .batch_execute("CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int, status text, note text);")
        .await
        .unwrap();
    let hooks = Receiver::start().await.expect("receiver");
    hooks.set_default("/orders", Reply::ok().delay(Duration::from_millis(30)));
    es.script(
        "/_bulk",
        (0..EVENTS / PAGE).map(|_| bulk_items(&[(201, ""); PAGE])),
    );
    let yaml = config(
        "w-es-yield",
        &format!(
            "concurrent_execution: {{ max_in_flight: 4 }}\nelasticsearch:\n  url: {}\n  batch_size: {PAGE}\n  max_in_flight: 1\n  gzip: false\n  linger: 50ms\n  yield_to_delivery: 1h\n",
            es.url("").trim_end_matches('/')
        ),
        &ORDERS_OBSERVER.replace("URL", &hooks.url("/orders")),
    );
    let mut worker = start_worker("es_yield", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "orders", "public.orders", SHORT).await;
    db.client
        .execute(
            "INSERT INTO public.orders SELECT g, g, 'new', 'order ' || g FROM generate_series(1, $1::int) AS g",
            &[&(EVENTS as i32)],
        )
        .await
        .unwrap();
    // the sink catches up: every event in the index, each once
    let all = poll(LONG, Duration::from_millis(50), || async {
        (feed_passed(&db).await == EVENTS as i64).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "the sink did not catch up\n{}\n{:?}",
        worker.log(),
        bulk_requests(&es)
    );
    let sent: Vec<String> = bulk_requests(&es).into_iter().flatten().collect();
    let unique: std::collections::HashSet<&String> = sent.iter().collect();
    assert_eq!((sent.len(), unique.len()), (EVENTS, EVENTS), "{sent:?}");
    // ... and it waited for the webhooks: documents sent before the last 20 webhooks began
    let mut hook_times: Vec<_> = hooks
        .deliveries_for("/orders")
        .iter()
        .map(|d| d.received_at)
        .collect();
    hook_times.sort();
    assert!(hook_times.len() >= EVENTS, "{} webhooks", hook_times.len());
    let cutoff = hook_times[EVENTS - 20];
    let early: usize = es
        .deliveries_for("/_bulk")
        .iter()
        .filter(|d| d.received_at < cutoff)
        .map(|d| {
            String::from_utf8_lossy(&d.raw_body)
                .lines()
                .filter(|l| l.starts_with("{\"create\""))
                .count()
        })
        .sum();
    assert!(
        early <= 3 * PAGE,
        "{early} documents went to the index while webhooks were backlogged\n{}",
        worker.log()
    );
    worker.stop(LONG).await;
    es.shutdown().await;
    hooks.shutdown().await;
}
