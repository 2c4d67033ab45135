//! Reading the configuration tree into [`Config`]. Every field that cannot be
//! read is reported and replaced by its default, so one pass finds every
//! problem in the file.

use std::time::Duration;

use super::actions::{read_actions, read_retry};
use super::lookups;
use super::reader::{index, Reader};
use super::resilience::{self, CacheBackend, DedupBackend};
use super::yaml::Node;
use super::{
    CheckpointConfig, ConcurrencyConfig, Config, DatabaseConfig, Defaults, FailoverConfig,
    JobQueueConfig, MetricsConfig, ObserverConfig, SmtpConfig, SmtpTls, WorkerConfig,
};
use crate::retry::RetryPolicy;

pub const TOP_LEVEL_KEYS: &[&str] = &[
    "database",
    "worker",
    "retry",
    "checkpoints",
    "concurrent_execution",
    "deduplication",
    "caching",
    "redis",
    "circuit_breaker",
    "metrics",
    "failover",
    "job_queue",
    "smtp",
    "search",
    "elasticsearch",
    "lookups",
    "action_secrets",
    "destinations",
    "observers",
];

pub const DEFAULT_GROUP: &str = "default";
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a standby asks for the lease by default: the handover after a leader crash or a
/// graceful release takes at most about this long.
pub const DEFAULT_STANDBY_POLL: Duration = Duration::from_millis(250);
pub const MIN_STANDBY_POLL: Duration = Duration::from_millis(50);
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9187";

/// Reads the whole document. Returns `None` only when the document is not a map at all.
pub fn read_config(r: &mut Reader, root: &Node, defaults: &Defaults) -> Option<Config> {
    if root.is_null() {
        r.problem(
            "",
            root.mark,
            "the configuration is empty (expected at least `observers:` or `database:`)",
        );
        return None;
    }
    let top = r.map(root, "", TOP_LEVEL_KEYS)?;

    let database = read_database(r, top.get("database"));
    let worker = read_worker(r, top.get("worker"), defaults);
    let retry = match top.get("retry") {
        Some(n) => read_retry(r, n, "retry", &RetryPolicy::default()),
        None => RetryPolicy::default(),
    };
    let checkpoints = read_checkpoints(r, top.get("checkpoints"));
    let concurrency = read_concurrency(r, top.get("concurrent_execution"));
    let metrics = read_metrics(r, top.get("metrics"));
    let failover = read_failover(r, top.get("failover"));
    let job_queue = read_job_queue(r, top.get("job_queue"));
    let smtp = read_smtp(r, top.get("smtp"));
    let redis = resilience::read_redis(r, top.get("redis"));
    let (deduplication, dedup_mark) = resilience::read_dedup(r, top.get("deduplication"));
    resilience::check_redis_needed(
        r,
        redis.as_ref(),
        "deduplication",
        deduplication.enabled && deduplication.backend == DedupBackend::Redis,
        dedup_mark,
    );
    let (caching, caching_mark) = resilience::read_caching(r, top.get("caching"));
    resilience::check_redis_needed(
        r,
        redis.as_ref(),
        "caching",
        caching.enabled && caching.backend == CacheBackend::Redis,
        caching_mark,
    );
    let circuit_breaker = resilience::read_breaker(r, top.get("circuit_breaker"));
    let search = super::search::read_search(r, top.get("search"));
    let elasticsearch = super::search::read_elasticsearch(r, top.get("elasticsearch"));
    let lookups = match top.get("lookups") {
        Some(node) => {
            r.set_lookup_names(lookups::written_names(node));
            lookups::read_lookups(r, node, caching.default_ttl)
        }
        None => Vec::new(),
    };

    let mut observers = Vec::new();
    if let Some(node) = top.get("observers") {
        if let Some(items) = r.list(node, "observers") {
            for (i, item) in items.iter().enumerate() {
                if let Some(o) = read_observer(r, item, &index("observers", i), &retry) {
                    observers.push(o);
                }
            }
        }
    }

    // e-mail actions of the file need the server
    if smtp.is_none() {
        for (i, o) in observers.iter().enumerate() {
            for (j, a) in o.actions.iter().enumerate() {
                if matches!(a, super::ActionConfig::Email(_)) {
                    let p = format!("observers[{i}].actions[{j}]");
                    r.problem(
                        &p,
                        root.mark,
                        "an `email` action needs the `smtp:` section (host, port, tls, from)",
                    );
                }
            }
        }
    }

    let mut action_secrets = super::secrets::read_action_secrets(r, top.get("action_secrets"));
    action_secrets.add_file_observers(&observers);
    let destinations = super::destinations::read_destinations(r, top.get("destinations"));

    if caching.enabled {
        // the product observing itself: changes to a lookup's table evict it
        observers.extend(lookups::evict_observers(&lookups, &retry));
    }

    Some(Config {
        database,
        worker,
        retry,
        checkpoints,
        concurrency,
        metrics,
        failover,
        job_queue,
        smtp,
        redis,
        deduplication,
        caching,
        circuit_breaker,
        search,
        elasticsearch,
        lookups,
        action_secrets,
        destinations,
        observers,
    })
}

