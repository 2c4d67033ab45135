//! The `search:` (the PostgreSQL audit trail) and `elasticsearch:` (the Elasticsearch /
//! OpenSearch sink) sections (docs/CONFIGURATION.md, docs/SEARCH.md). Read and validated here
//! (pure); the sink is built in `crate::search`.

use std::fmt;
use std::time::Duration;

use super::reader::{Fields, Reader};
use super::yaml::Node;

/// `search:`: the worker fills the PostgreSQL search index (`observers.search_index()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchConfig {
    pub enabled: bool,
    /// Events indexed per call (one transaction).
    pub batch_size: u32,
    /// How often the indexer looks for new events when it is caught up.
    pub interval: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            enabled: false,
            batch_size: 5000,
            interval: Duration::from_secs(1),
        }
    }
}

/// How the sink authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum EsAuth {
    None,
    /// `Authorization: ApiKey <key>` (the base64 `id:key` form Elasticsearch prints).
    ApiKey(String),
    Basic {
        user: String,
        password: String,
    },
}

impl fmt::Debug for EsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EsAuth::None => f.write_str("None"),
            EsAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            EsAuth::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
        }
    }
}

/// `elasticsearch:`: every captured event into daily indices `<index>-YYYY.MM.DD`.
#[derive(Debug, Clone, PartialEq)]
pub struct ElasticsearchConfig {
    pub enabled: bool,
    pub url: String,
    /// Index prefix: documents go to `<index>-YYYY.MM.DD` by capture day (UTC).
    pub index: String,
    pub auth: EsAuth,
    /// Largest number of documents in one bulk request...
    pub batch_size: u32,
    /// ...and largest uncompressed NDJSON body.
    pub batch_bytes: u64,
    /// How long the sink waits for more events when a page is not full.
    pub linger: Duration,
    /// Bulk requests in flight at once.
    pub max_in_flight: u32,
    /// Each bulk request gives up after this long (then it is retried).
    pub timeout: Duration,
    /// Compress request bodies (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// First and largest wait between retries of 429/5xx items and held requests.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts for an item answered 429/5xx before it goes to the dead letters (0: forever).
    pub max_attempts: u32,
    /// Install the index template at start (`PUT _index_template/<index>`).
    pub install_template: bool,
    /// While delivery is behind (this worker's consumer fetches full pages), the sink waits up to
    /// this long before each page, so that a backlog of webhooks drains at full speed; the sink
    /// catches up after (its cursor is its own). Zero: never wait.
    pub yield_to_delivery: Duration,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        ElasticsearchConfig {
            enabled: false,
            url: "http://127.0.0.1:9200".to_owned(),
            index: "observer-events".to_owned(),
            auth: EsAuth::None,
            batch_size: 1000,
            batch_bytes: 5 * 1024 * 1024,
            linger: Duration::from_millis(200),
            max_in_flight: 2,
            timeout: Duration::from_secs(30),
            gzip: true,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_attempts: 0,
            install_template: true,
            yield_to_delivery: Duration::from_secs(10),
        }
    }
}

pub const SEARCH_OPTIONS: &[&str] = &["batch_size", "interval"];

pub fn read_search(r: &mut Reader, node: Option<&Node>) -> SearchConfig {
    let mut cfg = SearchConfig::default();
    let Some(node) = node else { return cfg };
    let Some(feat) = r.feature(node, "search", SEARCH_OPTIONS, false) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    let f = &feat.fields;
    if let Some(n) = f.get("batch_size") {
        if let Some(v) = r.integer(n, &f.path_of("batch_size"), 1, 100_000) {
            cfg.batch_size = v as u32;
        }
    }
    if let Some(n) = f.get("interval") {
        if let Some(d) = r.duration(n, &f.path_of("interval"), Duration::from_millis(10)) {
            cfg.interval = d;
        }
    }
    cfg
}

pub const ES_OPTIONS: &[&str] = &[
    "url",
    "index",
    "auth",
    "batch_size",
    "batch_bytes",
    "linger",
    "max_in_flight",
    "timeout",
    "gzip",
    "initial_backoff",
    "max_backoff",
    "max_attempts",
    "install_template",
    "yield_to_delivery",
];

/// Where `elasticsearch:` without `url:` takes its URL from, when it is set.
pub const ES_URL_VAR: &str = "ELASTICSEARCH_URL";

