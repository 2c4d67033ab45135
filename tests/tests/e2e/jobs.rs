//! The job queue (docs/JOBS.md) with the real worker: jobs enqueued from SQL inside the
//! application's transaction run on every worker of the group (leader and standby); a
//! `mode: async` action is enqueued by the leader and run as a job with the pair's webhook-id,
//! retried after a 503 and dead-lettered after a 400 (and `dlq_retry` delivers it); a worker
//! killed with -9 while it holds running jobs loses none of them; the NOTIFY of an enqueue,
//! heard on the worker's shared LISTEN connection, wakes the runner (its poll is an hour away),
//! and `status` shows the queue depth.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use observers_tests::cluster::TestDb;
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{poll, scalar_i64, wait_observer_ready};
use observers_tests::worker::{run_cli, Worker};

use crate::common::*;

const JOB_QUEUE: &str =
    "job_queue: { enabled: true, workers: 8, poll_interval: 200ms, rescue_after: 2s, timeout: 60s }\n";
const FAST_RETRY: &str =
    "retry: { max_attempts: 4, initial_backoff: 100ms, max_backoff: 500ms, multiplier: 2 }\n";

/// A database with `public.signups` and an observer `mailer` (INSERT) whose one action is
/// `action` (YAML lines, `{rx}` = the receiver), and `n` workers of one group running jobs.
async fn start(name: &str, action: &str, n: usize) -> (TestDb, Receiver, Vec<Worker>) {
    start_with(name, action, n, JOB_QUEUE).await
}

/// [`start`] with another `job_queue:` line.
async fn start_with(
    name: &str,
    action: &str,
    n: usize,
    job_queue: &str,
) -> (TestDb, Receiver, Vec<Worker>) {
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute("CREATE TABLE public.signups (id serial PRIMARY KEY, email text)")
        .await
        .unwrap();
    let observers = format!(
        "  - name: mailer\n    table: public.signups\n    events: [INSERT]\n    actions:\n{}",
        action.replace("{rx}", &rx.url(""))
    );
    let mut workers = Vec::new();
    for i in 0..n {
        let yaml = config(
            &format!("w{i}-{name}"),
            &format!("{FAST_RETRY}{job_queue}failover: {{ enabled: true, lease_ttl: 3s }}\n"),
            &observers,
        );
        workers.push(start_worker(&format!("{name}-{i}"), &db, &yaml, &[]));
        if i == 0 {
            wait_observer_ready(&db.client, "mailer", "public.signups", SHORT).await;
        }
    }
    (db, rx, workers)
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    scalar_i64(&db.client, sql, &[]).await.unwrap_or(-1)
}

