use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::config::yaml::Mark;
use crate::retry::Jitter;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn defaults() -> Defaults {
    Defaults {
        worker_id: "host-a:42".into(),
    }
}

fn parse(src: &str, e: &[(&str, &str)]) -> Result<Config, Vec<Problem>> {
    parse_str(src, &env(e), &defaults())
}

fn problems(src: &str, e: &[(&str, &str)]) -> Vec<Problem> {
    match parse(src, e) {
        Ok(_) => panic!("expected problems for:\n{src}"),
        Err(p) => p,
    }
}

const MINIMAL: &str = "\
database:
  url: postgres://postgres@127.0.0.1:5432/app
observers:
  - name: orders_hook
    table: public.orders
    actions:
      - type: webhook
        url: http://127.0.0.1:8080/hooks/orders
";

#[test]
fn minimal_config_gets_spec_defaults() {
    let c = parse(MINIMAL, &[]).unwrap();
    assert_eq!(
        c.database.url.as_deref(),
        Some("postgres://postgres@127.0.0.1:5432/app")
    );
    assert_eq!(c.worker.id, "host-a:42");
    assert_eq!(c.worker.group, "default");
    assert_eq!(c.worker.batch_size, 500);
    assert_eq!(c.worker.poll_interval, Duration::from_secs(1));
    assert_eq!(c.worker.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.retry.max_attempts, 5);
    assert_eq!(c.retry.initial_backoff, Duration::from_millis(500));
    assert_eq!(c.retry.max_backoff, Duration::from_secs(300));
    assert_eq!(c.retry.multiplier, 2.0);
    assert_eq!(c.retry.jitter, Jitter::Full);
    assert!(c.checkpoints.enabled);
    assert!(c.concurrency.enabled);
    assert_eq!(c.concurrency.max_in_flight, 256);
    assert!(c.metrics.enabled);
    assert_eq!(
        c.failover,
        FailoverConfig {
            enabled: true,
            lease_ttl: Duration::from_secs(10),
            standby_poll: Duration::from_millis(250),
        }
    );
    let o = &c.observers[0];
    assert_eq!(o.events, vec!["INSERT", "UPDATE", "DELETE"]);
    assert_eq!(o.condition, None);
    let ActionConfig::Webhook(w) = &o.actions[0] else {
        panic!("expected a webhook")
    };
    assert_eq!(w.timeout, Duration::from_secs(10));
    assert_eq!(w.retry, c.retry);
    assert!(w.signing_key.is_none());
}

