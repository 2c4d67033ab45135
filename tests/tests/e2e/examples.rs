//! `examples/` (issue 14 §1 and §3): every example set-up passes `validate-config --database`
//! against the schema it is written for; the seed's three profiles (verbatim, completed with
//! connection details) start and deliver against real services; the least-privilege roles work
//! as written; the HA pair, started from the systemd unit's `ExecStart` and from the sidecar's
//! container command, hands over after `kill -9` without losing an event.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use observers_tests::chaos::{lease_holder, wait_new_leader};
use observers_tests::cluster::{free_port, pg_bin_dir, with_database, TestDb};
use observers_tests::osmem::OsMem;
use observers_tests::receiver::Receiver;
use observers_tests::redis::RedisServer;
use observers_tests::worker::{run_cli, workspace_root, write_temp_file, Worker};

use crate::common::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn examples() -> PathBuf {
    workspace_root().join("examples")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every worker configuration under `examples/` (the sidecar's is inside its ConfigMap).
fn example_configs() -> Vec<PathBuf> {
    let mut out = vec![];
    for dir in std::fs::read_dir(examples()).expect("examples/") {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let is_yaml = f.extension().is_some_and(|e| e == "yaml");
            if is_yaml && f.file_name().is_some_and(|n| n != "sidecar.yaml") {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

/// The file without its leading comment block: what the sidecar's ConfigMap must hold.
fn without_header(yaml: &str) -> String {
    yaml.lines()
        .skip_while(|l| l.starts_with('#') || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ConfigMap's `observers.yaml` of `10-ha-pair/sidecar.yaml`, de-indented.
fn sidecar_config() -> String {
    let manifest = read(&examples().join("10-ha-pair/sidecar.yaml"));
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "observers.yaml: |")
        .skip(1);
    let mut out = vec![];
    for l in lines.by_ref() {
        if l.starts_with("---") {
            break;
        }
        out.push(l.strip_prefix("    ").unwrap_or(l.trim_start()));
    }
    assert!(
        !out.is_empty(),
        "no ConfigMap observers.yaml in sidecar.yaml"
    );
    out.join("\n").trim_end().to_owned()
}

/// A fresh database holding `examples/schema.sql`.
async fn shop(name: &str) -> TestDb {
    let db = observers_tests::fresh_db(name).await;
    db.client
        .batch_execute(&read(&examples().join("schema.sql")))
        .await
        .expect("examples/schema.sql");
    db
}

/// Every variable the examples read, pointing at harmless local addresses.
fn example_env<'a>(db: &'a TestDb, hook: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("DATABASE_URL", db.url.as_str())];
    for k in [
        "ORDERS_WEBHOOK_URL",
        "BILLING_URL",
        "WAREHOUSE_URL",
        "CRM_URL",
        "SLACK_WEBHOOK_URL",
        "SALES_URL",
        "ARCHIVE_URL",
        "SHIPPING_URL",
        "NOTIFY_URL",
    ] {
        env.push((k, hook));
    }
    for k in [
        "ORDERS_WEBHOOK_SECRET",
        "BILLING_SECRET",
        "WAREHOUSE_SECRET",
        "CRM_SECRET",
        "NOTIFY_SECRET",
    ] {
        env.push((k, SECRET));
    }
    env.extend([
        ("CRM_TOKEN", "t0ken"),
        ("ES_API_KEY", "k3y"),
        ("ELASTICSEARCH_URL", "http://127.0.0.1:9"),
        ("SMTP_PORT", "2525"),
        ("SMTP_TLS", "none"),
    ]);
    env
}

fn show(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_validates_against_its_schema() {
    let db = shop("ex_validate").await;
    let env = example_env(&db, "http://127.0.0.1:9/hook");
    let configs = example_configs();
    assert!(
        configs.len() >= 11,
        "examples/ should hold at least ten set-ups: {configs:?}"
    );
    for f in &configs {
        let path = f.to_str().unwrap();
        let o = run_cli(
            &["validate-config", path, "--database", db.url.as_str()], // SPEC §3
            &env,
            SHORT,
        )
        .await;
        assert_eq!(o.status.code(), Some(0), "{path}:\n{}", show(&o));
    }
    // the sidecar's ConfigMap is the HA pair's file, and validates too
    let ha = read(&examples().join("10-ha-pair/observers.yaml"));
    assert_eq!(
        sidecar_config(),
        without_header(&ha),
        "10-ha-pair/sidecar.yaml's ConfigMap must hold 10-ha-pair/observers.yaml"
    );
    let side = write_temp_file("sidecar.yaml", &sidecar_config());
    let o = run_cli(&["validate-config", side.to_str().unwrap()], &env, SHORT).await;
    assert_eq!(o.status.code(), Some(0), "sidecar:\n{}", show(&o));

    // a wrong schema is caught by the same command: the examples are really checked
    let o = run_cli(
        &[
            "validate-config",
            configs[0].to_str().unwrap(),
            "--database",
            with_database(&db.url, "postgres").as_str(),
        ],
        &env,
        SHORT,
    )
    .await;
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
}

/// Write one order (and its customer) as the application would.
async fn order(db: &TestDb, customer: i64, total: &str) -> i64 {
    db.client
        .execute(
            "INSERT INTO public.customers (id, name, email) VALUES ($1, 'Ada', 'ada@example.com')
             ON CONFLICT (id) DO NOTHING",
            &[&customer],
        )
        .await
        .unwrap();
    let row = db
        .client
        .query_one(
            "INSERT INTO public.orders (customer_id, total) VALUES ($1, $2::text::numeric)
             RETURNING id",
            &[&customer, &total],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Apply the file (the deploy step), start the worker, write orders, and see them arrive.
/// With `es` (an OpenSearch-API URL), also waits, while the worker still runs, until both events
/// are in `observer-events-*` (the sink gives way to delivery, so it may index after the
/// webhooks arrived).
async fn profile_delivers(
    dir: &str,
    extra_env: &[(&str, &str)],
    es: Option<&str>,
) -> (TestDb, Receiver) {
    let db = shop(&format!("ex_{}", dir.replace('-', "_"))).await;
    let rx = Receiver::start_with_secret(SECRET).await.unwrap();
    let hook = rx.url("/orders");
    let mut env = example_env(&db, &hook);
    env.retain(|(k, _)| !extra_env.iter().any(|(e, _)| e == k));
    env.extend_from_slice(extra_env);
    let file = examples().join(dir).join("observers.yaml");
    let yaml = read(&file);

    let o = run_cli(&["apply", "--config", file.to_str().unwrap()], &env, SHORT).await;
    assert_eq!(o.status.code(), Some(0), "{dir} apply:\n{}", show(&o));
    // written before any worker runs: captured, because apply installed the observer
    let first = order(&db, 1, "10.00").await;

    let mut w = Worker::start(dir, &yaml, &env);
    let second = order(&db, 2, "2500.00").await;
    let ok = rx.wait_for_events(2, LONG).await;
    if !ok {
        w.dump_log();
    }
    assert!(ok, "{dir}: {}", rx.summary());
    let got: BTreeSet<i64> = rx
        .deliveries()
        .iter()
        .filter_map(|d| d.body.as_ref()?.get("new")?.get("id")?.as_i64())
        .collect();
    assert_eq!(got, BTreeSet::from([first, second]), "{dir}");
    for d in rx.deliveries() {
        let body = d.body.as_ref().expect("a JSON body");
        assert_eq!(body["observer"], "orders_to_fulfilment", "{dir}");
        assert_eq!(body["table"], "public.orders", "{dir}");
    }
    if let Some(url) = es {
        let http = reqwest::Client::new();
        let count = observers_tests::util::poll(LONG, Duration::from_millis(200), || async {
            es_count(&http, url, "observer-events")
                .await
                .filter(|n| *n >= 2)
        })
        .await;
        if count.is_none() {
            w.dump_log();
        }
        assert_eq!(count, Some(2), "{dir}: both events in observer-events-*");
    }
    let status = w.stop(SHORT).await;
    assert!(
        status.success(),
        "{dir}: worker exit {status:?}\n{}",
        w.log()
    );
    (db, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_profiles_start_and_deliver() {
    // one after the other: each profile's `metrics: enabled` binds 127.0.0.1:9187
    let _port = DEFAULT_METRICS_PORT.lock().await;
    let redis = RedisServer::start();
    let osmem = OsMem::start();
    let (_db, rx) = profile_delivers(
        "01-production",
        &[
            ("REDIS_URL", redis.url().as_str()),
            ("ELASTICSEARCH_URL", osmem.url()),
        ],
        Some(osmem.url()),
    )
    .await;
    // signed (the production file sets a secret); copied into the search cluster (checked above)
    assert!(
        rx.deliveries()
            .iter()
            .all(|d| d.signature_valid == Some(true)),
        "{}",
        rx.summary()
    );
    profile_delivers("02-performance", &[], None).await;
    let (_db, rx) = profile_delivers("03-budget", &[], None).await;
    assert!(
        rx.deliveries()
            .iter()
            .all(|d| d.webhook_signature.is_none()),
        "the budget file signs nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privilege_roles_work_as_written() {
    let db = shop("ex_roles").await;
    let suffix = db.name.replace(|c: char| !c.is_ascii_alphanumeric(), "");
    // roles are cluster-wide: this test's copy of roles.sql gets its own role names
    let roles = read(&examples().join("09-least-privilege/roles.sql"))
        .replace("shop_owner", &format!("shop_owner_{suffix}"))
        .replace("shop_app", &format!("shop_app_{suffix}"))
        .replace("shop_observers", &format!("shop_observers_{suffix}"))
        .replace("ops_alice", &format!("ops_alice_{suffix}"));
    let file = write_temp_file("roles.sql", &roles);
    let psql = std::process::Command::new(pg_bin_dir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-v", "worker_password=w0rker", "-v", "ops_password=0ps"])
        .args(["-v", "app_password=app"])
        .args(["-d", db.url.as_str(), "-f", file.to_str().unwrap()])
        .output()
        .expect("psql");
    assert!(psql.status.success(), "roles.sql:\n{}", show(&psql));

    // the deploy job applies as the owner's operator role, the worker runs as shop_observers
    let url_as = |role: &str, pw: &str| {
        db.url
            .replacen("postgres@", &format!("{role}_{suffix}:{pw}@"), 1)
    };
    let worker_url = url_as("shop_observers", "w0rker");
    let app_url = url_as("shop_app", "app");
    let rx = Receiver::start_with_secret(SECRET).await.unwrap();
    let hook = rx.url("/notify");
    let env = vec![
        ("DATABASE_URL", worker_url.as_str()),
        ("NOTIFY_URL", hook.as_str()),
        ("NOTIFY_SECRET", SECRET),
    ];
    let yaml = read(&examples().join("09-least-privilege/observers.yaml"));
    assert!(!yaml.contains("metrics:"));
    let yaml = format!("metrics: disabled\n{yaml}");

    // the deploy job: a login member of shop_owner applies the observers before the workers run
    db.client
        .batch_execute(&format!(
            "CREATE ROLE deploy_{suffix} LOGIN IN ROLE shop_owner_{suffix}"
        ))
        .await
        .unwrap();
    let deploy_url = db
        .url
        .replacen("postgres@", &format!("deploy_{suffix}@"), 1);
    let file = write_temp_file("least-privilege.yaml", &yaml);
    let mut deploy_env = env.clone();
    deploy_env[0] = ("DATABASE_URL", deploy_url.as_str());
    let o = run_cli(
        &["apply", "--config", file.to_str().unwrap()],
        &deploy_env,
        SHORT,
    )
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "apply as the owner:\n{}",
        show(&o)
    );
    let mut w = Worker::start("least-privilege", &yaml, &env);

    // the application writes as shop_app and enqueues nothing it may not
    let app = observers_tests::cluster::connect(&app_url).await.unwrap();
    app.batch_execute(
        "INSERT INTO public.customers (id, name, email) VALUES (1, 'Ada', 'ada@example.com');
         INSERT INTO public.orders (customer_id, total) VALUES (1, 12.50);",
    )
    .await
    .unwrap();
    let ok = rx.wait_for_events(1, LONG).await;
    if !ok {
        w.dump_log();
    }
    assert!(ok, "{}", rx.summary());
    assert!(rx
        .deliveries()
        .iter()
        .all(|d| d.signature_valid == Some(true)));
    let denied = app
        .query("SELECT new FROM observers.event", &[])
        .await
        .expect_err("the application role must not read the outbox");
    assert!(
        observers_tests::cluster::pg_error(&denied).contains("permission denied"),
        "{denied:?}"
    );
    assert!(!w.log().contains("permission denied"), "{}", w.log());
    w.stop(SHORT).await;
}

/// `ExecStart=` of the unit, as arguments (the unit has no quoting).
fn unit_exec_start() -> Vec<String> {
    let unit = read(&examples().join("10-ha-pair/fraiseql-observers.service"));
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart= in the unit");
    line.split_whitespace().map(str::to_owned).collect()
}

/// The sidecar container's `command` + `args`.
fn sidecar_command() -> Vec<String> {
    let manifest = read(&examples().join("10-ha-pair/sidecar.yaml"));
    let list = |key: &str| -> Vec<String> {
        let after = manifest
            .split(&format!("{key}: ["))
            .nth(1)
            .unwrap_or_else(|| panic!("{key}: in sidecar.yaml"));
        let inner = &after[..after.find(']').unwrap()];
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut cmd = list("command");
    cmd.extend(list("args"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_pair_from_the_unit_and_the_sidecar_hands_over_after_kill_9() {
    let db = shop("ex_ha").await;
    let rx = Receiver::start_with_secret(SECRET).await.unwrap();
    let hook = rx.url("/orders");

    // both launchers run `fraiseql-observers start --config <the file>`, which is what the
    // harness runs; the file each one reads is the example's own
    let unit = unit_exec_start();
    assert_eq!(
        unit[1..],
        [
            "start",
            "--config",
            "/etc/fraiseql-observers/observers.yaml"
        ],
        "{unit:?}"
    );
    assert!(unit[0].ends_with("/fraiseql-observers"), "{unit:?}");
    let side = sidecar_command();
    assert_eq!(
        side,
        [
            "fraiseql-observers",
            "start",
            "--config",
            "/etc/fraiseql-observers/observers.yaml"
        ],
        "{side:?}"
    );
    let unit_file = read(&examples().join("10-ha-pair/observers.yaml"));
    let side_file = sidecar_config();

    let ports = [free_port(), free_port()];
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let env = |i: usize| -> Vec<(&str, &str)> {
        vec![
            ("DATABASE_URL", db.url.as_str()),
            ("ORDERS_WEBHOOK_URL", hook.as_str()),
            ("ORDERS_WEBHOOK_SECRET", SECRET),
            ("METRICS_LISTEN", listen[i].as_str()),
        ]
    };
    // the deploy step, then the pair
    let file = examples().join("10-ha-pair/observers.yaml");
    let o = run_cli(
        &["apply", "--config", file.to_str().unwrap()],
        &env(0),
        SHORT,
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "apply:\n{}", show(&o));
    let mut a = Worker::start("ha-unit", &unit_file, &env(0));
    let mut b = Worker::start("ha-sidecar", &side_file, &env(1));

    let mut ids = BTreeSet::new();
    for c in 1..=20 {
        ids.insert(order(&db, c, "5.00").await);
    }
    assert!(rx.wait_for_events(20, LONG).await, "{}", rx.summary());
    let (leader, epoch) = lease_holder(&db.url, "shop-ha").await.expect("a leader");
    let leader_pid: u32 = leader.rsplit(':').next().unwrap().parse().unwrap();
    let leader_is_a = a.pid() == Some(leader_pid);
    if !leader_is_a {
        assert_eq!(
            b.pid(),
            Some(leader_pid),
            "the leader {leader} is one of the pair"
        );
    }
    let (killed, survivor, survivor_listen) = if leader_is_a {
        (&mut a, &mut b, &listen[1])
    } else {
        (&mut b, &mut a, &listen[0])
    };
    killed.kill9();
    for c in 21..=40 {
        ids.insert(order(&db, c, "5.00").await);
    }
    let new = wait_new_leader(&db.url, "shop-ha", &leader, epoch, LONG).await;
    assert!(new.is_some(), "no takeover:\n{}", survivor.log());
    let ok = rx.wait_for_events(40, LONG).await;
    if !ok {
        survivor.dump_log();
    }
    assert!(ok, "{}", rx.summary());
    let got: BTreeSet<i64> = rx
        .deliveries()
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| d.body.as_ref()?.get("new")?.get("id")?.as_i64())
        .collect();
    assert_eq!(got, ids, "every order delivered across the kill -9");
    assert!(rx
        .deliveries()
        .iter()
        .all(|d| d.signature_valid == Some(true)));
    // the survivor serves its own health endpoint on its own port
    let ready = reqwest::get(format!("http://{survivor_listen}/health/ready"))
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(ready.ok(), Some(200));
    survivor.stop(SHORT).await;
}

/// The seed's upgrade path (issue 14 §1): features are enabled one at a time, then turned off
/// again, restarting the worker each time, with orders written while it is stopped and while it
/// runs; every order is delivered once, whatever the switches were when it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_on_and_off_one_at_a_time_lose_nothing() {
    let _port = DEFAULT_METRICS_PORT.lock().await;
    let db = shop("ex_features").await;
    let rx = Receiver::start_with_secret(SECRET).await.unwrap();
    let hook = rx.url("/orders");
    let redis = RedisServer::start();
    let osmem = OsMem::start();
    let redis_url = redis.url();
    let mut env = example_env(&db, &hook);
    env.retain(|(k, _)| *k != "ELASTICSEARCH_URL");
    env.push(("ELASTICSEARCH_URL", osmem.url()));
    env.push(("REDIS_URL", redis_url.as_str()));

    let observer = without_header(&read(&examples().join("03-budget/observers.yaml")))
        .split("observers:")
        .nth(1)
        .map(|o| format!("observers:{o}\n"))
        .expect("the budget file's observers");
    let head = "database:\n  url: ${DATABASE_URL}\nworker:\n  group: shop\n";
    let stages: Vec<(&str, String)> = vec![
        ("defaults only", String::new()),
        ("budget switches", "checkpoints: enabled\ncircuit_breaker: enabled\nmetrics: enabled\n".into()),
        ("+ deduplication", "circuit_breaker: enabled\ndeduplication: enabled\n".into()),
        (
            "+ concurrency and caching",
            "circuit_breaker: enabled\ndeduplication: enabled\nconcurrent_execution: enabled\ncaching: enabled\n".into(),
        ),
        (
            "+ job queue and search",
            "deduplication: enabled\ncaching: enabled\njob_queue: enabled\nsearch: enabled\n".into(),
        ),
        (
            "+ redis backends and the sink",
            "redis: { url: \"${REDIS_URL}\" }\ndeduplication: { enabled: true, backend: redis }\n\
             caching: { enabled: true, backend: redis }\nelasticsearch: enabled\njob_queue: enabled\n"
                .into(),
        ),
        ("the production profile", "PRODUCTION".into()),
        ("back to budget", "BUDGET".into()),
        (
            "everything off",
            "checkpoints: disabled\nconcurrent_execution: disabled\ndeduplication: disabled\n\
             caching: disabled\nelasticsearch: disabled\njob_queue: disabled\nmetrics: disabled\n\
             circuit_breaker: disabled\nsearch: disabled\n"
                .into(),
        ),
    ];
    // the deploy step once: the observer exists before the first order
    let first = write_temp_file("features.yaml", &format!("{head}{observer}"));
    let o = run_cli(&["apply", "--config", first.to_str().unwrap()], &env, SHORT).await;
    assert_eq!(o.status.code(), Some(0), "apply:\n{}", show(&o));
    let mut written = BTreeSet::new();
    let mut customer = 0;
    for (stage, switches) in &stages {
        let yaml = match switches.as_str() {
            "PRODUCTION" => read(&examples().join("01-production/observers.yaml")),
            "BUDGET" => read(&examples().join("03-budget/observers.yaml")),
            s => format!("{head}{s}{observer}"),
        };
        // written while no worker runs
        for _ in 0..3 {
            customer += 1;
            written.insert(order(&db, customer, "20.00").await);
        }
        let mut w = Worker::start(&format!("features-{stage}"), &yaml, &env);
        for _ in 0..3 {
            customer += 1;
            written.insert(order(&db, customer, "20.00").await);
        }
        let ok = rx.wait_for_events(written.len(), LONG).await;
        if !ok {
            w.dump_log();
        }
        assert!(ok, "stage `{stage}`: {}", rx.summary());
        let status = w.stop(SHORT).await;
        assert!(
            status.success(),
            "stage `{stage}`: exit {status:?}\n{}",
            w.log()
        );
    }
    let got: BTreeSet<i64> = rx
        .deliveries()
        .iter()
        .filter(|d| d.succeeded())
        .filter_map(|d| d.body.as_ref()?.get("new")?.get("id")?.as_i64())
        .collect();
    assert_eq!(got, written, "every order delivered");
    assert_eq!(
        rx.duplicate_count(),
        0,
        "clean stops deliver nothing twice: {}",
        rx.summary()
    );
}

/// Apply `files` (the deploy step) and start a worker on each, with `env`.
async fn deploy(dir: &str, files: &[&str], env: &[(&str, &str)]) -> Vec<Worker> {
    let mut workers = vec![];
    for f in files {
        let path = examples().join(dir).join(f);
        let o = run_cli(&["apply", "--config", path.to_str().unwrap()], env, SHORT).await;
        assert_eq!(o.status.code(), Some(0), "{dir}/{f} apply:\n{}", show(&o));
    }
    for f in files {
        let yaml = read(&examples().join(dir).join(f));
        workers.push(Worker::start(&format!("{dir}-{f}"), &yaml, env));
    }
    workers
}

/// Wait until `pred` holds for the receiver's successful deliveries; dump the logs if not.
async fn wait_deliveries(
    rx: &Receiver,
    workers: &[Worker],
    what: &str,
    pred: impl Fn(&[observers_tests::receiver::Delivery]) -> bool,
) {
    let ok = observers_tests::util::poll(LONG, Duration::from_millis(100), || async {
        let ds: Vec<_> = rx
            .deliveries()
            .into_iter()
            .filter(|d| d.succeeded())
            .collect();
        pred(&ds).then_some(())
    })
    .await;
    if ok.is_none() {
        for w in workers {
            w.dump_log();
        }
    }
    assert!(ok.is_some(), "{what}: {}", rx.summary());
}

fn paths(ds: &[observers_tests::receiver::Delivery]) -> BTreeSet<String> {
    ds.iter().map(|d| d.path.clone()).collect()
}

/// Beyond the profiles and the HA pair: the fan-out, Slack, e-mail, audit-search and two-group
/// set-ups start as written and do what their comments say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_examples_start_and_do_what_they_say() {
    let _port = DEFAULT_METRICS_PORT.lock().await;
    let rx = Receiver::start_with_secret(SECRET).await.unwrap();
    let url = |p: &str| rx.url(p);
    let (billing, warehouse, crm, slack, sales, archive, shipping) = (
        url("/billing"),
        url("/warehouse"),
        url("/crm"),
        url("/slack"),
        url("/sales"),
        url("/archive"),
        url("/shipping"),
    );

    // 04: one order change, three signed requests, one per receiver
    let db = shop("ex_fanout").await;
    let mut env = example_env(&db, "http://127.0.0.1:9/unused");
    env.retain(|(k, _)| !["BILLING_URL", "WAREHOUSE_URL", "CRM_URL"].contains(k));
    env.extend([
        ("BILLING_URL", billing.as_str()),
        ("WAREHOUSE_URL", warehouse.as_str()),
        ("CRM_URL", crm.as_str()),
    ]);
    let mut ws = deploy("04-webhook-fanout", &["observers.yaml"], &env).await;
    order(&db, 1, "10.00").await;
    wait_deliveries(&rx, &ws, "04 fan-out", |ds| {
        paths(ds) == BTreeSet::from(["/billing".into(), "/warehouse".into(), "/crm".into()])
    })
    .await;
    let ds = rx.deliveries();
    assert!(ds.iter().all(|d| d.signature_valid == Some(true)));
    let crm_auth = ds
        .iter()
        .find(|d| d.path == "/crm")
        .unwrap()
        .headers
        .get("authorization")
        .cloned();
    assert_eq!(crm_auth.as_deref(), Some("Bearer t0ken"));
    let ids: BTreeSet<_> = ds.iter().filter_map(|d| d.webhook_id.clone()).collect();
    assert_eq!(ids.len(), 3, "three pairs, three webhook-ids: {ids:?}");
    // per customer, in commit order, at every receiver
    let id = order(&db, 2, "20.00").await;
    for status in ["paid", "packed", "shipped"] {
        db.client
            .execute(
                "UPDATE public.orders SET status = $1 WHERE id = $2",
                &[&status, &id],
            )
            .await
            .unwrap();
    }
    wait_deliveries(&rx, &ws, "04 ordering", |ds| ds.len() >= 15).await;
    for path in ["/billing", "/warehouse", "/crm"] {
        let seen: Vec<String> = first_successes(&rx.deliveries_for(path))
            .iter()
            .filter(|d| d.body.as_ref().unwrap()["new"]["customer_id"] == 2)
            .map(|d| {
                d.body.as_ref().unwrap()["new"]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(seen, ["new", "paid", "packed", "shipped"], "{path}");
    }
    for w in &mut ws {
        w.stop(SHORT).await;
    }

    // 05: a small order is not captured (condition); a big one posts the cached customer's name
    let db = shop("ex_slack").await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut env = example_env(&db, "http://127.0.0.1:9/unused");
    env.retain(|(k, _)| *k != "SLACK_WEBHOOK_URL");
    env.extend([
        ("SLACK_WEBHOOK_URL", slack.as_str()),
        ("REDIS_URL", redis_url.as_str()),
    ]);
    let mut ws = deploy("05-slack-alerts", &["observers.yaml"], &env).await;
    order(&db, 5, "10.00").await;
    let big = order(&db, 5, "2500.00").await;
    wait_deliveries(&rx, &ws, "05 slack", |ds| {
        ds.iter().any(|d| d.path == "/slack")
    })
    .await;
    rx.settle(Duration::from_millis(500), SHORT).await;
    let posts: Vec<_> = rx.deliveries_for("/slack");
    assert_eq!(posts.len(), 1, "only the big order: {}", rx.summary());
    let text = posts[0].body.as_ref().unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        text,
        format!("Big order {big}: 2500.00 from Ada (standard)")
    );
    assert!(
        redis.dbsize().unwrap_or(0) >= 1,
        "the lookup is cached in Redis"
    );
    for w in &mut ws {
        w.stop(SHORT).await;
    }

    // 06: the confirmation mail and the sales webhook run as jobs; the application's own
    // enqueue (enqueue.sql) sends one more mail
    let db = shop("ex_mail").await;
    let smtp = crate::email::SmtpSink::start("examples").await;
    let smtp_port = smtp.port.to_string();
    let mut env = example_env(&db, "http://127.0.0.1:9/unused");
    env.retain(|(k, _)| !["SMTP_PORT", "SALES_URL"].contains(k));
    env.extend([
        ("SMTP_PORT", smtp_port.as_str()),
        ("SALES_URL", sales.as_str()),
    ]);
    let mut ws = deploy("06-async-email", &["observers.yaml"], &env).await;
    let id = order(&db, 6, "30.00").await;
    let sql = read(&examples().join("06-async-email/enqueue.sql"));
    db.client.batch_execute(&sql).await.expect("enqueue.sql");
    wait_deliveries(&rx, &ws, "06 sales webhook", |ds| {
        ds.iter().any(|d| d.path == "/sales")
    })
    .await;
    let mails = observers_tests::util::poll(LONG, Duration::from_millis(100), || async {
        let m = smtp.lines("messages.jsonl");
        (m.len() >= 2).then_some(m)
    })
    .await
    .unwrap_or_else(|| panic!("mails: {:?}", smtp.lines("attempts.jsonl")));
    let subjects: BTreeSet<String> = mails
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        subjects.contains(&format!("Your order {id}")),
        "{subjects:?}"
    );
    assert!(
        subjects.contains("Your order 0"),
        "the enqueued job's mail: {subjects:?}"
    );
    assert!(mails
        .iter()
        .all(|m| m["to"] == serde_json::json!(["ada@example.com"])));
    for w in &mut ws {
        w.stop(SHORT).await;
    }

    // 07: the archive webhook, the PostgreSQL search and the Elasticsearch/OpenSearch copy
    let db = shop("ex_audit").await;
    let osmem = OsMem::start();
    let mut env = example_env(&db, "http://127.0.0.1:9/unused");
    env.retain(|(k, _)| !["ELASTICSEARCH_URL", "ARCHIVE_URL"].contains(k));
    env.extend([
        ("ELASTICSEARCH_URL", osmem.url()),
        ("ARCHIVE_URL", archive.as_str()),
    ]);
    let mut ws = deploy("07-audit-search", &["observers.yaml"], &env).await;
    order(&db, 7, "70.00").await; // a customer and an order: two events
    wait_deliveries(&rx, &ws, "07 archive", |ds| {
        ds.iter().filter(|d| d.path == "/archive").count() >= 2
    })
    .await;
    let http = reqwest::Client::new();
    let count = observers_tests::util::poll(LONG, Duration::from_millis(200), || async {
        es_count(&http, osmem.url(), "audit")
            .await
            .filter(|n| *n >= 2)
    })
    .await;
    assert_eq!(count, Some(2), "both events in audit-*");
    let found = observers_tests::util::poll(LONG, Duration::from_millis(200), || async {
        let o = run_cli(&["search", "Ada", "--format", "json"], &env, SHORT).await;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success() && out.contains("audit_customers")).then_some(())
    })
    .await;
    assert!(found.is_some(), "`search Ada` finds the customer's event");
    for w in &mut ws {
        w.stop(SHORT).await;
    }

    // 08: two groups, one database: each group's observers go to its own receiver
    let db = shop("ex_groups").await;
    let ports = [free_port(), free_port()];
    let mut ws = vec![];
    for (file, port) in [("billing.yaml", ports[0]), ("shipping.yaml", ports[1])] {
        let listen = format!("127.0.0.1:{port}");
        let mut env = example_env(&db, "http://127.0.0.1:9/unused");
        env.retain(|(k, _)| !["BILLING_URL", "SHIPPING_URL"].contains(k));
        env.extend([
            ("BILLING_URL", billing.as_str()),
            ("SHIPPING_URL", shipping.as_str()),
            ("METRICS_LISTEN", listen.as_str()),
        ]);
        ws.extend(deploy("08-two-groups", &[file], &env).await);
    }
    let before = rx.deliveries_for("/billing").len();
    let id = order(&db, 8, "80.00").await;
    db.client
        .execute(
            "UPDATE public.orders SET status = 'paid' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    db.client
        .execute(
            "INSERT INTO public.shipments (order_id, carrier) VALUES ($1, 'ups')",
            &[&id],
        )
        .await
        .unwrap();
    wait_deliveries(&rx, &ws, "08 two groups", |ds| {
        ds.iter().filter(|d| d.path == "/billing").count() >= before + 2
            && ds.iter().filter(|d| d.path == "/shipping").count() >= 2
    })
    .await;
    let observers: BTreeSet<String> = rx
        .deliveries_for("/shipping")
        .iter()
        .filter_map(|d| d.body.as_ref()?["observer"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        observers,
        BTreeSet::from(["shipping_orders".into(), "shipping_updates".into()])
    );
    let groups = observers_tests::util::scalar_i64(
        &db.client,
        "SELECT count(DISTINCT group_name) FROM observers.leader_lease WHERE expires_at > now()",
        &[],
    )
    .await;
    assert_eq!(groups, Some(2), "each group has its own leader");
    for w in &mut ws {
        w.stop(SHORT).await;
    }
}
