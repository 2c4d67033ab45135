//! Typed reading of the [`Node`] tree, collecting every problem instead of
//! stopping at the first one. Each problem carries the YAML path
//! (`observers[0].actions[1].url`) and, when the node came from the file, its
//! line:column.

use std::fmt;
use std::time::Duration;

use super::env::{expand, Env};
use super::yaml::{Mark, Node, Value};

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path, e.g. `worker.batch_size`; empty for the document itself.
    pub path: String,
    pub mark: Option<Mark>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.mark, self.path.is_empty()) {
            (Some(m), false) => write!(f, "{m}: {}: {}", self.path, self.message),
            (Some(m), true) => write!(f, "{m}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Joins a map key onto a path.
pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a list index onto a path.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The entries of a map node whose keys were checked against an allowed list.
pub struct Fields<'n> {
    pub path: String,
    pub mark: Option<Mark>,
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn empty(path: &str, mark: Option<Mark>) -> Self {
        Fields {
            path: path.to_owned(),
            mark,
            entries: Vec::new(),
        }
    }

    /// The value of `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_null())
    }

    /// True if `key` was written (even as null).
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| *k == key)
    }

    pub fn path_of(&self, key: &str) -> String {
        child(&self.path, key)
    }
}

/// A feature section after shorthand resolution.
pub struct Feature<'n> {
    pub enabled: bool,
    pub fields: Fields<'n>,
    pub mark: Option<Mark>,
}

/// Reads typed values out of [`Node`]s, expanding `${VAR}` in every scalar.
pub struct Reader<'e> {
    env: &'e dyn Env,
    problems: Vec<Problem>,
    /// Names of the declared lookups, for templates that use `lookup.<name>`.
    lookup_names: Vec<String>,
}

impl<'e> Reader<'e> {
    pub fn new(env: &'e dyn Env) -> Self {
        Reader {
            env,
            problems: Vec::new(),
            lookup_names: Vec::new(),
        }
    }

    /// Declares the lookups templates read from here on may use.
    pub fn set_lookup_names(&mut self, names: Vec<String>) {
        self.lookup_names = names;
    }

    pub fn lookup_names(&self) -> &[String] {
        &self.lookup_names
    }