#[test]
fn spec_example_parses_completely() {
    let src = r#"
database:
  url: ${DATABASE_URL}
worker:
  id: ${HOSTNAME:-worker-1}
  group: default
  batch_size: 500
  poll_interval: 1s
  shutdown_timeout: 30s
retry:
  max_attempts: 5
  initial_backoff: 500ms
  max_backoff: 5m
  multiplier: 2
  jitter: full
checkpoints: enabled
concurrent_execution: { enabled: true, max_in_flight: 256 }
deduplication: { enabled: true, backend: redis, ttl: 24h }
caching: { enabled: true, backend: redis, default_ttl: 5m }
redis: { url: redis://127.0.0.1:6379 }
circuit_breaker: { enabled: true, failure_ratio: 0.5, min_requests: 20, open_for: 30s, half_open_requests: 3 }
metrics: { enabled: true, listen: 127.0.0.1:9187 }
failover: { enabled: true, lease_ttl: 10s }
job_queue: { enabled: true, workers: 16 }
smtp: { host: smtp.example.com, port: 587, tls: starttls, user: "${SMTP_USER}", password: "${SMTP_PASSWORD}",
        from: observers@example.com }
elasticsearch: { enabled: false, url: http://127.0.0.1:9200, index: observer-events }
lookups:
  - name: customer
    sql: "SELECT name, email FROM customers WHERE id = $1"
    args: ["{{ new.customer_id }}"]
    ttl: 10m
observers:
  - name: big_orders
    table: public.orders
    events: [INSERT, UPDATE]
    condition: "NEW.total > 1000"
    columns: [status, total]
    ordering_key: [customer_id]
    actions:
      - type: webhook
        url: http://127.0.0.1:8080/hooks/orders
        headers: { Authorization: "Bearer ${HOOK_TOKEN}" }
        secret: ${HOOK_SECRET}
        timeout: 5s
        retry: { max_attempts: 8 }
      - type: slack
        webhook_url: ${SLACK_WEBHOOK_URL}
        text: "Order {{ new.id }}: {{ new.total }} for {{ lookup.customer.name }}"
      - type: email
        to: [ops@example.com]
        subject: "Big order {{ new.id }}"
        body: "..."
        mode: async
"#;
    let c = parse(
        src,
        &[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("HOOK_TOKEN", "t"),
            ("HOOK_SECRET", "s"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T/B/x",
            ),
            ("SMTP_USER", "u"),
            ("SMTP_PASSWORD", "p"),
        ],
    )
    .unwrap();
    assert!(c.job_queue.enabled && c.smtp.is_some());
    assert!(c.observers[0].actions[2].type_name() == "email");
}

#[test]
fn smtp_and_email_are_checked() {
    let src = "
smtp: { host: mail.example.com, tls: none, from: not-an-address, user: u }
job_queue: { enabled: true, workers: 0, rescue_after: 1ms }
observers:
  - name: a
    table: t
    actions:
      - type: email
        to: []
        subject: \"{{ new.id }}\"
        mode: async
";
    let msgs: Vec<String> = problems(src, &[]).iter().map(|p| p.to_string()).collect();
    for want in [
        "tls: none sends mail and credentials in clear text: allowed only to a loopback host",
        "\"not-an-address\" is not an e-mail address",
        "`user` and `password` go together",
        "job_queue.workers",
        "job_queue.rescue_after",
        "missing `body`",
        "at least one recipient is required",
    ] {
        assert!(msgs.iter().any(|m| m.contains(want)), "{want}: {msgs:#?}");
    }
    // without smtp: an email action says what it needs
    let msgs: Vec<String> = problems(
        "observers:\n  - name: a\n    table: t\n    actions:\n      - { type: email, to: [a@example.com], subject: s, body: b }\n",
        &[],
    )
    .iter()
    .map(|p| p.to_string())
    .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("an `email` action needs the `smtp:` section")),
        "{msgs:#?}"
    );
    let c = parse(
        "smtp: { host: 127.0.0.1, port: 2525, tls: none, from: \"Observers <o@example.com>\" }\njob_queue: { enabled: true, workers: 4, rescue_after: 3s }\n",
        &[],
    )
    .unwrap();
    let s = c.smtp.expect("smtp");
    assert_eq!((s.port, s.pool_size), (2525, 4));
    assert_eq!(c.job_queue.workers, 4);
    assert_eq!(c.job_queue.rescue_after, std::time::Duration::from_secs(3));
}

