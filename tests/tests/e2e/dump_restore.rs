//! SPEC §2.3: the idempotency key of a pair (`webhook-id`) is unique per installation and kept
//! across dump/restore. A database is dumped with the real `pg_dump` and restored with the real
//! `pg_restore` into a new database, a worker runs on the copy: the observers, the dead letters,
//! the pairs waiting for redelivery, the installation id and the event id sequence came along,
//! new events get ids and webhook-ids that were never sent, and nothing already delivered is sent
//! again. Two databases that feed one receiver never send the same webhook-id.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use observers_tests::cluster::{connect, pg_bin_dir, with_database, TestDb};
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{poll, scalar_i64, wait_observer_ready};
use tokio_postgres::Client;

use crate::common::*;

fn observer_yaml(rx: &Receiver) -> String {
    format!(
        "  - name: things\n    table: public.things\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n        timeout: 5s\n",
        rx.url("/h")
    )
}

async fn insert(client: &Client, labels: &[&str]) {
    for l in labels {
        client
            .execute("INSERT INTO public.things (label) VALUES ($1)", &[l])
            .await
            .unwrap();
    }
}

/// The one text value `sql` returns ("NULL" for NULL).
async fn text(client: &Client, sql: &str) -> String {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<_, Option<String>>(0)
        .unwrap_or_else(|| "NULL".to_owned())
}

/// Runs one of PostgreSQL's client programs; panics with its output unless it exits 0.
fn run(program: &str, args: &[&str]) -> String {
    let bin = pg_bin_dir().join(program);
    let out = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({:?}):\n{stderr}",
        out.status.code()
    );
    stderr
}

/// `pg_dump --format=custom` of `src`, restored with `pg_restore` into a new, empty database of
/// the same cluster. Returns the restored database and what pg_restore printed.
async fn dump_and_restore(src: &TestDb, dump: &Path) -> (TestDb, String) {
    run(
        "pg_dump",
        &[
            "--format=custom",
            "--file",
            dump.to_str().unwrap(),
            "--dbname",
            &src.url,
        ],
    );
    let name = format!("{}_restored", src.name);
    src.client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let url = with_database(&src.url, &name);
    let stderr = run(
        "pg_restore",
        &["--exit-on-error", "--dbname", &url, dump.to_str().unwrap()],
    );
    let client = connect(&url).await.unwrap();
    (TestDb { name, url, client }, stderr)
}

