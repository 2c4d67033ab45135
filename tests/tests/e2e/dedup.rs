//! Deduplication (SPEC §2.3, issue 3): a pair that succeeded is not executed again after a
//! `kill -9` between delivery and checkpoint; two workers never run one pair at the same time;
//! Redis dying mid-stream falls back to PostgreSQL without losing or doubling anything.
//! Every test counts executions per `webhook-id` at a real receiver; the tests with
//! deduplication off show that the same scenario really does execute pairs twice.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use observers_tests::receiver::{Delivery, Receiver, Reply};
use observers_tests::util::{poll, scalar_i64, wait_observer_ready};
use observers_tests::RedisServer;

use crate::common::*;

const ORDERS: i64 = 200;

/// Successful executions per webhook-id on `path`.
fn executions(rx: &Receiver, path: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for d in rx.deliveries_for(path) {
        if let Some(w) = d.webhook_id {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

fn observers_yaml(rx: &Receiver) -> String {
    format!(
        "  - name: blocker
    table: public.blocker
    events: [INSERT]
    actions:
      - type: webhook
        url: {blocker}
        timeout: 2s
        retry: {{ max_attempts: 1000, initial_backoff: 100ms, max_backoff: 200ms }}
  - name: orders
    table: public.orders
    events: [INSERT]
    actions:
      - type: webhook
        url: {orders}
        timeout: 2s
",
        blocker = rx.url("/blocker"),
        orders = rx.url("/orders")
    )
}

/// Delivers 200 orders while one earlier event keeps failing (so the checkpoint cannot pass
/// them), kills the worker with SIGKILL after every order was delivered, lets the blocker
/// succeed and restarts the worker. Returns executions per webhook-id of the orders.
async fn kill9_after_delivery_before_checkpoint(
    name: &str,
    dedup: &str,
    redis: Option<&RedisServer>,
) -> HashMap<String, usize> {
    let (db, rx) = setup(name).await;
    rx.set_default("/blocker", Reply::status(503));
    db.client
        .batch_execute(
            "CREATE TABLE public.blocker (id serial PRIMARY KEY);
             CREATE TABLE public.orders (id serial PRIMARY KEY, label text)",
        )
        .await
        .unwrap();
    let mut extra = dedup.to_owned();
    if let Some(r) = redis {
        extra.push_str(&format!("redis: {{ url: \"{}\" }}\n", r.url()));
    }
    let yaml = config(&format!("w-{name}"), &extra, &observers_yaml(&rx));
    let mut worker = start_worker(name, &db, &yaml, &[]);
    wait_observer_ready(&db.client, "orders", "public.orders", SHORT).await;

    // one transaction: the blocker and the orders are in the same batch, the blocker first
    db.client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO public.blocker DEFAULT VALUES;
             INSERT INTO public.orders (label) SELECT 'o' || g FROM generate_series(1, {ORDERS}) g;
             COMMIT;"
        ))
        .await
        .unwrap();
    assert!(
        rx.wait_until(LONG, |rx| rx.unique_count_for("/orders") >= ORDERS as usize)
            .await,
        "orders not delivered: {}",
        rx.summary()
    );
    // the checkpoint is held below every order by the failing blocker
    let backlog = observers_tests::util::status_sum(&db.client, "backlog").await;
    assert!(
        backlog > ORDERS,
        "checkpoint moved past the orders: backlog {backlog}"
    );
    // confirmations are batched right behind the deliveries; give them a moment
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.kill9();

    rx.set_default("/blocker", Reply::ok());
    worker.restart();
    assert!(
        rx.wait_until(LONG, |rx| !rx
            .deliveries_for("/blocker")
            .iter()
            .all(|d| !d.succeeded()))
            .await,
        "blocker never delivered after restart: {}",
        rx.summary()
    );
    assert!(
        wait_backlog_zero(&db.client, LONG).await,
        "backlog not drained"
    );
    rx.settle(Duration::from_millis(500), SHORT).await;
    let ex = executions(&rx, "/orders");
    assert_eq!(
        ex.len(),
        ORDERS as usize,
        "every order delivered: {}",
        rx.summary()
    );
    worker.stop(SHORT).await;
    ex
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_delivery_and_checkpoint_postgres_backend_executes_nothing_twice() {
    let ex = kill9_after_delivery_before_checkpoint(
        "dedup_kill9_pg",
        "deduplication: { backend: postgres, ttl: 1h }\n",
        None,
    )
    .await;
    let twice: Vec<_> = ex.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_delivery_and_checkpoint_redis_backend_executes_nothing_twice() {
    let redis = RedisServer::start();
    let ex = kill9_after_delivery_before_checkpoint(
        "dedup_kill9_redis",
        "deduplication: { backend: redis, ttl: 1h }\n",
        Some(&redis),
    )
    .await;
    let twice: Vec<_> = ex.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
    // the state lived in Redis (one key per order plus the blocker), not in the fallback
    let keys = redis.dbsize().unwrap_or(0);
    assert!(
        keys >= ORDERS,
        "expected the dedup keys in redis, found {keys}"
    );
}

/// Control: the same scenario without deduplication re-executes every order (this is what
/// the two tests above prevent, so they are not passing by accident).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dedup_the_same_crash_executes_every_order_again() {
    let ex = kill9_after_delivery_before_checkpoint(
        "dedup_kill9_off",
        "deduplication: disabled\n",
        None,
    )
    .await;
    let twice = ex.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, ORDERS as usize,
        "every order should have run twice without dedup"
    );
}

/// Redis is killed while events are flowing: the worker falls back to PostgreSQL (says so in
/// its log and heartbeat), delivers everything exactly once, and returns to Redis when it is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_stream_falls_back_to_postgres_without_loss_or_doubles() {
    let mut redis = RedisServer::start();
    let (db, rx) = setup("dedup_redis_down").await;
    rx.set_default(
        "/orders",
        Reply::ok().random_delay(Duration::from_millis(1), Duration::from_millis(5)),
    );
    db.client
        .batch_execute("CREATE TABLE public.orders (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let yaml = config(
        "w-dedup-redis-down",
        &format!(
            "deduplication: {{ backend: redis, ttl: 1h }}\nredis: {{ url: \"{}\", timeout: 2s }}\n",
            redis.url()
        ),
        &format!(
            "  - name: orders
    table: public.orders
    events: [INSERT]
    actions:
      - type: webhook
        url: {}
        timeout: 2s
",
            rx.url("/orders")
        ),
    );
    let mut worker = start_worker("dedup_redis_down", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "orders", "public.orders", SHORT).await;

    let writer_url = db.url.clone();
    let write = |from: i32, to: i32| {
        let url = writer_url.clone();
        async move {
            let c = observers_tests::cluster::connect(&url).await.unwrap();
            for i in from..=to {
                c.execute(
                    "INSERT INTO public.orders (label) VALUES ($1)",
                    &[&format!("o{i}")],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    };
    let writer = tokio::spawn(write(1, 300));
    assert!(
        rx.wait_until(LONG, |rx| rx.count() >= 80).await,
        "{}",
        rx.summary()
    );
    redis.stop();
    writer.await.unwrap();
    assert!(
        worker
            .wait_for_log("deduplication falls back to PostgreSQL", SHORT)
            .await,
        "no fallback warning in the worker log"
    );
    assert!(
        rx.wait_until(LONG, |rx| rx.unique_count_for("/orders") >= 300)
            .await,
        "not everything delivered while redis was down: {}",
        rx.summary()
    );
    // visible in the heartbeat
    let degraded = poll(SHORT, Duration::from_millis(200), || async {
        let v = scalar_i64(
            &db.client,
            "SELECT count(*) FROM observers.worker WHERE (info->'dedup'->>'degraded')::boolean",
            &[],
        )
        .await
        .unwrap_or(0);
        (v > 0).then_some(())
    })
    .await;
    assert!(degraded.is_some(), "heartbeat never showed degraded dedup");
    let pg_rows = scalar_i64(&db.client, "SELECT count(*) FROM observers.dedup", &[])
        .await
        .unwrap_or(0);
    assert!(pg_rows > 0, "the fallback wrote nothing to observers.dedup");

    // Redis comes back (empty): the worker switches back and keeps going (the message was
    // logged once at start already: wait for the second one)
    redis.start_again();
    assert!(
        worker
            .wait_for_log_count("redis reachable: deduplication uses redis", 2, SHORT)
            .await,
        "worker did not return to redis"
    );
    write(301, 400).await;
    assert!(
        rx.wait_until(LONG, |rx| rx.unique_count_for("/orders") >= 400)
            .await,
        "{}",
        rx.summary()
    );
    assert!(wait_backlog_zero(&db.client, LONG).await);
    rx.settle(Duration::from_millis(300), SHORT).await;
    let ex = executions(&rx, "/orders");
    assert_eq!(ex.len(), 400);
    let twice: Vec<_> = ex.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed more than once: {twice:?}");
    assert!(
        redis.dbsize().unwrap_or(0) > 0,
        "nothing written to redis after it came back"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

/// How long the receiver holds each request of the race tests before answering.
const RACE_REPLY_DELAY: Duration = Duration::from_secs(8);

/// Webhook-ids executed a second time while the first execution was still in flight (the
/// receiver holds every request for [`RACE_REPLY_DELAY`]; the frozen leader gives up on its
/// requests only when it wakes up, after that).
fn overlapping(deliveries: &[Delivery]) -> usize {
    let mut by_id: HashMap<&str, Vec<SystemTime>> = HashMap::new();
    for d in deliveries {
        if let Some(w) = &d.webhook_id {
            by_id.entry(w).or_default().push(d.received_at);
        }
    }
    for starts in by_id.values_mut() {
        starts.sort();
    }
    by_id
        .values()
        .filter(|starts| starts.windows(2).any(|w| w[1] < w[0] + RACE_REPLY_DELAY))
        .count()
}

/// Two workers of one group race for the same pairs: the leader is frozen (SIGSTOP) with 20
/// requests in flight, its lease expires, the standby takes over and fetches the same events.
/// Returns (pairs executed concurrently by both, executions per webhook-id).
async fn frozen_leader_race(name: &str, dedup: &str) -> (usize, HashMap<String, usize>) {
    let (db, rx) = setup(name).await;
    rx.set_default("/orders", Reply::ok().delay(RACE_REPLY_DELAY));
    db.client
        .batch_execute("CREATE TABLE public.orders (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let observers = format!(
        "  - name: orders
    table: public.orders
    events: [INSERT]
    actions:
      - type: webhook
        url: {}
        timeout: 10s
",
        rx.url("/orders")
    );
    let extra = format!("{dedup}failover: {{ enabled: true, lease_ttl: 2s }}\n");
    let mut a = start_worker(
        &format!("{name}_a"),
        &db,
        &config(&format!("{name}-a"), &extra, &observers),
        &[],
    );
    assert!(
        a.wait_for_log("leader lease acquired", SHORT).await,
        "a never led"
    );
    let mut b = start_worker(
        &format!("{name}_b"),
        &db,
        &config(&format!("{name}-b"), &extra, &observers),
        &[],
    );
    assert!(
        b.wait_for_log("standby", SHORT).await,
        "b is not standing by"
    );
    wait_observer_ready(&db.client, "orders", "public.orders", SHORT).await;

    db.client
        .batch_execute(
            "INSERT INTO public.orders (label) SELECT 'o' || g FROM generate_series(1, 20) g",
        )
        .await
        .unwrap();
    assert!(
        rx.wait_until(SHORT, |rx| rx.in_flight() >= 20).await,
        "a did not send all 20: {}",
        rx.summary()
    );
    a.signal(libc::SIGSTOP);
    assert!(
        b.wait_for_log("leader lease acquired", SHORT).await,
        "b did not take over the expired lease"
    );
    // b has fetched the same events by now (and waits on a's claims when dedup is on)
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal(libc::SIGCONT);
    assert!(
        rx.wait_until(LONG, |rx| rx.unique_count_for("/orders") >= 20
            && rx.in_flight() == 0)
            .await,
        "{}",
        rx.summary()
    );
    assert!(
        wait_backlog_zero(&db.client, LONG).await,
        "backlog not drained"
    );
    rx.settle(Duration::from_secs(1), SHORT).await;
    let over = overlapping(&rx.deliveries_for("/orders"));
    let ex = executions(&rx, "/orders");
    b.stop(SHORT).await;
    a.kill9();
    (over, ex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_never_run_one_pair_at_the_same_time() {
    let (over, ex) = frozen_leader_race(
        "dedup_race",
        "deduplication: { backend: postgres, ttl: 1h }\n",
    )
    .await;
    assert_eq!(ex.len(), 20, "every pair delivered");
    assert_eq!(
        over, 0,
        "pairs executed concurrently by two workers: {ex:?}"
    );
}

/// Control: without deduplication the standby re-sends the frozen leader's in-flight pairs
/// while they are still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dedup_racing_workers_run_pairs_concurrently() {
    let (over, ex) = frozen_leader_race("dedup_race_off", "deduplication: disabled\n").await;
    assert_eq!(ex.len(), 20);
    assert!(
        over > 0,
        "expected concurrent executions without dedup: {ex:?}"
    );
}

/// The dedup layer itself, two instances (two "workers") hammering the same 400 pairs at once
/// against a real store: exactly one instance runs each pair, the other is told it is done.
/// Each instance fails its first run of an even pair (release): the pair runs again, still one
/// success per pair.
async fn two_instances_race(backend: &str, redis: Option<&RedisServer>) {
    use observer_worker::config::{DedupBackend, DedupConfig, RedisConfig};
    use observer_worker::db::Db;
    use observer_worker::resilience::dedup::installation_bytes;
    use observer_worker::resilience::{Dedup, PairKey, Verdict};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    let db = observers_tests::fresh_db(&format!("dedup_lib_{backend}")).await;
    let stop = CancellationToken::new();
    let cfg = DedupConfig {
        enabled: true,
        backend: if redis.is_some() {
            DedupBackend::Redis
        } else {
            DedupBackend::Postgres
        },
        ttl: Duration::from_secs(3600),
    };
    let redis_cfg = redis.map(|r| RedisConfig {
        url: r.url(),
        timeout: Duration::from_secs(2),
    });
    let mut layers = vec![];
    for w in ["a", "b"] {
        let pool = Db::new(&db.url, Duration::from_secs(5)).unwrap();
        let d = Dedup::start(&cfg, redis_cfg.as_ref(), pool, w, stop.clone()).unwrap();
        layers.push(d);
    }
    if redis.is_some() {
        // both instances connected (they start on the fallback until the probe answers)
        let ok = poll(SHORT, Duration::from_millis(20), || async {
            layers.iter().all(|d| !d.degraded()).then_some(())
        })
        .await;
        assert!(ok.is_some(), "dedup never connected to redis");
    }
    let inst_text = Db::new(&db.url, Duration::from_secs(5))
        .unwrap()
        .installation_id()
        .await
        .unwrap()
        .expect("observers.installation has its row");
    let inst = installation_bytes(&inst_text).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let skipped = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let in_flight: Arc<parking_lot::Mutex<std::collections::HashSet<i64>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for event_id in 1..=400i64 {
        for d in &layers {
            let (d, stop) = (d.clone(), stop.clone());
            let (runs, successes, skipped, failures, in_flight, overlaps) = (
                runs.clone(),
                successes.clone(),
                skipped.clone(),
                failures.clone(),
                in_flight.clone(),
                overlaps.clone(),
            );
            tasks.spawn(async move {
                let key = PairKey::new(&inst, 7, 0, event_id, "2026-11-29");
                let mut failed_once = false;
                loop {
                    match d.claim(&key, Duration::from_secs(30), &stop).await {
                        Verdict::Run => {
                            if !in_flight.lock().insert(event_id) {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            in_flight.lock().remove(&event_id);
                            if event_id % 2 == 0 && !failed_once {
                                failed_once = true;
                                failures.fetch_add(1, Ordering::SeqCst);
                                d.release(&key).await;
                                continue;
                            }
                            successes.fetch_add(1, Ordering::SeqCst);
                            d.confirm(&key).await;
                            return;
                        }
                        Verdict::AlreadyDone => {
                            skipped.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Verdict::Stopped => panic!("stopped"),
                    }
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    stop.cancel();
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "a pair ran in two instances at once"
    );
    assert_eq!(
        successes.load(Ordering::SeqCst),
        400,
        "one success per pair"
    );
    assert_eq!(
        skipped.load(Ordering::SeqCst),
        400,
        "the other instance skipped each pair"
    );
    // every run either succeeded or failed; each even pair failed once or twice (once per
    // instance that got to run it before it succeeded)
    let failed = failures.load(Ordering::SeqCst);
    assert_eq!(runs.load(Ordering::SeqCst), 400 + failed);
    assert!((200..=400).contains(&failed), "{failed} failed runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_layer_two_instances_race_postgres() {
    two_instances_race("postgres", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_layer_two_instances_race_redis() {
    let redis = RedisServer::start();
    two_instances_race("redis", Some(&redis)).await;
}

/// Pairs confirmed in PostgreSQL while Redis was unreachable (here: by an earlier process) are
/// not in Redis; a worker on Redis must still not run them again, and teaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_marks_made_during_a_fallback_are_honoured_after_redis_returns() {
    use observer_worker::config::{DedupBackend, DedupConfig, RedisConfig};
    use observer_worker::db::Db;
    use observer_worker::resilience::dedup::installation_bytes;
    use observer_worker::resilience::{Dedup, PairKey, Verdict};
    use tokio_util::sync::CancellationToken;

    let redis = RedisServer::start();
    let db = observers_tests::fresh_db("dedup_fallback_marks").await;
    let pool = Db::new(&db.url, Duration::from_secs(5)).unwrap();
    let inst = installation_bytes(&pool.installation_id().await.unwrap().unwrap()).unwrap();
    let key = |e: i64| PairKey::new(&inst, 3, 0, e, "2026-11-29");
    // the earlier process confirmed pairs 1..=5 on the fallback
    let (hashes, days): (Vec<Vec<u8>>, Vec<String>) =
        (1..=5).map(|e| (key(e).hash.to_vec(), key(e).day)).unzip();
    pool.dedup_confirm(&hashes, &days, Duration::from_secs(3600))
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let cfg = DedupConfig {
        enabled: true,
        backend: DedupBackend::Redis,
        ttl: Duration::from_secs(3600),
    };
    let rcfg = RedisConfig {
        url: redis.url(),
        timeout: Duration::from_secs(2),
    };
    let d = Dedup::start(&cfg, Some(&rcfg), pool, "w", stop.clone()).unwrap();
    assert!(
        poll(SHORT, Duration::from_millis(20), || async {
            (!d.degraded()).then_some(())
        })
        .await
        .is_some(),
        "never connected to redis"
    );
    for e in 1..=5 {
        assert_eq!(
            d.claim(&key(e), Duration::from_secs(30), &stop).await,
            Verdict::AlreadyDone,
            "pair {e}"
        );
    }
    // a pair that never ran is claimed as usual
    assert_eq!(
        d.claim(&key(6), Duration::from_secs(30), &stop).await,
        Verdict::Run
    );
    // Redis learned the done-marks: 5 'd' keys plus the claim of pair 6
    assert_eq!(redis.dbsize(), Some(6));
    stop.cancel();
}

/// A pair waiting for a concurrency permit has not claimed it yet: a claim's TTL (`timeout` +
/// grace) starts when its attempt can start, so a long wait for a permit cannot let the claim
/// expire and another worker run the same pair. Worker A's only permit is taken (as by other
/// deliveries under load) while its pair waits; worker B runs the pair meanwhile; when A gets
/// its permit the pair is already done. With the old order (claim, then wait for a permit), B
/// waited for A's claim to expire and ran the pair, and A ran it again: two executions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_waiting_for_a_permit_holds_no_claim() {
    use bytes::Bytes;
    use observer_worker::actions::{Action, AttemptError, BoxFuture, Delivered, Delivery};
    use observer_worker::config::{DedupBackend, DedupConfig};
    use observer_worker::db::Db;
    use observer_worker::installation::InstallationId;
    use observer_worker::pipeline::executor::{self, ActionOutcome, Layers};
    use observer_worker::resilience::{Dedup, PairKey};
    use observer_worker::retry::RetryPolicy;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    /// Counts its executions; always succeeds.
    struct Counting {
        calls: AtomicUsize,
        policy: RetryPolicy,
    }
    impl Action for Counting {
        fn type_name(&self) -> &'static str {
            "counting"
        }
        fn timeout(&self) -> Duration {
            Duration::from_millis(100)
        }
        fn retry_policy(&self) -> &RetryPolicy {
            &self.policy
        }
        fn execute<'a>(
            &'a self,
            _d: &'a Delivery,
        ) -> BoxFuture<'a, Result<Delivered, AttemptError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Ok(Delivered::default())
            })
        }
    }

    let db = observers_tests::fresh_db("dedup_permit_claim").await;
    let stop = CancellationToken::new();
    let cfg = DedupConfig {
        enabled: true,
        backend: DedupBackend::Postgres,
        ttl: Duration::from_secs(3600),
    };
    let pool = Db::new(&db.url, Duration::from_secs(5)).unwrap();
    let inst_text = pool.installation_id().await.unwrap().unwrap();
    let inst = InstallationId::parse(&inst_text).unwrap();
    let worker = |name: &str, permits: usize| {
        let pool = Db::new(&db.url, Duration::from_secs(5)).unwrap();
        let mut l = Layers::new(Arc::new(Semaphore::new(permits)), stop.clone());
        l.dedup = Some(Dedup::start(&cfg, None, pool, name, stop.clone()).unwrap());
        l
    };
    let (a, b) = (worker("a", 1), worker("b", 1));
    let mut delivery = Delivery::new(&inst, 1, 0, Bytes::from_static(b"{}"));
    delivery.dedup_key = Some(PairKey::new(inst.bytes(), 7, 0, 1, "2026-11-29"));
    let action = Arc::new(Counting {
        calls: AtomicUsize::new(0),
        policy: RetryPolicy::default(),
    });

    // A's only permit is busy: its pair waits for it
    let busy = a.limiter.clone().acquire_owned().await.unwrap();
    let waiting = {
        let (action, delivery, a) = (action.clone(), delivery.clone(), a.clone());
        tokio::spawn(async move { executor::run(action.as_ref(), &delivery, &a).await })
    };
    // time for A to reach the permit wait (with the old order it claimed on the way)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished());

    // B runs the pair meanwhile (with the old order: once A's claim expired, about 5.6 s)
    let by_b = tokio::time::timeout(SHORT, executor::run(action.as_ref(), &delivery, &b))
        .await
        .expect("B never ran the pair");
    assert_eq!(by_b, ActionOutcome::Delivered { attempts: 1 });

    // A gets its permit: the pair is done, A does not run it again
    drop(busy);
    let by_a = tokio::time::timeout(SHORT, waiting)
        .await
        .expect("A never finished")
        .unwrap();
    assert_eq!(
        (by_a, action.calls.load(Ordering::SeqCst)),
        (ActionOutcome::AlreadyDone, 1),
        "the pair ran in two workers"
    );
    stop.cancel();
}