#[test]
fn spec_example_without_later_features_is_valid() {
    let src = r#"
database: { url: "${DATABASE_URL}" }
checkpoints: enabled
deduplication: disabled
caching: { enabled: false, backend: memory }
failover: { enabled: false, lease_ttl: 3s }
elasticsearch: { enabled: false, url: http://127.0.0.1:9200, index: observer-events }
observers:
  - name: big_orders
    table: public.orders
    events: [insert, Update]
    condition: "NEW.total > 1000"
    columns: [status, total]
    ordering_key: [customer_id]
    actions:
      - type: webhook
        url: http://127.0.0.1:8080/hooks/orders
        headers: { Authorization: "Bearer ${HOOK_TOKEN}" }
        secret: ${HOOK_SECRET}
        timeout: 5s
        retry: { max_attempts: 8 }
"#;
    let c = parse(
        src,
        &[
            ("DATABASE_URL", "postgres://x@h/db"),
            ("HOOK_TOKEN", "tok"),
            ("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ],
    )
    .unwrap();
    assert_eq!(c.failover.lease_ttl, Duration::from_secs(3));
    assert!(!c.failover.enabled);
    let o = &c.observers[0];
    assert_eq!(o.events, vec!["INSERT", "UPDATE"]);
    assert_eq!(
        o.ordering_key.as_deref(),
        Some(&["customer_id".to_string()][..])
    );
    let ActionConfig::Webhook(w) = &o.actions[0] else {
        panic!("expected a webhook")
    };
    assert_eq!(w.timeout, Duration::from_secs(5));
    assert_eq!(w.retry.max_attempts, 8);
    assert_eq!(
        w.retry.initial_backoff,
        Duration::from_millis(500),
        "unset retry fields come from the global policy"
    );
    assert!(w.signing_key.is_some());
    assert_eq!(w.headers[0].0.as_str(), "authorization");
    assert_eq!(w.headers[0].1.to_str().unwrap(), "Bearer tok");
}

#[test]
fn secrets_stay_unexpanded_in_what_is_stored() {
    let src = "\
observers:
  - name: o
    table: t
    actions:
      - type: webhook
        url: ${HOOK_URL:-http://127.0.0.1:9/x}
        headers: { Authorization: \"Bearer ${HOOK_TOKEN}\" }
        secret: ${HOOK_SECRET}
        retry: { max_attempts: 3 }
";
    let c = parse(
        src,
        &[
            ("HOOK_TOKEN", "very-secret-token"),
            ("HOOK_SECRET", "very-secret-key"),
        ],
    )
    .unwrap();
    let stored = c.observers[0].actions_raw.to_string();
    assert!(stored.contains("${HOOK_SECRET}"), "{stored}");
    assert!(stored.contains("Bearer ${HOOK_TOKEN}"), "{stored}");
    assert!(!stored.contains("very-secret"), "{stored}");
    assert_eq!(
        c.observers[0].actions_raw[0]["retry"]["max_attempts"],
        serde_json::json!(3)
    );
    // and Debug output of the parsed config shows no secret either
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("very-secret"), "{dbg}");
}

#[test]
fn stored_actions_rebuild_with_the_worker_environment() {
    let json = serde_json::json!([{
        "type": "webhook",
        "url": "http://127.0.0.1:8080/h",
        "secret": "${HOOK_SECRET}",
        "timeout": "${HOOK_TIMEOUT:-2s}",
        "retry": {"max_attempts": 2}
    }]);
    let base = crate::retry::RetryPolicy::default();
    let actions = actions::actions_from_json(&json, &env(&[("HOOK_SECRET", "k")]), &base).unwrap();
    let ActionConfig::Webhook(w) = &actions[0] else {
        panic!("expected a webhook")
    };
    assert_eq!(w.timeout, Duration::from_secs(2));
    assert_eq!(w.retry.max_attempts, 2);
    assert!(w.signing_key.is_some());

    let err = actions::actions_from_json(&json, &env(&[]), &base).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].path, "actions[0].secret");
    assert!(
        err[0].message.contains("HOOK_SECRET is not set"),
        "{}",
        err[0].message
    );
}

#[test]
fn unknown_keys_name_path_and_position() {
    let src = "\
worker:
  batch_sise: 10
observers:
  - name: o
    table: t
    colour: red
    actions:
      - type: webhook
        url: http://h/x
        retries: 3
";
    let p = problems(src, &[]);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!(p[0].path, "worker.batch_sise");
    assert_eq!(p[0].mark, Some(Mark { line: 2, column: 3 }));
    assert!(p[0].message.contains("unknown key `batch_sise`"));
    assert!(
        p[0].message.contains("did you mean `batch_size`"),
        "{}",
        p[0].message
    );
    assert_eq!(p[1].path, "observers[0].colour");
    assert_eq!(p[1].mark, Some(Mark { line: 6, column: 5 }));
    assert_eq!(p[2].path, "observers[0].actions[0].retries");
    assert_eq!(
        p[2].mark,
        Some(Mark {
            line: 10,
            column: 9
        })
    );
    assert_eq!(
        p[2].to_string(),
        format!("10:9: observers[0].actions[0].retries: {}", p[2].message)
    );
}

#[test]
fn rendered_problems_name_file_line_and_column() {
    let err = ConfigError::Invalid {
        file: "w.yaml".into(),
        problems: problems("wrker: {}\n", &[]),
    };
    let text = err.to_string();
    assert!(
        text.contains("w.yaml:1:1: wrker: unknown key `wrker`"),
        "{text}"
    );
}

#[test]
fn missing_variable_names_variable_and_line() {
    let src = "database:\n  url: ${NO_SUCH_DB_URL}\n";
    let p = problems(src, &[]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "database.url");
    assert_eq!(p[0].mark, Some(Mark { line: 2, column: 8 }));
    assert!(p[0].message.contains("NO_SUCH_DB_URL"), "{}", p[0].message);
}

#[test]
fn env_expansion_with_defaults_in_typed_fields() {
    let src = "\
worker:
  id: ${POD_NAME:-worker-1}
  batch_size: ${BATCH:-200}
  poll_interval: ${POLL}
concurrent_execution: { max_in_flight: \"${INFLIGHT:-32}\" }
";
    let c = parse(src, &[("POLL", "250ms")]).unwrap();
    assert_eq!(c.worker.id, "worker-1");
    assert_eq!(c.worker.batch_size, 200);
    assert_eq!(c.worker.poll_interval, Duration::from_millis(250));
    assert_eq!(c.concurrency.max_in_flight, 32);
    let c = parse(
        src,
        &[("POLL", "2s"), ("POD_NAME", "pod-7"), ("BATCH", "50")],
    )
    .unwrap();
    assert_eq!(c.worker.id, "pod-7");
    assert_eq!(c.worker.batch_size, 50);
}

#[test]
fn durations_everywhere() {
    let src = "\
worker: { poll_interval: 250ms, shutdown_timeout: 10m }
retry: { initial_backoff: 5s, max_backoff: 24h }
checkpoints: { interval: 100ms, every_events: 50 }
";
    let c = parse(src, &[]).unwrap();
    assert_eq!(c.worker.poll_interval, Duration::from_millis(250));
    assert_eq!(c.worker.shutdown_timeout, Duration::from_secs(600));
    assert_eq!(c.retry.initial_backoff, Duration::from_secs(5));
    assert_eq!(c.retry.max_backoff, Duration::from_secs(86_400));
    assert_eq!(c.checkpoints.interval, Duration::from_millis(100));
    assert_eq!(c.checkpoints.every_events, 50);

    let p = problems(
        "worker: { poll_interval: 5 }\nretry: { max_backoff: soon }\n",
        &[],
    );
    assert_eq!(p.len(), 2);
    assert!(
        p[0].message.contains("expected a duration like 250ms"),
        "{}",
        p[0].message
    );
}

#[test]
fn feature_shorthand_and_maps() {
    let c = parse(
        "checkpoints: disabled\nconcurrent_execution: disabled\nmetrics: disabled\n",
        &[],
    )
    .unwrap();
    assert!(!c.checkpoints.enabled);
    assert!(!c.concurrency.enabled);
    assert_eq!(c.concurrency.effective_max_in_flight(), 1);
    assert!(!c.metrics.enabled);

    let c = parse(
        "concurrent_execution: { max_in_flight: 8 }\nmetrics: { listen: 0.0.0.0:9000 }\n",
        &[],
    )
    .unwrap();
    assert!(
        c.concurrency.enabled,
        "a map without `enabled:` turns the feature on"
    );
    assert_eq!(c.concurrency.effective_max_in_flight(), 8);
    assert_eq!(c.metrics.listen, "0.0.0.0:9000");

    let c = parse("checkpoints: enabled\ndeduplication: disabled\njob_queue: { enabled: false, workers: 4 }\n", &[]).unwrap();
    assert!(c.checkpoints.enabled);

    let p = problems("checkpoints: sometimes\n", &[]);
    assert!(
        p[0].message.contains("expected `enabled`, `disabled`"),
        "{}",
        p[0].message
    );
    let p = problems("caching: { backend: disk }\n", &[]);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].message.contains("expected one of redis, memory"),
        "{p:#?}"
    );
    let p = problems("deduplication: { backend: redis }\n", &[]);
    assert_eq!(p[0].path, "deduplication.backend", "{p:#?}");
    assert!(p[0].message.contains("needs a `redis:` section"), "{p:#?}");
    let c = parse(
        "deduplication: { backend: redis, ttl: 1h }\nredis: { url: redis://127.0.0.1:6390 }\ncircuit_breaker: { min_requests: 4, open_for: 2s }\n",
        &[],
    )
    .unwrap();
    assert!(c.deduplication.enabled);
    assert_eq!(c.deduplication.backend, crate::config::DedupBackend::Redis);
    assert_eq!(c.deduplication.ttl, std::time::Duration::from_secs(3600));
    assert!(c.circuit_breaker.enabled);
    assert_eq!(c.circuit_breaker.min_requests, 4);
    assert!(!c.caching.enabled, "caching is opt-in");
}

#[test]
fn every_problem_is_reported_at_once() {
    let src = "\
worker:
  batch_size: 0
  group: \"\"
retry:
  initial_backoff: 10s
  max_backoff: 1s
  jitter: half
observers:
  - name: a
    table: t
    events: [INSERT, TRUNCATE]
    actions: []
  - table: t
    actions:
      - type: webhook
  - name: a
    table: t
    actions:
      - type: carrier_pigeon
";
    let p = problems(src, &[]);
    let summary: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    let expect = [
        "2:15: worker.batch_size: 0 is out of range",
        "3:10: worker.group: must not be empty",
        "6:16: retry.max_backoff: max_backoff (1s) is shorter than initial_backoff (10s)",
        "7:11: retry.jitter: expected `full` or `none`",
        "11:13: observers[0].events: unknown event \"TRUNCATE\"",
        "12:14: observers[0].actions: at least one action is required",
        "13:5: observers[1]: missing `name`",
        "15:9: observers[1].actions[0]: missing `url`",
        "19:15: observers[2].actions[0].type: unknown action type `carrier_pigeon`",
    ];
    for e in expect {
        assert!(
            summary.iter().any(|s| s.starts_with(e)),
            "missing {e:?} in {summary:#?}"
        );
    }
    assert_eq!(summary.len(), expect.len(), "{summary:#?}");
}

#[test]
fn duplicate_observer_names() {
    let src = "\
observers:
  - name: a
    table: t
    actions: [{ type: webhook, url: 'http://h/1' }]
  - name: a
    table: t2
    actions: [{ type: webhook, url: 'http://h/2' }]
";
    let p = problems(src, &[]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "observers[1].name");
    assert_eq!(
        p[0].mark,
        Some(Mark {
            line: 5,
            column: 11
        })
    );
}

#[test]
fn webhook_field_checks() {
    let src = "\
observers:
  - name: a
    table: t
    actions:
      - type: webhook
        url: ftp://h/x
        headers: { webhook-id: x, \"bad header\": y, X-Ok: \"fine\" }
        secret: whsec_not*base64
        timeout: 0s
        mode: sometimes
";
    let p = problems(src, &[]);
    let msgs: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    assert!(
        msgs[0].contains("url: webhook URL must be an absolute http://"),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("headers.webhook-id: header `webhook-id` is set by the worker")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("`bad header` is not a valid HTTP header name")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("secret: invalid secret: starts with `whsec_`")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("timeout: 0s is too short")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("mode: expected `sync` or `async`, found \"sometimes\"")),
        "{msgs:#?}"
    );
    assert_eq!(msgs.len(), 6, "{msgs:#?}");
}

#[test]
fn syntax_errors_have_positions() {
    let p = problems("worker:\n  id: [unclosed\n", &[]);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].message.starts_with("YAML syntax error"),
        "{}",
        p[0].message
    );
    assert!(p[0].mark.is_some());
}

