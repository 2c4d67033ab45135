//! Actions of an observer, read from the YAML file *or* from the JSON stored in
//! the database (`observers.observer_definitions`). Both go through
//! [`read_actions`], so an action is validated the same way wherever it was
//! defined, and `${VAR}` placeholders are expanded from the worker's
//! environment in both cases.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};

use super::env::Env;
use super::lookups::{check_lookups_declared, compile_template, CACHE_EVICT_ACTION};
use super::reader::{index, Problem, Reader};
use super::yaml::{Node, Value};
use crate::retry::{Jitter, RetryPolicy};
use crate::signing::SigningKey;
use crate::templates::Template;

/// Action types this version can run.
pub const AVAILABLE_ACTION_TYPES: &[&str] = &["webhook", "slack", "email"];
/// Action types of the product that arrive in later versions.
pub const LATER_ACTION_TYPES: &[&str] = &["search", "elasticsearch", "job"];

/// Headers a configuration may not set: they are the signature protocol's or the HTTP client's.
pub const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated action.
#[derive(Debug, Clone)]
pub enum ActionConfig {
    Webhook(WebhookConfig),
    Slack(SlackConfig),
    /// An e-mail over the worker's `smtp:` server (actions/email.rs).
    Email(EmailConfig),
    /// Internal: evicts a lookup's cached entries (the observers the worker
    /// creates for lookups with `table:`; see `config::lookups`).
    CacheEvict(CacheEvictConfig),
}

/// The internal `cache_evict` action.
#[derive(Debug, Clone)]
pub struct CacheEvictConfig {
    pub lookup: String,
    pub retry: RetryPolicy,
}

impl ActionConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            ActionConfig::Webhook(_) => "webhook",
            ActionConfig::Slack(_) => "slack",
            ActionConfig::Email(_) => "email",
            ActionConfig::CacheEvict(_) => CACHE_EVICT_ACTION,
        }
    }
}

/// An e-mail action: every field a template over the event (and declared lookups).
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// Recipients; each renders to one address.
    pub to: Vec<Template>,
    pub subject: Template,
    /// The text/plain part.
    pub body: Template,
    /// An optional text/html alternative.
    pub html: Option<Template>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub asynchronous: bool,
}

/// A Slack incoming-webhook action: `POST {"text": <rendered text>}`.
#[derive(Clone)]
pub struct SlackConfig {
    pub webhook_url: url::Url,
    pub text: Template,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// `mode: async`: run through the job queue.
    pub asynchronous: bool,
}

impl fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackConfig")
            .field("webhook_url", &redacted_url(&self.webhook_url))
            .field("text", &self.text)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// A webhook action. `Debug` shows neither header values nor the secret.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: url::Url,
    /// Extra headers, sent as configured (values may be secrets).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub signing_key: Option<SigningKey>,
    /// Per-attempt timeout (connect + request + response).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// `mode: async`: run through the job queue.
    pub asynchronous: bool,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_url(&self.url))
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("signed", &self.signing_key.is_some())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// `scheme://host:port` only: paths and queries of webhook URLs often carry tokens.
pub fn redacted_url(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{}://{h}:{p}/…", url.scheme()),
        (Some(h), None) => format!("{}://{h}/…", url.scheme()),
        _ => format!("{}:…", url.scheme()),
    }
}

/// Reads an observer's `actions` list.
pub fn read_actions(
    r: &mut Reader,
    node: &Node,
    path: &str,
    retry: &RetryPolicy,
) -> Option<Vec<ActionConfig>> {
    let Value::Seq(items) = &node.value else {
        r.problem(
            path,
            node.mark,
            format!("expected a list of actions, found {}", node.kind()),
        );
        return None;
    };
    if items.is_empty() {
        r.problem(path, node.mark, "at least one action is required");
        return None;
    }
    let before = r.problem_count();
    let actions: Vec<ActionConfig> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| read_action(r, item, &index(path, i), retry))
        .collect();
    (r.problem_count() == before).then_some(actions)
}

/// Builds the actions of an observer stored in the database (JSON), expanding
/// `${VAR}` from `env`. Problems carry paths like `actions[0].secret`.
pub fn actions_from_json(
    json: &serde_json::Value,
    env: &dyn Env,
    retry: &RetryPolicy,
) -> Result<Vec<ActionConfig>, Vec<Problem>> {
    actions_from_json_with_lookups(json, env, retry, &[])
}

