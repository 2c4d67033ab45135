//! Guarantees 2.3/2.4: `kill -9` in the middle of a stream loses nothing; redeliveries carry
//! the same webhook-id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use observers_tests::receiver::Reply;
use observers_tests::util::{scalar_i64, status_sum, wait_observer_ready};

use crate::common::*;

const TOTAL: u64 = 5_000;
const WRITERS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing() {
    let (db, rx) = setup("crash_kill9").await;
    // Slightly slow receiver: plenty of requests in flight when the worker dies.
    rx.set_default(
        "/hooks/stream",
        Reply::ok().random_delay(Duration::from_millis(1), Duration::from_millis(8)),
    );
    db.client
        .batch_execute("CREATE TABLE public.stream (id bigserial PRIMARY KEY, writer int, n int)")
        .await
        .unwrap();
    let yaml = config(
        "w-crash",
        "concurrent_execution: { enabled: true, max_in_flight: 64 }\n\
         retry: { max_attempts: 10, initial_backoff: 100ms, max_backoff: 1s }\n",
        &format!(
            "  - name: stream
    table: public.stream
    events: [INSERT]
    actions:
      - type: webhook
        url: {}
        timeout: 5s
",
            rx.url("/hooks/stream")
        ),
    );
    let mut worker = start_worker("crash_kill9", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "stream", "public.stream", SHORT).await;

    // Concurrent writers: transactions of 1-5 rows.
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = vec![];
    for w in 0..WRITERS {
        let url = db.url.clone();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let c = observers_tests::cluster::connect(&url).await.unwrap();
            let mut n = 0u64;
            let per_writer = TOTAL / WRITERS;
            while n < per_writer {
                let rows = ((n % 5) + 1).min(per_writer - n);
                c.execute(
                    "INSERT INTO public.stream (writer, n) SELECT $1, g FROM generate_series($2::int, $3::int) g",
                    &[&(w as i32), &(n as i32), &((n + rows - 1) as i32)],
                )
                .await
                .unwrap();
                n += rows;
                written.fetch_add(rows, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    // Kill it twice while events are flowing, each time with requests in flight.
    for (round, at) in [(1, TOTAL / 5), (2, TOTAL / 2)] {
        assert!(
            rx.wait_until(LONG, |rx| rx.count() >= at).await,
            "round {round}: deliveries did not reach {at}; {}",
            rx.summary()
        );
        // Prefer a moment with requests in flight (best effort: the receiver is slow enough).
        rx.wait_until(Duration::from_secs(2), |rx| rx.in_flight() > 0)
            .await;
        worker.kill9();
        eprintln!(
            "kill -9 #{round} after {} requests ({} rows written)",
            rx.count(),
            written.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker.restart();
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(written.load(Ordering::SeqCst), TOTAL);

    let ok = rx.wait_for_events(TOTAL as usize, LONG).await;
    let delivered = rx.delivered_event_ids();
    let outbox = outbox_ids(&db.client, "stream").await;
    assert_eq!(
        outbox.len() as u64,
        TOTAL,
        "one outbox event per inserted row"
    );
    let missing: Vec<i64> = outbox
        .iter()
        .copied()
        .filter(|id| !delivered.contains(id))
        .take(20)
        .collect();
    assert!(
        ok && missing.is_empty(),
        "events lost after kill -9 (first 20 missing: {missing:?}); {}",
        rx.summary()
    );
    assert_eq!(
        delivered.len() as u64,
        TOTAL,
        "delivered ids must be exactly the outbox ids"
    );
    assert!(
        delivered.iter().all(|id| outbox.binary_search(id).is_ok()),
        "delivered an id that is not in the outbox"
    );

    // A redelivery is the same (event, action) pair: same webhook-id, never a new one.
    rx.settle(Duration::from_secs(2), LONG).await;
    let deliveries = rx.deliveries();
    for (id, wids) in webhook_ids_by_event(&deliveries) {
        assert_eq!(
            wids.len(),
            1,
            "event {id} was delivered with different webhook-ids: {wids:?}"
        );
    }
    assert_eq!(rx.unique_webhook_ids().len() as u64, TOTAL);
    eprintln!(
        "kill -9 test: {TOTAL} events, {} requests, {} duplicate deliveries (same webhook-id, allowed)",
        deliveries.len(),
        rx.duplicate_count()
    );

    // observers.status(): nothing left, nothing dead-lettered.
    assert!(
        wait_backlog_zero(&db.client, LONG).await,
        "backlog did not return to 0"
    );
    assert_eq!(status_sum(&db.client, "dlq_count").await, 0);
    assert_eq!(
        scalar_i64(&db.client, "SELECT count(*) FROM observers.dlq", &[]).await,
        Some(0)
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