fn read_database(r: &mut Reader, node: Option<&Node>) -> DatabaseConfig {
    let mut cfg = DatabaseConfig {
        url: None,
        connect_timeout: Duration::from_secs(5),
    };
    let Some(node) = node else { return cfg };
    let Some(f) = r.map(node, "database", &["url", "connect_timeout"]) else {
        return cfg;
    };
    if let Some(n) = f.get("url") {
        if let Some(url) = r.non_empty_string(n, &f.path_of("url")) {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.contains('='))
            {
                r.problem(
                    &f.path_of("url"),
                    n.mark,
                    "expected a PostgreSQL URL (postgres://user@host:port/db) or a key=value connection string",
                );
            } else {
                cfg.url = Some(url);
            }
        }
    }
    if let Some(n) = f.get("connect_timeout") {
        if let Some(d) = r.duration(n, &f.path_of("connect_timeout"), Duration::from_millis(100)) {
            cfg.connect_timeout = d;
        }
    }
    cfg
}

fn read_worker(r: &mut Reader, node: Option<&Node>, defaults: &Defaults) -> WorkerConfig {
    let mut cfg = WorkerConfig {
        id: defaults.worker_id.clone(),
        group: DEFAULT_GROUP.to_owned(),
        batch_size: 500,
        poll_interval: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(30),
        attempt_log: true,
    };
    let Some(node) = node else { return cfg };
    let Some(f) = r.map(
        node,
        "worker",
        &[
            "id",
            "group",
            "batch_size",
            "poll_interval",
            "shutdown_timeout",
            "attempt_log",
        ],
    ) else {
        return cfg;
    };
    if let Some(n) = f.get("id") {
        if let Some(id) = r.non_empty_string(n, &f.path_of("id")) {
            cfg.id = id.trim().to_owned();
        }
    }
    if let Some(n) = f.get("group") {
        if let Some(g) = r.non_empty_string(n, &f.path_of("group")) {
            let g = g.trim().to_owned();
            if valid_group_name(&g) {
                cfg.group = g;
            } else {
                r.problem(
                    &f.path_of("group"),
                    n.mark,
                    format!("invalid group name {g:?}: use 1 to 63 letters, digits and `_ . : -`, starting with a letter or digit"),
                );
            }
        }
    }
    if let Some(n) = f.get("batch_size") {
        if let Some(v) = r.integer(n, &f.path_of("batch_size"), 1, 100_000) {
            cfg.batch_size = v as u32;
        }
    }
    if let Some(n) = f.get("poll_interval") {
        if let Some(d) = r.duration(n, &f.path_of("poll_interval"), Duration::from_millis(1)) {
            cfg.poll_interval = d;
        }
    }
    if let Some(n) = f.get("shutdown_timeout") {
        if let Some(d) = r.duration(n, &f.path_of("shutdown_timeout"), Duration::ZERO) {
            cfg.shutdown_timeout = d;
        }
    }
    if let Some(n) = f.get("attempt_log") {
        if let Some(b) = r.bool(n, &f.path_of("attempt_log")) {
            cfg.attempt_log = b;
        }
    }
    cfg
}