pub fn read_elasticsearch(r: &mut Reader, node: Option<&Node>) -> ElasticsearchConfig {
    let mut cfg = ElasticsearchConfig::default();
    let Some(node) = node else { return cfg };
    let Some(feat) = r.feature(node, "elasticsearch", ES_OPTIONS, false) else {
        return cfg;
    };
    cfg.enabled = feat.enabled;
    let f = &feat.fields;
    if f.get("url").is_none() {
        // `elasticsearch: enabled` (the seed's Production profile, verbatim) has nowhere to write
        // the URL: the conventional `ELASTICSEARCH_URL` supplies it, as `url: ${ELASTICSEARCH_URL}`
        // would (docs/CONFIGURATION.md).
        if let Some(u) = r.env().var(ES_URL_VAR).filter(|u| !u.trim().is_empty()) {
            match url::Url::parse(u.trim()) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                    cfg.url = u.trim().trim_end_matches('/').to_owned();
                }
                _ => r.problem(
                    "elasticsearch",
                    feat.mark,
                    format!(
                        "no url: is set, and the environment's {ES_URL_VAR} is not an http:// or \
                         https:// URL ({u:?}); fix {ES_URL_VAR} or add elasticsearch.url"
                    ),
                ),
            }
        }
    }
    if let Some(n) = f.get("url") {
        let path = f.path_of("url");
        if let Some(u) = r.non_empty_string(n, &path) {
            match url::Url::parse(u.trim()) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                    cfg.url = u.trim().trim_end_matches('/').to_owned();
                }
                _ => r.problem(
                    &path,
                    n.mark,
                    format!("expected an http:// or https:// URL, found {u:?}"),
                ),
            }
        }
    }
    if let Some(n) = f.get("index") {
        let path = f.path_of("index");
        if let Some(i) = r.non_empty_string(n, &path) {
            match check_index_prefix(&i) {
                Ok(()) => cfg.index = i,
                Err(m) => r.problem(&path, n.mark, m),
            }
        }
    }
    if let Some(n) = f.get("auth") {
        cfg.auth = read_auth(r, n, &f.path_of("auth"));
    }
    let int = |r: &mut Reader, f: &Fields<'_>, k: &str, min: u64, max: u64| {
        f.get(k).and_then(|n| r.integer(n, &f.path_of(k), min, max))
    };
    if let Some(v) = int(r, f, "batch_size", 1, 100_000) {
        cfg.batch_size = v as u32;
    }
    if let Some(v) = int(r, f, "batch_bytes", 1024, 1 << 30) {
        cfg.batch_bytes = v;
    }
    if let Some(v) = int(r, f, "max_in_flight", 1, 64) {
        cfg.max_in_flight = v as u32;
    }
    if let Some(v) = int(r, f, "max_attempts", 0, 1_000_000) {
        cfg.max_attempts = v as u32;
    }
    let dur = |r: &mut Reader, f: &Fields<'_>, k: &str, min: Duration| {
        f.get(k).and_then(|n| r.duration(n, &f.path_of(k), min))
    };
    if let Some(d) = dur(r, f, "linger", Duration::ZERO) {
        cfg.linger = d;
    }
    if let Some(d) = dur(r, f, "yield_to_delivery", Duration::ZERO) {
        cfg.yield_to_delivery = d;
    }
    if let Some(d) = dur(r, f, "timeout", Duration::from_millis(100)) {
        cfg.timeout = d;
    }
    if let Some(d) = dur(r, f, "initial_backoff", Duration::from_millis(1)) {
        cfg.initial_backoff = d;
    }
    if let Some(d) = dur(r, f, "max_backoff", Duration::from_millis(1)) {
        cfg.max_backoff = d;
    }
    if cfg.max_backoff < cfg.initial_backoff {
        r.problem(
            &f.path_of("max_backoff"),
            feat.mark,
            "max_backoff must not be shorter than initial_backoff",
        );
    }
    for k in ["gzip", "install_template"] {
        if let Some(n) = f.get(k) {
            if let Some(b) = r.bool(n, &f.path_of(k)) {
                match k {
                    "gzip" => cfg.gzip = b,
                    _ => cfg.install_template = b,
                }
            }
        }
    }
    cfg
}

/// `auth: { api_key: ... }` or `auth: { user: ..., password: ... }`.
fn read_auth(r: &mut Reader, node: &Node, path: &str) -> EsAuth {
    let Some(f) = r.map(node, path, &["api_key", "user", "password"]) else {
        return EsAuth::None;
    };
    let api_key = f
        .get("api_key")
        .and_then(|n| r.non_empty_string(n, &f.path_of("api_key")));
    let user = f
        .get("user")
        .and_then(|n| r.non_empty_string(n, &f.path_of("user")));
    let password = f
        .get("password")
        .and_then(|n| r.string(n, &f.path_of("password")));
    match (api_key, user, password) {
        (Some(k), None, None) => EsAuth::ApiKey(k),
        (None, Some(user), Some(password)) => EsAuth::Basic { user, password },
        (None, None, None) => EsAuth::None,
        (Some(_), _, _) => {
            r.problem(
                path,
                node.mark,
                "give either api_key or user and password, not both",
            );
            EsAuth::None
        }
        (None, _, _) => {
            r.problem(
                path,
                node.mark,
                "basic authentication needs both user and password",
            );
            EsAuth::None
        }
    }
}

