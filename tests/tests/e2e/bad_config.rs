//! SPEC §3/§8: bad configuration is rejected with an error that says where and what; an
//! unreachable database at start is retried (and said so) until it comes up.

use std::time::Duration;

use observers_tests::receiver::Receiver;
use observers_tests::util::wait_observer_ready;
use observers_tests::worker::{run_cli, write_temp_file, Worker};

use crate::common::*;

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_exits_2_with_path_and_line() {
    // Line 5, column 3: `batch_sizee` under `worker`.
    let yaml = "database:\n  url: postgres://127.0.0.1:1/nowhere\nworker:\n  id: w-bad\n  batch_sizee: 10\nobservers: []\n";
    let file = write_temp_file("unknown-key.yaml", yaml);
    let file = file.to_str().unwrap();

    let mut w = Worker::start("bad_config_unknown_key", yaml, &[]);
    let status = w
        .wait_exit(SHORT)
        .await
        .expect("a config error must make `start` exit, not hang");
    let log = w.log();
    assert_eq!(
        status.code(),
        Some(2),
        "unknown key: exit code 2 expected; output:\n{log}"
    );
    assert!(
        log.contains("worker.batch_sizee"),
        "the error must name the YAML path worker.batch_sizee:\n{log}"
    );
    assert!(
        log.contains("5:3") || log.contains("line 5"),
        "the error must give line 5 (column 3):\n{log}"
    );

    let out = run_cli(&["validate-config", file], &[], SHORT).await;
    let text = output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "validate-config with an unknown key: exit 2 expected:\n{text}"
    );
    assert!(text.contains("worker.batch_sizee"), "{text}");
    assert!(text.contains("5:3") || text.contains("line 5"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_reports_every_problem_at_once() {
    let yaml = "database:\n  url: postgres://127.0.0.1:1/nowhere\n\
                worker:\n  id: w-bad\n  poll_interval: soon\n\
                retry:\n  max_attemps: 3\n\
                observers:\n  - name: x\n    table: public.t\n    events: [INSERT]\n    actions:\n      - type: carrier_pigeon\n";
    let file = write_temp_file("many-problems.yaml", yaml);
    let out = run_cli(&["validate-config", file.to_str().unwrap()], &[], SHORT).await;
    let text = output_text(&out);
    assert_ne!(
        out.status.code(),
        Some(0),
        "an invalid config must not validate:\n{text}"
    );
    assert!(
        text.contains("worker.poll_interval"),
        "bad duration not reported with its path:\n{text}"
    );
    assert!(
        text.contains("retry.max_attemps"),
        "unknown key not reported with its path:\n{text}"
    );
    assert!(
        text.contains("carrier_pigeon"),
        "unknown action type not reported:\n{text}"
    );
}

/// SPEC §3: `validate-config` with a database "also checks tables, columns and conditions
/// against the live schema". (SPEC spells the flag `--database URL`; the CLI's global flag is
/// `--database-url`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_with_a_database_checks_tables_columns_and_conditions() {
    let db = observers_tests::fresh_db("validate_live").await;
    db.client
        .batch_execute("CREATE TABLE public.orders (id serial PRIMARY KEY, total numeric NOT NULL)")
        .await
        .unwrap();
    let yaml = "database:\n  url: ${DATABASE_URL}\nobservers:\n\
                \x20 - name: missing_table\n    table: public.nope\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: http://127.0.0.1:9/x\n\
                \x20 - name: bad_columns\n    table: public.orders\n    events: [UPDATE]\n    columns: [totl]\n    condition: \"NEW.totl > 1\"\n    actions:\n      - type: webhook\n        url: http://127.0.0.1:9/x\n\
                \x20 - name: bad_template\n    table: public.orders\n    events: [INSERT]\n    actions:\n      - type: slack\n        webhook_url: http://127.0.0.1:9/s\n        text: \"{{ new.totl }} was {{ old.total }}\"\n";
    let file = write_temp_file("validate-live.yaml", yaml);
    let out = run_cli(
        &[
            "validate-config",
            file.to_str().unwrap(),
            "--database-url",
            &db.url,
        ],
        &[("DATABASE_URL", db.url.as_str())],
        SHORT,
    )
    .await;
    let text = output_text(&out);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a config naming a missing table and column validated against the live schema:\n{text}"
    );
    assert!(
        text.contains("public.nope"),
        "the missing table is not reported:\n{text}"
    );
    assert!(
        text.contains("observers[0].table"),
        "the missing table is not reported with its path:\n{text}"
    );
    assert!(
        text.contains("totl"),
        "the missing column is not reported:\n{text}"
    );
    assert!(
        text.contains("observers[1].columns") || text.contains("observers[1].condition"),
        "the missing column is not reported with its path:\n{text}"
    );
    // templates are checked against the table too, at the text's own YAML line
    assert!(
        text.contains("observers[2].actions[0].text") && text.contains("new.totl"),
        "a template reading a missing column is not reported:\n{text}"
    );
    assert!(
        text.contains("INSERT events have no old row"),
        "a template reading old on INSERT is not reported:\n{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.contains("observers[2].actions[0].text"))
            .all(|l| l.contains("24:")),
        "the template problems do not carry the text's YAML line (24):\n{text}"
    );
}