/// [`actions_from_json`] for a worker that declares `lookups` (templates may
/// use `lookup.<name>` for these names only).
pub fn actions_from_json_with_lookups(
    json: &serde_json::Value,
    env: &dyn Env,
    retry: &RetryPolicy,
    lookups: &[String],
) -> Result<Vec<ActionConfig>, Vec<Problem>> {
    let node = Node::from_json(json);
    let mut r = Reader::new(env);
    r.set_lookup_names(lookups.to_vec());
    let actions = read_actions(&mut r, &node, "actions", retry);
    match actions {
        Some(a) if !r.has_problems() => Ok(a),
        _ => Err(r.into_problems()),
    }
}

fn read_action(
    r: &mut Reader,
    node: &Node,
    path: &str,
    retry: &RetryPolicy,
) -> Option<ActionConfig> {
    let Value::Map(entries) = &node.value else {
        r.problem(
            path,
            node.mark,
            format!(
                "expected an action (a map with `type:`), found {}",
                node.kind()
            ),
        );
        return None;
    };
    let type_node = entries
        .iter()
        .find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == "type"))
        .map(|(_, v)| v);
    let Some(type_node) = type_node else {
        r.problem(path, node.mark, "missing `type` (e.g. `type: webhook`)");
        return None;
    };
    let type_path = format!("{path}.type");
    let kind = r.non_empty_string(type_node, &type_path)?;
    match kind.trim() {
        "webhook" => read_webhook(r, node, path, retry).map(ActionConfig::Webhook),
        "slack" => read_slack(r, node, path, retry).map(ActionConfig::Slack),
        "email" => read_email(r, node, path, retry).map(ActionConfig::Email),
        CACHE_EVICT_ACTION => read_cache_evict(r, node, path, retry),
        k if LATER_ACTION_TYPES.contains(&k) => {
            r.problem(
                &type_path,
                type_node.mark,
                format!(
                    "action type `{k}` is not available in this version yet (available: {})",
                    AVAILABLE_ACTION_TYPES.join(", ")
                ),
            );
            None
        }
        k => {
            r.problem(
                &type_path,
                type_node.mark,
                format!(
                    "unknown action type `{k}` (expected: {}; coming later: {})",
                    AVAILABLE_ACTION_TYPES.join(", "),
                    LATER_ACTION_TYPES.join(", ")
                ),
            );
            None
        }
    }
}

const WEBHOOK_KEYS: &[&str] = &[
    "type", "url", "headers", "secret", "timeout", "retry", "mode",
];

fn read_webhook(
    r: &mut Reader,
    node: &Node,
    path: &str,
    retry: &RetryPolicy,
) -> Option<WebhookConfig> {
    let f = r.map(node, path, WEBHOOK_KEYS)?;
    let before = r.problem_count();

    let url = match f.get("url") {
        Some(n) => {
            let p = f.path_of("url");
            r.non_empty_string(n, &p)
                .and_then(|text| match url::Url::parse(text.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                        Some(u)
                    }
                    Ok(_) => {
                        r.problem(
                            &p,
                            n.mark,
                            "webhook URL must be an absolute http:// or https:// URL with a host",
                        );
                        None
                    }
                    // the URL text may contain a token: say what is wrong, not what it is
                    Err(e) => {
                        r.problem(&p, n.mark, format!("invalid URL ({e})"));
                        None
                    }
                })
        }
        None => {
            r.problem(path, node.mark, "missing `url`");
            None
        }
    };

    let mut headers = Vec::new();
    if let Some(n) = f.get("headers") {
        let p = f.path_of("headers");
        if let Some(map) = r.string_map(n, &p) {
            for (name, value, mark) in map {
                let hp = format!("{p}.{name}");
                let lower = name.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&lower.as_str()) {
                    r.problem(
                        &hp,
                        mark,
                        format!("header `{name}` is set by the worker and cannot be configured"),
                    );
                    continue;
                }
                let Ok(hn) = HeaderName::from_bytes(lower.as_bytes()) else {
                    r.problem(
                        &hp,
                        mark,
                        format!("`{name}` is not a valid HTTP header name"),
                    );
                    continue;
                };
                let Ok(hv) = HeaderValue::from_str(&value) else {
                    // never echo the value: it is often a token
                    r.problem(
                        &hp,
                        mark,
                        "header value contains characters not allowed in HTTP headers",
                    );
                    continue;
                };
                let mut hv = hv;
                hv.set_sensitive(true);
                headers.push((hn, hv));
            }
        }
    }

    let signing_key = f.get("secret").and_then(|n| {
        let p = f.path_of("secret");
        let text = r.string(n, &p)?;
        match SigningKey::from_secret(&text) {
            Ok(k) => Some(k),
            Err(e) => {
                r.problem(&p, n.mark, format!("invalid secret: {e}"));
                None
            }
        }
    });

    let (timeout, retry) = read_timeout_and_retry(r, &f, retry);

    let asynchronous = read_mode(r, &f);

    if r.problem_count() != before {
        return None;
    }
    Some(WebhookConfig {
        url: url?,
        headers,
        signing_key,
        timeout,
        retry,
        asynchronous,
    })
}

