//! Shared pieces of the end-to-end tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use observers_tests::cluster::TestDb;
use observers_tests::receiver::{Delivery, Receiver};
use observers_tests::util::scalar_i64;
use observers_tests::worker::Worker;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tokio_postgres::Client;

/// Waiting for something that normally takes well under a second.
pub const SHORT: Duration = Duration::from_secs(30);
/// Waiting for thousands of deliveries, restarts, retries with backoff.
pub const LONG: Duration = Duration::from_secs(180);

/// Held by tests that start a worker on the default metrics address `127.0.0.1:9187` (the seed's
/// profiles say `metrics: enabled`, and the guides show files without a `metrics:` section):
/// one at a time, or the second worker could not bind it.
pub static DEFAULT_METRICS_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database with the extension, and a recording receiver.
pub async fn setup(name: &str) -> (TestDb, Receiver) {
    let db = observers_tests::fresh_db(name).await;
    let rx = Receiver::start().await.expect("start receiver");
    (db, rx)
}

/// Worker config: the common head, `extra` top-level sections, then `observers`.
/// Metrics are disabled: several workers run in parallel and would fight over the port.
pub fn config(worker_id: &str, extra: &str, observers: &str) -> String {
    format!(
        "{}metrics: disabled\n{}observers:\n{}",
        observers_tests::util::config_head(worker_id),
        extra,
        observers
    )
}

/// Start the real worker on `db` (`DATABASE_URL` is set from the test database).
pub fn start_worker(name: &str, db: &TestDb, yaml: &str, env: &[(&str, &str)]) -> Worker {
    let mut all: Vec<(&str, &str)> = vec![("DATABASE_URL", db.url.as_str())];
    all.extend_from_slice(env);
    Worker::start(name, yaml, &all)
}

/// Top-level keys of a JSON object in document order (serde_json's `Value` sorts them).
pub fn top_level_keys(raw: &[u8]) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                    let mut keys = vec![];
                    while let Some(k) = m.next_key::<String>()? {
                        m.next_value::<IgnoredAny>()?;
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Keys>(raw)
        .map(|k| k.0)
        .unwrap_or_default()
}

/// The first successful delivery of each event id, in arrival order.
pub fn first_successes(deliveries: &[Delivery]) -> Vec<Delivery> {
    let mut seen = std::collections::HashSet::new();
    deliveries
        .iter()
        .filter(|d| d.succeeded())
        .filter(|d| d.event_id().map(|id| seen.insert(id)).unwrap_or(false))
        .cloned()
        .collect()
}

/// event id -> distinct webhook-ids it was delivered with.
pub fn webhook_ids_by_event(
    deliveries: &[Delivery],
) -> HashMap<i64, std::collections::BTreeSet<String>> {
    let mut m: HashMap<i64, std::collections::BTreeSet<String>> = HashMap::new();
    for d in deliveries {
        if let (Some(id), Some(w)) = (d.event_id(), &d.webhook_id) {
            m.entry(id).or_default().insert(w.clone());
        }
    }
    m
}

/// Rows of `observers.dlq` as maps (column -> text), ordered by id.
pub async fn dlq_rows(client: &Client) -> Vec<BTreeMap<String, Option<String>>> {
    let rows = client
        .query("SELECT to_jsonb(d) FROM observers.dlq d ORDER BY d.id", &[])
        .await
        .expect("read observers.dlq");
    rows.iter()
        .map(|r| {
            let v: serde_json::Value = r.get(0);
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            let s = match v {
                                serde_json::Value::Null => None,
                                serde_json::Value::String(s) => Some(s.clone()),
                                other => Some(other.to_string()),
                            };
                            (k.clone(), s)
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Wait until `observers.dlq` has at least `n` rows.
pub async fn wait_dlq(client: &Client, n: i64, timeout: Duration) -> bool {
    observers_tests::util::poll(timeout, Duration::from_millis(100), || async {
        let c = scalar_i64(client, "SELECT count(*) FROM observers.dlq", &[])
            .await
            .unwrap_or(0);
        (c >= n).then_some(())
    })
    .await
    .is_some()
}

/// Wait until `observers.status()` reports a backlog of 0 (summed over rows).
pub async fn wait_backlog_zero(client: &Client, timeout: Duration) -> bool {
    observers_tests::util::poll(timeout, Duration::from_millis(200), || async {
        (observers_tests::util::status_sum(client, "backlog").await == 0).then_some(())
    })
    .await
    .is_some()
}

/// The webhook-id of an (event, action) pair as the extension computes it
/// (`observers._webhook_id`: `evt_<installation>_<event>_<action>`, docs/WEBHOOKS.md); the worker
/// must send exactly this.
pub async fn webhook_id(client: &Client, event: i64, action: i32) -> String {
    client
        .query_one("SELECT observers._webhook_id($1, $2)", &[&event, &action])
        .await
        .expect("observers._webhook_id")
        .get(0)
}

/// All event ids in the outbox for observer `name`.
pub async fn outbox_ids(client: &Client, observer: &str) -> Vec<i64> {
    client
        .query(
            "SELECT e.id FROM observers.event e JOIN observers.observer o ON o.id = e.observer_id \
             WHERE o.name = $1 ORDER BY e.id",
            &[&observer],
        )
        .await
        .expect("read observers.event")
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// A random Standard Webhooks secret (`whsec_` + base64 of 24 random bytes).
pub fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut key = [0u8; 24];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The `new.label` of every successful delivery (tests that write a `label` column).
pub fn delivered_labels(rx: &Receiver) -> HashSet<String> {
    rx.deliveries()
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| d.body.as_ref()?["new"]["label"].as_str().map(str::to_owned))
        .collect()
}

/// `_refresh` then `_count` of `<prefix>-*` on an Elasticsearch / OpenSearch-API server.
pub async fn es_count(http: &reqwest::Client, url: &str, prefix: &str) -> Option<i64> {
    http.post(format!("{url}/{prefix}-*/_refresh"))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = http
        .get(format!("{url}/{prefix}-*/_count"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["count"].as_i64()
}
