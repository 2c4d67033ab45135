//! `${VAR}` / `${VAR:-default}` expansion.
//!
//! Rules (documented in docs/CONFIGURATION.md):
//! * `${NAME}` is replaced by the value of environment variable `NAME`; if it
//!   is not set, that is an error naming the variable.
//! * `${NAME:-default}` uses `default` when `NAME` is unset **or empty**
//!   (shell semantics); the default is taken literally (no nesting).
//! * `$${` writes a literal `${`. A `$` not followed by `{` is kept as is.
//! * Expanded values are never expanded again, so a secret that contains
//!   `${...}` is used verbatim.

use std::collections::HashMap;

/// Where variables come from. The process environment in production, a map in tests.
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a value could not be expanded. Never contains variable *values*.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("environment variable {0} is not set (set it, or write ${{{0}:-default}} to give a default)")]
    Unset(String),
    #[error("unterminated `${{` placeholder (write `$${{` for a literal `${{`)")]
    Unterminated,
    #[error("invalid variable name {0:?} in placeholder (expected letters, digits and `_`, not starting with a digit)")]
    BadName(String),
}

/// True if the text contains a placeholder (or an escaped one) that expansion would change.
pub fn has_placeholder(text: &str) -> bool {
    text.contains("${")
}

/// Expands every placeholder in `text`.
pub fn expand(text: &str, env: &dyn Env) -> Result<String, ExpandError> {
    if !has_placeholder(text) {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            // `$${` -> literal `${`
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(inner_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(close) = inner_start.find('}') else {
            return Err(ExpandError::Unterminated);
        };
        let inner = &inner_start[..close];
        let (name, default) = match inner.find(":-") {
            Some(i) => (&inner[..i], Some(&inner[i + 2..])),
            None => (inner, None),
        };
        if !valid_name(name) {
            return Err(ExpandError::BadName(name.to_owned()));
        }
        match (env.var(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(ExpandError::Unset(name.to_owned())),
        }
        rest = &inner_start[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_set_variables() {
        let e = env(&[("HOST", "db"), ("PORT", "5432")]);
        assert_eq!(
            expand("postgres://${HOST}:${PORT}/x", &e).unwrap(),
            "postgres://db:5432/x"
        );
    }

    #[test]
    fn default_used_when_unset_or_empty() {
        let e = env(&[("EMPTY", "")]);
        assert_eq!(expand("${MISSING:-worker-1}", &e).unwrap(), "worker-1");
        assert_eq!(expand("${EMPTY:-fallback}", &e).unwrap(), "fallback");
        assert_eq!(expand("${MISSING:-}", &e).unwrap(), "");
        assert_eq!(expand("a${MISSING:-b c}d", &e).unwrap(), "ab cd");
    }

    #[test]
    fn unset_without_default_names_the_variable() {
        let err = expand("Bearer ${HOOK_TOKEN}", &env(&[])).unwrap_err();
        assert_eq!(err, ExpandError::Unset("HOOK_TOKEN".into()));
        assert!(err.to_string().contains("HOOK_TOKEN"));
    }

    #[test]
    fn escapes_and_lone_dollars() {
        let e = env(&[("A", "x")]);
        assert_eq!(expand("$${A} costs $5", &e).unwrap(), "${A} costs $5");
        assert_eq!(expand("$A", &e).unwrap(), "$A");
    }

    #[test]
    fn values_are_not_expanded_twice() {
        let e = env(&[("S", "${OTHER}")]);
        assert_eq!(expand("${S}", &e).unwrap(), "${OTHER}");
    }

    #[test]
    fn malformed_placeholders() {
        assert_eq!(
            expand("${A", &env(&[])).unwrap_err(),
            ExpandError::Unterminated
        );
        assert!(matches!(
            expand("${1A}", &env(&[])).unwrap_err(),
            ExpandError::BadName(_)
        ));
        assert!(matches!(
            expand("${}", &env(&[])).unwrap_err(),
            ExpandError::BadName(_)
        ));
    }
}
