//! `condition`, `columns` and `events` filters end to end, and guarantee 2.1: a rolled-back
//! change produces no event.

use std::time::Duration;

use observers_tests::util::{scalar_i64, wait_observer_ready};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_columns_events_filters_and_rollback() {
    let (db, rx) = setup("filters").await;
    db.client
        .batch_execute(
            "CREATE TABLE public.orders (id serial PRIMARY KEY, customer_id int NOT NULL,
               total numeric(10,2) NOT NULL, status text NOT NULL DEFAULT 'new', note text)",
        )
        .await
        .unwrap();
    let yaml = config(
        "w-filters",
        "",
        &format!(
            "  - name: big_orders
    table: public.orders
    events: [INSERT, UPDATE]
    condition: \"NEW.total > 1000\"
    columns: [status, total]
    actions:
      - type: webhook
        url: {big}
  - name: deletions
    table: public.orders
    events: [DELETE]
    actions:
      - type: webhook
        url: {del}
",
            big = rx.url("/hooks/big"),
            del = rx.url("/hooks/deleted")
        ),
    );
    let mut worker = start_worker("filters", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "big_orders", "public.orders", SHORT).await;
    wait_observer_ready(&db.client, "deletions", "public.orders", SHORT).await;

    let c = &db.client;
    // id 1: small -> no event (condition false)
    c.batch_execute("INSERT INTO public.orders (customer_id, total) VALUES (1, 500)")
        .await
        .unwrap();
    // id 2: big -> event 1
    c.batch_execute("INSERT INTO public.orders (customer_id, total) VALUES (2, 1500)")
        .await
        .unwrap();
    // column not in `columns` changed -> no event
    c.batch_execute("UPDATE public.orders SET note = 'gift wrap' WHERE id = 2")
        .await
        .unwrap();
    // an UPDATE that changes nothing at all -> no event
    c.batch_execute("UPDATE public.orders SET status = status WHERE id = 2")
        .await
        .unwrap();
    // status changed on a big order -> event 2 with changed = [status]
    c.batch_execute("UPDATE public.orders SET status = 'paid' WHERE id = 2")
        .await
        .unwrap();
    // status changed on a small order -> no event (condition false)
    c.batch_execute("UPDATE public.orders SET status = 'paid' WHERE id = 1")
        .await
        .unwrap();
    // rolled back: nothing, for either observer
    c.batch_execute(
        "BEGIN; INSERT INTO public.orders (customer_id, total) VALUES (9, 5000);
         DELETE FROM public.orders WHERE id = 1; ROLLBACK",
    )
    .await
    .unwrap();
    // a savepoint rolled back inside a committed transaction: only the kept change counts
    c.batch_execute(
        "BEGIN; SAVEPOINT s; INSERT INTO public.orders (customer_id, total) VALUES (10, 7000);
         ROLLBACK TO SAVEPOINT s; INSERT INTO public.orders (customer_id, total) VALUES (11, 2500); COMMIT",
    )
    .await
    .unwrap();
    // big -> small: condition is on NEW, so no event
    c.batch_execute("UPDATE public.orders SET total = 900 WHERE customer_id = 11")
        .await
        .unwrap();
    // DELETE goes only to the deletions observer
    c.batch_execute("DELETE FROM public.orders WHERE id = 1")
        .await
        .unwrap();

    assert!(rx.wait_for(4, SHORT).await, "{}", rx.summary());
    rx.settle(Duration::from_secs(3), SHORT).await;

    // No ordering_key: delivery is concurrent, so compare in event-id order.
    let mut big = rx.deliveries_for("/hooks/big");
    big.sort_by_key(|d| d.event_id());
    let got: Vec<(String, serde_json::Value, serde_json::Value)> = big
        .iter()
        .map(|d| {
            let b = d.body.clone().unwrap();
            (
                b["op"].as_str().unwrap().to_owned(),
                b["new"].clone(),
                b["changed"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "INSERT".into(),
                json!({"id": 2, "customer_id": 2, "total": 1500.00, "status": "new", "note": null}),
                serde_json::Value::Null
            ),
            (
                "UPDATE".into(),
                json!({"id": 2, "customer_id": 2, "total": 1500.00, "status": "paid", "note": "gift wrap"}),
                json!(["status"])
            ),
            (
                "INSERT".into(),
                json!({"id": 5, "customer_id": 11, "total": 2500.00, "status": "new", "note": null}),
                serde_json::Value::Null
            ),
        ],
        "big_orders deliveries"
    );
    let deleted = rx.deliveries_for("/hooks/deleted");
    assert_eq!(deleted.len(), 1, "{}", rx.summary());
    let b = deleted[0].body.clone().unwrap();
    assert_eq!(b["op"], "DELETE");
    assert_eq!(b["observer"], "deletions");
    assert_eq!(b["old"]["id"], 1);
    assert_eq!(b["new"], serde_json::Value::Null);

    // Filtered and rolled-back changes never reached the outbox.
    assert_eq!(
        scalar_i64(&db.client, "SELECT count(*) FROM observers.event", &[]).await,
        Some(4)
    );
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

/// SPEC §8: a large payload is delivered intact, or (if it is over a limit) dead-lettered with an
/// error that says so; either way nothing is lost and the worker keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_row_is_delivered_intact_or_dead_lettered_clearly() {
    let (db, rx) = setup("large_row").await;
    db.client
        .batch_execute("CREATE TABLE public.docs (id serial PRIMARY KEY, body text NOT NULL)")
        .await
        .unwrap();
    let yaml = config(
        "w-large",
        "retry: { max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms }\n",
        &format!(
            "  - name: docs\n    table: public.docs\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n        timeout: 30s\n",
            rx.url("/hooks/docs")
        ),
    );
    let mut worker = start_worker("large_row", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "docs", "public.docs", SHORT).await;
    // 4 MiB of text with characters that need JSON escaping.
    let big: String = "line \"quoted\" \\ ünïcödé\n".repeat(4 * 1024 * 1024 / 26);
    db.client
        .execute("INSERT INTO public.docs (body) VALUES ($1)", &[&big])
        .await
        .unwrap();
    db.client
        .execute("INSERT INTO public.docs (body) VALUES ('small')", &[])
        .await
        .unwrap();

    assert!(
        rx.wait_until(LONG, |rx| rx.deliveries().iter().any(
            |d| d.succeeded() && d.body.as_ref().is_some_and(|b| b["new"]["body"] == "small")
        ))
        .await,
        "the event after the large one was not delivered; {}",
        rx.summary()
    );
    assert!(
        wait_backlog_zero(&db.client, LONG).await,
        "backlog did not return to 0"
    );
    let delivered_big = rx.deliveries().iter().any(|d| {
        d.succeeded()
            && d.body
                .as_ref()
                .is_some_and(|b| b["new"]["body"].as_str() == Some(big.as_str()))
    });
    eprintln!(
        "large row ({} bytes): delivered intact = {delivered_big}",
        big.len()
    );
    if !delivered_big {
        let dlq = dlq_rows(&db.client).await;
        assert_eq!(
            dlq.len(),
            1,
            "the large event was neither delivered intact nor dead-lettered: {}",
            rx.summary()
        );
        let err = dlq[0]["error"].clone().unwrap_or_default().to_lowercase();
        assert!(
            err.contains("size")
                || err.contains("limit")
                || err.contains("large")
                || err.contains("bytes"),
            "dead-lettered, but the error does not say it is about size: {err:?}"
        );
    }
    assert!(worker.is_running());
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
