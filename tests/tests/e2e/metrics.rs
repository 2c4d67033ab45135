//! SPEC §6 `metrics` and §7: `/metrics`, `/health/live`, `/health/ready` of the real worker.
//! Exact counter values after a known workload (and `promtool check metrics` on the scrape),
//! a real Prometheus server scraping the worker, readiness following the database, and the
//! shipped alert rules checked by `promtool`. No wall-clock thresholds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use observers_tests::cluster::{free_port, TestDb};
use observers_tests::receiver::Reply;
use observers_tests::util::{config_head, poll, wait_observer_ready};
use observers_tests::worker::{run_cli, workspace_root, Worker};

use crate::common::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Worker config with metrics on `127.0.0.1:port` (the common `config()` disables them).
fn metrics_config(worker_id: &str, port: u16, extra: &str, observers: &str) -> String {
    format!(
        "{}metrics:\n  listen: 127.0.0.1:{port}\n{extra}observers:\n{observers}",
        config_head(worker_id)
    )
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The value of exactly `series` (name plus labels as the worker writes them, sorted).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrape until `pred` holds (database gauges refresh every 5 s); returns the last scrape.
async fn scrape_until(port: u16, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Some((200, text)) = get(port, "/metrics").await {
            if pred(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

fn promtool(args: &[&str], stdin: Option<&str>, dir: &Path) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {PROMTOOL} ({e}): install Debian's prometheus (scripts/install-deps.sh)")
        });
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One table `public.things`, observers `good` (label <> 'bad', answered 200) and `bad`
/// (label = 'bad', answered 500; two attempts, then the dead-letter queue).
async fn workload_setup(name: &str, port: u16) -> (TestDb, observers_tests::Receiver, Worker) {
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute("CREATE TABLE public.things (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    rx.set_default("/bad", Reply::status(500).body("text/plain", "boom"));
    let observers = format!(
        "  - name: good
    table: public.things
    events: [INSERT]
    condition: \"NEW.label <> 'bad'\"
    actions:
      - type: webhook
        url: {good}
        timeout: 5s
  - name: bad
    table: public.things
    events: [INSERT]
    condition: \"NEW.label = 'bad'\"
    actions:
      - type: webhook
        url: {bad}
        timeout: 5s
",
        good = rx.url("/good"),
        bad = rx.url("/bad")
    );
    let yaml = metrics_config(
        &format!("w-{name}"),
        port,
        "retry: { max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms }\n",
        &observers,
    );
    let worker = start_worker(name, &db, &yaml, &[]);
    wait_observer_ready(&db.client, "good", "public.things", SHORT).await;
    wait_observer_ready(&db.client, "bad", "public.things", SHORT).await;
    (db, rx, worker)
}

/// `good` good rows and `bad` bad rows in one statement.
async fn insert(db: &TestDb, good: i32, bad: i32) {
    db.client
        .execute(
            "INSERT INTO public.things (label) \
             SELECT CASE WHEN g <= $2::int THEN 'bad' ELSE 'ok-' || g END \
             FROM generate_series(1, $1::int + $2::int) AS g",
            &[&good, &bad],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_counters_are_exact_and_promtool_accepts_the_exposition() {
    let port = free_port();
    let (db, rx, mut worker) = workload_setup("metrics_exact", port).await;
    insert(&db, 40, 10).await;
    assert!(
        wait_dlq(&db.client, 10, SHORT).await,
        "the 10 failing events were not dead-lettered; {}",
        rx.summary()
    );
    assert!(
        rx.wait_until(SHORT, |r| r.unique_count_for("/good") >= 40)
            .await,
        "the 40 good events were not delivered; {}",
        rx.summary()
    );
    assert!(wait_backlog_zero(&db.client, SHORT).await);

    // counters are updated when each event finishes; database gauges within 5 s
    let text = scrape_until(port, SHORT, |t| {
        sample(t, "observer_events_processed_total") == Some(50.0)
            && sample(t, r#"observer_dlq_size{group="default",observer="bad"}"#) == Some(10.0)
    })
    .await;
    let expect = [
        ("observer_events_matched_total", 50.0),
        ("observer_events_processed_total", 50.0),
        (
            r#"observer_actions_total{action_type="webhook",outcome="delivered"}"#,
            40.0,
        ),
        (
            r#"observer_actions_total{action_type="webhook",outcome="dead_lettered"}"#,
            10.0,
        ),
        (
            r#"observer_action_attempts_total{action_type="webhook",outcome="delivered"}"#,
            40.0,
        ),
        (
            r#"observer_action_attempts_total{action_type="webhook",outcome="failed"}"#,
            20.0,
        ),
        (
            r#"observer_action_duration_seconds_count{action_type="webhook"}"#,
            60.0,
        ),
        ("observer_event_latency_seconds_count", 50.0),
        (r#"observer_dlq_size{group="default",observer="bad"}"#, 10.0),
        (r#"observer_dlq_size{group="default",observer="good"}"#, 0.0),
        (
            r#"observer_backlog_events{group="default",observer="bad"}"#,
            0.0,
        ),
        (
            r#"observer_backlog_events{group="default",observer="good"}"#,
            0.0,
        ),
        (
            r#"observer_backlog_oldest_age_seconds{group="default",observer="good"}"#,
            0.0,
        ),
        (r#"observer_leader{group="default"}"#, 1.0),
        ("observer_group_has_leader", 1.0),
        ("observer_database_up", 1.0),
        ("observer_ready", 1.0),
        ("observer_dedup_hits_total", 0.0),
    ];
    let wrong: Vec<String> = expect
        .iter()
        .filter(|(s, v)| sample(&text, s) != Some(*v))
        .map(|(s, v)| format!("{s}: expected {v}, got {:?}", sample(&text, s)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}\n--- scrape:\n{text}");
    // no "observer_actions_total" for outcomes that did not happen, and no event ids or URLs
    assert!(!text.contains("evt_"), "{text}");
    assert!(!text.contains("/good") && !text.contains("/bad"), "{text}");

    let (ok, out) = promtool(&["check", "metrics"], Some(&text), &workspace_root());
    assert!(
        ok,
        "promtool check metrics rejected the exposition:\n{out}\n--- scrape:\n{text}"
    );

    // health
    assert_eq!(
        get(port, "/health/live").await.map(|r| r.0),
        Some(200),
        "/health/live"
    );
    let (status, body) = get(port, "/health/ready").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["role"], "leader", "{body}");
    assert_eq!(ready["degraded"], serde_json::json!([]), "{body}");

    // the CLI reads the same numbers
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = run_cli(&["metrics", "--url", &url, "--format", "json"], &[], SHORT).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["events_processed"], 50, "{summary}");
    assert_eq!(summary["actions"][0]["delivered"], 40, "{summary}");
    assert_eq!(summary["actions"][0]["dead_lettered"], 10, "{summary}");
    assert_eq!(summary["actions"][0]["attempts_failed"], 20, "{summary}");
    let bad = summary["observers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["observer"] == "bad")
        .cloned()
        .unwrap_or_default();
    assert_eq!(bad["dlq"], 10, "{summary}");
    let out = run_cli(
        &["metrics", "-c", &worker.config_path().to_string_lossy()],
        &[("DATABASE_URL", db.url.as_str())],
        SHORT,
    )
    .await;
    let text_out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text_out}");
    assert!(text_out.contains("matched 50  processed 50"), "{text_out}");

    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
    // after the worker is gone: exit 1 and a message that says what to check
    let out = run_cli(&["metrics", "--url", &url], &[], SHORT).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot reach") && err.contains("metrics.listen"),
        "{err}"
    );
}

/// A private `prometheus` (Debian's) with its own config, data dir and port; killed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(target_port: u16, rules: &Path) -> Prometheus {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("fo-prometheus-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: fraiseql-observers\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {PROMETHEUS} ({e}): install Debian's prometheus (scripts/install-deps.sh)")
            });
        Prometheus { child, dir, port }
    }

    /// The first value of an instant query, if it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    async fn rules_loaded(&self) -> usize {
        let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/api/v1/rules", self.port)).await
        else {
            return 0;
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["data"]["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .map(|g| g["rules"].as_array().map_or(0, |r| r.len()))
                    .sum()
            })
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("prometheus log ({}):\n{}", self.dir.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_worker_and_loads_the_alert_rules() {
    let port = free_port();
    let (db, rx, mut worker) = workload_setup("metrics_prom", port).await;
    let rules = workspace_root().join("deploy/prometheus/alerts.yml");
    let prom = Prometheus::start(port, &rules);
    insert(&db, 20, 0).await;
    assert!(
        rx.wait_until(SHORT, |r| r.unique_count_for("/good") >= 20)
            .await,
        "{}",
        rx.summary()
    );

    let processed = poll(LONG, Duration::from_millis(500), || async {
        let v = prom
            .query(r#"observer_events_processed_total{job="fraiseql-observers"}"#)
            .await?;
        (v == 20.0).then_some(v)
    })
    .await;
    assert_eq!(
        processed,
        Some(20.0),
        "Prometheus never saw observer_events_processed_total = 20 (last: {:?})\n{}",
        prom.query("observer_events_processed_total").await,
        prom.log()
    );
    let attempts = prom
        .query(r#"sum(observer_action_duration_seconds_count{action_type="webhook"})"#)
        .await;
    assert_eq!(attempts, Some(20.0), "action latency histogram count");
    let p99 = prom
        .query("histogram_quantile(0.99, sum by (le) (observer_action_duration_seconds_bucket))")
        .await;
    assert!(
        p99.is_some_and(|v| v.is_finite() && v > 0.0),
        "histogram_quantile over the action latency histogram: {p99:?}"
    );
    assert_eq!(
        prom.query(r#"up{job="fraiseql-observers"}"#).await,
        Some(1.0)
    );
    // every rule of the file (counted from the file, so adding a rule needs no edit here)
    let rules = std::fs::read_to_string(workspace_root().join("deploy/prometheus/alerts.yml"))
        .expect("read alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(rules >= 10, "alerts.yml has only {rules} rules");
    assert_eq!(
        prom.rules_loaded().await,
        rules,
        "alerts.yml should load into a real Prometheus"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_metrics_keep_answering() {
    let cluster = observers_tests::cluster::private_cluster().await;
    let db = observers_tests::fresh_db_on(&cluster.url(), "metrics_ready").await;
    let rx = observers_tests::Receiver::start().await.unwrap();
    db.client
        .batch_execute("CREATE TABLE public.things (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let port = free_port();
    let yaml = metrics_config(
        "w-metrics-ready",
        port,
        "",
        &format!(
            "  - name: things\n    table: public.things\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n",
            rx.url("/h")
        ),
    );
    let mut worker = start_worker("metrics_ready", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "things", "public.things", SHORT).await;

    // `want` status with `reason` in the body
    let ready = |want: u16, reason: &'static str| async move {
        poll(SHORT, Duration::from_millis(200), || async move {
            let (status, body) = get(port, "/health/ready").await?;
            (status == want && body.contains(reason)).then_some(body)
        })
        .await
    };
    assert!(
        ready(200, "leader").await.is_some(),
        "never ready: {:?}",
        get(port, "/health/ready").await
    );
    let before = scrape_until(port, SHORT, |t| {
        sample(
            t,
            r#"observer_backlog_events{group="default",observer="things"}"#,
        )
        .is_some()
    })
    .await;
    assert_eq!(sample(&before, "observer_database_up"), Some(1.0));

    // the database goes away: not ready, /metrics still answers with the last known values
    drop(db);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop())
        .await
        .unwrap()
        .expect("stop the cluster");
    // (the lease renewal may fail first; the database reason follows within the refresh interval)
    let Some(body) = ready(503, "database unreachable").await else {
        panic!(
            "/health/ready did not turn 503 with the database stopped: {:?}",
            get(port, "/health/ready").await
        )
    };
    assert!(body.contains("database unreachable"), "{body}");
    let text = scrape_until(port, SHORT, |t| {
        sample(t, "observer_database_up") == Some(0.0)
    })
    .await;
    assert_eq!(sample(&text, "observer_database_up"), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"observer_backlog_events{group="default",observer="things"}"#
        ),
        Some(0.0),
        "the last known backlog stays exported while the database is down"
    );
    assert_eq!(sample(&text, "observer_ready"), Some(0.0));
    assert_eq!(get(port, "/health/live").await.map(|r| r.0), Some(200));

    // and comes back
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap()
        .expect("start the cluster again");
    assert!(
        ready(200, "leader").await.is_some(),
        "not ready again after the database returned: {:?}",
        get(port, "/health/ready").await
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
    cluster.destroy();
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let dir = workspace_root().join("deploy/prometheus");
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"], None, &dir);
    assert!(
        ok,
        "promtool check rules deploy/prometheus/alerts.yml:\n{out}"
    );
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"], None, &dir);
    assert!(
        ok,
        "promtool test rules deploy/prometheus/alerts_test.yml:\n{out}"
    );
}

/// The backlog and DLQ gauges come from `observers.status()`, which can be slow (it counts the
/// backlog). A slow count must not make a reachable database look down: here the gauges query
/// is blocked for 12 s (an operator's transaction holds a lock on `observers.dlq`, which
/// `status()` reads) while the worker keeps answering ready with `observer_database_up 1`;
/// the gauges stay at their last values and refresh once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gauges_query_does_not_make_the_database_look_down() {
    let port = free_port();
    let (db, _rx, mut worker) = workload_setup("metrics_slow_gauges", port).await;
    let first = scrape_until(port, SHORT, |t| {
        sample(t, "observer_database_up") == Some(1.0)
            && sample(t, "observer_database_gauges_refreshed_timestamp_seconds").unwrap_or(0.0)
                > 0.0
    })
    .await;
    assert_eq!(sample(&first, "observer_database_up"), Some(1.0), "{first}");

    // block status(): an ACCESS EXCLUSIVE lock on observers.dlq in an open transaction
    let (locker, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE observers.dlq IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // 12 s: more than two refresh intervals and more than the probe's 4 s timeout
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut checks = 0;
    while tokio::time::Instant::now() < until {
        let (status, body) = get(port, "/health/ready").await.expect("/health/ready");
        assert_eq!(
            status, 200,
            "a blocked gauges query made the worker not ready: {body}"
        );
        let (_, text) = get(port, "/metrics").await.expect("/metrics");
        assert_eq!(sample(&text, "observer_database_up"), Some(1.0), "{text}");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks >= 10);
    // the gauges really were blocked: no refresh since the lock was taken (1 s of slack)
    let (_, text) = get(port, "/metrics").await.unwrap();
    let refreshed = sample(
        &text,
        "observer_database_gauges_refreshed_timestamp_seconds",
    )
    .unwrap();
    assert!(
        refreshed < blocked_at + 1.0,
        "the gauges refreshed while status() was blocked ({refreshed} >= {blocked_at})"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    let after = scrape_until(port, SHORT, |t| {
        sample(t, "observer_database_gauges_refreshed_timestamp_seconds").unwrap_or(0.0)
            > blocked_at + 1.0
    })
    .await;
    assert!(
        sample(
            &after,
            "observer_database_gauges_refreshed_timestamp_seconds"
        )
        .unwrap()
            > blocked_at + 1.0,
        "the gauges did not refresh after the lock was released:\n{after}"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
