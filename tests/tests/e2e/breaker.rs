//! Circuit breakers (issue 3): a destination that fails opens its breaker; while open its
//! pairs are parked (`observers.parked`) without using up their attempts (nothing
//! dead-lettered, nothing lost), another destination keeps flowing, and the parked pairs are
//! delivered when the breaker closes again.
//! The state is visible in SQL (`observers.breakers`, from the workers' heartbeats).

use std::time::Duration;

use observers_tests::cluster::TestDb;
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{poll, scalar_i64, wait_observer_ready};
use observers_tests::worker::Worker;

use crate::common::*;

const EVENTS: i64 = 30;

/// `max_attempts: 3` and a quick backoff: without a breaker, every event of a dead destination
/// is dead-lettered within a second or two.
fn observer(name: &str, table: &str, url: &str) -> String {
    format!(
        "  - name: {name}
    table: {table}
    events: [INSERT]
    actions:
      - type: webhook
        url: {url}
        timeout: 2s
        retry: {{ max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms }}
"
    )
}

const BREAKER: &str = "circuit_breaker: { enabled: true, failure_ratio: 0.5, min_requests: 5, window: 10s, open_for: 1s, half_open_requests: 1 }\n";

async fn breaker_state(db: &TestDb, dest: &str, state: &str) -> bool {
    poll(
        Duration::from_secs(15),
        Duration::from_millis(250),
        || async {
            let n = scalar_i64(
                &db.client,
                "SELECT count(*) FROM observers.breakers WHERE destination = $1 AND state = $2",
                &[&dest, &state],
            )
            .await
            .unwrap_or(0);
            (n > 0).then_some(())
        },
    )
    .await
    .is_some()
}

/// Wait until no pair is parked (parked pairs are finished after the backlog is).
async fn wait_parked_zero(db: &TestDb) -> bool {
    poll(LONG, Duration::from_millis(200), || async {
        let n = scalar_i64(&db.client, "SELECT count(*) FROM observers.parked", &[])
            .await
            .unwrap_or(-1);
        (n == 0).then_some(())
    })
    .await
    .is_some()
}

/// A worker with `extra` config and observer `flaky` whose destination (`/down`) answers 503,
/// after EVENTS events were written for it.
async fn events_for_a_dead_destination(name: &str, extra: &str) -> (TestDb, Receiver, Worker) {
    let (db, rx) = setup(name).await;
    rx.set_default("/down", Reply::status(503));
    db.client
        .batch_execute("CREATE TABLE public.t (id serial PRIMARY KEY)")
        .await
        .unwrap();
    let yaml = config(
        &format!("w-{name}"),
        extra,
        &observer("flaky", "public.t", &rx.url("/down")),
    );
    let worker = start_worker(name, &db, &yaml, &[]);
    wait_observer_ready(&db.client, "flaky", "public.t", SHORT).await;
    db.client
        .execute(
            "INSERT INTO public.t SELECT FROM generate_series(1, $1::int)",
            &[&(EVENTS as i32)],
        )
        .await
        .unwrap();
    (db, rx, worker)
}

/// A failing destination with the breaker on: few requests while it is down, few dead letters,
/// and after it recovers every remaining event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_holds_pairs_without_using_attempts_then_recovers() {
    let (db, rx, mut worker) = events_for_a_dead_destination("breaker_recovers", BREAKER).await;

    assert!(
        worker.wait_for_log("circuit breaker opened", SHORT).await,
        "breaker never opened"
    );
    let dest = format!("http://{}", rx.addr());
    assert!(
        breaker_state(&db, &dest, "open").await || breaker_state(&db, &dest, "half_open").await,
        "heartbeat never showed the breaker open"
    );
    // down for a while: only half-open probes (1 per second) reach it
    tokio::time::sleep(Duration::from_secs(4)).await;
    let requests_while_down = rx.count();
    let dead_while_down = scalar_i64(&db.client, "SELECT count(*) FROM observers.dlq", &[])
        .await
        .unwrap_or(0);
    assert!(
        requests_while_down < 3 * EVENTS as u64 / 2,
        "{requests_while_down} requests reached the dead destination (without a breaker: {})",
        3 * EVENTS
    );
    assert!(
        dead_while_down < EVENTS / 2,
        "{dead_while_down} of {EVENTS} dead-lettered while the breaker held them"
    );

    rx.set_default("/down", Reply::ok());
    assert!(
        worker.wait_for_log("circuit breaker closed", SHORT).await,
        "breaker never closed"
    );
    assert!(
        wait_backlog_zero(&db.client, LONG).await,
        "backlog not drained"
    );
    assert!(wait_parked_zero(&db).await, "parked pairs never delivered");
    let delivered = rx
        .deliveries_for("/down")
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| d.event_id())
        .collect::<std::collections::HashSet<_>>()
        .len() as i64;
    let dead = scalar_i64(&db.client, "SELECT count(*) FROM observers.dlq", &[])
        .await
        .unwrap_or(0);
    assert_eq!(
        delivered + dead,
        EVENTS,
        "every event delivered or dead-lettered: delivered {delivered}, dead {dead}; {}",
        rx.summary()
    );
    assert_eq!(
        dead, dead_while_down,
        "nothing dead-lettered after recovery"
    );
    assert!(
        breaker_state(&db, &dest, "closed").await,
        "heartbeat never showed it closed"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

/// Control: the same failing destination without a breaker dead-letters every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_breaker_the_dead_destination_exhausts_every_event() {
    let (db, rx, mut worker) =
        events_for_a_dead_destination("breaker_off", "circuit_breaker: disabled\n").await;
    assert!(wait_dlq(&db.client, EVENTS, LONG).await, "{}", rx.summary());
    assert_eq!(rx.count(), 3 * EVENTS as u64);
    worker.stop(SHORT).await;
}

