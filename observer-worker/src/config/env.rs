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
//! * An [`Env`] may refuse a name ([`Env::allows`]): then the placeholder is an
//!   error and the environment is not read, with or without a default. Actions
//!   defined in the database expand through such an env (`config::secrets`).

use std::collections::HashMap;

/// Where variables come from. The process environment in production, a map in tests.
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
    /// Whether `name` may be read at all. Checked before [`Env::var`].
    fn allows(&self, _name: &str) -> bool {
        true
    }
    /// For a refused name: where the configuration allows it (for the error message).
    fn how_to_allow(&self, _name: &str) -> String {
        String::new()
    }
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
    /// The env refused the name: it was not read (its value is nowhere in this error).
    #[error("`${{{name}}}` is not allowed here, the environment was not read: {how}")]
    NotAllowed { name: String, how: String },
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
        if !env.allows(name) {
            return Err(ExpandError::NotAllowed {
                name: name.to_owned(),
                how: env.how_to_allow(name),
            });
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

/// The names of the variables `text` refers to (with or without a default), in order,
/// without duplicates. Escaped `$${...}` and malformed placeholders are not references.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            rest = escaped;
            continue;
        }
        let Some(inner_start) = after.strip_prefix('{') else {
            rest = after;
            continue;
        };
        let Some(close) = inner_start.find('}') else {
            break;
        };
        let inner = &inner_start[..close];
        let name = inner.split_once(":-").map_or(inner, |(n, _)| n);
        if valid_name(name) && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        rest = &inner_start[close + 1..];
    }
    names
}

/// A variable name: letters, digits and `_`, not starting with a digit.
pub fn valid_name(name: &str) -> bool {
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

    /// An env that allows only `A`.
    struct OnlyA(HashMap<String, String>);
    impl Env for OnlyA {
        fn var(&self, name: &str) -> Option<String> {
            assert_eq!(name, "A", "the environment was read for a refused name");
            self.0.var(name)
        }
        fn allows(&self, name: &str) -> bool {
            name == "A"
        }
        fn how_to_allow(&self, name: &str) -> String {
            format!("allow {name} somewhere")
        }
    }

    #[test]
    fn refused_names_are_errors_and_never_read_even_with_a_default() {
        let e = OnlyA(env(&[("A", "a"), ("B", "secret-b")]));
        assert_eq!(expand("${A}${A:-x}", &e).unwrap(), "aa");
        for text in ["${B}", "x${B:-fallback}", "${A}${B}"] {
            let err = expand(text, &e).unwrap_err();
            assert_eq!(
                err,
                ExpandError::NotAllowed {
                    name: "B".into(),
                    how: "allow B somewhere".into()
                },
                "{text}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("${B}") && msg.contains("allow B somewhere"),
                "{msg}"
            );
            assert!(!msg.contains("secret-b"), "{msg}");
        }
        // escapes are not references
        assert_eq!(expand("$${B}", &e).unwrap(), "${B}");
    }

    #[test]
    fn placeholders_lists_referenced_names() {
        assert_eq!(
            placeholders("Bearer ${TOKEN} ${HOST:-x} $${ESCAPED} ${TOKEN} $5 ${1BAD} ${OPEN"),
            vec!["TOKEN".to_owned(), "HOST".to_owned()]
        );
        assert!(placeholders("plain").is_empty());
    }
}
