//! The worker's side of the trust boundary (docs/SECURITY.md), with the real binary, a real
//! cluster and real receivers:
//! * actions defined in SQL expand only the variables the worker's file allows them
//!   (`action_secrets:` and the file's own observers), never the whole environment;
//! * `destinations:` decides where requests may go, by URL and by resolved address, and a
//!   redirect is never followed;
//! * a YAML "billion laughs" is refused at once with a clear error.

use std::net::SocketAddr;
use std::time::Duration;

use observers_tests::receiver::{Receiver, ReceiverOptions};
use observers_tests::util::{scalar_i64, wait_observer_ready};
use observers_tests::worker::{run_cli, write_temp_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Everything a receiver saw, as one text: paths, header values and bodies.
fn everything_received(rx: &Receiver) -> String {
    rx.deliveries()
        .iter()
        .map(|d| {
            format!(
                "{} {:?} {}\n",
                d.path,
                d.headers,
                String::from_utf8_lossy(&d.raw_body)
            )
        })
        .collect()
}

/// A receiver on another loopback address (Linux routes all of 127.0.0.0/8 to `lo`).
async fn receiver_on(ip: [u8; 4]) -> Receiver {
    Receiver::start_with(ReceiverOptions {
        listen: Some(SocketAddr::from((ip, 0))),
        keep_deliveries: true,
        ..Default::default()
    })
    .await
    .expect("start receiver")
}

/// SPEC §2.7: an observer created in SQL (by a role that may create observers, not by whoever
/// controls the worker's file) can only use the secrets the worker's file allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_defined_actions_only_expand_variables_the_file_allows() {
    let (db, rx) = setup("sec_env").await;
    let hook_secret = random_secret();
    let partner_token = format!("tok-{}", &random_secret()[6..26]);
    db.client
        .batch_execute("CREATE TABLE public.items (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let yaml = config(
        "w-sec-env",
        "action_secrets:\n  PARTNER_TOKEN: [partner]\n",
        &format!(
            "  - name: file_hooks
    table: public.items
    events: [INSERT]
    actions:
      - type: webhook
        url: {url}
        secret: ${{HOOK_SECRET}}
",
            url = rx.url("/file")
        ),
    );
    let mut worker = start_worker(
        "sec_env",
        &db,
        &yaml,
        &[
            ("HOOK_SECRET", hook_secret.as_str()),
            ("PARTNER_TOKEN", partner_token.as_str()),
        ],
    );
    wait_observer_ready(&db.client, "file_hooks", "public.items", SHORT).await;

    // What a hostile observer creator writes (issue: the worker's environment leaked), and
    // the observer `action_secrets` allows PARTNER_TOKEN.
    let port = rx.addr().port();
    db.client
        .batch_execute(&format!(
            r#"SELECT observers.create_observer(name => 'rogue', table_name => 'public.items',
                 events => '{{INSERT}}', actions => '[{{"type": "webhook",
                   "url": "http://127.0.0.1:{port}/x?u=${{DATABASE_URL}}",
                   "headers": {{"x-leak": "${{HOOK_SECRET}}"}}}}]');
               SELECT observers.create_observer(name => 'rogue_default', table_name => 'public.items',
                 events => '{{INSERT}}', actions => '[{{"type": "webhook",
                   "url": "http://127.0.0.1:{port}/y",
                   "headers": {{"x-home": "${{HOME:-no-home}}", "x-token": "${{PARTNER_TOKEN}}"}}}}]');
               SELECT observers.create_observer(name => 'partner', table_name => 'public.items',
                 events => '{{INSERT}}', actions => '[{{"type": "webhook",
                   "url": "http://127.0.0.1:{port}/partner",
                   "headers": {{"authorization": "Bearer ${{PARTNER_TOKEN}}"}}}}]');
               INSERT INTO public.items (label) VALUES ('one');"#
        ))
        .await
        .unwrap();

    // The allowed ones are delivered: the file's observer, and `partner` with its token.
    assert!(
        rx.wait_until(SHORT, |r| {
            r.deliveries_for("/file").iter().any(|d| d.succeeded())
                && r.deliveries_for("/partner").iter().any(|d| d.succeeded())
        })
        .await,
        "the allowed observers were not delivered: {}",
        rx.summary()
    );
    let partner = &rx.deliveries_for("/partner")[0];
    assert_eq!(
        partner.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {partner_token}").as_str()),
        "an allowed variable must still be expanded"
    );

    // The hostile ones are broken: the problem names the variable and the key that allows it.
    for (observer, variable) in [
        ("rogue", "${DATABASE_URL}"),
        ("rogue", "${HOOK_SECRET}"),
        ("rogue_default", "${HOME}"),
        ("rogue_default", "${PARTNER_TOKEN}"),
    ] {
        assert!(
            worker
                .wait_for_log_where(SHORT, |log| log.lines().any(|l| l
                    .contains("observer is broken")
                    && l.contains(&format!("observer={observer} "))
                    && l.contains(variable)
                    && l.contains("action_secrets")))
                .await,
            "no broken-observer error for {observer} naming {variable} and `action_secrets`:\n{}",
            worker.log()
        );
    }
    // Their events are kept for later: not delivered, not dead-lettered, parked until the
    // observer is fixed (docs/CONFIGURATION.md: a broken observer does not hold its group).
    let rogue_events = outbox_ids(&db.client, "rogue").await;
    assert_eq!(rogue_events.len(), 1);
    rx.settle(Duration::from_millis(500), SHORT).await;
    assert!(
        rx.deliveries_for("/x").is_empty() && rx.deliveries_for("/y").is_empty(),
        "a broken observer was delivered: {}",
        rx.summary()
    );
    assert_eq!(
        scalar_i64(&db.client, "SELECT count(*) FROM observers.dlq", &[]).await,
        Some(0),
        "held events must not be dead-lettered"
    );
    let kept = async {
        scalar_i64(
            &db.client,
            "SELECT count(*) FROM observers.parked AS p JOIN observers.observer AS o \
              ON o.id = p.observer_id WHERE o.name IN ('rogue', 'rogue_default')",
            &[],
        )
        .await
        .unwrap_or(0)
            + observers_tests::util::status_sum(&db.client, "backlog").await
    };
    assert!(
        kept.await >= 2,
        "the broken observers' events must be kept (parked or in the backlog)"
    );

    // No value of a refused variable reached the receiver, or the worker's log.
    let seen = everything_received(&rx);
    let log = worker.log();
    for (what, value) in [
        ("DATABASE_URL", db.url.as_str()),
        ("HOOK_SECRET", hook_secret.as_str()),
    ] {
        assert!(
            !seen.contains(value),
            "{what} reached the receiver:\n{seen}"
        );
    }
    assert!(
        !seen.contains("no-home"),
        "a refused ${{HOME:-default}} used its default:\n{seen}"
    );
    assert!(!log.contains(&hook_secret), "HOOK_SECRET in the worker log");
    assert!(
        !log.contains(&partner_token),
        "PARTNER_TOKEN in the worker log"
    );

    // Fixed in SQL (same id), the held event is delivered: held, never skipped.
    db.client
        .batch_execute(&format!(
            r#"SELECT observers.create_observer(name => 'rogue', table_name => 'public.items',
                 events => '{{INSERT}}', actions => '[{{"type": "webhook",
                   "url": "http://127.0.0.1:{port}/x"}}]', replace => true);"#
        ))
        .await
        .unwrap();
    assert!(
        rx.wait_until(LONG, |r| r
            .deliveries_for("/x")
            .iter()
            .any(|d| d.succeeded()))
            .await,
        "the held event of the fixed observer was not delivered: {}",
        rx.summary()
    );
    assert_eq!(
        rx.deliveries_for("/x")[0].event_id(),
        Some(rogue_events[0]),
        "the held event, not another one"
    );
    worker.stop(SHORT).await;
}