fn read_checkpoints(r: &mut Reader, node: Option<&Node>) -> CheckpointConfig {
    let mut cfg = CheckpointConfig {
        enabled: true,
        interval: Duration::from_millis(250),
        every_events: 1000,
    };
    let Some(node) = node else { return cfg };
    let Some(feat) = r.feature(node, "checkpoints", &["interval", "every_events"], true) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    if let Some(n) = feat.fields.get("interval") {
        if let Some(d) = r.duration(
            n,
            &feat.fields.path_of("interval"),
            Duration::from_millis(1),
        ) {
            cfg.interval = d;
        }
    }
    if let Some(n) = feat.fields.get("every_events") {
        if let Some(v) = r.integer(n, &feat.fields.path_of("every_events"), 1, 10_000_000) {
            cfg.every_events = v as u32;
        }
    }
    cfg
}

fn read_concurrency(r: &mut Reader, node: Option<&Node>) -> ConcurrencyConfig {
    let mut cfg = ConcurrencyConfig {
        enabled: true,
        max_in_flight: 256,
    };
    let Some(node) = node else { return cfg };
    let Some(feat) = r.feature(node, "concurrent_execution", &["max_in_flight"], true) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    if let Some(n) = feat.fields.get("max_in_flight") {
        if let Some(v) = r.integer(n, &feat.fields.path_of("max_in_flight"), 1, 65_536) {
            cfg.max_in_flight = v as usize;
        }
    }
    cfg
}

fn read_metrics(r: &mut Reader, node: Option<&Node>) -> MetricsConfig {
    let mut cfg = MetricsConfig {
        enabled: true,
        listen: DEFAULT_METRICS_LISTEN.to_owned(),
    };
    let Some(node) = node else { return cfg };
    let Some(feat) = r.feature(node, "metrics", &["listen"], true) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    if let Some(n) = feat.fields.get("listen") {
        let path = feat.fields.path_of("listen");
        if let Some(listen) = r.non_empty_string(n, &path) {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                r.problem(
                    &path,
                    n.mark,
                    format!("expected an address like 127.0.0.1:9187, found {listen:?}"),
                );
            } else {
                cfg.listen = listen;
            }
        }
    }
    cfg
}

/// `failover: enabled | disabled | { enabled, lease_ttl, standby_poll }`.
/// On by default (unlike the other features): several workers of a group have always shared
/// the group's lease, leader and standbys (SPEC §2.6); `disabled` keeps a group to one worker.
fn read_failover(r: &mut Reader, node: Option<&Node>) -> FailoverConfig {
    let mut cfg = FailoverConfig {
        enabled: true,
        lease_ttl: DEFAULT_LEASE_TTL,
        standby_poll: DEFAULT_STANDBY_POLL,
    };
    let Some(node) = node else { return cfg };
    let Some(feat) = r.feature(node, "failover", &["lease_ttl", "standby_poll"], true) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    if let Some(n) = feat.fields.get("lease_ttl") {
        if let Some(d) = r.duration(n, &feat.fields.path_of("lease_ttl"), Duration::from_secs(1)) {
            cfg.lease_ttl = d;
        }
    }
    // The default poll never exceeds a third of the TTL (a TTL of 1s polls every 250ms anyway).
    cfg.standby_poll = cfg.standby_poll.min(cfg.lease_ttl / 3);
    if let Some(n) = feat.fields.get("standby_poll") {
        let path = feat.fields.path_of("standby_poll");
        if let Some(d) = r.duration(n, &path, MIN_STANDBY_POLL) {
            if d > cfg.lease_ttl / 3 {
                r.problem(
                    &path,
                    n.mark,
                    format!(
                        "standby_poll {} is longer than a third of lease_ttl ({}): a standby would notice a \
                         released or expired lease late; use at most {}",
                        humantime::format_duration(d),
                        humantime::format_duration(cfg.lease_ttl),
                        humantime::format_duration(cfg.lease_ttl / 3)
                    ),
                );
            } else {
                cfg.standby_poll = d;
            }
        }
    }
    cfg
}

const SMTP_KEYS: &[&str] = &[
    "host",
    "port",
    "tls",
    "user",
    "password",
    "from",
    "timeout",
    "pool_size",
];

