//! SPEC §6 `apply --config FILE [--dry-run] [--prune]` (issue 14 §2): the file's observers are
//! created or updated in one transaction before any worker runs, so that an application writing
//! right after the deploy loses nothing; `--dry-run` shows the plan the database itself checked
//! and changes nothing; a refused observer changes nothing at all; observers of the group that
//! are not in the file are reported, or disabled with `--prune`.

use std::process::Output;

use observers_tests::cluster::TestDb;
use observers_tests::util::scalar_i64;
use observers_tests::worker::{run_cli, write_temp_file};
use serde_json::Value;

use crate::common::*;

fn file(observers: &[(&str, &str, Option<&str>)]) -> String {
    let mut s = String::from("database:\n  url: ${DATABASE_URL}\nobservers:\n");
    for (name, table, condition) in observers {
        s.push_str(&format!(
            "  - name: {name}\n    table: {table}\n    events: [INSERT]\n"
        ));
        if let Some(c) = condition {
            s.push_str(&format!("    condition: \"{c}\"\n"));
        }
        s.push_str("    actions:\n      - type: webhook\n        url: http://127.0.0.1:9/hook\n");
    }
    s
}

async fn apply(db: &TestDb, yaml: &str, extra: &[&str]) -> Output {
    let path = write_temp_file("apply.yaml", yaml);
    let mut args = vec!["apply", "--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_cli(&args, &[("DATABASE_URL", db.url.as_str())], SHORT).await
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", show(o)))
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    scalar_i64(&db.client, sql, &[]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_changes_reports_and_prunes_in_one_transaction() {
    let (db, _rx) = setup("apply").await;
    db.client
        .batch_execute(
            "CREATE TABLE public.orders (id int PRIMARY KEY, total int);
             CREATE TABLE public.users (id int PRIMARY KEY);",
        )
        .await
        .unwrap();
    let v1 = file(&[
        ("orders", "public.orders", None),
        ("users", "public.users", None),
    ]);

    // --dry-run: the plan, checked by the database, and nothing changed
    let o = apply(&db, &v1, &["--dry-run"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("+ orders: create") && out.contains("+ users: create"),
        "{}",
        show(&o)
    );
    assert!(out.contains("dry run: nothing was changed"), "{}", show(&o));
    assert_eq!(
        count(&db, "SELECT count(*) FROM observers.observer").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.orders'::regclass"
        )
        .await,
        0,
        "a dry run left a capture trigger"
    );

    // apply: the observers exist and capture before any worker ever ran
    let o = apply(&db, &v1, &["--format", "json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let p = json(&o);
    assert_eq!(
        p["created"],
        serde_json::json!(["orders", "users"]),
        "{}",
        show(&o)
    );
    assert_eq!(p["dry_run"], false);
    db.client
        .batch_execute("INSERT INTO public.orders VALUES (1, 10)")
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM observers.event").await,
        1,
        "a write right after apply, with no worker running, is captured"
    );

    // again: nothing to do
    let p = json(&apply(&db, &v1, &["--format", "json"]).await);
    assert_eq!(p["unchanged"], serde_json::json!(["orders", "users"]));
    assert_eq!(p["created"], serde_json::json!([]));
    assert_eq!(p["changed"], serde_json::json!([]));

    // a changed condition, and users gone from the file: reported, kept
    let v2 = file(&[("orders", "public.orders", Some("NEW.total > 100"))]);
    let o = apply(&db, &v2, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("~ orders: change"), "{}", show(&o));
    assert!(out.contains("? users: not in the file"), "{}", show(&o));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observers.observer WHERE name = 'users' AND enabled"
        )
        .await,
        1,
        "without --prune an observer missing from the file keeps running"
    );
    // --prune disables it (never drops it)
    let p = json(&apply(&db, &v2, &["--prune", "--format", "json"]).await);
    assert_eq!(p["disabled"], serde_json::json!(["users"]));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observers.observer WHERE name = 'users' AND NOT enabled"
        )
        .await,
        1
    );

    // a refused observer (its table does not exist) changes nothing at all: exit 2, the valid
    // observer of the same file is not applied either
    db.client
        .batch_execute("CREATE TABLE public.refunds (id int PRIMARY KEY)")
        .await
        .unwrap();
    let bad = file(&[
        ("refunds", "public.refunds", None),
        ("ghost", "public.no_such_table", None),
    ]);
    let o = apply(&db, &bad, &[]).await;
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ghost")
            && err.contains("no_such_table")
            && err.contains("nothing was applied"),
        "the error names the observer, the table and that nothing changed:\n{}",
        show(&o)
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observers.observer WHERE name = 'refunds'"
        )
        .await,
        0,
        "a refused file must not apply its other observers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_with_an_unreachable_database_is_exit_1() {
    let path = write_temp_file(
        "apply_down.yaml",
        &file(&[("orders", "public.orders", None)]),
    );
    let o = run_cli(
        &["apply", "--config", path.to_str().unwrap()],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:9/none")],
        SHORT,
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach PostgreSQL"),
        "{}",
        show(&o)
    );
}
