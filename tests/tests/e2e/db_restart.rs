//! The database restarts (fast, then a crash-like immediate stop) while events flow: afterwards
//! every committed row is delivered and the same worker process keeps consuming.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use observers_tests::cluster::connect;
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::wait_observer_ready;

use crate::common::*;

/// Keep inserting uniquely labelled rows, reconnecting through outages. Returns how many
/// INSERTs reported success (the truth is read back from the table afterwards: an INSERT
/// cut off by the restart may or may not have committed).
async fn writer(url: String, name: &'static str, stop: Arc<AtomicBool>) -> usize {
    let mut ok = 0;
    let mut i = 0u64;
    let mut client = None;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            client = connect(&url).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let label = format!("{name}-{i}");
        i += 1;
        match client
            .as_ref()
            .unwrap()
            .execute("INSERT INTO public.flow (label) VALUES ($1)", &[&label])
            .await
        {
            Ok(_) => ok += 1,
            Err(_) => client = None,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_mid_stream_loses_nothing_and_worker_keeps_going() {
    let cluster = observers_tests::cluster::private_cluster().await;
    let db = observers_tests::fresh_db_on(&cluster.url(), "db_restart").await;
    let rx = Receiver::start().await.unwrap();
    // A slightly slow receiver and few permits: the worker has a backlog when the database goes.
    rx.set_default(
        "/hooks/flow",
        Reply::ok().random_delay(Duration::from_millis(2), Duration::from_millis(10)),
    );
    db.client
        .batch_execute(
            "CREATE TABLE public.flow (id bigserial PRIMARY KEY, label text UNIQUE NOT NULL)",
        )
        .await
        .unwrap();
    let yaml = config(
        "w-restart",
        "concurrent_execution: { enabled: true, max_in_flight: 4 }\n\
         retry: { max_attempts: 10, initial_backoff: 100ms, max_backoff: 1s }\n",
        &format!(
            "  - name: flow
    table: public.flow
    events: [INSERT]
    actions:
      - type: webhook
        url: {}
        timeout: 5s
",
            rx.url("/hooks/flow")
        ),
    );
    let mut worker = start_worker("db_restart", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "flow", "public.flow", SHORT).await;
    drop(db.client);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|n| tokio::spawn(writer(db.url.clone(), n, stop.clone())))
        .collect();

    // 1. pg_ctl restart -m fast while events flow.
    assert!(
        rx.wait_for(100, SHORT).await,
        "no deliveries before the restart; {}",
        rx.summary()
    );
    let c = cluster.clone();
    let in_flight_at_restart = rx.in_flight();
    tokio::task::spawn_blocking(move || c.restart())
        .await
        .unwrap()
        .expect("pg_ctl restart");
    let before = rx.count();
    assert!(
        rx.wait_for(before + 100, LONG).await,
        "no deliveries after the fast restart; {}",
        rx.summary()
    );

    // 2. crash-like: immediate stop, down for 2 s, start again.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediate())
        .await
        .unwrap()
        .expect("stop -m immediate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap()
        .expect("start again");
    let before = rx.count();
    assert!(
        rx.wait_for(before + 100, LONG).await,
        "no deliveries after the crash restart; {}",
        rx.summary()
    );

    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        worker.is_running(),
        "the worker died when the database restarted"
    );

    // Every committed row (the truth is the table) is delivered.
    let client = observers_tests::cluster::connect_retry(&db.url, SHORT)
        .await
        .unwrap();
    let committed: HashSet<String> = client
        .query("SELECT label FROM public.flow", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ok = rx
        .wait_until(LONG, |rx| {
            let got = delivered_labels(rx);
            committed.iter().all(|l| got.contains(l))
        })
        .await;
    let got = delivered_labels(&rx);
    let missing: Vec<&String> = committed
        .iter()
        .filter(|l| !got.contains(*l))
        .take(20)
        .collect();
    assert!(
        ok,
        "{} committed rows never delivered, e.g. {missing:?}; {}",
        committed.len() - got.len().min(committed.len()),
        rx.summary()
    );
    let extra: Vec<&String> = got
        .iter()
        .filter(|l| !committed.contains(*l))
        .take(20)
        .collect();
    assert!(
        extra.is_empty(),
        "delivered rows that never committed: {extra:?}"
    );

    // The same process still consumes new events.
    for i in 0..10 {
        client
            .execute(
                "INSERT INTO public.flow (label) VALUES ($1)",
                &[&format!("after-{i}")],
            )
            .await
            .unwrap();
    }
    assert!(
        rx.wait_until(LONG, |rx| (0..10)
            .all(|i| delivered_labels(rx).contains(&format!("after-{i}"))))
            .await,
        "events after the restarts were not delivered; {}",
        rx.summary()
    );
    assert!(worker.is_running(), "worker exited");
    assert!(
        wait_backlog_zero(&client, LONG).await,
        "backlog did not return to 0"
    );
    eprintln!(
        "db restart test: {} rows, {in_flight_at_restart} requests in flight at the fast restart; {}",
        committed.len() + 10,
        rx.summary()
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
