//! The e-mail action against a real SMTP server (aiosmtpd, `tests/smtp/smtp_sink.py`), run as
//! a job (`mode: async`): templated recipients and subject, a Message-ID derived from the
//! (event, action) pair and identical on the retry after a 451, a 550 dead-lettered after one
//! attempt with the server's reply.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use observers_tests::util::{poll, wait_observer_ready};
use observers_tests::worker::workspace_root;

use crate::common::*;

/// The SMTP sink: a python3-aiosmtpd server on a free port, stopped on drop.
pub(crate) struct SmtpSink {
    child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl SmtpSink {
    pub(crate) async fn start(name: &str) -> SmtpSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir =
            std::env::temp_dir().join(format!("observers-smtp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = workspace_root().join("tests/smtp/smtp_sink.py");
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start /usr/bin/python3 tests/smtp/smtp_sink.py (apt-get install python3-aiosmtpd)",
            );
        let up = poll(SHORT, Duration::from_millis(100), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(
            up.is_some(),
            "the SMTP sink did not listen on {port} (is python3-aiosmtpd installed?)"
        );
        SmtpSink { child, port, dir }
    }

    pub(crate) fn lines(&self, file: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_email_over_real_smtp_retries_451_and_dead_letters_550() {
    let (db, _rx) = setup("email_smtp").await;
    let smtp = SmtpSink::start("email").await;
    db.client
        .batch_execute("CREATE TABLE public.signups (id serial PRIMARY KEY, email text)")
        .await
        .unwrap();
    let extra = format!(
        "retry: {{ max_attempts: 4, initial_backoff: 100ms, max_backoff: 500ms }}\n\
         job_queue: {{ enabled: true, workers: 4, poll_interval: 200ms }}\n\
         smtp: {{ host: 127.0.0.1, port: {}, tls: none, from: \"Observers <observers@example.com>\" }}\n",
        smtp.port
    );
    let observers = [
        "  - name: welcome",
        "    table: public.signups",
        "    events: [INSERT]",
        "    actions:",
        "      - type: email",
        "        to: [ops@example.com, \"{{ new.email }}\"]",
        "        subject: \"Welcome {{ new.id }}\"",
        "        body: \"Hello {{ new.email }}\"",
        "        mode: async",
        "",
    ]
    .join("\n");
    let mut worker = start_worker(
        "email_smtp",
        &db,
        &config("w-email", &extra, &observers),
        &[],
    );
    wait_observer_ready(&db.client, "welcome", "public.signups", SHORT).await;
    for e in [
        "ok@example.com",
        "tempfail@example.com",
        "reject@example.com",
    ] {
        db.client
            .execute("INSERT INTO public.signups (email) VALUES ($1)", &[&e])
            .await
            .unwrap();
    }
    let delivered = poll(LONG, Duration::from_millis(200), || async {
        (smtp.lines("messages.jsonl").len() >= 2).then_some(())
    })
    .await;
    assert!(
        delivered.is_some(),
        "messages: {:?}; attempts: {:?}",
        smtp.lines("messages.jsonl"),
        smtp.lines("attempts.jsonl")
    );
    assert!(
        wait_dlq(&db.client, 1, LONG).await,
        "the 550 was not dead-lettered"
    );
    let events = outbox_ids(&db.client, "welcome").await;
    assert_eq!(events.len(), 3);
    let mid = |i: usize| {
        let db = &db;
        let e = events[i];
        async move {
            format!(
                "<{}@fraiseql-observers>",
                webhook_id(&db.client, e, 0).await
            )
        }
    };
    let messages = smtp.lines("messages.jsonl");
    assert_eq!(messages.len(), 2, "{messages:?}");
    let ok_id = mid(0).await;
    let ok = messages
        .iter()
        .find(|m| m["message_id"] == ok_id.as_str())
        .unwrap_or_else(|| panic!("no message with the pair's Message-ID: {messages:?}"));
    assert_eq!(ok["subject"], format!("Welcome {}", 1), "{ok}");
    assert_eq!(
        ok["body"].as_str().map(str::trim),
        Some("Hello ok@example.com")
    );
    assert_eq!(
        ok["to"],
        serde_json::json!(["ops@example.com", "ok@example.com"]),
        "{ok}"
    );
    assert_eq!(ok["from"], "observers@example.com");
    // 451 then 250, with the same Message-ID
    let tempfail_id = mid(1).await;
    let replies: Vec<String> = smtp
        .lines("attempts.jsonl")
        .iter()
        .filter(|a| a["message_id"] == tempfail_id.as_str())
        .map(|a| a["reply"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(replies, ["451", "250"], "attempts of {tempfail_id}");
    assert!(messages
        .iter()
        .any(|m| m["message_id"] == tempfail_id.as_str()));
    // 550: one attempt, dead-lettered with the server's reply
    let reject_id = mid(2).await;
    let rejected: Vec<_> = smtp
        .lines("attempts.jsonl")
        .into_iter()
        .filter(|a| a["message_id"] == reject_id.as_str())
        .collect();
    assert_eq!(rejected.len(), 1, "a 550 must not be retried: {rejected:?}");
    let dlq = dlq_rows(&db.client).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(
        dlq[0]["event_id"].as_deref(),
        Some(events[2].to_string().as_str())
    );
    assert_eq!(dlq[0]["action_type"].as_deref(), Some("email"));
    assert_eq!(dlq[0]["attempts"].as_deref(), Some("1"));
    assert_eq!(dlq[0]["last_status"].as_deref(), Some("550"));
    let err = dlq[0]["error"].clone().unwrap_or_default();
    assert!(
        err.contains("550") && err.contains("mailbox unavailable"),
        "{err}"
    );
    assert!(wait_backlog_zero(&db.client, SHORT).await);
    assert_eq!(worker.stop(SHORT).await.code(), Some(0));
}
