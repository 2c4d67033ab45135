//! Event ids on a server without `shared_preload_libraries` (capture/ids.rs): the counter in
//! shared memory is created by the first backend that draws an id, every session draws from it
//! in order, and a crash restart (a backend killed with SIGKILL: the postmaster throws shared
//! memory away and makes it anew) starts a new block above every id handed out before.

use std::time::Duration;

use observers_tests::cluster::{connect, connect_retry, pg_error};
use tokio_postgres::Client;

const STRUCT: &str = "pg_observers event ids v2";

async fn ids(client: &Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_error(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn counters_in_shared_memory(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_shmem_allocations WHERE name = $1",
            &[&STRUCT],
        )
        .await
        .unwrap()
        .get(0)
}

fn strictly_increasing(v: &[i64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_preload_ids_come_from_shared_memory_and_continue_above_after_a_crash_restart() {
    let cluster = observers_tests::cluster::private_cluster().await;
    let admin = connect(&cluster.url()).await.unwrap();
    admin
        .batch_execute("ALTER SYSTEM RESET shared_preload_libraries")
        .await
        .unwrap();
    drop(admin);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart())
        .await
        .unwrap()
        .expect("restart without the preload");

    let db = observers_tests::fresh_db_on(&cluster.url(), "event_ids").await;
    let preload: String = db
        .client
        .query_one("SHOW shared_preload_libraries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(preload, "", "the server still preloads a library");
    db.client
        .batch_execute(
            "CREATE TABLE public.t (id int PRIMARY KEY, note text);
             GRANT ALL ON public.t TO PUBLIC;
             SELECT observers.create_observer('t', 'public.t', '{INSERT,UPDATE,DELETE}');",
        )
        .await
        .unwrap();

    // two sessions take turns: ids grow in the order the rows were written
    let other = db.connect().await;
    for i in 0..20 {
        let client = if i % 2 == 0 { &db.client } else { &other };
        client
            .execute("INSERT INTO public.t VALUES ($1, 'before')", &[&i])
            .await
            .unwrap();
    }
    let before = ids(
        &db.client,
        "SELECT id FROM observers.event ORDER BY (new ->> 'id')::int",
    )
    .await;
    assert_eq!(before.len(), 20);
    assert!(
        strictly_increasing(&before),
        "ids not in write order: {before:?}"
    );
    assert_eq!(
        counters_in_shared_memory(&db.client).await,
        1,
        "no \"{STRUCT}\" in pg_shmem_allocations: ids did not come from shared memory"
    );
    let high_before = *before.last().unwrap();

    // kill -9 one backend: the postmaster ends every session and reinitializes shared memory
    let pid: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // SAFETY: sending a signal to a process id read from the server.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
    drop(other);
    // the crash restart ends this session too (wait for it before reconnecting)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while db.client.query_one("SELECT 1", &[]).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not restart after a backend was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = connect_retry(&db.url, Duration::from_secs(60))
        .await
        .expect("reconnect after the crash restart");
    let events_kept: i64 = client
        .query_one("SELECT count(*) FROM observers.event", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events_kept, 20, "committed events lost in the crash");

    client
        .batch_execute(
            "INSERT INTO public.t SELECT g, 'after' FROM generate_series(100, 104) AS g;
             UPDATE public.t SET note = 'again' WHERE id = 0;
             DELETE FROM public.t WHERE id = 1;",
        )
        .await
        .unwrap();
    let after = ids(
        &client,
        &format!("SELECT id FROM observers.event WHERE id > {high_before} ORDER BY id"),
    )
    .await;
    let all: i64 = client
        .query_one("SELECT count(*) FROM observers.event", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        after.len() as i64,
        all - 20,
        "an id drawn after the crash restart is not above every id drawn before it ({high_before}): {after:?}"
    );
    assert_eq!(after.len(), 7);
    assert_eq!(
        counters_in_shared_memory(&client).await,
        1,
        "the counter was not made again after the crash restart"
    );
    let (last_value, max_id): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT (SELECT last_value FROM observers.event_id_seq), max(id) FROM observers.event",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        last_value >= max_id,
        "the sequence ({last_value}) is below an id handed out ({max_id})"
    );
}