const SLACK_KEYS: &[&str] = &["type", "webhook_url", "text", "timeout", "retry", "mode"];

fn read_slack(r: &mut Reader, node: &Node, path: &str, retry: &RetryPolicy) -> Option<SlackConfig> {
    let f = r.map(node, path, SLACK_KEYS)?;
    let before = r.problem_count();
    let webhook_url = match f.get("webhook_url") {
        Some(n) => read_http_url(r, n, &f.path_of("webhook_url")),
        None => {
            r.problem(path, node.mark, "missing `webhook_url`");
            None
        }
    };
    let text = match f.get("text") {
        Some(n) => {
            let p = f.path_of("text");
            super::lookups::template_text(r, n, &p)
                .and_then(|t| compile_template(r, &t, &p, n))
                .filter(|t| check_lookups_declared(r, t, &p, n))
        }
        None => {
            r.problem(
                path,
                node.mark,
                "missing `text` (a template, e.g. `text: \"Order {{ new.id }}\"`)",
            );
            None
        }
    };
    let (timeout, retry) = read_timeout_and_retry(r, &f, retry);
    let asynchronous = read_mode(r, &f);
    if r.problem_count() != before {
        return None;
    }
    Some(SlackConfig {
        webhook_url: webhook_url?,
        text: text?,
        timeout,
        retry,
        asynchronous,
    })
}

const EMAIL_KEYS: &[&str] = &[
    "type", "to", "subject", "body", "html", "timeout", "retry", "mode",
];

fn read_email(r: &mut Reader, node: &Node, path: &str, retry: &RetryPolicy) -> Option<EmailConfig> {
    let f = r.map(node, path, EMAIL_KEYS)?;
    let before = r.problem_count();
    let template = |r: &mut Reader, key: &str, required: bool| -> Option<Template> {
        let Some(n) = f.get(key) else {
            if required {
                r.problem(path, node.mark, format!("missing `{key}` (a template)"));
            }
            return None;
        };
        let p = f.path_of(key);
        super::lookups::template_text(r, n, &p)
            .and_then(|t| compile_template(r, &t, &p, n))
            .filter(|t| check_lookups_declared(r, t, &p, n))
    };
    let subject = template(r, "subject", true);
    let body = template(r, "body", true);
    let html = template(r, "html", false);
    let mut to = Vec::new();
    match f.get("to") {
        None => r.problem(
            path,
            node.mark,
            "missing `to` (a list of addresses or templates)",
        ),
        Some(n) => {
            let p = f.path_of("to");
            let items: Vec<&Node> = match &n.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![n],
            };
            if items.is_empty() {
                r.problem(&p, n.mark, "at least one recipient is required");
            }
            for (i, item) in items.into_iter().enumerate() {
                let ip = index(&p, i);
                if let Some(t) = super::lookups::template_text(r, item, &ip)
                    .and_then(|t| compile_template(r, &t, &ip, item))
                    .filter(|t| check_lookups_declared(r, t, &ip, item))
                {
                    to.push(t);
                }
            }
        }
    }
    let (timeout, retry) = read_timeout_and_retry(r, &f, retry);
    let asynchronous = read_mode(r, &f);
    if r.problem_count() != before {
        return None;
    }
    Some(EmailConfig {
        to,
        subject: subject?,
        body: body?,
        html,
        timeout,
        retry,
        asynchronous,
    })
}

