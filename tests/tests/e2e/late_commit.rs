//! Guarantee 2.2: a transaction that commits after events with higher ids were delivered is
//! still delivered (no `id > checkpoint` gap).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use observers_tests::util::{scalar_i64, wait_observer_ready};
use rand::Rng;

use crate::common::*;

fn insert_observer(url: &str) -> String {
    format!(
        "  - name: late
    table: public.items
    events: [INSERT]
    actions:
      - type: webhook
        url: {url}
        timeout: 5s
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_with_lower_id_is_delivered_after_higher_ids() {
    let (db, rx) = setup("late_commit").await;
    db.client
        .batch_execute("CREATE TABLE public.items (id serial PRIMARY KEY, label text NOT NULL)")
        .await
        .unwrap();
    let yaml = config("w-late", "", &insert_observer(&rx.url("/hooks/late")));
    let mut worker = start_worker("late_commit", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "late", "public.items", SHORT).await;

    // Session A inserts first (lower event id) and keeps its transaction open.
    let a = db.connect().await;
    a.batch_execute("BEGIN; INSERT INTO public.items (label) VALUES ('A')")
        .await
        .unwrap();
    let a_event = scalar_i64(&a, "SELECT max(id) FROM observers.event", &[])
        .await
        .expect("A's event id");

    // Session B inserts second (higher id) and commits first.
    let b = db.connect().await;
    b.batch_execute("INSERT INTO public.items (label) VALUES ('B')")
        .await
        .unwrap();
    assert!(
        rx.wait_for_events(1, SHORT).await,
        "B was not delivered; {}",
        rx.summary()
    );
    let first = rx.deliveries();
    assert_eq!(first.len(), 1);
    let b_event = first[0].event_id().expect("event id");
    assert_eq!(first[0].body.as_ref().unwrap()["new"]["label"], "B");
    assert!(
        a_event < b_event,
        "A must hold the lower id ({a_event} vs {b_event})"
    );

    // Let the worker go around several times (safety poll is 1s) with A still open: a plain
    // id cursor would now be past A's id for good.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rx.count(),
        1,
        "nothing else may be delivered while A is open; {}",
        rx.summary()
    );

    a.batch_execute("COMMIT").await.unwrap();
    assert!(
        rx.wait_for_events(2, SHORT).await,
        "the late-committing transaction A (event {a_event}) was never delivered: gap! {}",
        rx.summary()
    );
    let d = rx.deliveries();
    let second = d
        .iter()
        .find(|x| x.event_id() == Some(a_event))
        .expect("A's delivery");
    assert_eq!(second.body.as_ref().unwrap()["new"]["label"], "A");
    assert_eq!(
        second.webhook_id.as_deref(),
        Some(webhook_id(&db.client, a_event, 0).await.as_str())
    );
    assert!(
        wait_backlog_zero(&db.client, SHORT).await,
        "backlog did not return to 0"
    );

    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_interleaved_late_transactions_leave_no_gap() {
    let (db, rx) = setup("late_many").await;
    db.client
        .batch_execute("CREATE TABLE public.items (id serial PRIMARY KEY, label text NOT NULL)")
        .await
        .unwrap();
    let yaml = config(
        "w-late-many",
        "concurrent_execution: { enabled: true, max_in_flight: 32 }\n",
        &insert_observer(&rx.url("/hooks/late")),
    );
    let mut worker = start_worker("late_many", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "late", "public.items", SHORT).await;

    // 40 transactions that each insert 1-3 rows, hold the transaction open for a random
    // 0-1500 ms and then commit (every 5th rolls back), while a steady autocommit writer
    // keeps higher ids committing all the time.
    let committed = Arc::new(parking_lot::Mutex::new(BTreeSet::<String>::new()));
    let rolled_back = Arc::new(parking_lot::Mutex::new(BTreeSet::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let steady = {
        let url = db.url.clone();
        let committed = committed.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = observers_tests::cluster::connect(&url).await.unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let label = format!("steady-{i}");
                c.execute("INSERT INTO public.items (label) VALUES ($1)", &[&label])
                    .await
                    .unwrap();
                committed.lock().insert(label);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut late = vec![];
    for t in 0..40 {
        let url = db.url.clone();
        let committed = committed.clone();
        let rolled_back = rolled_back.clone();
        late.push(tokio::spawn(async move {
            let (start_delay, hold, rows) = {
                let mut r = rand::rng();
                (
                    r.random_range(0..1500u64),
                    r.random_range(0..1500u64),
                    r.random_range(1..=3),
                )
            };
            tokio::time::sleep(Duration::from_millis(start_delay)).await;
            let c = observers_tests::cluster::connect(&url).await.unwrap();
            c.batch_execute("BEGIN").await.unwrap();
            let labels: Vec<String> = (0..rows).map(|k| format!("late-{t}-{k}")).collect();
            for l in &labels {
                c.execute("INSERT INTO public.items (label) VALUES ($1)", &[l])
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(hold)).await;
            if t % 5 == 4 {
                c.batch_execute("ROLLBACK").await.unwrap();
                rolled_back.lock().extend(labels);
            } else {
                c.batch_execute("COMMIT").await.unwrap();
                committed.lock().extend(labels);
            }
        }));
    }
    for h in late {
        h.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    steady.await.unwrap();

    let committed = committed.lock().clone();
    let rolled_back = rolled_back.lock().clone();
    let ok = rx
        .wait_until(LONG, |rx| {
            let got = delivered_labels(rx);
            committed.iter().all(|l| got.contains(l))
        })
        .await;
    let got = delivered_labels(&rx);
    let missing: Vec<&String> = committed.iter().filter(|l| !got.contains(*l)).collect();
    assert!(
        ok,
        "{} committed rows never delivered (gap): {:?}; {}",
        missing.len(),
        missing,
        rx.summary()
    );
    rx.settle(Duration::from_secs(2), SHORT).await;
    let ghosts: Vec<&String> = rolled_back.iter().filter(|l| got.contains(*l)).collect();
    assert!(
        ghosts.is_empty(),
        "rolled-back rows were delivered: {ghosts:?}"
    );
    let outbox = outbox_ids(&db.client, "late").await;
    assert_eq!(
        outbox.len(),
        committed.len(),
        "one outbox event per committed row"
    );
    assert_eq!(
        rx.delivered_event_ids().len(),
        committed.len(),
        "{}",
        rx.summary()
    );
    assert!(
        wait_backlog_zero(&db.client, SHORT).await,
        "backlog did not return to 0"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

/// Many writers committing 1-row transactions flat out while the worker opens a batch every
/// few milliseconds: every batch boundary races with commits in flight and with `nextval` on the
/// event sequence. Every committed event must be delivered. (This caught batch_open reading the
/// event sequence without its buffer lock, which skipped up to 32 events now and then.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_flat_out_leave_no_gap() {
    let (db, rx) = setup("late_flat_out").await;
    db.client
        .batch_execute("CREATE TABLE public.items (id serial PRIMARY KEY, label text NOT NULL)")
        .await
        .unwrap();
    let yaml = config(
        "w-late-flat-out",
        "concurrent_execution: { enabled: true, max_in_flight: 64 }\n",
        &insert_observer(&rx.url("/hooks/late")),
    );
    let mut worker = start_worker("late_flat_out", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "late", "public.items", SHORT).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..12 {
        let (url, stop) = (db.url.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let c = observers_tests::cluster::connect(&url).await.unwrap();
            let insert = c
                .prepare("INSERT INTO public.items (label) VALUES ($1)")
                .await
                .unwrap();
            let mut labels = vec![];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let label = format!("w{w}-{i}");
                c.execute(&insert, &[&label]).await.unwrap();
                labels.push(label);
                i += 1;
            }
            labels
        }));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut committed = BTreeSet::new();
    for h in writers {
        committed.extend(h.await.unwrap());
    }
    assert!(
        committed.len() > 1000,
        "the writers barely wrote ({} rows)",
        committed.len()
    );

    let ok = rx
        .wait_until(LONG, |rx| {
            let got = delivered_labels(rx);
            committed.iter().all(|l| got.contains(l))
        })
        .await;
    let got = delivered_labels(&rx);
    let missing: Vec<&String> = committed.iter().filter(|l| !got.contains(*l)).collect();
    assert!(
        ok,
        "{} of {} committed rows never delivered (gap): {:?}; {}",
        missing.len(),
        committed.len(),
        missing.iter().take(20).collect::<Vec<_>>(),
        rx.summary()
    );
    assert!(
        wait_backlog_zero(&db.client, SHORT).await,
        "backlog did not return to 0"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