fn read_smtp(r: &mut Reader, node: Option<&Node>) -> Option<SmtpConfig> {
    let node = node?;
    let f = r.map(node, "smtp", SMTP_KEYS)?;
    let before = r.problem_count();
    let host = match f.get("host") {
        Some(n) => r
            .non_empty_string(n, &f.path_of("host"))
            .map(|h| h.trim().to_owned()),
        None => {
            r.problem("smtp", node.mark, "missing `host`");
            None
        }
    };
    let tls = match f.get("tls") {
        None => SmtpTls::Starttls,
        Some(n) => match r.string(n, &f.path_of("tls")).as_deref().map(str::trim) {
            Some("starttls") => SmtpTls::Starttls,
            Some("implicit") => SmtpTls::Implicit,
            Some("none") => SmtpTls::None,
            Some(other) => {
                r.problem(
                    &f.path_of("tls"),
                    n.mark,
                    format!("expected `starttls`, `implicit` or `none`, found {other:?}"),
                );
                SmtpTls::Starttls
            }
            None => SmtpTls::Starttls,
        },
    };
    if let (SmtpTls::None, Some(h)) = (tls, &host) {
        let loopback = h == "localhost"
            || h.trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            r.problem(
                &f.path_of("tls"),
                f.get("tls").map_or(node.mark, |n| n.mark),
                format!("tls: none sends mail and credentials in clear text: allowed only to a loopback host, not {h:?} (use starttls or implicit)"),
            );
        }
    }
    let default_port = match tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    };
    let port = f
        .get("port")
        .and_then(|n| r.integer(n, &f.path_of("port"), 1, 65_535))
        .map_or(default_port, |p| p as u16);
    let user = f.get("user").and_then(|n| r.string(n, &f.path_of("user")));
    let password = f
        .get("password")
        .and_then(|n| r.string(n, &f.path_of("password")));
    if user.is_some() != password.is_some() {
        r.problem(
            "smtp",
            node.mark,
            "`user` and `password` go together (both from ${VAR}, or neither)",
        );
    }
    let from = match f.get("from") {
        Some(n) => {
            let p = f.path_of("from");
            r.non_empty_string(n, &p).and_then(|text| {
                if text.trim().parse::<lettre::message::Mailbox>().is_ok() {
                    Some(text.trim().to_owned())
                } else {
                    r.problem(&p, n.mark, format!("{text:?} is not an e-mail address"));
                    None
                }
            })
        }
        None => {
            r.problem("smtp", node.mark, "missing `from` (the sender address)");
            None
        }
    };
    let timeout = f
        .get("timeout")
        .and_then(|n| r.duration(n, &f.path_of("timeout"), Duration::from_millis(100)))
        .unwrap_or(Duration::from_secs(10));
    let pool_size = f
        .get("pool_size")
        .and_then(|n| r.integer(n, &f.path_of("pool_size"), 1, 1_000))
        .map_or(4, |v| v as u32);
    if r.problem_count() != before {
        return None;
    }
    Some(SmtpConfig {
        host: host?,
        port,
        tls,
        user,
        password,
        from: from?,
        timeout,
        pool_size,
    })
}

fn read_job_queue(r: &mut Reader, node: Option<&Node>) -> JobQueueConfig {
    let mut cfg = JobQueueConfig::default();
    let Some(node) = node else { return cfg };
    let options = ["workers", "poll_interval", "timeout", "rescue_after"];
    let Some(feat) = r.feature(node, "job_queue", &options, false) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    let f = &feat.fields;
    if let Some(n) = f.get("workers") {
        if let Some(w) = r.integer(n, &f.path_of("workers"), 1, 10_000) {
            cfg.workers = w as usize;
        }
    }
    if let Some(n) = f.get("poll_interval") {
        if let Some(d) = r.duration(n, &f.path_of("poll_interval"), Duration::from_millis(10)) {
            cfg.poll_interval = d;
        }
    }
    if let Some(n) = f.get("timeout") {
        if let Some(d) = r.duration(n, &f.path_of("timeout"), Duration::from_secs(1)) {
            cfg.timeout = d;
        }
    }
    if let Some(n) = f.get("rescue_after") {
        if let Some(d) = r.duration(n, &f.path_of("rescue_after"), Duration::from_secs(1)) {
            cfg.rescue_after = d;
        }
    }
    cfg
}