#[test]
fn wrong_shapes() {
    let p = problems("- just\n- a list\n", &[]);
    assert!(p[0].message.contains("expected a map"), "{p:#?}");
    let p = problems("", &[]);
    assert!(p[0].message.contains("empty"), "{p:#?}");
    let p = problems("observers: {name: x}\n", &[]);
    assert!(p[0].message.contains("expected a list"), "{p:#?}");
}

#[test]
fn names_follow_the_extension_rules() {
    let base = |name: &str, group: &str| {
        format!("worker: {{ group: '{group}' }}\nobservers:\n  - name: '{name}'\n    table: t\n    actions: [{{ type: webhook, url: 'http://h/' }}]\n")
    };
    assert!(parse(&base("big_orders2", "default"), &[]).is_ok());
    assert!(parse(&base("orders", "team-a:eu.1"), &[]).is_ok());
    for bad in ["Big", "1abc", "with-dash", "with.dot", ""] {
        let p = problems(&base(bad, "default"), &[]);
        assert_eq!(p[0].path, "observers[0].name", "{bad}: {p:#?}");
    }
    let p = problems(&base("ok", "-bad"), &[]);
    assert_eq!(p[0].path, "worker.group", "{p:#?}");
}

#[test]
fn columns_need_update_events() {
    let src = "observers:\n  - name: a\n    table: t\n    events: [INSERT]\n    columns: [x]\n    actions: [{ type: webhook, url: 'http://h/' }]\n";
    let p = problems(src, &[]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "observers[0].columns");
    assert!(
        p[0].message.contains("only filters UPDATE"),
        "{}",
        p[0].message
    );
}

