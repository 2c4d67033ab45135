//! Issue 9, item 10: one broken observer (its actions cannot be built) must not hold the other
//! observers of its group. Its events are parked (`observers.parked`), the checkpoint moves on,
//! `status`, `status --check` and `/metrics` report it as an error, and once it is fixed its
//! parked events are delivered with their original webhook-ids — never through a half-built
//! observer.
//!
//! The broken observer is one whose stored actions contain a type this version does not know
//! (written straight into `observers.observer`, as a database written by an older version that
//! accepted any type would hold it; `create_observer` refuses it now). Its first action is a
//! good webhook: nothing may reach it while the observer is broken.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use observers_tests::cluster::{free_port, TestDb};
use observers_tests::receiver::Receiver;
use observers_tests::util::{config_head, poll, status_sum, wait_observer_ready};
use observers_tests::worker::{run_cli, Worker};

use crate::common::*;

fn yaml(name: &str, rx: &Receiver, metrics_port: u16) -> String {
    format!(
        "{}metrics:\n  listen: 127.0.0.1:{metrics_port}\nobservers:\n  - name: good\n    table: public.orders\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n",
        config_head(&format!("w-{name}")),
        rx.url("/good")
    )
}

async fn scrape(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `status()`.broken of observer `name` (NULL: not reported broken).
async fn broken(db: &TestDb, name: &str) -> Option<String> {
    db.client
        .query_one(
            "SELECT broken FROM observers.status() WHERE observer = $1",
            &[&name],
        )
        .await
        .expect("observers.status()")
        .get(0)
}

/// (event id, action index) -> webhook-id of the observer's parked pairs, and their destinations.
async fn parked(db: &TestDb, name: &str) -> (BTreeMap<(i64, i32), String>, BTreeSet<String>) {
    let rows = db
        .client
        .query(
            "SELECT p.event_id, p.action_index, p.webhook_id, p.destination FROM observers.parked p \
             JOIN observers.observer o ON o.id = p.observer_id WHERE o.name = $1",
            &[&name],
        )
        .await
        .expect("read observers.parked");
    let pairs = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let dests = rows
        .iter()
        .map(|r| r.get::<_, Option<String>>(3).unwrap_or_default())
        .collect();
    (pairs, dests)
}

/// event id -> webhook-id of the successful deliveries on `path`.
fn delivered(rx: &Receiver, path: &str) -> BTreeMap<i64, String> {
    rx.deliveries_for(path)
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| Some((d.event_id()?, d.webhook_id.clone()?)))
        .collect()
}