/// Elasticsearch index names: lowercase, no `\ / * ? " < > | , #`, space or `:`, not starting
/// with `-`, `_` or `+`. The daily suffix `-YYYY.MM.DD` is added to it.
pub fn check_index_prefix(i: &str) -> Result<(), String> {
    let bad = i.chars().any(|c| {
        c.is_ascii_uppercase()
            || matches!(
                c,
                '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ' ' | ':'
            )
    });
    if bad || i.starts_with(['-', '_', '+', '.']) || i.len() > 200 {
        return Err(format!(
            "{i:?} is not a valid index prefix: lowercase letters, digits, - and _ (not first), \
             at most 200 characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;

    fn read(src: &str) -> (SearchConfig, ElasticsearchConfig, Vec<String>) {
        read_with(src, &[])
    }

    fn read_with(
        src: &str,
        vars: &[(&str, &str)],
    ) -> (SearchConfig, ElasticsearchConfig, Vec<String>) {
        let env: std::collections::HashMap<String, String> =
            [("ES_KEY".to_owned(), "k3y".to_owned())]
                .into_iter()
                .chain(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
        let mut r = Reader::new(&env);
        let root = yaml::parse(src).unwrap();
        let top = r.map(&root, "", &["search", "elasticsearch"]).unwrap();
        let s = read_search(&mut r, top.get("search"));
        let e = read_elasticsearch(&mut r, top.get("elasticsearch"));
        let p = r
            .into_problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        (s, e, p)
    }

    #[test]
    fn defaults_are_off() {
        let (s, e, p) = read("{}\n");
        assert!(p.is_empty(), "{p:?}");
        assert!(!s.enabled && !e.enabled);
    }

    #[test]
    fn sections_read() {
        let (s, e, p) = read(
            "search: { batch_size: 100, interval: 250ms }\nelasticsearch:\n  url: http://127.0.0.1:9200/\n  index: audit\n  auth: { api_key: \"${ES_KEY}\" }\n  batch_size: 50\n  max_in_flight: 4\n  gzip: false\n  yield_to_delivery: 0s\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert!(s.enabled);
        assert_eq!(
            (s.batch_size, s.interval),
            (100, Duration::from_millis(250))
        );
        assert!(e.enabled);
        assert_eq!(e.url, "http://127.0.0.1:9200");
        assert_eq!(e.index, "audit");
        assert_eq!(e.auth, EsAuth::ApiKey("k3y".into()));
        assert_eq!((e.batch_size, e.max_in_flight, e.gzip), (50, 4, false));
        assert_eq!(e.yield_to_delivery, Duration::ZERO);
        let (_, e, _) = read("elasticsearch: enabled\n");
        assert_eq!(e.yield_to_delivery, Duration::from_secs(10), "the default");
        assert!(!format!("{e:?}").contains("k3y"), "the key is redacted");
    }

    #[test]
    fn bad_values_are_reported_with_paths() {
        let (_, _, p) = read(
            "search: { batch_size: 0 }\nelasticsearch:\n  url: ftp://x\n  index: Bad/Name\n  auth: { api_key: k, user: u }\n  max_in_flight: 0\n  yield_to_delivery: soon\n",
        );
        let joined = p.join("\n");
        for path in [
            "search.batch_size",
            "elasticsearch.url",
            "elasticsearch.index",
            "elasticsearch.auth",
            "elasticsearch.max_in_flight",
            "elasticsearch.yield_to_delivery",
        ] {
            assert!(joined.contains(path), "{path} missing in {joined}");
        }
        let (_, e, p) = read("elasticsearch: { auth: { user: u, password: p } }\n");
        assert!(p.is_empty(), "{p:?}");
        assert!(matches!(e.auth, EsAuth::Basic { .. }));
        let (_, _, p) = read("elasticsearch: { auth: { user: u } }\n");
        assert!(p.join("").contains("both user and password"), "{p:?}");
        let (_, e, p) = read("elasticsearch: disabled\n");
        assert!(p.is_empty() && !e.enabled);
    }

    #[test]
    fn shorthand_takes_the_url_from_elasticsearch_url() {
        let (_, e, p) = read("elasticsearch: enabled\n");
        assert!(p.is_empty() && e.enabled, "{p:?}");
        assert_eq!(
            e.url, "http://127.0.0.1:9200",
            "the default without the variable"
        );
        let es = [("ELASTICSEARCH_URL", "https://search.internal:9243/")];
        let (_, e, p) = read_with("elasticsearch: enabled\n", &es);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(e.url, "https://search.internal:9243");
        // an explicit url: wins over the variable
        let (_, e, _) = read_with("elasticsearch: { url: http://10.0.0.9:9200 }\n", &es);
        assert_eq!(e.url, "http://10.0.0.9:9200");
        let (_, _, p) = read_with(
            "elasticsearch: enabled\n",
            &[("ELASTICSEARCH_URL", "es:9200")],
        );
        let joined = p.join("\n");
        assert!(
            joined.contains("ELASTICSEARCH_URL") && joined.contains("elasticsearch.url"),
            "{joined}"
        );
    }
}
