//! Guarantee 2.5: with `ordering_key`, events of one key are executed strictly in commit order,
//! one at a time, while different keys run in parallel.

use std::collections::BTreeMap;
use std::time::Duration;

use observers_tests::receiver::Reply;
use observers_tests::util::wait_observer_ready;
use rand::Rng;

use crate::common::*;

const CUSTOMERS: i32 = 12;
const WRITERS: usize = 4;
const UPDATES_PER_WRITER: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_in_commit_order_different_keys_in_parallel() {
    let (db, rx) = setup("ordering").await;
    rx.set_default(
        "/hooks/acct",
        Reply::ok().random_delay(Duration::ZERO, Duration::from_millis(15)),
    );
    // One row per customer: every event of a key is a change of that one row, so commit order
    // is both event-id order and `seq` order (a second writer waits for the row lock before
    // its change -- and its event id -- exists).
    db.client
        .batch_execute(
            "CREATE TABLE public.accounts (id serial PRIMARY KEY, customer_id int UNIQUE NOT NULL, seq int NOT NULL);",
        )
        .await
        .unwrap();
    let yaml = config(
        "w-ordering",
        "concurrent_execution: { enabled: true, max_in_flight: 64 }\n",
        &format!(
            "  - name: accounts
    table: public.accounts
    events: [INSERT, UPDATE]
    ordering_key: [customer_id]
    actions:
      - type: webhook
        url: {}
        timeout: 5s
",
            rx.url("/hooks/acct")
        ),
    );
    let mut worker = start_worker("ordering", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "accounts", "public.accounts", SHORT).await;

    db.client
        .execute(
            "INSERT INTO public.accounts (customer_id, seq) SELECT g, 0 FROM generate_series(1, $1::int) g",
            &[&CUSTOMERS],
        )
        .await
        .unwrap();
    let mut writers = vec![];
    for _ in 0..WRITERS {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let c = observers_tests::cluster::connect(&url).await.unwrap();
            for _ in 0..UPDATES_PER_WRITER {
                let (customer, pause) = {
                    let mut r = rand::rng();
                    (r.random_range(1..=CUSTOMERS), r.random_range(0..3u64))
                };
                c.execute(
                    "UPDATE public.accounts SET seq = seq + 1 WHERE customer_id = $1",
                    &[&customer],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = CUSTOMERS as usize + WRITERS * UPDATES_PER_WRITER;
    assert!(
        rx.wait_for_events(total, LONG).await,
        "not everything delivered; {}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(1), SHORT).await;

    let deliveries = rx.deliveries();
    let mut per_key: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for d in first_successes(&deliveries) {
        let body = d.body.clone().unwrap();
        let key = body["new"]["customer_id"].as_i64().expect("customer_id");
        per_key.entry(key).or_default().push(d);
    }
    assert_eq!(per_key.len(), CUSTOMERS as usize);
    for (key, ds) in &per_key {
        let ids: Vec<i64> = ds.iter().map(|d| d.event_id().unwrap()).collect();
        let seqs: Vec<i64> = ds
            .iter()
            .map(|d| d.body.as_ref().unwrap()["new"]["seq"].as_i64().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "customer {key}: delivered out of event-id order: {ids:?}"
        );
        let expected: Vec<i64> = (0..seqs.len() as i64).collect();
        assert_eq!(
            seqs, expected,
            "customer {key}: same-row changes not delivered in commit order"
        );
    }
    // One at a time per key: the next request of a key arrives only after the previous was
    // answered (every request counts here, retries included).
    let mut all_per_key: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for d in &deliveries {
        if let Some(k) = d
            .body
            .as_ref()
            .and_then(|b| b["new"]["customer_id"].as_i64())
        {
            all_per_key.entry(k).or_default().push(d.clone());
        }
    }
    for (key, ds) in &all_per_key {
        for w in ds.windows(2) {
            let answered = w[0].responded_at.expect("answered");
            assert!(
                w[1].received_at >= answered,
                "customer {key}: event {:?} was sent while event {:?} was still in flight",
                w[1].event_id(),
                w[0].event_id()
            );
        }
    }
    assert!(
        rx.max_concurrency() > 1,
        "different keys never ran in parallel (max concurrency {})",
        rx.max_concurrency()
    );
    eprintln!(
        "ordering test: {total} events over {CUSTOMERS} keys; {}",
        rx.summary()
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