/// Successful deliveries per webhook-id.
fn successes_by_webhook_id(rx: &Receiver) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for d in rx.deliveries().iter().filter(|d| d.succeeded()) {
        *m.entry(d.webhook_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_and_restore_keeps_observers_dead_letters_redeliveries_and_ids() {
    let (src, rx) = setup("dump_restore").await;
    src.client
        .batch_execute("CREATE TABLE public.things (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    // the first request is refused for good (400): its pair is dead-lettered
    rx.script("/h", [Reply::status(400).body("text/plain", "no")]);
    let yaml = config("w-dump-src", "", &observer_yaml(&rx));
    let mut worker = start_worker("dump_restore_src", &src, &yaml, &[]);
    wait_observer_ready(&src.client, "things", "public.things", SHORT).await;
    insert(&src.client, &["a", "b", "c", "d", "e"]).await;
    assert!(rx.wait_for(5, SHORT).await, "{}", rx.summary());
    assert!(wait_dlq(&src.client, 1, SHORT).await, "{}", rx.summary());
    assert!(wait_backlog_zero(&src.client, SHORT).await);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));

    // an operator retries the dead letter while no worker runs: it waits in observers.parked
    let queued: bool = src
        .client
        .query_one(
            "SELECT observers.dlq_retry(min(id)) FROM observers.dlq",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(queued);
    let dead_webhook_id = text(&src.client, "SELECT webhook_id FROM observers.dlq").await;
    let sent_before: BTreeSet<String> = rx.unique_webhook_ids().into_iter().collect();
    assert_eq!(sent_before.len(), 5, "{}", rx.summary());
    assert!(sent_before.contains(&dead_webhook_id));
    let delivered_before = successes_by_webhook_id(&rx);
    assert_eq!(delivered_before.len(), 4, "{}", rx.summary());
    let max_event = scalar_i64(&src.client, "SELECT max(id) FROM observers.event", &[])
        .await
        .unwrap();
    let observers_sql = "SELECT string_agg(format('%s %s %s %s %s', id, name, table_name, events, actions), '; ' ORDER BY id) FROM observers.observer";
    let dlq_sql = "SELECT string_agg(format('%s %s %s %s %s', id, event_id, action_index, webhook_id, error), '; ' ORDER BY id) FROM observers.dlq";
    let parked_sql = "SELECT string_agg(format('%s %s %s %s %s', event_id, action_index, webhook_id, reason, dlq_id), '; ' ORDER BY id) FROM observers.parked";
    let installation_sql = "SELECT id::text FROM observers.installation";
    let src_observers = text(&src.client, observers_sql).await;
    let src_dlq = text(&src.client, dlq_sql).await;
    let src_parked = text(&src.client, parked_sql).await;
    let src_installation = text(&src.client, installation_sql).await;

    // the real pg_dump and pg_restore
    let dump = std::env::temp_dir().join(format!("{}.dump", src.name));
    let (dst, restore_log) = dump_and_restore(&src, &dump).await;
    let _ = std::fs::remove_file(&dump);
    assert!(
        !restore_log.contains("WARNING") && !restore_log.contains("ERROR"),
        "pg_restore printed: {restore_log}"
    );

    // what came along
    assert_eq!(text(&dst.client, observers_sql).await, src_observers);
    assert_eq!(text(&dst.client, dlq_sql).await, src_dlq);
    assert_eq!(text(&dst.client, parked_sql).await, src_parked);
    assert_eq!(
        text(&dst.client, installation_sql).await,
        src_installation,
        "the installation id is kept: webhook-ids stay what they were"
    );
    // the sequence is at or above every id handed out: with the library preloaded it stands at
    // the end of the block of ids the source was handing out (capture/ids.rs)
    let restored_seq = scalar_i64(
        &dst.client,
        "SELECT last_value FROM observers.event_id_seq",
        &[],
    )
    .await
    .unwrap_or(0);
    assert!(
        restored_seq >= max_event,
        "the event id sequence is kept: {restored_seq} < {max_event}"
    );
    assert_eq!(
        text(
            &dst.client,
            "SELECT coalesce(string_agg(capture_error, '; '), 'none') FROM observers.status()"
        )
        .await,
        "none",
        "the restored capture triggers match their observers"
    );
    // by design (docs/OPERATIONS.md): the outbox and the checkpoints are not dumped; the group
    // starts at the beginning of the restored, empty outbox
    assert_eq!(
        scalar_i64(&dst.client, "SELECT count(*) FROM observers.event", &[]).await,
        Some(0)
    );
    assert_eq!(
        scalar_i64(
            &dst.client,
            "SELECT count(*) FROM observers.checkpoint",
            &[]
        )
        .await,
        Some(0)
    );

    // a worker on the restored database: the queued retry goes out with the webhook-id the
    // receiver saw when the pair failed, new events get new ids and new webhook-ids
    let yaml = config("w-dump-dst", "", &observer_yaml(&rx));
    let mut worker = start_worker("dump_restore_dst", &dst, &yaml, &[]);
    wait_observer_ready(&dst.client, "things", "public.things", SHORT).await;
    let dlq_empty = poll(SHORT, Duration::from_millis(100), || async {
        (scalar_i64(&dst.client, "SELECT count(*) FROM observers.dlq", &[]).await == Some(0))
            .then_some(())
    })
    .await;
    assert!(
        dlq_empty.is_some(),
        "the restored DLQ retry was not delivered; {}",
        rx.summary()
    );
    insert(&dst.client, &["f", "g", "h"]).await;
    assert!(rx.wait_for(9, SHORT).await, "{}", rx.summary());
    assert!(wait_backlog_zero(&dst.client, SHORT).await);
    rx.settle(Duration::from_secs(1), SHORT).await;
    let new_ids = outbox_ids(&dst.client, "things").await;
    assert_eq!(new_ids.len(), 3);
    assert!(
        new_ids.iter().all(|id| *id > max_event),
        "new events continue the old ids: {new_ids:?} after {max_event}"
    );

    let after = successes_by_webhook_id(&rx);
    assert_eq!(
        after.get(&dead_webhook_id),
        Some(&1),
        "the dead letter, retried from the restored database, keeps its webhook-id; {}",
        rx.summary()
    );
    for id in &new_ids {
        let w = webhook_id(&dst.client, *id, 0).await;
        assert!(
            !sent_before.contains(&w),
            "new event {id} was sent with webhook-id {w}, which the receiver had already seen: \
             it would drop it as a duplicate"
        );
        assert_eq!(after.get(&w), Some(&1), "new event {id} delivered once");
    }
    for (w, n) in &delivered_before {
        assert_eq!(
            after.get(w),
            Some(n),
            "{w} was delivered before the dump and must not be sent again"
        );
    }
    assert_eq!(
        rx.deliveries().len(),
        9,
        "5 before the dump, the retried dead letter and 3 new events; {}",
        rx.summary()
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_feeding_one_receiver_never_share_a_webhook_id() {
    let rx = Receiver::start().await.expect("receiver");
    let mut dbs = Vec::new();
    let mut workers = Vec::new();
    for name in ["two_dbs_a", "two_dbs_b"] {
        let db = observers_tests::fresh_db(name).await;
        db.client
            .batch_execute("CREATE TABLE public.things (id serial PRIMARY KEY, label text)")
            .await
            .unwrap();
        let yaml = config(&format!("w-{name}"), "", &observer_yaml(&rx));
        workers.push(start_worker(name, &db, &yaml, &[]));
        wait_observer_ready(&db.client, "things", "public.things", SHORT).await;
        dbs.push(db);
    }
    for db in &dbs {
        insert(&db.client, &["x", "y", "z"]).await;
    }
    assert!(rx.wait_for(6, SHORT).await, "{}", rx.summary());
    rx.settle(Duration::from_secs(1), SHORT).await;
    // both databases numbered their events the same way ...
    assert_eq!(
        outbox_ids(&dbs[0].client, "things").await,
        outbox_ids(&dbs[1].client, "things").await
    );
    // ... and still sent six different webhook-ids
    assert_eq!(
        rx.unique_webhook_ids().len(),
        6,
        "a receiver that deduplicates by webhook-id would drop events; {}",
        rx.summary()
    );
    for mut w in workers {
        assert_eq!(w.stop(SHORT).await.code(), Some(0));
    }
}
