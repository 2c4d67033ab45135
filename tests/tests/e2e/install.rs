//! `CREATE EXTENSION pg_observers` as users run it: several databases of one fresh cluster
//! installing at the same time (parallel test suites, multi-tenant setups).

use observers_tests::cluster::{connect, pg_error, with_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_extension_in_several_databases() {
    // A fresh cluster: the extension's cluster-wide roles do not exist yet.
    let cluster = observers_tests::cluster::private_cluster().await;
    let admin = connect(&cluster.url()).await.unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("install_{i}")).collect();
    for n in &names {
        admin
            .batch_execute(&format!("CREATE DATABASE {n}"))
            .await
            .unwrap();
    }
    let mut clients = vec![];
    for n in &names {
        clients.push(connect(&with_database(&cluster.url(), n)).await.unwrap());
    }
    let results = futures_util::future::join_all(
        clients
            .iter()
            .map(|c| async move { c.batch_execute("CREATE EXTENSION pg_observers").await }),
    )
    .await;
    let failures: Vec<String> = results
        .iter()
        .zip(&names)
        .filter_map(|(r, n)| r.as_ref().err().map(|e| format!("{n}: {}", pg_error(e))))
        .collect();
    assert!(
        failures.is_empty(),
        "concurrent CREATE EXTENSION failed in {} of {} databases:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
    for c in &clients {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_roles WHERE rolname IN ('observers_admin','observers_worker','observers_capture')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 3);
    }
    drop(clients);
    drop(admin);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