/// One destination down with its breaker open, another healthy: the healthy one gets every
/// event while the other is still down, and the down one loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_does_not_hold_up_another_destination() {
    let (db, down) = setup("breaker_isolation").await;
    let up = Receiver::start().await.unwrap();
    down.set_default("/hook", Reply::status(500));
    db.client
        .batch_execute(
            "CREATE TABLE public.a (id serial PRIMARY KEY);
             CREATE TABLE public.b (id serial PRIMARY KEY);",
        )
        .await
        .unwrap();
    let observers = format!(
        "{}  - name: healthy
    table: public.b
    events: [INSERT]
    actions:
      - type: webhook
        url: {}
        timeout: 2s
",
        observer("broken", "public.a", &down.url("/hook"))
            .replace("max_attempts: 3", "max_attempts: 1000"),
        up.url("/hook")
    );
    // open_for 5s (not 1s): one half-open probe per open_for reaches the down destination, so
    // a slow run of the inserts below adds at most a few requests to the count it checks
    let yaml = config(
        "w-breaker-isolation",
        &BREAKER.replace("open_for: 1s", "open_for: 5s"),
        &observers,
    );
    let mut worker = start_worker("breaker_isolation", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "healthy", "public.b", SHORT).await;

    // Open the breaker first. (Without this, when all the events below are committed before the
    // worker's first fetch, every pair of the batch is admitted at once, before any answer is
    // recorded, and the down destination sees one request per event: measured 30 of 30 twice.)
    const WARM_UP: usize = 6;
    for _ in 0..WARM_UP {
        db.client
            .batch_execute("INSERT INTO public.a DEFAULT VALUES;")
            .await
            .unwrap();
    }
    assert!(worker.wait_for_log("circuit breaker opened", SHORT).await);
    let before = down.count();

    // interleaved, in separate transactions
    for _ in 0..EVENTS {
        db.client
            .batch_execute(
                "INSERT INTO public.a DEFAULT VALUES; INSERT INTO public.b DEFAULT VALUES;",
            )
            .await
            .unwrap();
    }
    assert!(
        up.wait_until(SHORT, |r| r.unique_count() >= EVENTS as usize)
            .await,
        "healthy destination held up: {}",
        up.summary()
    );
    // the down destination saw few requests and lost nothing: its pairs are parked
    let dead = scalar_i64(&db.client, "SELECT count(*) FROM observers.dlq", &[])
        .await
        .unwrap_or(-1);
    assert_eq!(dead, 0);
    let parked = scalar_i64(&db.client, "SELECT count(*) FROM observers.parked", &[])
        .await
        .unwrap_or(0);
    assert!(parked > 0, "nothing parked while the destination was down");
    assert!(
        down.count() - before < EVENTS as u64,
        "{} requests to the open destination while its breaker was open",
        down.count() - before
    );
    down.set_default("/hook", Reply::ok());
    assert!(
        down.wait_until(LONG, |r| r.unique_count() >= EVENTS as usize + WARM_UP)
            .await,
        "{}",
        down.summary()
    );
    assert!(wait_backlog_zero(&db.client, LONG).await);
    assert!(wait_parked_zero(&db).await, "parked pairs never delivered");
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
