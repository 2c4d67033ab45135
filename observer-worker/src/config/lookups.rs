//! The `lookups:` section: named, cached enrichment queries usable from every
//! template as `{{ lookup.<name> }}` (docs/CONFIGURATION.md, "Lookups").

use std::fmt;
use std::time::Duration;

use super::parse::valid_observer_name;
use super::reader::{index, Reader};
use super::yaml::{Node, Value};
use super::ObserverConfig;
use crate::retry::RetryPolicy;
use crate::templates::{CompileError, Template, EVENT_VARIABLES};

pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest lookup name: the internal eviction observer `lookup_evict_<name>`
/// must fit PostgreSQL's 63-byte observer names.
pub const MAX_LOOKUP_NAME: usize = 63 - EVICT_OBSERVER_PREFIX.len();
/// Most arguments a lookup may take.
pub const MAX_LOOKUP_ARGS: usize = 32;
/// Prefix of the internal observers that evict a lookup's cache entries.
pub const EVICT_OBSERVER_PREFIX: &str = "lookup_evict_";
/// The internal action type of those observers.
pub const CACHE_EVICT_ACTION: &str = "cache_evict";

/// Where a lookup's value comes from.
#[derive(Clone)]
pub enum LookupSource {
    /// A query on the worker's database, run read-only; `$1..$n` are `args`.
    Sql { query: String },
    /// `GET` of a templated URL; the response must be 2xx JSON.
    Http { url: Template },
}

#[derive(Clone)]
pub struct LookupConfig {
    pub name: String,
    pub source: LookupSource,
    /// Rendered against the event; SQL parameters / part of the cache key.
    pub args: Vec<Template>,
    /// How long a value stays cached (`caching.default_ttl` when not written).
    pub ttl: Duration,
    /// Per-call limit on the source.
    pub timeout: Duration,
    /// The table the value is read from: a change to it evicts the lookup's entries.
    pub table: Option<String>,
}

impl fmt::Debug for LookupConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.source {
            LookupSource::Sql { .. } => "sql",
            LookupSource::Http { .. } => "http",
        };
        f.debug_struct("LookupConfig")
            .field("name", &self.name)
            .field("source", &kind)
            .field("args", &self.args.len())
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("table", &self.table)
            .finish()
    }
}

impl LookupConfig {
    /// Name of the internal observer that evicts this lookup's entries.
    pub fn evict_observer_name(&self) -> String {
        format!("{EVICT_OBSERVER_PREFIX}{}", self.name)
    }
}

const LOOKUP_KEYS: &[&str] = &["name", "sql", "http", "args", "ttl", "timeout", "table"];

/// Reads the `lookups:` list. `default_ttl` is `caching.default_ttl`.
pub fn read_lookups(r: &mut Reader, node: &Node, default_ttl: Duration) -> Vec<LookupConfig> {
    let mut out: Vec<LookupConfig> = Vec::new();
    let Some(items) = r.list(node, "lookups") else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let path = index("lookups", i);
        if let Some(l) = read_lookup(r, item, &path, default_ttl) {
            if out.iter().any(|o| o.name == l.name) {
                r.problem(
                    &format!("{path}.name"),
                    item.mark,
                    format!(
                        "lookup name `{}` is used twice (names must be unique)",
                        l.name
                    ),
                );
            } else {
                out.push(l);
            }
        }
    }
    out
}

