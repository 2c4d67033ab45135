//! SIGTERM with deliveries in flight: the worker lets them finish, saves its checkpoint and
//! exits 0; a restart does not deliver the finished events again.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use observers_tests::receiver::Reply;
use observers_tests::util::wait_observer_ready;

use crate::common::*;

const EVENTS: i64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_checkpoints_and_exits_0() {
    let (db, rx) = setup("shutdown").await;
    rx.set_default("/hooks/slow", Reply::ok().delay(Duration::from_millis(500)));
    db.client
        .batch_execute("CREATE TABLE public.jobs (id serial PRIMARY KEY, n int)")
        .await
        .unwrap();
    let yaml = config(
        "w-shutdown",
        "concurrent_execution: { enabled: true, max_in_flight: 8 }\n",
        &format!(
            "  - name: jobs
    table: public.jobs
    events: [INSERT]
    actions:
      - type: webhook
        url: {}
        timeout: 10s
",
            rx.url("/hooks/slow")
        ),
    );
    let mut worker = start_worker("shutdown", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "jobs", "public.jobs", SHORT).await;
    db.client
        .execute(
            "INSERT INTO public.jobs (n) SELECT g FROM generate_series(1, $1::int) g",
            &[&(EVENTS as i32)],
        )
        .await
        .unwrap();

    // Wait until some requests have been answered and others are in flight, then SIGTERM.
    assert!(
        rx.wait_until(SHORT, |rx| rx.delivered_event_ids().len() >= 8
            && rx.in_flight() > 0)
            .await,
        "never saw requests in flight; {}",
        rx.summary()
    );
    let in_flight_at_term = rx.in_flight();
    let term_at = SystemTime::now();
    worker.sigterm();
    let status = worker.wait_exit(SHORT).await.unwrap_or_else(|| {
        worker.dump_log();
        panic!("worker did not exit within {SHORT:?} after SIGTERM")
    });
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must end with exit 0 (got {status:?})"
    );

    // In-flight requests were completed, not cut off: every request that reached the receiver
    // was answered and the worker read the answer (no request left half-done).
    let before = rx.deliveries();
    assert_eq!(
        rx.in_flight(),
        0,
        "requests still in flight after the worker exited"
    );
    let cut = before
        .iter()
        .filter(|d| d.responded_at.is_none() || d.status == 0)
        .count();
    assert_eq!(
        cut, 0,
        "{cut} requests were abandoned mid-flight at shutdown"
    );
    let arrived_before_term = before.iter().filter(|d| d.received_at <= term_at).count();
    assert!(arrived_before_term >= 8);
    let done: HashSet<i64> = rx.delivered_event_ids();
    assert!(
        done.len() < EVENTS as usize,
        "everything was delivered before shutdown; the test needs work left over ({} done)",
        done.len()
    );
    eprintln!(
        "shutdown: {in_flight_at_term} in flight at SIGTERM, {} delivered before exit, checkpoint rows: {:?}",
        done.len(),
        checkpoint_rows(&db.client).await
    );

    // The checkpoint was saved up to the last finished event: the batch (all 60 events, one
    // transaction) is still open and `last_id` covers every event that was delivered.
    let cp = db
        .client
        .query_one(
            "SELECT snap_hi IS NOT NULL, last_id FROM observers.checkpoint WHERE group_name = 'default'",
            &[],
        )
        .await
        .expect("observers.checkpoint row of group default");
    let (open, last_id): (bool, i64) = (cp.get(0), cp.get(1));
    let max_done = done.iter().copied().max().unwrap();
    assert!(
        open,
        "the batch was closed although {} of {EVENTS} events are not delivered",
        EVENTS as usize - done.len()
    );
    assert!(
        last_id >= max_done,
        "checkpoint last_id {last_id} is behind the last event delivered before shutdown ({max_done})"
    );

    // Restart: the rest is delivered, and nothing that was finished is sent again.
    let count_before = rx.count();
    worker.restart();
    assert!(
        rx.wait_for_events(EVENTS as usize, LONG).await,
        "not everything delivered after restart; {}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(2), SHORT).await;
    let after: Vec<_> = rx
        .deliveries()
        .into_iter()
        .skip(count_before as usize)
        .collect();
    let resent: Vec<i64> = after
        .iter()
        .filter_map(|d| d.event_id())
        .filter(|id| done.contains(id))
        .collect();
    assert!(
        resent.is_empty(),
        "events finished before a graceful shutdown were delivered again after restart: {resent:?} \
         (the checkpoint was not saved up to them)"
    );
    assert_eq!(rx.duplicate_count(), 0, "{}", rx.summary());
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

async fn checkpoint_rows(client: &tokio_postgres::Client) -> Vec<serde_json::Value> {
    client
        .query("SELECT to_jsonb(c) FROM observers.checkpoint c", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}