async fn status_check(db: &TestDb) -> (Option<i32>, String) {
    let out = run_cli(
        &["status", "--check", "--database-url", db.url.as_str()],
        &[],
        SHORT,
    )
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_observer_is_parked_reported_and_delivered_once_fixed() {
    let name = "broken_parked";
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute("CREATE TABLE public.orders (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    // `bad` observes the same table in the same group; its second action has a type the
    // worker does not know (create_observer refuses it, so it is written directly)
    let good_actions = format!(
        r#"[{{"type": "webhook", "url": "{}"}}, {{"type": "webhook", "url": "{}"}}]"#,
        rx.url("/bad0"),
        rx.url("/bad1")
    );
    db.client
        .execute(
            "SELECT observers.create_observer(name => 'bad', table_name => 'public.orders', \
             events => ARRAY['INSERT'], actions => $1::text::jsonb, group_name => 'default')",
            &[&good_actions],
        )
        .await
        .unwrap();
    let broken_actions = format!(
        r#"[{{"type": "webhook", "url": "{}"}}, {{"type": "carrier_pigeon"}}]"#,
        rx.url("/bad0")
    );
    db.client
        .execute(
            "UPDATE observers.observer SET actions = $1::text::jsonb WHERE name = 'bad'",
            &[&broken_actions],
        )
        .await
        .unwrap();

    let port = free_port();
    let mut worker = Worker::start(
        name,
        &yaml(name, &rx, port),
        &[("DATABASE_URL", db.url.as_str())],
    );
    wait_observer_ready(&db.client, "good", "public.orders", SHORT).await;
    db.client
        .batch_execute("INSERT INTO public.orders (label) VALUES ('a'), ('b'), ('c')")
        .await
        .unwrap();

    // the good observer's events are delivered, and the group's cursor passes every event
    // (the broken observer's ones included): the batch is not held
    assert!(
        rx.wait_until(SHORT, |r| delivered(r, "/good").len() == 3)
            .await,
        "the good observer's events were not delivered: {}\n{}",
        rx.summary(),
        worker.log()
    );
    assert!(
        wait_backlog_zero(&db.client, SHORT).await,
        "the broken observer holds its group: backlog {} (parked {})\n{}",
        status_sum(&db.client, "backlog").await,
        status_sum(&db.client, "parked").await,
        worker.log()
    );
    let bad_events = outbox_ids(&db.client, "bad").await;
    assert_eq!(bad_events.len(), 3);
    let (parked_pairs, dests) = parked(&db, "bad").await;
    let expected_pairs: BTreeSet<(i64, i32)> =
        bad_events.iter().flat_map(|e| [(*e, 0), (*e, 1)]).collect();
    assert_eq!(
        parked_pairs.keys().copied().collect::<BTreeSet<_>>(),
        expected_pairs,
        "every pair of the broken observer is parked"
    );
    let bad_id = scalar_i64(
        &db.client,
        "SELECT id::bigint FROM observers.observer WHERE name = 'bad'",
    )
    .await;
    assert_eq!(
        dests,
        BTreeSet::from([format!("broken-observer:{bad_id}")]),
        "parked under the broken observer's name"
    );
    let ids: BTreeSet<&String> = parked_pairs.values().collect();
    assert_eq!(ids.len(), 6, "one webhook-id per pair: {parked_pairs:?}");
    // never a half-built observer: its buildable first action sent nothing
    assert_eq!(rx.deliveries_for("/bad0").len(), 0, "{}", rx.summary());

    // status(), `status --check` and /metrics say so
    let why = poll(SHORT, Duration::from_millis(200), || async {
        broken(&db, "bad").await
    })
    .await
    .unwrap_or_else(|| panic!("status() does not report 'bad' as broken\n{}", worker.log()));
    assert!(
        why.contains("unknown action type `carrier_pigeon`") && why.contains("parked"),
        "{why}"
    );
    assert_eq!(broken(&db, "good").await, None);
    let (code, text) = status_check(&db).await;
    assert_eq!(
        code,
        Some(4),
        "status --check with a broken observer:\n{text}"
    );
    assert!(
        text.contains("ERROR observer bad is broken") && text.contains("carrier_pigeon"),
        "{text}"
    );
    let series = r#"observer_broken_observers{group="default",observer="bad"} 1"#;
    let metrics = poll(SHORT, Duration::from_millis(200), || async {
        let m = scrape(port).await;
        m.contains(series).then_some(m)
    })
    .await;
    assert!(
        metrics.is_some(),
        "{series} missing:\n{}",
        scrape(port).await
    );

    // fixed in SQL: its parked events go out through the fixed actions, each pair with the
    // webhook-id it was parked with, and the parked table empties
    db.client
        .execute(
            "SELECT observers.create_observer(name => 'bad', table_name => 'public.orders', \
             events => ARRAY['INSERT'], actions => $1::text::jsonb, group_name => 'default', \
             replace => true)",
            &[&good_actions],
        )
        .await
        .unwrap();
    assert!(
        rx.wait_until(SHORT, |r| delivered(r, "/bad0").len() == 3
            && delivered(r, "/bad1").len() == 3)
            .await,
        "the fixed observer's parked events were not delivered: {}\n{}",
        rx.summary(),
        worker.log()
    );
    for (index, path) in [(0, "/bad0"), (1, "/bad1")] {
        let got = delivered(&rx, path);
        let want: BTreeMap<i64, String> = parked_pairs
            .iter()
            .filter(|((_, i), _)| *i == index)
            .map(|((e, _), w)| (*e, w.clone()))
            .collect();
        assert_eq!(got, want, "{path}: event -> webhook-id as parked");
    }
    let emptied = poll(SHORT, Duration::from_millis(200), || async {
        (status_sum(&db.client, "parked").await == 0).then_some(())
    })
    .await;
    assert!(emptied.is_some(), "observers.parked did not empty");
    assert_eq!(
        scalar_i64(&db.client, "SELECT count(*) FROM observers.dlq").await,
        0
    );

    // no longer reported (next heartbeat), and new events flow directly
    let cleared = poll(SHORT, Duration::from_millis(200), || async {
        broken(&db, "bad").await.is_none().then_some(())
    })
    .await;
    assert!(cleared.is_some(), "status() still reports 'bad' as broken");
    let (code, text) = status_check(&db).await;
    assert_eq!(code, Some(0), "status --check once fixed:\n{text}");
    let gone = poll(SHORT, Duration::from_millis(200), || async {
        let m = scrape(port).await;
        (!m.is_empty() && !m.contains("observer_broken_observers{")).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the broken-observer series stayed:\n{}",
        scrape(port).await
    );
    db.client
        .batch_execute("INSERT INTO public.orders (label) VALUES ('d')")
        .await
        .unwrap();
    assert!(
        rx.wait_until(SHORT, |r| delivered(r, "/good").len() == 4
            && delivered(r, "/bad0").len() == 4
            && delivered(r, "/bad1").len() == 4)
            .await,
        "{}",
        rx.summary()
    );
    assert_eq!(rx.duplicate_count(), 0, "{}", rx.summary());
    worker.stop(SHORT).await;
}

async fn scalar_i64(client: &tokio_postgres::Client, sql: &str) -> i64 {
    observers_tests::util::scalar_i64(client, sql, &[])
        .await
        .unwrap_or(-1)
}
