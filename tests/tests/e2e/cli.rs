//! SPEC §6: the operator CLI (`status`, `dlq ...`, `debug-event`, `replay`) run as the real
//! binary against a real workload: a receiver that answers 500 fills the DLQ, the CLI shows,
//! retries and purges it, and every assertion compares the output with the database or the
//! receiver.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use observers_tests::cluster::{free_port, TestDb};
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{poll, scalar_i64, wait_observer_ready};
use observers_tests::worker::{run_cli, Worker};
use serde_json::Value;

use crate::common::*;

/// Two attempts with a short backoff: a 500 lands in the DLQ within a second.
const RETRY: &str =
    "retry: { max_attempts: 2, initial_backoff: 50ms, max_backoff: 100ms, multiplier: 2 }\n";

fn observer(name: &str, table: &str, url: &str) -> String {
    format!(
        "  - name: {name}\n    table: {table}\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {url}\n        timeout: 5s\n"
    )
}

/// Tables `things` and `others`, observers of the same names posting to `/things` and
/// `/others`, and a running worker.
async fn start(name: &str) -> (TestDb, Receiver, Worker) {
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute(
            "CREATE TABLE public.things (id serial PRIMARY KEY, label text);
             CREATE TABLE public.others (id serial PRIMARY KEY, label text);",
        )
        .await
        .unwrap();
    let yaml = config(
        &format!("w-{name}"),
        RETRY,
        &format!(
            "{}{}",
            observer("things", "public.things", &rx.url("/things")),
            observer("others", "public.others", &rx.url("/others"))
        ),
    );
    let worker = start_worker(name, &db, &yaml, &[]);
    wait_observer_ready(&db.client, "things", "public.things", SHORT).await;
    wait_observer_ready(&db.client, "others", "public.others", SHORT).await;
    (db, rx, worker)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `fraiseql-observers ARGS --database-url URL`.
async fn cli(db: &TestDb, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--database-url", db.url.as_str()]);
    run_cli(&all, &[], SHORT).await
}

/// Runs the command with `--format json`, expects exit 0 and parses stdout.
async fn cli_json(db: &TestDb, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--format", "json"]);
    let out = cli(db, &all).await;
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {}", text(&out)))
}

async fn dlq_count(db: &TestDb, observer: &str) -> i64 {
    scalar_i64(
        &db.client,
        "SELECT count(*) FROM observers.dlq d JOIN observers.observer o ON o.id = d.observer_id \
         WHERE o.name = $1",
        &[&observer],
    )
    .await
    .unwrap_or(-1)
}

async fn insert(db: &TestDb, table: &str, labels: &[&str]) {
    for l in labels {
        db.client
            .execute(
                &format!("INSERT INTO public.{table} (label) VALUES ($1)"),
                &[l],
            )
            .await
            .unwrap();
    }
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_show_stats_retry_and_purge() {
    let (db, rx, mut worker) = start("cli_dlq").await;
    rx.set_default(
        "/things",
        Reply::status(500).body("text/plain", "Upstream Exploded"),
    );
    rx.set_default(
        "/others",
        Reply::status(500).body("text/plain", "other failure"),
    );
    insert(&db, "things", &["t1", "t2", "t3"]).await;
    insert(&db, "others", &["o1", "o2"]).await;
    assert!(
        wait_dlq(&db.client, 5, SHORT).await,
        "5 dead letters expected; {}",
        rx.summary()
    );

    // list: every entry, oldest first, with the fields of observers.dlq
    let list = cli_json(&db, &["dlq", "list"]).await;
    let rows = dlq_rows(&db.client).await;
    assert_eq!(list.as_array().unwrap().len(), 5, "{list:#}");
    for (e, row) in list.as_array().unwrap().iter().zip(&rows) {
        assert_eq!(
            e["id"].to_string(),
            row["id"].clone().unwrap(),
            "{e} vs {row:?}"
        );
        let event = e["event_id"].as_i64().unwrap();
        assert_eq!(
            e["webhook_id"],
            webhook_id(&db.client, event, 0).await,
            "{e}"
        );
        assert_eq!(e["attempts"], 2, "{e}");
        assert_eq!(e["last_status"], 500, "{e}");
        assert_eq!(e["retries"], 0, "{e}");
        assert_eq!(e["retry_pending"], false, "{e}");
        assert_eq!(e["action_type"], "webhook", "{e}");
    }
    let list_ids = ids(&list);
    let mut sorted = list_ids.clone();
    sorted.sort();
    assert_eq!(list_ids, sorted, "oldest first");
    let things = cli_json(&db, &["dlq", "list", "--observer", "things"]).await;
    assert_eq!(ids(&things).len(), 3, "{things:#}");
    assert!(things
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["observer"] == "things"));
    let by_error = cli_json(&db, &["dlq", "list", "--error", "upstream EXPLODED"]).await;
    assert_eq!(
        ids(&by_error),
        ids(&things),
        "--error is a case-insensitive substring"
    );
    let recent = cli_json(&db, &["dlq", "list", "--since", "1h", "--limit", "2"]).await;
    assert_eq!(ids(&recent), list_ids[..2], "--since 1h --limit 2");
    let future = cli_json(&db, &["dlq", "list", "--before", "2000-01-01T00:00:00Z"]).await;
    assert_eq!(
        ids(&future).len(),
        0,
        "nothing was dead-lettered before 2000"
    );
    let out = cli(&db, &["dlq", "list"]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("5 dead letters") && t.contains("WEBHOOK-ID"),
        "{t}"
    );
    let out = cli(&db, &["dlq", "list", "--observer", "nope"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "unknown observer: {}",
        text(&out)
    );
    let out = cli(&db, &["dlq", "list", "--since", "soon"]).await;
    assert_eq!(out.status.code(), Some(2), "bad time: {}", text(&out));

    // stats
    let stats = cli_json(&db, &["dlq", "stats"]).await;
    let entries = |name: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["observer"] == name)
            .map(|s| s["entries"].as_i64().unwrap())
    };
    assert_eq!(
        (entries("things"), entries("others")),
        (Some(3), Some(2)),
        "{stats:#}"
    );

    // show: the payload is the webhook body
    let first = things[0].clone();
    let id = first["id"].as_i64().unwrap();
    let id_s = id.to_string();
    let shown = cli_json(&db, &["dlq", "show", &id_s]).await;
    assert_eq!(shown["webhook_id"], first["webhook_id"]);
    let label = db
        .client
        .query_one(
            "SELECT new->>'label' FROM observers.event WHERE id = $1",
            &[&first["event_id"].as_i64().unwrap()],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(shown["payload"]["new"]["label"], label, "{shown:#}");
    assert_eq!(shown["payload"]["id"], first["event_id"], "{shown:#}");
    let out = cli(&db, &["dlq", "show", &id_s]).await;
    assert!(
        text(&out).contains(first["webhook_id"].as_str().unwrap()),
        "{}",
        text(&out)
    );
    let out = cli(&db, &["dlq", "show", "987654321"]).await;
    assert_eq!(out.status.code(), Some(3), "unknown id: {}", text(&out));

    // debug-event: the dead-lettered event with its dead letter
    let event_s = first["event_id"].to_string();
    let dbg = cli_json(&db, &["debug-event", &event_s]).await;
    assert_eq!(dbg["event"]["id"], first["event_id"], "{dbg:#}");
    assert_eq!(dbg["dlq"].as_array().map(Vec::len), Some(1), "{dbg:#}");
    let out = cli(&db, &["debug-event", &event_s]).await;
    assert!(text(&out).contains("DEAD LETTERS"), "{}", text(&out));
    let out = cli(&db, &["debug-event", "987654321"]).await;
    assert_eq!(out.status.code(), Some(3), "unknown event: {}", text(&out));

    // retry --dry-run changes nothing
    let dry = cli_json(&db, &["dlq", "retry", &id_s, "--dry-run"]).await;
    assert_eq!(
        (dry["queued"].clone(), dry["dry_run"].clone()),
        (true.into(), true.into())
    );
    let again = cli_json(&db, &["dlq", "show", &id_s]).await;
    assert_eq!(
        (again["retries"].clone(), again["retry_pending"].clone()),
        (0.into(), false.into())
    );

    // retry while the endpoint still fails: the entry stays, retries goes up, same webhook-id
    let requests_before = rx.deliveries_for("/things").len();
    let r = cli_json(&db, &["dlq", "retry", &id_s]).await;
    assert_eq!(r["queued"], true, "{r}");
    let after = poll(SHORT, Duration::from_millis(200), || async {
        let v = cli_json(&db, &["dlq", "show", &id_s]).await;
        (v["retries"] == 1 && v["retry_pending"] == false).then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("the retry never finished; {}", rx.summary()));
    assert_eq!(after["last_status"], 500, "{after:#}");
    assert!(
        after["error"].as_str().unwrap_or("").contains("500"),
        "{after:#}"
    );
    assert_eq!(
        dlq_count(&db, "things").await,
        3,
        "a failed retry keeps the entry"
    );
    let retried: Vec<_> = rx.deliveries_for("/things")[requests_before..]
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect();
    assert!(
        !retried.is_empty()
            && retried
                .iter()
                .all(|w| w.as_deref() == first["webhook_id"].as_str()),
        "the retry is sent with the dead letter's webhook-id: {retried:?}"
    );

    // purge: refused without a filter; --dry-run deletes nothing; filters delete exactly theirs
    let out = cli(&db, &["dlq", "purge"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--all"), "{}", text(&out));
    let dry = cli_json(&db, &["dlq", "purge", "--observer", "others", "--dry-run"]).await;
    assert_eq!(dry["deleted"], 2, "{dry}");
    assert_eq!(
        dlq_count(&db, "others").await,
        2,
        "--dry-run deleted something"
    );
    let others = ids(&cli_json(&db, &["dlq", "list", "--observer", "others"]).await);
    let one = others[0].to_string();
    let p = cli_json(&db, &["dlq", "purge", "--id", &one]).await;
    assert_eq!(p["deleted"], 1, "{p}");
    let left = ids(&cli_json(&db, &["dlq", "list"]).await);
    assert!(!left.contains(&others[0]) && left.len() == 4, "{left:?}");
    let p = cli_json(
        &db,
        &["dlq", "purge", "--error", "OTHER FAILURE", "--since", "1h"],
    )
    .await;
    assert_eq!(p["deleted"], 1, "{p}");
    assert_eq!(dlq_count(&db, "others").await, 0);
    assert_eq!(
        dlq_count(&db, "things").await,
        3,
        "purge touched another observer"
    );

    // the endpoint is fixed: retry-all delivers every entry with its webhook-id, the DLQ empties
    rx.set_default("/things", Reply::ok());
    let things = cli_json(&db, &["dlq", "list", "--observer", "things"]).await;
    let wanted: BTreeSet<String> = things
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["webhook_id"].as_str().unwrap().to_owned())
        .collect();
    let dry = cli_json(
        &db,
        &["dlq", "retry-all", "--observer", "things", "--dry-run"],
    )
    .await;
    assert_eq!(dry["queued"], 3, "{dry}");
    assert_eq!(dlq_count(&db, "things").await, 3);
    let all = cli_json(&db, &["dlq", "retry-all", "--observer", "things"]).await;
    assert_eq!(all["queued"], 3, "{all}");
    let emptied = poll(SHORT, Duration::from_millis(200), || async {
        (dlq_count(&db, "things").await == 0).then_some(())
    })
    .await;
    assert!(emptied.is_some(), "the DLQ did not empty; {}", rx.summary());
    let delivered: BTreeSet<String> = rx
        .deliveries_for("/things")
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(
        delivered, wanted,
        "delivered with the dead letters' webhook-ids"
    );
    assert_eq!(cli_json(&db, &["dlq", "list"]).await, Value::Array(vec![]));
    let out = cli(&db, &["dlq", "stats"]).await;
    assert!(text(&out).contains("empty"), "{}", text(&out));
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_and_without_a_worker() {
    let (db, rx) = setup("cli_status").await;
    db.client
        .batch_execute(
            "CREATE TABLE public.things (id serial PRIMARY KEY, label text);
             SELECT observers.create_observer(name => 'things', table_name => 'public.things',
                events => '{INSERT}', actions => '[{\"type\": \"webhook\", \"url\": \"http://127.0.0.1:9/\"}]');
             INSERT INTO public.things (label) VALUES ('a'), ('b');",
        )
        .await
        .unwrap();

    // no worker has ever run
    let out = cli(&db, &["status"]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("no worker has ever sent a heartbeat"), "{t}");
    assert!(t.contains("no leader and no running worker"), "{t}");
    let s = cli_json(&db, &["status"]).await;
    assert_eq!(s["observers"][0]["observer"], "things", "{s:#}");
    assert_eq!(s["observers"][0]["backlog"], 2, "{s:#}");
    assert_eq!(s["observers"][0]["leader"], Value::Null, "{s:#}");
    assert_eq!(s["workers"], Value::Array(vec![]), "{s:#}");
    assert_eq!(s["problems"][0]["severity"], "error", "{s:#}");
    let out = cli(&db, &["status", "--check"]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "status --check with no worker: {}",
        text(&out)
    );

    // a worker runs: it leads, the backlog drains, no error
    let yaml = config(
        "w-cli-status",
        "",
        &observer("things", "public.things", &rx.url("/h")),
    );
    let mut worker = start_worker("cli_status", &db, &yaml, &[]);
    let s = poll(SHORT, Duration::from_millis(250), || async {
        let s = cli_json(&db, &["status"]).await;
        (s["observers"][0]["leader"] == "w-cli-status"
            && s["observers"][0]["backlog"] == 0
            && s["workers"][0]["leader"] == true)
            .then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("status never showed the worker leading with an empty backlog"));
    assert_eq!(s["workers"][0]["worker_id"], "w-cli-status", "{s:#}");
    assert!(
        s["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["severity"] != "error"),
        "{s:#}"
    );
    let out = cli(&db, &["status"]).await;
    let t = text(&out);
    assert!(t.contains("w-cli-status") && t.contains("leader"), "{t}");
    assert!(t.contains("PROBLEMS\n  none"), "{t}");
    let out = cli(&db, &["status", "--check"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "status --check with a leader: {}",
        text(&out)
    );

    // the worker stops: no leader, no running worker
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
    let out = cli(&db, &["status"]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("no leader and no running worker"), "{t}");
    assert!(t.contains("stopped"), "{t}");
    let s = cli_json(&db, &["status"]).await;
    assert_eq!(s["observers"][0]["leader"], Value::Null, "{s:#}");
    assert_eq!(s["workers"][0]["leader"], false, "{s:#}");
}

/// The value of `series` in the worker's `/metrics`, once it is there.
async fn metric(port: u16, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Issue 9 §2.12: a schema change that switches capture off is an error for `status`, for
/// `status --check` (exit 4) and for `/metrics` (`observer_capture_broken`) until
/// `observers.repair_observer()` puts it back; events written meanwhile are lost, so it must not
/// wait for someone to notice missing webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_capture_is_an_error_for_status_check_and_metrics() {
    let (db, rx) = setup("cli_capture").await;
    db.client
        .batch_execute("CREATE TABLE public.things (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let port = free_port();
    let yaml = format!(
        "{}metrics:\n  listen: 127.0.0.1:{port}\nobservers:\n{}",
        observers_tests::util::config_head("w-cli-capture"),
        observer("things", "public.things", &rx.url("/h"))
    );
    let mut worker = start_worker("cli_capture", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "things", "public.things", SHORT).await;
    let series = r#"observer_capture_broken{group="default",observer="things"}"#;
    let check_is = |want: i32| {
        let db = &db;
        async move {
            poll(SHORT, Duration::from_millis(250), || async {
                let out = cli(db, &["status", "--check"]).await;
                (out.status.code() == Some(want)).then_some(out)
            })
            .await
        }
    };
    assert!(
        check_is(0).await.is_some(),
        "a healthy worker never made status --check pass"
    );
    let gauge = poll(SHORT, Duration::from_millis(250), || metric(port, series)).await;
    assert_eq!(gauge, Some(0.0), "{series}");

    // the table's owner switches the INSERT trigger off: nothing is captured any more
    let trigger = text_of(
        &db,
        "SELECT observers._trigger_name(id, 'INSERT') FROM observers.observer WHERE name = 'things'",
    )
    .await;
    db.client
        .batch_execute(&format!(
            "ALTER TABLE public.things DISABLE TRIGGER {trigger}"
        ))
        .await
        .unwrap();
    insert(&db, "things", &["lost"]).await;
    assert_eq!(outbox_ids(&db.client, "things").await.len(), 0);

    let Some(out) = check_is(4).await else {
        let last = cli(&db, &["status", "--check"]).await;
        panic!("status --check never exited 4: {}", text(&last));
    };
    let t = text(&out);
    assert!(
        t.contains("ERROR observer things does not capture as defined")
            && t.contains(&format!(
                "INSERT not captured: trigger {trigger} on public.things is disabled"
            ))
            && t.contains("observers.repair_observer('things')"),
        "{t}"
    );
    let s = cli_json(&db, &["status"]).await;
    assert_eq!(s["problems"][0]["severity"], "error", "{s:#}");
    assert_eq!(s["problems"][0]["observer"], "things", "{s:#}");
    assert!(
        s["observers"][0]["capture_error"]
            .as_str()
            .is_some_and(|e| e.contains("is disabled")),
        "{s:#}"
    );
    let gauge = poll(SHORT, Duration::from_millis(250), || async {
        metric(port, series).await.filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(gauge, Some(1.0), "{series} never turned 1");

    // repaired: capture resumes, status --check passes, the gauge goes back to 0
    let repaired: Vec<String> = db
        .client
        .query("SELECT * FROM observers.repair_observer('things')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        repaired,
        [format!("enabled INSERT trigger {trigger} on public.things")]
    );
    assert!(
        check_is(0).await.is_some(),
        "status --check still fails after the repair"
    );
    let gauge = poll(SHORT, Duration::from_millis(250), || async {
        metric(port, series).await.filter(|v| *v == 0.0)
    })
    .await;
    assert_eq!(gauge, Some(0.0), "{series} never went back to 0");
    insert(&db, "things", &["captured"]).await;
    assert!(rx.wait_for_events(1, SHORT).await, "{}", rx.summary());
    assert_eq!(
        delivered_labels(&rx),
        ["captured".to_owned()].into_iter().collect()
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

async fn text_of(db: &TestDb, sql: &str) -> String {
    db.client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_past_events_again_with_their_webhook_ids() {
    let (db, rx, mut worker) = start("cli_replay").await;
    insert(&db, "things", &["a", "b", "c"]).await;
    assert!(rx.wait_for_events(3, SHORT).await, "{}", rx.summary());
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    let ids = outbox_ids(&db.client, "things").await;
    let (from, to) = (ids[0].to_string(), ids[2].to_string());
    let dry = cli_json(
        &db,
        &[
            "replay",
            "things",
            "--from",
            &from,
            "--to",
            &to,
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(dry["queued"], 3, "{dry}");
    rx.settle(Duration::from_secs(1), SHORT).await;
    assert_eq!(
        rx.count(),
        3,
        "--dry-run delivered something; {}",
        rx.summary()
    );
    let r = cli_json(&db, &["replay", "things", "--from", &from, "--to", &to]).await;
    assert_eq!(r["queued"], 3, "{r}");
    assert!(
        rx.wait_for(6, SHORT).await,
        "replayed events never arrived; {}",
        rx.summary()
    );
    for (event, webhook_ids) in webhook_ids_by_event(&rx.deliveries()) {
        assert_eq!(
            webhook_ids.into_iter().collect::<Vec<_>>(),
            [webhook_id(&db.client, event, 0).await],
            "a replay keeps the webhook-id"
        );
    }
    let out = cli(&db, &["replay", "nope", "--from", "1", "--to", "2"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = cli(&db, &["replay", "things", "--from", "5", "--to", "1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_is_exit_1_with_where_and_what_to_check() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nowhere");
    for args in [
        vec!["status"],
        vec!["dlq", "list"],
        vec!["debug-event", "1"],
    ] {
        let mut all = args.clone();
        all.extend(["--database-url", url.as_str()]);
        let out = run_cli(&all, &[], SHORT).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {t}");
        assert!(
            t.contains(&format!("127.0.0.1:{port}")) && t.contains("DATABASE_URL"),
            "{args:?}: the error must say where and what to check: {t}"
        );
    }
    // DATABASE_URL works as well as --database-url
    let out = run_cli(&["dlq", "stats"], &[("DATABASE_URL", url.as_str())], SHORT).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // no URL anywhere: a usage error
    let out = run_cli(&["dlq", "stats"], &[("DATABASE_URL", "")], SHORT).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_names_the_role_to_grant() {
    let (db, _rx) = setup("cli_perm").await;
    // roles are cluster-wide: a name of our own
    let role = format!("cli_ops_{}", std::process::id());
    db.client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;"
        ))
        .await
        .unwrap();
    let url = db.url.replacen("://postgres@", &format!("://{role}@"), 1);
    assert_ne!(url, db.url, "unexpected test URL shape: {}", db.url);
    for args in [
        vec!["dlq", "list"],
        vec!["dlq", "purge", "--all"],
        vec!["status"],
    ] {
        let mut all = args.clone();
        all.extend(["--database-url", url.as_str()]);
        let out = run_cli(&all, &[], SHORT).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {t}");
        assert!(
            t.contains(&format!("GRANT observers_admin TO {role}")),
            "{args:?}: the error must say which role to grant: {t}"
        );
    }
    // the worker's role may read status (without breakers) but not purge
    db.client
        .batch_execute(&format!("GRANT observers_worker TO {role}"))
        .await
        .unwrap();
    let out = run_cli(&["status", "--database-url", url.as_str()], &[], SHORT).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("needs observers_admin"),
        "{}",
        text(&out)
    );
    let out = run_cli(
        &["dlq", "purge", "--all", "--database-url", url.as_str()],
        &[],
        SHORT,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // the worker's role is sent to an operator role, never offered observers_admin
    let t = text(&out);
    assert!(
        !t.contains("GRANT observers_admin") && t.contains("Connect as an operator role"),
        "a worker role must not be told to get observers_admin: {t}"
    );
    db.client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_supplies_the_database_url() {
    let (db, _rx) = setup("cli_config").await;
    let file = observers_tests::worker::write_temp_file(
        "cli-config.yaml",
        &format!("database:\n  url: {}\nobservers: []\n", db.url),
    );
    let file = file.to_str().unwrap();
    // an empty DATABASE_URL counts as unset, so the file's URL is used
    let no_env = [("DATABASE_URL", "")];
    for args in [
        vec!["status", "-c", file, "--format", "json"],
        vec!["dlq", "stats", "-c", file, "--format", "json"],
        vec!["dlq", "-c", file, "list", "--format", "json"],
    ] {
        let out = run_cli(&args, &no_env, SHORT).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", text(&out)));
        assert!(v.is_object() || v.is_array(), "{v}");
    }
    // --database-url wins over the file
    let bad = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let out = run_cli(
        &["dlq", "stats", "-c", file, "--database-url", bad.as_str()],
        &no_env,
        SHORT,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// Issue 10: `checkpoint show` / `checkpoint skip`. With no worker running, events pile up;
/// `show` reports the backlog, `skip --dry-run` changes nothing, `skip` refuses without
/// `--yes`, `skip --yes` empties the backlog; a worker started afterwards delivers only new
/// events, and `replay` of the reported range delivers the skipped ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_skip_skips_the_backlog_and_the_range_stays_replayable() {
    let (db, rx, mut worker) = start("cli_checkpoint").await;
    insert(&db, "things", &["before"]).await;
    assert!(rx.wait_for_events(1, SHORT).await, "{}", rx.summary());
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));

    // the incident: no worker, a backlog
    insert(&db, "things", &["a", "b", "c"]).await;
    insert(&db, "others", &["x"]).await;
    let show = cli_json(&db, &["checkpoint", "show", "--group", "default"]).await;
    assert_eq!(show[0]["group_name"], "default", "{show}");
    assert_eq!(show[0]["backlog"], 4, "{show}");
    assert_eq!(show[0]["batch_open"], false, "{show}");

    let out = cli(&db, &["checkpoint", "skip", "--group", "default"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "skip without --yes: {}",
        text(&out)
    );
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    let out = cli(&db, &["checkpoint", "show", "--group", "nope"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let dry = cli_json(
        &db,
        &["checkpoint", "skip", "--group", "default", "--dry-run"],
    )
    .await;
    assert_eq!(dry["skipped"], 4, "{dry}");
    assert_eq!(dry["dry_run"], true, "{dry}");
    let show = cli_json(&db, &["checkpoint", "show", "--group", "default"]).await;
    assert_eq!(
        show[0]["backlog"], 4,
        "--dry-run changed the cursor: {show}"
    );

    let skip = cli_json(&db, &["checkpoint", "skip", "--group", "default", "--yes"]).await;
    assert_eq!(skip["skipped"], 4, "{skip}");
    let things = skip["observers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["observer"] == "things")
        .cloned()
        .unwrap_or_else(|| panic!("no row for observer things: {skip}"));
    assert_eq!(things["skipped"], 3, "{skip}");
    let ids = outbox_ids(&db.client, "things").await;
    assert_eq!(things["from_id"], ids[1], "{skip}");
    assert_eq!(things["to_id"], ids[3], "{skip}");
    let show = cli_json(&db, &["checkpoint", "show", "--group", "default"]).await;
    assert_eq!(show[0]["backlog"], 0, "{show}");

    // a worker started afterwards delivers only what is captured after the skip
    let yaml = config(
        "w-cli_checkpoint",
        RETRY,
        &format!(
            "{}{}",
            observer("things", "public.things", &rx.url("/things")),
            observer("others", "public.others", &rx.url("/others"))
        ),
    );
    let mut worker = start_worker("cli_checkpoint2", &db, &yaml, &[]);
    insert(&db, "things", &["after"]).await;
    assert!(rx.wait_for_events(2, SHORT).await, "{}", rx.summary());
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    let expected: BTreeSet<String> = ["before", "after"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        delivered_labels(&rx).into_iter().collect::<BTreeSet<_>>(),
        expected,
        "skipped events were delivered; {}",
        rx.summary()
    );

    // the reported range is replayable
    let (from, to) = (things["from_id"].to_string(), things["to_id"].to_string());
    let r = cli_json(&db, &["replay", "things", "--from", &from, "--to", &to]).await;
    assert_eq!(r["queued"], 3, "{r}");
    assert!(rx.wait_for_events(5, SHORT).await, "{}", rx.summary());
    let expected: BTreeSet<String> = ["before", "after", "a", "b", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        delivered_labels(&rx).into_iter().collect::<BTreeSet<_>>(),
        expected,
        "{}",
        rx.summary()
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
