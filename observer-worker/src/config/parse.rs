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
    MetricsConfig, ObserverConfig, WorkerConfig,
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
    read_later_features(r, &top);
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

/// Sections of features that come in later versions: their options are
/// checked, and turning them on is an error rather than silently ignored.
fn read_later_features(r: &mut Reader, top: &super::reader::Fields<'_>) {
    let later: &[(&str, &[&str])] = &[("job_queue", &["workers"])];
    for (name, options) in later {
        let Some(node) = top.get(name) else { continue };
        let Some(feat) = r.feature(node, name, options, false) else {
            continue;
        };
        let f = &feat.fields;
        if *name == "job_queue" {
            if let Some(n) = f.get("workers") {
                r.integer(n, &f.path_of("workers"), 1, 10_000);
            }
        }
        if feat.enabled {
            r.problem(
                name,
                feat.mark,
                format!("{name} is not available in this version yet: write `{name}: disabled` or remove the section"),
            );
        }
    }
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