/// SPEC §8: an observer on a table that does not exist is a clear error at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_on_a_missing_table_is_a_clear_error_at_start() {
    let db = observers_tests::fresh_db("missing_table").await;
    let yaml = config(
        "w-missing-table",
        "",
        "  - name: missing_table\n    table: public.nope\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: http://127.0.0.1:9/x\n",
    );
    let mut w = start_worker("missing_table", &db, &yaml, &[]);
    let status = w.wait_exit(SHORT).await;
    let log = w.log();
    let status = status
        .unwrap_or_else(|| panic!("the worker neither started delivering nor exited:\n{log}"));
    assert_ne!(
        status.code(),
        Some(0),
        "a missing table must not be a clean exit:\n{log}"
    );
    assert!(
        log.contains("public.nope"),
        "the error must name the table:\n{log}"
    );
    assert!(
        log.contains("missing_table") || log.contains("observers[0]"),
        "the error must say which observer:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_env_var_is_a_clear_error() {
    let yaml = "database:\n  url: ${OBSERVERS_TEST_SURELY_UNSET_VAR}\nworker:\n  id: w-env\nobservers: []\n";
    let mut w = Worker::start("bad_config_missing_env", yaml, &[]);
    let status = w
        .wait_exit(SHORT)
        .await
        .expect("a missing env var must make `start` exit, not hang");
    let log = w.log();
    assert_ne!(status.code(), Some(0), "missing env var must fail:\n{log}");
    assert!(
        log.contains("OBSERVERS_TEST_SURELY_UNSET_VAR"),
        "the error must name the missing variable:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_at_start_is_retried_until_it_comes_up() {
    let cluster = observers_tests::cluster::private_cluster().await;
    let db = observers_tests::fresh_db_on(&cluster.url(), "db_down_at_start").await;
    db.client
        .batch_execute("CREATE TABLE public.later (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let rx = Receiver::start().await.unwrap();
    let yaml = config(
        "w-unreachable",
        "",
        &format!(
            "  - name: later
    table: public.later
    events: [INSERT]
    actions:
      - type: webhook
        url: {}
",
            rx.url("/hooks/later")
        ),
    );
    drop(db.client);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop())
        .await
        .unwrap()
        .expect("stop cluster");

    let mut worker = Worker::start(
        "db_down_at_start",
        &yaml,
        &[("DATABASE_URL", db.url.as_str())],
    );
    let said_so = worker
        .wait_for_log_where(SHORT, |l| {
            let l = l.to_lowercase();
            (l.contains("database") || l.contains("connect") || l.contains("postgres"))
                && (l.contains("retry")
                    || l.contains("retrying")
                    || l.contains("backoff")
                    || l.contains("unreachable"))
        })
        .await;
    assert!(
        said_so,
        "the worker must log that the database is unreachable and it is retrying"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        worker.is_running(),
        "the worker gave up on an unreachable database instead of retrying"
    );

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap()
        .expect("start cluster");
    let client = observers_tests::cluster::connect_retry(&db.url, SHORT)
        .await
        .unwrap();
    wait_observer_ready(&client, "later", "public.later", LONG).await;
    client
        .execute("INSERT INTO public.later (label) VALUES ('hello')", &[])
        .await
        .unwrap();
    assert!(
        rx.wait_for_events(1, LONG).await,
        "nothing delivered after the database came up; {}",
        rx.summary()
    );
    assert_eq!(
        rx.deliveries()[0].body.as_ref().unwrap()["new"]["label"],
        "hello"
    );
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