const LOOKUPS: &str = "\
caching: { enabled: true, backend: memory, default_ttl: 2m }
lookups:
  - name: customer
    sql: \"SELECT name, email FROM customers WHERE id = $1;\"
    args: [\"{{ new.customer_id }}\"]
    table: public.customers
  - name: profile
    http: \"http://127.0.0.1:9/profiles/{{ new.customer_id | urlencode }}\"
    ttl: 5s
    timeout: 250ms
observers:
  - name: orders_slack
    table: public.orders
    actions:
      - type: slack
        webhook_url: http://127.0.0.1:8080/slack
        text: \"{{ new.id }} for {{ lookup.customer.name }} ({{ lookup.profile.tier }})\"
";

#[test]
fn lookups_and_slack_parse() {
    let c = parse(LOOKUPS, &[]).unwrap();
    assert_eq!(c.lookups.len(), 2);
    let customer = &c.lookups[0];
    assert_eq!(
        customer.ttl,
        Duration::from_secs(120),
        "caching.default_ttl"
    );
    assert_eq!(customer.table.as_deref(), Some("public.customers"));
    match &customer.source {
        LookupSource::Sql { query } => {
            assert_eq!(query, "SELECT name, email FROM customers WHERE id = $1")
        }
        _ => panic!("sql expected"),
    }
    assert_eq!(c.lookups[1].ttl, Duration::from_secs(5));
    assert_eq!(c.lookups[1].timeout, Duration::from_millis(250));
    // the internal eviction observer is applied with the file's observers
    let names: Vec<&str> = c.observers.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["orders_slack", "lookup_evict_customer"]);
    let evict = &c.observers[1];
    assert_eq!(evict.table, "public.customers");
    assert_eq!(
        evict.actions_raw,
        serde_json::json!([{"type": "cache_evict", "lookup": "customer"}])
    );
    let ActionConfig::Slack(s) = &c.observers[0].actions[0] else {
        panic!("expected slack")
    };
    assert_eq!(
        s.text
            .lookups()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["customer", "profile"]
    );
    // stored slack actions are read with the worker's lookups
    let stored = serde_json::json!([{"type": "slack", "webhook_url": "http://h/x", "text": "{{ lookup.customer.name }}"}]);
    let names = vec!["customer".to_owned()];
    assert!(actions::actions_from_json_with_lookups(
        &stored,
        &env(&[]),
        &RetryPolicy::default(),
        &names
    )
    .is_ok());
    let err = actions::actions_from_json(&stored, &env(&[]), &RetryPolicy::default()).unwrap_err();
    assert_eq!(err[0].path, "actions[0].text");
    assert!(
        err[0].message.contains("unknown lookup `customer`"),
        "{}",
        err[0].message
    );
}