fn read_cache_evict(
    r: &mut Reader,
    node: &Node,
    path: &str,
    retry: &RetryPolicy,
) -> Option<ActionConfig> {
    let f = r.map(node, path, &["type", "lookup"])?;
    let Some(n) = f.get("lookup") else {
        r.problem(path, node.mark, "missing `lookup`");
        return None;
    };
    let lookup = r.non_empty_string(n, &f.path_of("lookup"))?;
    Some(ActionConfig::CacheEvict(CacheEvictConfig {
        lookup: lookup.trim().to_owned(),
        retry: retry.clone(),
    }))
}

/// An absolute http(s) URL with a host; the text is never echoed (it may carry a token).
fn read_http_url(r: &mut Reader, n: &Node, p: &str) -> Option<url::Url> {
    let text = r.non_empty_string(n, p)?;
    match url::Url::parse(text.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
        Ok(_) => {
            r.problem(
                p,
                n.mark,
                "must be an absolute http:// or https:// URL with a host",
            );
            None
        }
        Err(e) => {
            r.problem(p, n.mark, format!("invalid URL ({e})"));
            None
        }
    }
}

/// `mode: sync` (default: run inline) or `mode: async` (the leader enqueues the pair as a job,
/// run by any worker of the group with `job_queue` enabled; docs/JOBS.md). True for async.
pub(super) fn read_mode(r: &mut Reader, f: &super::reader::Fields<'_>) -> bool {
    let Some(n) = f.get("mode") else {
        return false;
    };
    let p = f.path_of("mode");
    let Some(mode) = r.string(n, &p) else {
        return false;
    };
    match mode.trim() {
        "sync" => false,
        "async" => true,
        other => {
            r.problem(
                &p,
                n.mark,
                format!("expected `sync` or `async`, found {other:?}"),
            );
            false
        }
    }
}

/// The `timeout` (default [`DEFAULT_WEBHOOK_TIMEOUT`]) and `retry` (fields not written come
/// from `base`) of an HTTP action.
fn read_timeout_and_retry(
    r: &mut Reader,
    f: &super::reader::Fields<'_>,
    base: &RetryPolicy,
) -> (Duration, RetryPolicy) {
    let timeout = match f.get("timeout") {
        Some(n) => r
            .duration(n, &f.path_of("timeout"), Duration::from_millis(1))
            .unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
        None => DEFAULT_WEBHOOK_TIMEOUT,
    };
    let retry = match f.get("retry") {
        Some(n) => read_retry(r, n, &f.path_of("retry"), base),
        None => base.clone(),
    };
    (timeout, retry)
}

const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "initial_backoff",
    "max_backoff",
    "multiplier",
    "jitter",
];

/// Reads a retry section; fields not written are taken from `base`.
pub fn read_retry(r: &mut Reader, node: &Node, path: &str, base: &RetryPolicy) -> RetryPolicy {
    let mut p = base.clone();
    let Some(f) = r.map(node, path, RETRY_KEYS) else {
        return p;
    };
    if let Some(n) = f.get("max_attempts") {
        if let Some(v) = r.integer(n, &f.path_of("max_attempts"), 1, 1_000) {
            p.max_attempts = v as u32;
        }
    }
    if let Some(n) = f.get("initial_backoff") {
        if let Some(d) = r.duration(n, &f.path_of("initial_backoff"), Duration::from_millis(1)) {
            p.initial_backoff = d;
        }
    }
    if let Some(n) = f.get("max_backoff") {
        if let Some(d) = r.duration(n, &f.path_of("max_backoff"), Duration::from_millis(1)) {
            p.max_backoff = d;
        }
    }
    if let Some(n) = f.get("multiplier") {
        if let Some(m) = r.number(n, &f.path_of("multiplier"), 1.0, 100.0) {
            p.multiplier = m;
        }
    }
    if let Some(n) = f.get("jitter") {
        let jp = f.path_of("jitter");
        if let Some(text) = r.string(n, &jp) {
            match Jitter::parse(&text) {
                Some(j) => p.jitter = j,
                None => r.problem(
                    &jp,
                    n.mark,
                    format!("expected `full` or `none`, found {text:?}"),
                ),
            }
        }
    }
    if p.max_backoff < p.initial_backoff {
        let mark = f
            .get("max_backoff")
            .or(f.get("initial_backoff"))
            .and_then(|n| n.mark)
            .or(node.mark);
        r.problem(
            &f.path_of("max_backoff"),
            mark,
            format!(
                "max_backoff ({}) is shorter than initial_backoff ({})",
                humantime::format_duration(p.max_backoff),
                humantime::format_duration(p.initial_backoff)
            ),
        );
    }
    p
}