async fn wait_count(db: &TestDb, sql: &str, n: i64, timeout: Duration) -> bool {
    poll(timeout, Duration::from_millis(100), || async {
        (count(db, sql).await >= n).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_jobs_run_on_every_worker_of_the_group_and_a_rollback_enqueues_nothing() {
    let (db, rx, mut workers) = start(
        "jobs_sql",
        "      - type: webhook\n        url: {rx}/mail\n        timeout: 5s\n",
        2,
    )
    .await;
    // I/O-bound jobs: both workers get to claim some
    rx.set_default("/mail", Reply::ok().delay(Duration::from_millis(100)));
    // enqueued inside the application's transactions; one of them rolls back
    db.client
        .batch_execute(
            "BEGIN;
             SELECT observers.job_enqueue('mailer', jsonb_build_object('n', -1));
             ROLLBACK;
             BEGIN;
             SELECT observers.job_enqueue('mailer', jsonb_build_object('n', g)) FROM generate_series(1, 100) g;
             COMMIT;
             SELECT observers.job_enqueue('mailer', '{\"n\": 1007}', unique_key => 'only-once');
             SELECT observers.job_enqueue('mailer', '{\"n\": 1008}', unique_key => 'only-once');",
        )
        .await
        .unwrap();
    assert!(
        wait_count(
            &db,
            "SELECT count(*) FROM observers.job_finished WHERE state = 'completed'",
            101,
            LONG
        )
        .await,
        "jobs did not complete; {}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(1), SHORT).await;
    let ok: Vec<_> = rx
        .deliveries_for("/mail")
        .into_iter()
        .filter(|d| d.succeeded())
        .collect();
    let ns: HashSet<i64> = ok
        .iter()
        .filter_map(|d| d.body.as_ref()?["new"]["n"].as_i64())
        .collect();
    assert_eq!(ns.len(), 101, "{}", rx.summary());
    assert!(!ns.contains(&-1), "a rolled-back enqueue ran");
    assert!(
        !ns.contains(&1008),
        "a second job with the same unique key ran"
    );
    let ids: HashSet<_> = ok.iter().filter_map(|d| d.webhook_id.clone()).collect();
    assert_eq!(ids.len(), 101, "one webhook-id per job");
    assert!(
        ids.iter().all(|w| w.starts_with("job_")),
        "SQL jobs carry job_<installation>_<id>: {ids:?}"
    );
    assert_eq!(rx.duplicate_count(), 0, "{}", rx.summary());
    // leader and standby both ran jobs
    let by_worker = db
        .client
        .query(
            "SELECT worker_id, count(*) FROM observers.job_finished GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let by_worker: BTreeMap<String, i64> = by_worker.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        by_worker.len(),
        2,
        "every worker of the group runs jobs: {by_worker:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM observers.job").await, 0);
    // the CLI reads the same
    let env = [("DATABASE_URL", db.url.as_str())];
    let out = run_cli(&["--format", "json", "jobs", "stats"], &env, SHORT).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("jobs stats json");
    assert_eq!(stats[0]["completed"], 101, "{stats}");
    assert_eq!(stats[0]["available"], 0, "{stats}");
    let out = run_cli(
        &[
            "--format",
            "json",
            "jobs",
            "list",
            "--state",
            "completed",
            "--limit",
            "500",
        ],
        &env,
        SHORT,
    )
    .await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("jobs list json");
    assert_eq!(list.as_array().map(Vec::len), Some(101));
    let out = run_cli(&["jobs", "show", "999999"], &env, SHORT).await;
    assert_eq!(out.status.code(), Some(3), "an unknown job is exit 3");
    for w in &mut workers {
        assert_eq!(w.stop(SHORT).await.code(), Some(0));
    }
    // a clean stop deregisters the runners: nothing to rescue
    assert_eq!(
        count(&db, "SELECT count(*) FROM observers.job_runner").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_action_runs_as_a_job_with_the_pairs_webhook_id_retries_and_dead_letters() {
    let (db, rx, mut workers) = start(
        "jobs_async",
        "      - type: webhook\n        url: {rx}/hook\n        timeout: 5s\n        mode: async\n",
        1,
    )
    .await;
    // first request 503 (retried as a new attempt of the job), then 200 for the rest
    rx.script("/hook", [Reply::status(503)]);
    for i in 0..10 {
        db.client
            .execute(
                "INSERT INTO public.signups (email) VALUES ($1)",
                &[&format!("u{i}@example.com")],
            )
            .await
            .unwrap();
    }
    assert!(
        rx.wait_for_events(10, LONG).await,
        "async pairs were not delivered; {}",
        rx.summary()
    );
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    // every event went through the queue, once, with the pair's webhook-id
    let events = outbox_ids(&db.client, "mailer").await;
    assert_eq!(events.len(), 10);
    for e in &events {
        let jobs = count(
            &db,
            &format!("SELECT count(*) FROM observers.job_finished WHERE event_id = {e} AND state = 'completed'"),
        )
        .await;
        assert_eq!(jobs, 1, "event {e}: one completed job");
    }
    let want: HashSet<String> = {
        let mut s = HashSet::new();
        for e in &events {
            s.insert(webhook_id(&db.client, *e, 0).await);
        }
        s
    };
    assert_eq!(rx.unique_webhook_ids(), want, "{}", rx.summary());
    // the 503 cost the job one attempt
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observers.job_finished WHERE attempts = 2"
        )
        .await,
        1
    );
    // a 400 is permanent: the job is discarded to the dead-letter queue, and dlq_retry
    // delivers it (inline, by the leader) with the same webhook-id
    rx.set_default("/hook", Reply::status(400));
    db.client
        .execute(
            "INSERT INTO public.signups (email) VALUES ('bad@example.com')",
            &[],
        )
        .await
        .unwrap();
    assert!(wait_dlq(&db.client, 1, LONG).await, "{}", rx.summary());
    let dlq = dlq_rows(&db.client).await;
    let bad_event: i64 = dlq[0]["event_id"].as_deref().unwrap().parse().unwrap();
    assert_eq!(dlq[0]["attempts"].as_deref(), Some("1"), "{dlq:?}");
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM observers.job_finished WHERE event_id = {bad_event} AND state = 'discarded' AND dlq_id IS NOT NULL")).await,
        1
    );
    rx.set_default("/hook", Reply::ok());
    db.client
        .batch_execute("SELECT observers.dlq_retry(id) FROM observers.dlq")
        .await
        .unwrap();
    assert!(
        poll(LONG, Duration::from_millis(100), || async {
            (count(&db, "SELECT count(*) FROM observers.dlq").await == 0).then_some(())
        })
        .await
        .is_some(),
        "the retried dead letter was not delivered; {}",
        rx.summary()
    );
    let bad_id = webhook_id(&db.client, bad_event, 0).await;
    assert!(
        rx.deliveries()
            .iter()
            .any(|d| d.succeeded() && d.webhook_id.as_deref() == Some(bad_id.as_str())),
        "{}",
        rx.summary()
    );
    for w in &mut workers {
        assert_eq!(w.stop(SHORT).await.code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_worker_holding_running_jobs_loses_none() {
    let (db, rx, mut workers) = start(
        "jobs_kill9",
        "      - type: webhook\n        url: {rx}/slow\n        timeout: 10s\n",
        2,
    )
    .await;
    // long jobs: a worker holds up to 8 at once when it is killed
    rx.set_default("/slow", Reply::ok().delay(Duration::from_millis(1500)));
    const N: i64 = 40;
    db.client
        .batch_execute(&format!(
            "SELECT observers.job_enqueue('mailer', jsonb_build_object('n', g)) FROM generate_series(1, {N}) g"
        ))
        .await
        .unwrap();
    let victim = "w0-jobs_kill9";
    assert!(
        wait_count(
            &db,
            &format!("SELECT count(*) FROM observers.job WHERE state = 'running' AND worker_id = '{victim}'"),
            1,
            SHORT
        )
        .await,
        "the first worker never ran a job"
    );
    workers[0].kill9();
    // what it held at the kill (nothing is rescued before its heartbeat is 2 s old)
    let held = count(
        &db,
        &format!(
            "SELECT count(*) FROM observers.job WHERE state = 'running' AND worker_id = '{victim}'"
        ),
    )
    .await;
    // the survivor rescues the victim's jobs once its heartbeat is 2 s old, and runs them all
    assert!(
        wait_count(
            &db,
            "SELECT count(*) FROM observers.job_finished WHERE state = 'completed'",
            N,
            LONG
        )
        .await,
        "jobs were lost after kill -9: {} completed of {N}; {}",
        count(
            &db,
            "SELECT count(*) FROM observers.job_finished WHERE state = 'completed'"
        )
        .await,
        rx.summary()
    );
    rx.settle(Duration::from_secs(2), SHORT).await;
    let ns: HashSet<i64> = rx
        .deliveries_for("/slow")
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| d.body.as_ref()?["new"]["n"].as_i64())
        .collect();
    assert_eq!(ns.len() as i64, N, "{}", rx.summary());
    assert_eq!(count(&db, "SELECT count(*) FROM observers.job").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM observers.dlq").await, 0);
    let rescued = count(
        &db,
        "SELECT count(*) FROM observers.job_finished WHERE attempts > 1",
    )
    .await;
    assert!(
        rescued >= 1 && rescued <= held,
        "{held} jobs were running on the killed worker; {rescued} ran again"
    );
    // duplicates only for requests in flight at the crash (documented, docs/JOBS.md)
    assert!(
        rx.duplicate_count() as i64 <= held,
        "{} duplicates, {held} jobs in flight at the kill; {}",
        rx.duplicate_count(),
        rx.summary()
    );
    println!(
        "jobs kill -9: {held} running on the killed worker, {rescued} rescued, {} duplicate requests",
        rx.duplicate_count()
    );
    assert_eq!(workers[1].stop(SHORT).await.code(), Some(0));
}

/// The wake-up path and the operator's view of the queue: with a poll interval of an hour, only
/// the NOTIFY of the enqueuing transaction (heard on the worker's shared LISTEN connection) can
/// make the runner claim a job; `observers.status()` and `fraiseql-observers status` show the
/// queue depth and the oldest due job's age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_on_the_shared_listener_wakes_the_runner_and_status_shows_the_queue() {
    let (db, rx, mut workers) = start_with(
        "jobs_notify",
        "      - type: webhook\n        url: {rx}/mail\n        timeout: 5s\n",
        1,
        "job_queue: { enabled: true, workers: 4, poll_interval: 1h, rescue_after: 2s }\n",
    )
    .await;
    assert!(
        wait_count(&db, "SELECT count(*) FROM observers.job_runner", 1, SHORT).await,
        "the job runner never registered"
    );
    // the runner's first claim (at start) found nothing; from now on only a NOTIFY wakes it,
    // several times in a row
    for n in 1..=3 {
        db.client
            .batch_execute(&format!(
                "SELECT observers.job_enqueue('mailer', '{{\"n\": {n}}}')"
            ))
            .await
            .unwrap();
        assert!(
            wait_count(
                &db,
                "SELECT count(*) FROM observers.job_finished WHERE state = 'completed'",
                n,
                SHORT
            )
            .await,
            "job {n} was not run (its NOTIFY did not wake the runner; the poll is an hour away): {}",
            rx.summary()
        );
    }
    // the queue as operators see it: 2 due jobs in a paused queue, 3 scheduled for later
    db.client
        .batch_execute(
            "SELECT observers.job_queue_pause('held');
             SELECT observers.job_enqueue('mailer', '{}', queue => 'held') FROM generate_series(1, 2);
             SELECT observers.job_enqueue('mailer', '{}', run_at => now() + interval '1 day')
               FROM generate_series(1, 3);",
        )
        .await
        .unwrap();
    let row = db
        .client
        .query_one(
            "SELECT jobs, oldest_job_age IS NOT NULL FROM observers.status() WHERE observer = 'mailer'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5, "status().jobs");
    assert!(
        row.get::<_, bool>(1),
        "status().oldest_job_age of the due, paused jobs"
    );
    let env = [("DATABASE_URL", db.url.as_str())];
    let out = run_cli(&["status"], &env, SHORT).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let jobs_line = text
        .lines()
        .skip_while(|l| !l.starts_with("JOBS"))
        .find(|l| l.contains("mailer"))
        .unwrap_or_default();
    assert!(
        jobs_line.split_whitespace().any(|w| w == "5"),
        "status shows the queue depth in its JOBS section: {text}"
    );
    let out = run_cli(&["--format", "json", "status"], &env, SHORT).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let mailer = &status["observers"][0];
    assert_eq!(mailer["jobs"], 5, "{status}");
    assert!(
        mailer["oldest_job_age_s"]
            .as_f64()
            .is_some_and(|a| a >= 0.0),
        "{status}"
    );
    assert_eq!(workers[0].stop(SHORT).await.code(), Some(0));
    assert_eq!(rx.duplicate_count(), 0, "{}", rx.summary());
}