#[test]
fn no_eviction_observers_without_caching() {
    let src = LOOKUPS.replace(
        "enabled: true, backend: memory",
        "enabled: false, backend: memory",
    );
    let c = parse(&src, &[]).unwrap();
    assert_eq!(c.observers.len(), 1);
}

#[test]
fn template_and_lookup_problems_have_paths_and_positions() {
    let src = "\
lookups:
  - name: customer
    sql: \"SELECT name FROM customers WHERE id = $1 AND region = $2\"
    args: [\"{{ new.customer_id }}\"]
  - name: both
    sql: \"SELECT 1\"
    http: \"http://x/\"
  - name: Bad-Name
    http: \"http://x/{{ new.id\"
  - name: nested
    http: \"http://x/{{ lookup.customer.id }}\"
observers:
  - name: o
    table: t
    actions:
      - type: slack
        webhook_url: http://127.0.0.1:8080/slack
        text: \"{{ lookup.nope.x }}\"
      - type: slack
        webhook_url: http://127.0.0.1:8080/slack
        text: \"{% if new.id %}unclosed\"
      - type: slack
        webhook_url: http://127.0.0.1:8080/slack
        text: \"{{ neww.id }}\"
      - type: slack
        webhook_url: http://127.0.0.1:8080/slack
";
    let p = problems(src, &[]);
    let got: Vec<(String, String)> = p
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    let has = |path: &str, needle: &str| {
        assert!(
            got.iter().any(|(p, m)| p == path && m.contains(needle)),
            "no problem at {path} containing {needle:?}: {got:#?}"
        )
    };
    has(
        "lookups[0].sql",
        "parameters up to $2 but `args` has 1 value",
    );
    has("lookups[1].http", "exactly one source");
    has("lookups[2].name", "invalid lookup name");
    has("lookups[2].http", "template syntax error");
    has("lookups[3].http", "cannot use other lookups");
    has("observers[0].actions[0].text", "unknown lookup `nope`");
    has("observers[0].actions[1].text", "template syntax error");
    has(
        "observers[0].actions[2].text",
        "unknown template variable `neww`",
    );
    has("observers[0].actions[3]", "missing `text`");
    let text_problem = p
        .iter()
        .find(|p| p.path == "observers[0].actions[0].text")
        .unwrap();
    assert_eq!(
        text_problem.mark.map(|m| m.line),
        Some(18),
        "{text_problem:?}"
    );
}

#[test]
fn template_loops_and_filters_are_not_unknown_variables() {
    let src = "\
observers:
  - name: o
    table: t
    actions:
      - type: slack
        webhook_url: http://127.0.0.1:8080/slack
        text: \"{% for c in (changed or []) %}{{ loop.index }}:{{ c | upper }} {% endfor %}{{ range(2) | list | length }}\"
";
    let c = parse(src, &[]).unwrap();
    let ActionConfig::Slack(s) = &c.observers[0].actions[0] else {
        panic!("expected slack")
    };
    let ctx = crate::templates::event_context(&serde_json::json!({"changed": ["a", "b"]}));
    assert_eq!(s.text.render(&ctx).unwrap(), "1:A 2:B 2");
}

#[test]
fn eviction_observers_point_back_at_their_lookup() {
    let c = parse(LOOKUPS, &[]).unwrap();
    assert_eq!(
        lookups::evict_observer_lookup(&c, 0),
        None,
        "a file observer"
    );
    assert_eq!(lookups::evict_observer_lookup(&c, 1), Some(0));
    assert_eq!(lookups::evict_observer_lookup(&c, 2), None);
}

#[test]
fn unquoted_templates_get_a_hint() {
    let src = "\
observers:
  - name: o
    table: t
    actions:
      - type: slack
        webhook_url: http://127.0.0.1:8080/slack
        text: {{ new.id }}
";
    let p = problems(src, &[]);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, "observers[0].actions[0].text");
    assert!(
        p[0].message.contains("quote the template"),
        "{}",
        p[0].message
    );
}

