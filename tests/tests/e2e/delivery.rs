//! Every op delivered with the exact payload of SPEC §4, Standard Webhooks headers and a valid
//! signature; the secret stays out of the database and the logs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use observers_tests::receiver::{verify_signature, Receiver};
use observers_tests::util::wait_observer_ready;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_is_delivered_with_exact_payload_headers_and_signature() {
    let db = observers_tests::fresh_db("delivery_ops").await;
    let secret = random_secret();
    let token = format!("tok-{}", &random_secret()[6..20]);
    let rx = Receiver::start_with_secret(&secret).await.unwrap();
    // The payload must not depend on the worker session's time zone (SPEC §4 shows UTC).
    db.client
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET timezone = 'Asia/Kolkata';
             CREATE TABLE public.orders (
               id bigserial PRIMARY KEY, customer_id int NOT NULL,
               total numeric(10,2) NOT NULL, status text NOT NULL DEFAULT 'new', note text);",
            db.name
        ))
        .await
        .unwrap();
    let yaml = config(
        "w-delivery",
        "",
        &format!(
            "  - name: order_events
    table: public.orders
    events: [INSERT, UPDATE, DELETE]
    actions:
      - type: webhook
        url: {url}
        headers: {{ Authorization: \"Bearer ${{HOOK_TOKEN}}\" }}
        secret: ${{HOOK_SECRET}}
        timeout: 5s
",
            url = rx.url("/hooks/orders")
        ),
    );
    let mut worker = start_worker(
        "delivery_ops",
        &db,
        &yaml,
        &[
            ("HOOK_SECRET", secret.as_str()),
            ("HOOK_TOKEN", token.as_str()),
        ],
    );
    let observer_id = wait_observer_ready(&db.client, "order_events", "public.orders", SHORT).await;

    // The secret and the token are not stored in the database (placeholders stay placeholders).
    let actions: String = db
        .client
        .query_one(
            "SELECT actions::text FROM observers.observer WHERE name = 'order_events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !actions.contains(&secret),
        "webhook secret stored in observers.observer.actions: {actions}"
    );
    assert!(
        !actions.contains(&token),
        "header secret stored in observers.observer.actions: {actions}"
    );

    // Three transactions; remember each one's txid.
    let mut txids = vec![];
    for sql in [
        "INSERT INTO public.orders (customer_id, total) VALUES (3, 1500.00)",
        "UPDATE public.orders SET status = 'paid' WHERE id = 1",
        "DELETE FROM public.orders WHERE id = 1",
    ] {
        db.client.batch_execute("BEGIN").await.unwrap();
        let n = db
            .client
            .execute(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(n, 1, "{sql}");
        let row = db
            .client
            .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
            .await
            .unwrap();
        txids.push(row.get::<_, i64>(0));
        db.client.batch_execute("COMMIT").await.unwrap();
    }

    assert!(
        rx.wait_for_events(3, SHORT).await,
        "expected 3 deliveries; {}",
        rx.summary()
    );
    rx.settle(Duration::from_secs(2), SHORT).await;
    let deliveries = rx.deliveries();
    assert_eq!(
        deliveries.len(),
        3,
        "exactly one request per event expected; {}",
        rx.summary()
    );

    let outbox = outbox_ids(&db.client, "order_events").await;
    // the first 16 hex digits of this database's installation id
    let installation: String = db
        .client
        .query_one(
            "SELECT left(replace(id::text, '-', ''), 16) FROM observers.installation",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        outbox.len(),
        3,
        "outbox should hold one event per change: {outbox:?}"
    );

    let row_insert =
        json!({"id": 1, "customer_id": 3, "total": 1500.00, "status": "new", "note": null});
    let row_paid =
        json!({"id": 1, "customer_id": 3, "total": 1500.00, "status": "paid", "note": null});
    let expected = [
        ("INSERT", row_insert.clone(), Value::Null, Value::Null),
        (
            "UPDATE",
            row_paid.clone(),
            row_insert.clone(),
            json!(["status"]),
        ),
        ("DELETE", Value::Null, row_paid.clone(), Value::Null),
    ];
    let mut by_id = deliveries.clone();
    by_id.sort_by_key(|d| d.event_id());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (i, d) in by_id.iter().enumerate() {
        let (op, new, old, changed) = &expected[i];
        let body = d
            .body
            .as_ref()
            .unwrap_or_else(|| panic!("body is not JSON: {:?}", d.raw_body));
        let ctx = format!("delivery {i} ({op}): {body}");
        assert_eq!(d.method, "POST", "{ctx}");
        assert_eq!(body["id"].as_i64(), Some(outbox[i]), "{ctx}");
        assert_eq!(body["observer"], "order_events", "{ctx}");
        assert_eq!(body["op"], *op, "{ctx}");
        assert_eq!(body["table"], "public.orders", "{ctx}");
        assert_eq!(body["new"], *new, "{ctx}");
        assert_eq!(body["old"], *old, "{ctx}");
        assert_eq!(body["changed"], *changed, "{ctx}");
        assert!(body["txid"].is_u64(), "txid must be a JSON number: {ctx}");
        assert_eq!(
            body["txid"].as_i64(),
            Some(txids[i]),
            "txid of the writing transaction: {ctx}"
        );
        let captured = body["captured_at"]
            .as_str()
            .unwrap_or_else(|| panic!("captured_at not a string: {ctx}"));
        let ts = OffsetDateTime::parse(captured, &Rfc3339)
            .unwrap_or_else(|e| panic!("captured_at {captured:?} is not RFC 3339 ({e}): {ctx}"));
        assert!(
            ts.offset().is_utc(),
            "captured_at {captured:?} must be UTC as in SPEC §4: {ctx}"
        );
        assert!(
            (ts.unix_timestamp() - now).abs() < 600,
            "captured_at {captured:?} is not now: {ctx}"
        );
        assert_eq!(
            top_level_keys(&d.raw_body),
            [
                "id",
                "observer",
                "op",
                "table",
                "new",
                "old",
                "changed",
                "txid",
                "captured_at"
            ],
            "key order as in SPEC §4"
        );

        // Standard Webhooks headers.
        assert_eq!(
            d.content_type
                .as_deref()
                .map(|c| c.starts_with("application/json")),
            Some(true),
            "{ctx}"
        );
        let wid = d
            .webhook_id
            .as_deref()
            .unwrap_or_else(|| panic!("no webhook-id: {ctx}"));
        assert_eq!(
            wid,
            format!("evt_{installation}_{}_0", outbox[i]),
            "webhook-id is evt_<installation>_<event id>_<action index> (docs/WEBHOOKS.md)"
        );
        assert_eq!(
            wid,
            webhook_id(&db.client, outbox[i], 0).await,
            "the worker and the extension (replays, DLQ retries) build the same webhook-id"
        );
        let wts = d
            .webhook_timestamp
            .as_deref()
            .unwrap_or_else(|| panic!("no webhook-timestamp: {ctx}"));
        let wts_n: i64 = wts
            .parse()
            .unwrap_or_else(|_| panic!("webhook-timestamp {wts:?} is not integer seconds"));
        assert!(
            (wts_n - now).abs() < 600,
            "webhook-timestamp {wts} is not now ({now})"
        );
        let sig = d
            .webhook_signature
            .as_deref()
            .unwrap_or_else(|| panic!("no webhook-signature: {ctx}"));
        assert!(sig.starts_with("v1,"), "signature {sig:?}");
        assert!(
            verify_signature(&secret, wid, wts, &d.raw_body, sig),
            "signature does not verify: {ctx}"
        );
        assert_eq!(d.signature_valid, Some(true));
        assert_eq!(
            d.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {token}").as_str())
        );
    }
    let _ = observer_id;

    let status = worker.stop(SHORT).await;
    assert_eq!(status.code(), Some(0), "SIGTERM must end with exit 0");
    let log = worker.log();
    assert!(
        !log.contains(&secret),
        "the webhook secret appears in the worker log {}",
        worker.log_path().display()
    );
    assert!(
        !log.contains(&token),
        "the header token appears in the worker log {}",
        worker.log_path().display()
    );
}

/// SPEC §2.2: NOTIFY is a hint only. With notifications switched off for the database
/// (`observers.notify_interval = 0`) the safety poll still delivers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_notification_the_safety_poll_delivers_everything() {
    let (db, rx) = setup("no_notify").await;
    db.client
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET observers.notify_interval = 0;
             CREATE TABLE public.quiet (id serial PRIMARY KEY, n int);",
            db.name
        ))
        .await
        .unwrap();
    let yaml = config(
        "w-no-notify",
        "",
        &format!(
            "  - name: quiet\n    table: public.quiet\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {}\n",
            rx.url("/hooks/quiet")
        ),
    );
    let mut worker = start_worker("no_notify", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "quiet", "public.quiet", SHORT).await;
    // A new session picks up the database setting; prove it is in effect.
    let writer = db.connect().await;
    let setting: String = writer
        .query_one("SHOW observers.notify_interval", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    assert!(
        setting == "0" || setting == "0ms",
        "notify_interval not switched off: {setting:?}"
    );
    for i in 0..3 {
        writer
            .execute("INSERT INTO public.quiet (n) SELECT g FROM generate_series($1::int, $1::int + 9) g", &[&(i * 10)])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        rx.wait_for_events(30, SHORT).await,
        "without NOTIFY not everything was delivered; {}",
        rx.summary()
    );
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