pub const OBSERVER_KEYS: &[&str] = &[
    "name",
    "table",
    "events",
    "condition",
    "columns",
    "ordering_key",
    "actions",
];

fn read_observer(
    r: &mut Reader,
    node: &Node,
    path: &str,
    retry: &RetryPolicy,
) -> Option<ObserverConfig> {
    let f = r.map(node, path, OBSERVER_KEYS)?;
    let before = r.problem_count();

    let name = match f.get("name") {
        Some(n) => r.non_empty_string(n, &f.path_of("name")).and_then(|name| {
            if valid_observer_name(&name) {
                Some(name)
            } else {
                r.problem(
                    &f.path_of("name"),
                    n.mark,
                    format!(
                        "invalid observer name {name:?}: use 1 to 63 lowercase letters, digits and `_`, starting with a letter"
                    ),
                );
                None
            }
        }),
        None => {
            r.problem(path, node.mark, "missing `name`");
            None
        }
    };
    let table = match f.get("table") {
        Some(n) => r
            .non_empty_string(n, &f.path_of("table"))
            .map(|t| t.trim().to_owned()),
        None => {
            r.problem(
                path,
                node.mark,
                "missing `table` (e.g. `table: public.orders`)",
            );
            None
        }
    };
    let events = match f.get("events") {
        Some(n) => read_events(r, n, &f.path_of("events")),
        None => Some(vec![
            "INSERT".to_owned(),
            "UPDATE".to_owned(),
            "DELETE".to_owned(),
        ]),
    };
    let condition = f
        .get("condition")
        .and_then(|n| r.non_empty_string(n, &f.path_of("condition")));
    let columns = f
        .get("columns")
        .and_then(|n| r.string_list(n, &f.path_of("columns")))
        .filter(|c| !c.is_empty());
    let ordering_key = f
        .get("ordering_key")
        .and_then(|n| r.string_list(n, &f.path_of("ordering_key")))
        .filter(|c| !c.is_empty());
    let (actions, actions_raw) = match f.get("actions") {
        Some(n) => {
            let actions = read_actions(r, n, &f.path_of("actions"), retry);
            (actions, n.to_json())
        }
        None => {
            r.problem(
                path,
                node.mark,
                "missing `actions` (at least one action, e.g. `- type: webhook`)",
            );
            (None, serde_json::Value::Null)
        }
    };
    if let (Some(cols), Some(evs), Some(n)) = (&columns, &events, f.get("columns")) {
        if !cols.is_empty() && !evs.iter().any(|e| e == "UPDATE") {
            r.problem(
                &f.path_of("columns"),
                n.mark,
                "`columns` only filters UPDATE events, and this observer does not capture UPDATE: add UPDATE to `events` or remove `columns`",
            );
        }
    }
    if r.problem_count() != before {
        return None;
    }
    Some(ObserverConfig {
        name: name?,
        table: table?,
        events: events?,
        condition,
        columns,
        ordering_key,
        actions: actions?,
        actions_raw,
    })
}

fn read_events(r: &mut Reader, node: &Node, path: &str) -> Option<Vec<String>> {
    let list = r.string_list(node, path)?;
    let mut out: Vec<String> = Vec::new();
    let mut ok = true;
    for e in list {
        let up = e.trim().to_ascii_uppercase();
        if !matches!(up.as_str(), "INSERT" | "UPDATE" | "DELETE") {
            r.problem(
                path,
                node.mark,
                format!("unknown event {e:?} (expected INSERT, UPDATE, DELETE)"),
            );
            ok = false;
        } else if out.contains(&up) {
            r.problem(path, node.mark, format!("event {up} is listed twice"));
            ok = false;
        } else {
            out.push(up);
        }
    }
    if out.is_empty() && ok {
        r.problem(
            path,
            node.mark,
            "must list at least one of INSERT, UPDATE, DELETE",
        );
        return None;
    }
    ok.then_some(out)
}

/// The extension's rule for observer names: `^[a-z][a-z0-9_]{0,62}$`.
pub fn valid_observer_name(name: &str) -> bool {
    name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The extension's rule for group names: `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$`.
pub fn valid_group_name(name: &str) -> bool {
    name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}
