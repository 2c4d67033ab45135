//! Issue 9, item 14: the operator CLI prints payload numbers exactly as the database holds them.
//! A `numeric` too large for an `f64` (`12345678901234567890.123456789`) must come out of
//! `debug-event` and `dlq show`, in text and in `--format json`, digit for digit (it used to
//! print `1.2345678901234567e+19`).

use observers_tests::receiver::Reply;
use observers_tests::util::{scalar_i64, wait_observer_ready};
use observers_tests::worker::run_cli;

use crate::common::*;

const BIG: &str = "12345678901234567890.123456789";
const TINY: &str = "-0.000000000000000000000000000001";

async fn cli(url: &str, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--database-url", url]);
    let out = run_cli(&all, &[], SHORT).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_event_and_dlq_show_keep_large_numerics_exact() {
    let name = "cli_exact_numbers";
    let (db, rx) = setup(name).await;
    db.client
        .batch_execute(
            "CREATE TABLE public.amounts (id serial PRIMARY KEY, total numeric, tiny numeric)",
        )
        .await
        .unwrap();
    // a 400 dead-letters the pair at once: its payload is in observers.dlq
    rx.set_default("/amounts", Reply::status(400));
    let yaml = config(
        &format!("w-{name}"),
        "",
        &format!(
            "  - name: amounts\n    table: public.amounts\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n",
            rx.url("/amounts")
        ),
    );
    let mut worker = start_worker(name, &db, &yaml, &[]);
    wait_observer_ready(&db.client, "amounts", "public.amounts", SHORT).await;
    db.client
        .batch_execute(&format!(
            "INSERT INTO public.amounts (total, tiny) VALUES ({BIG}, {TINY})"
        ))
        .await
        .unwrap();
    assert!(
        wait_dlq(&db.client, 1, SHORT).await,
        "{}\n{}",
        rx.summary(),
        worker.log()
    );
    let dlq_id = scalar_i64(&db.client, "SELECT id FROM observers.dlq", &[])
        .await
        .unwrap();
    let event_id = scalar_i64(&db.client, "SELECT event_id FROM observers.dlq", &[])
        .await
        .unwrap();
    // what the receiver got (the body the database built) has the digits too
    let received = rx.deliveries_for("/amounts");
    let body = String::from_utf8_lossy(&received[0].raw_body);
    assert!(body.contains(BIG), "{body}");

    let (dlq, event) = (dlq_id.to_string(), event_id.to_string());
    let show = cli(&db.url, &["dlq", "show", &dlq]).await;
    assert!(
        show.contains(&format!("\"total\": {BIG}")),
        "dlq show:\n{show}"
    );
    assert!(
        show.contains(&format!("\"tiny\": {TINY}")),
        "dlq show:\n{show}"
    );
    let show_json = cli(&db.url, &["dlq", "show", &dlq, "--format", "json"]).await;
    assert!(
        show_json.contains(&format!("\"total\": {BIG}")),
        "dlq show --format json:\n{show_json}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&show_json).expect("JSON");
    assert_eq!(parsed["id"].as_i64(), Some(dlq_id), "{show_json}");
    assert_eq!(
        parsed["webhook_id"].as_str(),
        received[0].webhook_id.as_deref()
    );

    let debug = cli(&db.url, &["debug-event", &event]).await;
    assert!(
        debug.contains(&format!("\"total\":{BIG}")),
        "debug-event:\n{debug}"
    );
    assert!(
        debug.contains(&format!("\"tiny\":{TINY}")),
        "debug-event:\n{debug}"
    );
    let debug_json = cli(&db.url, &["debug-event", &event, "--format", "json"]).await;
    assert!(
        debug_json.contains(&format!("\"total\": {BIG}")),
        "debug-event --format json:\n{debug_json}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&debug_json).expect("JSON");
    assert_eq!(
        parsed["event"]["id"].as_i64(),
        Some(event_id),
        "{debug_json}"
    );
    assert!(!debug_json.contains("e+19") && !show_json.contains("e+19"));
    worker.stop(SHORT).await;
}