/// A tiny HTTP server that answers every request with a redirect to `location`.
async fn redirector(ip: [u8; 4], location: String) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                // read the head and the body (Content-Length) before answering
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// `destinations:` is applied to every request: an IP literal and a host name that resolves
/// to a denied address never connect, the dead letter says why and no retry was made, a
/// redirect to a denied address is not followed, and an allowed destination still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_destinations_never_connect_and_are_dead_lettered() {
    let db = observers_tests::fresh_db("sec_dest").await;
    // `denied` listens on 127.0.0.1, which `localhost` resolves to; the allowed receiver and
    // the redirector live on 127.0.0.3.
    let denied = receiver_on([127, 0, 0, 1]).await;
    let allowed = receiver_on([127, 0, 0, 3]).await;
    let (redirect_addr, redirect_task) =
        redirector([127, 0, 0, 3], denied.url("/redirected")).await;
    db.client
        .batch_execute("CREATE TABLE public.items (id serial PRIMARY KEY, label text)")
        .await
        .unwrap();
    let denied_port = denied.addr().port();
    let yaml = config(
        "w-sec-dest",
        "retry: { max_attempts: 4, initial_backoff: 50ms, max_backoff: 100ms }\n\
         destinations:\n  deny: [127.0.0.1, \"::1\"]\n",
        &format!(
            "  - name: dest
    table: public.items
    events: [INSERT]
    actions:
      - type: webhook
        url: {ok}
      - type: webhook
        url: http://127.0.0.1:{denied_port}/literal?token=t0ken
      - type: webhook
        url: http://localhost:{denied_port}/by-name
      - type: webhook
        url: http://{redirect_addr}/redirect-me
",
            ok = allowed.url("/ok"),
        ),
    );
    let mut worker = start_worker("sec_dest", &db, &yaml, &[]);
    wait_observer_ready(&db.client, "dest", "public.items", SHORT).await;
    db.client
        .batch_execute("INSERT INTO public.items (label) VALUES ('one')")
        .await
        .unwrap();

    assert!(
        allowed.wait_for(1, SHORT).await,
        "the allowed destination was not delivered: {}",
        allowed.summary()
    );
    assert!(
        wait_dlq(&db.client, 3, SHORT).await,
        "three dead letters expected (literal, name, redirect):\n{}",
        worker.log()
    );
    let rows = dlq_rows(&db.client).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let by_index = |i: &str| {
        rows.iter()
            .find(|r| r.get("action_index").cloned().flatten().as_deref() == Some(i))
            .unwrap_or_else(|| panic!("no dead letter for action {i}: {rows:?}"))
    };
    let text = |r: &std::collections::BTreeMap<String, Option<String>>, k: &str| {
        r.get(k).cloned().flatten().unwrap_or_default()
    };
    let literal = by_index("1");
    assert!(
        text(literal, "error").starts_with(
            "destination 127.0.0.1 (127.0.0.1) is denied: it matches `destinations.deny` entry 127.0.0.1/32"
        ),
        "{literal:?}"
    );
    assert!(
        !text(literal, "error").contains("t0ken"),
        "the query was shown: {literal:?}"
    );
    let by_name = by_index("2");
    assert!(
        text(by_name, "error").starts_with("destination localhost (")
            && text(by_name, "error").contains("is denied: it matches `destinations.deny` entry"),
        "{by_name:?}"
    );
    for r in [literal, by_name] {
        assert_eq!(
            text(r, "attempts"),
            "1",
            "a denied destination is not retried: {r:?}"
        );
        assert_eq!(r.get("last_status").cloned().flatten(), None, "{r:?}");
    }
    let redirect = by_index("3");
    assert!(
        text(redirect, "error").starts_with("HTTP 302 Found (redirects are not followed)"),
        "{redirect:?}"
    );
    assert_eq!(text(redirect, "last_status"), "302");

    denied.settle(Duration::from_millis(500), SHORT).await;
    assert_eq!(
        denied.count(),
        0,
        "a denied address was connected to: {}",
        denied.summary()
    );
    worker.stop(SHORT).await;
    redirect_task.abort();
}

/// A 400-byte "billion laughs" (nine levels of nine aliases, under an unknown key) is refused
/// at once by `validate-config` (exit 2) with the alias limit and line:column, instead of
/// expanding to gigabytes (`start` reads the file through the same parser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_alias_bomb_is_refused_with_line_and_column() {
    let mut yaml = String::from(
        "database:\n  url: postgres://127.0.0.1:1/nowhere\nobservers: []\nlol:\n  a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        yaml.push_str(&format!("  {}: &{} [{refs}]\n", w[1], w[1]));
    }
    let file = write_temp_file("alias-bomb.yaml", &yaml);
    let out = run_cli(&["validate-config", file.to_str().unwrap()], &[], SHORT).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    // the alias that crosses the limit is on line 10 (level f)
    assert!(
        text.contains(":10:") && text.contains("YAML aliases expand too far"),
        "{text}"
    );
}