fn read_lookup(
    r: &mut Reader,
    node: &Node,
    path: &str,
    default_ttl: Duration,
) -> Option<LookupConfig> {
    let f = r.map(node, path, LOOKUP_KEYS)?;
    let before = r.problem_count();

    let name = match f.get("name") {
        Some(n) => r.non_empty_string(n, &f.path_of("name")).and_then(|name| {
            let name = name.trim().to_owned();
            if valid_observer_name(&name) && name.len() <= MAX_LOOKUP_NAME {
                Some(name)
            } else {
                r.problem(
                    &f.path_of("name"),
                    n.mark,
                    format!(
                        "invalid lookup name {name:?}: use 1 to {MAX_LOOKUP_NAME} lowercase letters, digits and `_`, \
                         starting with a letter"
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

    let args = match f.get("args") {
        Some(n) => {
            let p = f.path_of("args");
            match r.list(n, &p) {
                Some(items) if items.len() > MAX_LOOKUP_ARGS => {
                    r.problem(&p, n.mark, format!("at most {MAX_LOOKUP_ARGS} arguments"));
                    Vec::new()
                }
                Some(items) => items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| {
                        let ap = index(&p, i);
                        let text = template_text(r, a, &ap)?;
                        let t = compile_template(r, &text, &ap, a)?;
                        if !t.lookups().is_empty() {
                            r.problem(
                                &ap,
                                a.mark,
                                "lookup arguments cannot use other lookups (only the event: new, old, op, ...)",
                            );
                            return None;
                        }
                        Some(t)
                    })
                    .collect(),
                None => Vec::new(),
            }
        }
        None => Vec::new(),
    };

    let args_ok = r.problem_count() == before;
    let source = match (f.get("sql"), f.get("http")) {
        (Some(_), Some(n)) => {
            r.problem(
                &f.path_of("http"),
                n.mark,
                "a lookup has exactly one source: `sql:` or `http:`, not both",
            );
            None
        }
        (None, None) => {
            r.problem(
                path,
                node.mark,
                "missing the source: `sql: \"SELECT ... WHERE id = $1\"` or `http: \"https://.../{{ new.id }}\"`",
            );
            None
        }
        (Some(n), None) => {
            let p = f.path_of("sql");
            r.non_empty_string(n, &p).and_then(|q| {
                let query = q.trim().trim_end_matches(';').trim_end().to_owned();
                if query.contains(';') {
                    r.problem(&p, n.mark, "one statement only (no `;`)");
                    return None;
                }
                let highest = highest_parameter(&query);
                if highest != args.len() && args_ok {
                    r.problem(
                        &p,
                        n.mark,
                        format!(
                            "the query uses parameters up to ${highest} but `args` has {} value{}",
                            args.len(),
                            if args.len() == 1 { "" } else { "s" }
                        ),
                    );
                    return None;
                }
                Some(LookupSource::Sql { query })
            })
        }
        (None, Some(n)) => {
            let p = f.path_of("http");
            template_text(r, n, &p).and_then(|u| {
                let u = u.trim();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    r.problem(
                        &p,
                        n.mark,
                        "expected an http:// or https:// URL (a template)",
                    );
                    return None;
                }
                let t = compile_template(r, u, &p, n)?;
                if !t.lookups().is_empty() {
                    r.problem(&p, n.mark, "a lookup URL cannot use other lookups");
                    return None;
                }
                Some(LookupSource::Http { url: t })
            })
        }
    };

    let ttl = match f.get("ttl") {
        Some(n) => r
            .duration(n, &f.path_of("ttl"), Duration::from_millis(1))
            .unwrap_or(default_ttl),
        None => default_ttl,
    };
    let timeout = match f.get("timeout") {
        Some(n) => r
            .duration(n, &f.path_of("timeout"), Duration::from_millis(1))
            .unwrap_or(DEFAULT_LOOKUP_TIMEOUT),
        None => DEFAULT_LOOKUP_TIMEOUT,
    };
    let table = f
        .get("table")
        .and_then(|n| r.non_empty_string(n, &f.path_of("table")))
        .map(|t| t.trim().to_owned());

    if r.problem_count() != before {
        return None;
    }
    Some(LookupConfig {
        name: name?,
        source: source?,
        args,
        ttl,
        timeout,
        table,
    })
}

/// Every lookup name written in the section, including those of lookups
/// with problems (so templates using them are not also reported as unknown).
pub fn written_names(node: &Node) -> Vec<String> {
    let Value::Seq(items) = &node.value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match &item.get("name")?.value {
            Value::Scalar { text, .. } => Some(text.trim().to_owned()),
            _ => None,
        })
        .collect()
}

/// The text of a template. An unquoted `{{ x }}` is a YAML flow map: say so.
pub fn template_text(r: &mut Reader, node: &Node, path: &str) -> Option<String> {
    if matches!(node.value, Value::Map(_) | Value::Seq(_)) {
        r.problem(
            path,
            node.mark,
            "expected a template string, found a map or list: quote the template (e.g. `\"{{ new.id }}\"`): \
             unquoted, YAML reads `{{ ... }}` as a map",
        );
        return None;
    }
    r.non_empty_string(node, path)
}

/// Compiles a template read from the file, reporting a problem at `path`.
pub fn compile_template(r: &mut Reader, text: &str, path: &str, node: &Node) -> Option<Template> {
    match Template::compile(text) {
        Ok(t) => {
            if let Some(v) = t
                .variables()
                .iter()
                .find(|v| !EVENT_VARIABLES.contains(&v.as_str()) && !is_builtin(v))
            {
                r.problem(
                    path,
                    node.mark,
                    format!(
                        "unknown template variable `{v}` (available: {}, lookup.<name>)",
                        EVENT_VARIABLES.join(", ")
                    ),
                );
                return None;
            }
            Some(t)
        }
        Err(e @ (CompileError::Syntax(_) | CompileError::TooLong | CompileError::BareLookup)) => {
            r.problem(path, node.mark, e.to_string());
            None
        }
    }
}

/// Global functions of minijinja a template may call (they show up as variables).
fn is_builtin(v: &str) -> bool {
    matches!(
        v,
        "range"
            | "dict"
            | "namespace"
            | "debug"
            | "loop"
            | "caller"
            | "varargs"
            | "kwargs"
            | "self"
    )
}

/// Checks that every lookup a template uses is declared.
pub fn check_lookups_declared(r: &mut Reader, t: &Template, path: &str, node: &Node) -> bool {
    let declared = r.lookup_names().to_vec();
    for name in t.lookups() {
        if !declared.iter().any(|d| d == name) {
            let hint = if declared.is_empty() {
                "no lookups are declared (add a `lookups:` section)".to_owned()
            } else {
                format!("declared: {}", declared.join(", "))
            };
            r.problem(path, node.mark, format!("unknown lookup `{name}` ({hint})"));
            return false;
        }
    }
    true
}

/// The highest `$n` in a query (0 when it has none). Dollar-quoted strings
/// (`$$...$$`, `$tag$`) are not parameters and are skipped by the `$` + digit rule.
fn highest_parameter(query: &str) -> usize {
    let bytes = query.as_bytes();
    let mut highest = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            if end > start {
                if let Ok(n) = query[start..end].parse::<usize>() {
                    highest = highest.max(n);
                }
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    highest
}

/// The internal observers that evict lookups whose `table` changes (the
/// product observing itself). Added to the file's observers when caching is on.
pub fn evict_observers(lookups: &[LookupConfig], retry: &RetryPolicy) -> Vec<ObserverConfig> {
    lookups
        .iter()
        .filter_map(|l| {
            let table = l.table.as_ref()?;
            let action = serde_json::json!({"type": CACHE_EVICT_ACTION, "lookup": l.name});
            Some(ObserverConfig {
                name: l.evict_observer_name(),
                table: table.clone(),
                events: vec!["INSERT".into(), "UPDATE".into(), "DELETE".into()],
                condition: None,
                columns: None,
                ordering_key: None,
                actions: vec![super::ActionConfig::CacheEvict(
                    super::actions::CacheEvictConfig {
                        lookup: l.name.clone(),
                        retry: retry.clone(),
                    },
                )],
                actions_raw: serde_json::Value::Array(vec![action]),
            })
        })
        .collect()
}

/// When `config.observers[i]` is the internal eviction observer of a lookup
/// (appended after the file's observers), the index of that lookup.
pub fn evict_observer_lookup(config: &super::Config, i: usize) -> Option<usize> {
    let o = config.observers.get(i)?;
    let internal_count = if config.caching.enabled {
        config.lookups.iter().filter(|l| l.table.is_some()).count()
    } else {
        0
    };
    if i < config.observers.len().saturating_sub(internal_count) {
        return None;
    }
    let name = o.name.strip_prefix(EVICT_OBSERVER_PREFIX)?;
    config.lookups.iter().position(|l| l.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        assert_eq!(highest_parameter("SELECT 1"), 0);
        assert_eq!(
            highest_parameter("SELECT * FROM t WHERE a = $1 AND b = $2"),
            2
        );
        assert_eq!(highest_parameter("SELECT $$x$$, $10"), 10);
        assert_eq!(highest_parameter("SELECT a$1 FROM t"), 0);
    }
}
