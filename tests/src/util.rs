//! Waiting and SQL helpers shared by the end-to-end tests and `bench-e2e`.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Poll `f` every `every` until it returns `Some`, or `None` after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// One `bigint`/`int` value (NULL -> None). Panics on SQL errors with the query in the message.
pub async fn scalar_i64(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Option<i64> {
    let row = client
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("query failed: {sql}: {}", crate::cluster::pg_error(&e)));
    let col = &row.columns()[0];
    match col.type_().name() {
        "int2" => row.get::<_, Option<i16>>(0).map(i64::from),
        "int4" => row.get::<_, Option<i32>>(0).map(i64::from),
        _ => row.get::<_, Option<i64>>(0),
    }
}

/// Wait until observer `name` is registered in `observers.observer` (the worker applies the
/// YAML observers at start). Returns its id.
pub async fn wait_observer(client: &Client, name: &str, timeout: Duration) -> i64 {
    let found = poll(timeout, Duration::from_millis(100), || async {
        client
            .query_opt(
                "SELECT id::bigint FROM observers.observer WHERE name = $1",
                &[&name],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0))
    })
    .await;
    found.unwrap_or_else(|| {
        panic!("observer {name} did not appear in observers.observer within {timeout:?}")
    })
}

/// Is the capture trigger installed on `table`? (Any trigger whose function lives in schema
/// `observers`.)
pub async fn capture_trigger_installed(client: &Client, table: &str) -> bool {
    let sql = "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
               JOIN pg_namespace n ON n.oid = p.pronamespace \
               WHERE t.tgrelid = $1::text::regclass AND n.nspname = 'observers' AND NOT t.tgisinternal";
    match client.query_one(sql, &[&table]).await {
        Ok(r) => r.get::<_, i64>(0) > 0,
        Err(_) => false,
    }
}

/// Wait for the observer row *and* its capture trigger on `table`.
pub async fn wait_observer_ready(
    client: &Client,
    name: &str,
    table: &str,
    timeout: Duration,
) -> i64 {
    let id = wait_observer(client, name, timeout).await;
    let ok = poll(timeout, Duration::from_millis(100), || async {
        capture_trigger_installed(client, table).await.then_some(())
    })
    .await;
    if ok.is_none() {
        panic!("observer {name} is registered but no capture trigger appeared on {table} within {timeout:?}");
    }
    id
}

/// The common head of a worker config: database URL from `${DATABASE_URL}`, a short safety
/// poll and a quick retry policy (tests override `retry:` where they need to).
pub fn config_head(worker_id: &str) -> String {
    format!(
        "database:\n  url: ${{DATABASE_URL}}\n\
         worker:\n  id: {worker_id}\n  group: default\n  batch_size: 500\n  poll_interval: 1s\n  shutdown_timeout: 30s\n"
    )
}

/// Value of `status()` column `col` summed over all rows (tests run one group per database).
pub async fn status_sum(client: &Client, col: &str) -> i64 {
    let sql = format!("SELECT coalesce(sum(({col})::bigint), 0)::bigint FROM observers.status()");
    scalar_i64(client, &sql, &[]).await.unwrap_or(0)
}