    pub fn env(&self) -> &'e dyn Env {
        self.env
    }

    pub fn problem(&mut self, path: &str, mark: Option<Mark>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            mark,
            message: message.into(),
        });
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    pub fn problem_count(&self) -> usize {
        self.problems.len()
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    /// Checks that `node` is a map (null counts as an empty map) whose keys are
    /// all in `allowed` and unique; reports unknown and duplicate keys.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let entries = match &node.value {
            Value::Null => return Some(Fields::empty(path, node.mark)),
            Value::Map(entries) => entries,
            _ => {
                self.problem(
                    path,
                    node.mark,
                    format!("expected a map, found {}", node.kind()),
                );
                return None;
            }
        };
        let mut fields = Fields::empty(path, node.mark);
        for (key, value) in entries {
            let Value::Scalar { text, .. } = &key.value else {
                self.problem(
                    path,
                    key.mark,
                    format!("map keys must be plain names, found {}", key.kind()),
                );
                continue;
            };
            let key_path = child(path, text);
            if !allowed.contains(&text.as_str()) {
                let hint = suggestion(text, allowed)
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                self.problem(
                    &key_path,
                    key.mark,
                    format!(
                        "unknown key `{text}` ({hint}expected one of: {})",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            if fields.entries.iter().any(|(k, _)| *k == text.as_str()) {
                self.problem(&key_path, key.mark, format!("duplicate key `{text}`"));
                continue;
            }
            fields.entries.push((text.as_str(), value));
        }
        Some(fields)
    }

    /// Reads a feature section: `enabled`, `disabled`, `true`, `false`, or a map
    /// with optional `enabled:` plus the feature's options. A map without
    /// `enabled:` turns the feature on.
    pub fn feature<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        options: &[&str],
        default: bool,
    ) -> Option<Feature<'n>> {
        match &node.value {
            Value::Null => Some(Feature {
                enabled: default,
                fields: Fields::empty(path, node.mark),
                mark: node.mark,
            }),
            Value::Scalar { .. } => {
                let text = self.string(node, path)?;
                match text.trim().to_ascii_lowercase().as_str() {
                    "enabled" | "true" | "on" => Some(Feature {
                        enabled: true,
                        fields: Fields::empty(path, node.mark),
                        mark: node.mark,
                    }),
                    "disabled" | "false" | "off" => Some(Feature {
                        enabled: false,
                        fields: Fields::empty(path, node.mark),
                        mark: node.mark,
                    }),
                    _ => {
                        self.problem(
                            path,
                            node.mark,
                            format!("expected `enabled`, `disabled` or a map with `enabled:` and options, found {text:?}"),
                        );
                        None
                    }
                }
            }
            Value::Map(_) => {
                let mut allowed = vec!["enabled"];
                allowed.extend_from_slice(options);
                let fields = self.map(node, path, &allowed)?;
                let enabled = match fields.get("enabled") {
                    Some(n) => self.bool(n, &fields.path_of("enabled")).unwrap_or(default),
                    None => true,
                };
                Some(Feature {
                    enabled,
                    fields,
                    mark: node.mark,
                })
            }
            Value::Seq(_) => {
                self.problem(
                    path,
                    node.mark,
                    "expected `enabled`, `disabled` or a map, found a list",
                );
                None
            }
        }
    }

    /// A scalar as a string, with `${VAR}` expanded.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        let Value::Scalar { text, .. } = &node.value else {
            self.problem(
                path,
                node.mark,
                format!("expected a single value, found {}", node.kind()),
            );
            return None;
        };
        match expand(text, self.env) {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(path, node.mark, e.to_string());
                None
            }
        }
    }

    /// A non-empty string (after expansion).
    pub fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.problem(path, node.mark, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn integer(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        let text = self.string(node, path)?;
        match text.trim().replace('_', "").parse::<u64>() {
            Ok(v) if v >= min && v <= max => Some(v),
            Ok(v) => {
                self.problem(
                    path,
                    node.mark,
                    format!("{v} is out of range (allowed: {min}..={max})"),
                );
                None
            }
            Err(_) => {
                self.problem(
                    path,
                    node.mark,
                    format!("expected a whole number, found {text:?}"),
                );
                None
            }
        }
    }

    pub fn number(&mut self, node: &Node, path: &str, min: f64, max: f64) -> Option<f64> {
        let text = self.string(node, path)?;
        match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= min && v <= max => Some(v),
            Ok(v) => {
                self.problem(
                    path,
                    node.mark,
                    format!("{v} is out of range (allowed: {min}..={max})"),
                );
                None
            }
            Err(_) => {
                self.problem(
                    path,
                    node.mark,
                    format!("expected a number, found {text:?}"),
                );
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        let text = self.string(node, path)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.problem(
                    path,
                    node.mark,
                    format!("expected true or false, found {text:?}"),
                );
                None
            }
        }
    }

    /// A duration written like `250ms`, `5s`, `10m`, `24h` (humantime syntax).
    pub fn duration(&mut self, node: &Node, path: &str, min: Duration) -> Option<Duration> {
        let text = self.string(node, path)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d >= min => Some(d),
            Ok(d) => {
                self.problem(
                    path,
                    node.mark,
                    format!(
                        "{} is too short (minimum {})",
                        humantime::format_duration(d),
                        humantime::format_duration(min)
                    ),
                );
                None
            }
            Err(_) => {
                self.problem(
                    path,
                    node.mark,
                    format!("expected a duration like 250ms, 5s, 10m or 24h, found {text:?}"),
                );
                None
            }
        }
    }

    /// A list of scalars (a single scalar is accepted as a one-element list).
    pub fn string_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Seq(items) => {
                let before = self.problems.len();
                let out: Vec<String> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| self.non_empty_string(n, &index(path, i)))
                    .collect();
                (self.problems.len() == before).then_some(out)
            }
            Value::Scalar { .. } => self.non_empty_string(node, path).map(|s| vec![s]),
            _ => {
                self.problem(
                    path,
                    node.mark,
                    format!("expected a list, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A map of string to string; returns (key, value, position of the value).
    pub fn string_map(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<Vec<(String, String, Option<Mark>)>> {
        let Value::Map(entries) = &node.value else {
            self.problem(
                path,
                node.mark,
                format!("expected a map, found {}", node.kind()),
            );
            return None;
        };
        let before = self.problems.len();
        let mut out: Vec<(String, String, Option<Mark>)> = Vec::new();
        for (k, v) in entries {
            let Value::Scalar { text: key, .. } = &k.value else {
                self.problem(path, k.mark, "keys must be names");
                continue;
            };
            let p = child(path, key);
            if out
                .iter()
                .any(|(existing, _, _)| existing.eq_ignore_ascii_case(key))
            {
                self.problem(&p, k.mark, format!("duplicate key `{key}`"));
                continue;
            }
            if let Some(value) = self.string(v, &p) {
                out.push((key.clone(), value, v.mark));
            }
        }
        (self.problems.len() == before).then_some(out)
    }

    /// Items of a list node.
    pub fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => {
                self.problem(
                    path,
                    node.mark,
                    format!("expected a list, found {}", node.kind()),
                );
                None
            }
        }
    }
}

/// The allowed key closest to a misspelt one, if it is close enough.
fn suggestion<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (levenshtein(key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn suggests_close_keys() {
        assert_eq!(
            suggestion("batch_sise", &["batch_size", "group"]),
            Some("batch_size")
        );
        assert_eq!(suggestion("zzz", &["batch_size", "group"]), None);
    }

    #[test]
    fn problem_display_includes_location_and_path() {
        let p = Problem {
            path: "worker.x".into(),
            mark: Some(Mark { line: 3, column: 5 }),
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), "3:5: worker.x: bad");
    }

    #[test]
    fn durations() {
        let env: HashMap<String, String> = HashMap::new();
        let mut r = Reader::new(&env);
        for (text, want) in [
            ("250ms", 250u64),
            ("5s", 5_000),
            ("10m", 600_000),
            ("24h", 86_400_000),
            ("1h 30m", 5_400_000),
        ] {
            let n = Node::new(
                Value::Scalar {
                    text: text.into(),
                    plain: true,
                },
                None,
            );
            assert_eq!(
                r.duration(&n, "d", Duration::ZERO),
                Some(Duration::from_millis(want)),
                "{text}"
            );
        }
        assert!(!r.has_problems());
        for bad in ["5", "five seconds", "-1s", ""] {
            let n = Node::new(
                Value::Scalar {
                    text: bad.into(),
                    plain: true,
                },
                None,
            );
            assert_eq!(r.duration(&n, "d", Duration::ZERO), None, "{bad}");
        }
        assert_eq!(r.problem_count(), 4);
        let n = Node::new(
            Value::Scalar {
                text: "1ms".into(),
                plain: true,
            },
            None,
        );
        assert_eq!(r.duration(&n, "d", Duration::from_millis(10)), None);
    }
}