/// `failover:` is a feature: the shorthand, the map, its options and their bounds.
#[test]
fn failover_section() {
    let env = &[("DATABASE_URL", "postgres://x@h/db")];
    let with = |section: &str| {
        format!(
            "database: {{ url: \"${{DATABASE_URL}}\" }}\n{section}\nobservers:\n  - name: o\n    table: public.t\n    \
             events: [INSERT]\n    actions:\n      - type: webhook\n        url: http://127.0.0.1:8080/h\n"
        )
    };
    let c = parse(&with("failover: enabled"), env).unwrap();
    assert_eq!(
        c.failover,
        FailoverConfig {
            enabled: true,
            lease_ttl: Duration::from_secs(10),
            standby_poll: Duration::from_millis(250),
        }
    );
    let c = parse(&with("failover: disabled"), env).unwrap();
    assert!(!c.failover.enabled);
    let c = parse(
        &with("failover: { enabled: true, lease_ttl: 4s, standby_poll: 100ms }"),
        env,
    )
    .unwrap();
    assert_eq!(
        c.failover,
        FailoverConfig {
            enabled: true,
            lease_ttl: Duration::from_secs(4),
            standby_poll: Duration::from_millis(100),
        }
    );
    // a short TTL lowers the default poll to a third of it
    let c = parse(&with("failover: { enabled: true, lease_ttl: 600ms }"), env);
    assert!(c.is_err(), "lease_ttl below 1s is refused");
    let c = parse(&with("failover: { enabled: true, lease_ttl: 1s }"), env).unwrap();
    assert_eq!(c.failover.standby_poll, Duration::from_millis(250));

    let p = problems(
        &with("failover: { enabled: true, lease_ttl: 3s, standby_poll: 2s, leader: me }"),
        env,
    );
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["failover.standby_poll", "failover.leader"],
        "{p:#?}"
    );
    assert!(p[0].message.contains("at most 1s"), "{}", p[0].message);
    let p = problems(&with("failover: { standby_poll: 10ms }"), env);
    assert!(p[0].message.contains("too short"), "{p:#?}");
}
