//! Which environment variables actions defined in the database may use.
//!
//! The worker expands `${VAR}` in the actions it reads from
//! `observers.observer_definitions()`. Anyone who may create or replace an observer
//! writes those actions, so expanding them from the whole environment would hand
//! `${DATABASE_URL}`, `${HOME}` and every secret of the worker to a receiver of their
//! choice. Instead a variable is expanded for an observer only when the worker's
//! file allows it (docs/SECURITY.md, "Secrets in actions defined in the database"):
//!
//! * `action_secrets:` lists variables, for every observer or for named observers;
//! * an observer of the file's own `observers:` may use the variables its actions
//!   there use (so existing files keep working without a new key).
//!
//! Everything else makes the observer broken (its events are held); the environment
//! is not read, `${VAR:-default}` included. The file's own settings (`database.url`,
//! `redis.url`, ...) keep full expansion: only the database's actions are restricted.

use std::collections::{BTreeMap, BTreeSet};

use super::env::{placeholders, valid_name, Env};
use super::reader::{index, Reader};
use super::yaml::{Node, Value};
use super::ObserverConfig;

/// The config key, for messages.
pub const ACTION_SECRETS_KEY: &str = "action_secrets";

/// Who may use which variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionSecrets {
    /// `action_secrets:`: variable -> the observers that may use it (`None`: every observer).
    declared: BTreeMap<String, Option<BTreeSet<String>>>,
    /// Observer name -> the variables its actions in the file's `observers:` use.
    from_file: BTreeMap<String, BTreeSet<String>>,
}

impl ActionSecrets {
    /// Allows `variable` for every observer.
    pub fn allow_everywhere(&mut self, variable: &str) {
        self.declared.insert(variable.to_owned(), None);
    }

    /// Allows `variable` for the observer named `observer`.
    pub fn allow_for(&mut self, variable: &str, observer: &str) {
        // a variable not yet declared starts with no observers (`None` would mean "all")
        match self
            .declared
            .entry(variable.to_owned())
            .or_insert_with(|| Some(BTreeSet::new()))
        {
            None => {}
            Some(set) => {
                set.insert(observer.to_owned());
            }
        }
    }

    /// Allows each observer of the file the variables its own actions there use.
    pub fn add_file_observers(&mut self, observers: &[ObserverConfig]) {
        for o in observers {
            let mut vars = BTreeSet::new();
            collect_placeholders(&o.actions_raw, &mut vars);
            if !vars.is_empty() {
                self.from_file
                    .entry(o.name.clone())
                    .or_default()
                    .extend(vars);
            }
        }
    }

    /// May the actions of observer `observer` (as stored in the database) use `variable`?
    pub fn allows(&self, observer: &str, variable: &str) -> bool {
        let declared = match self.declared.get(variable) {
            Some(None) => true,
            Some(Some(observers)) => observers.contains(observer),
            None => false,
        };
        declared
            || self
                .from_file
                .get(observer)
                .is_some_and(|vars| vars.contains(variable))
    }

    /// The environment the actions of `observer` are expanded from.
    pub fn env_for<'a>(&'a self, observer: &'a str, env: &'a dyn Env) -> ObserverEnv<'a> {
        ObserverEnv {
            secrets: self,
            observer,
            env,
        }
    }
}

/// The worker's environment as one observer's database-defined actions see it.
pub struct ObserverEnv<'a> {
    secrets: &'a ActionSecrets,
    observer: &'a str,
    env: &'a dyn Env,
}

impl Env for ObserverEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        // `expand` asks `allows` first; checked again so no other caller can bypass it
        if self.allows(name) {
            self.env.var(name)
        } else {
            None
        }
    }

    fn allows(&self, name: &str) -> bool {
        self.secrets.allows(self.observer, name)
    }

    fn how_to_allow(&self, name: &str) -> String {
        format!(
            "actions defined in the database may only use the variables the worker's \
             configuration file allows for their observer; to allow it, add \
             `{ACTION_SECRETS_KEY}: {{ {name}: [{observer}] }}` to the worker's file \
             (docs/CONFIGURATION.md), or remove it from observer `{observer}`'s actions",
            observer = self.observer
        )
    }
}

fn collect_placeholders(json: &serde_json::Value, out: &mut BTreeSet<String>) {
    match json {
        serde_json::Value::String(s) => out.extend(placeholders(s)),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_placeholders(v, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.extend(placeholders(k));
            collect_placeholders(v, out)
        }),
        _ => {}
    }
}

/// Reads `action_secrets:`: a list of variable names (allowed for every observer), or a
/// map of variable name to `"*"` / a list of observer names.
pub fn read_action_secrets(r: &mut Reader, node: Option<&Node>) -> ActionSecrets {
    let mut secrets = ActionSecrets::default();
    let Some(node) = node else {
        return secrets;
    };
    let path = ACTION_SECRETS_KEY;
    match &node.value {
        Value::Null => {}
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(name) = variable_name(r, item, &index(path, i)) {
                    secrets.allow_everywhere(&name);
                }
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries {
                let Some(name) = variable_name(r, key, path) else {
                    continue;
                };
                let p = format!("{path}.{name}");
                if secrets.declared.contains_key(&name) {
                    r.problem(&p, key.mark, format!("duplicate variable `{name}`"));
                    continue;
                }
                match &value.value {
                    Value::Scalar { text, .. } if text.trim() == "*" => {
                        secrets.allow_everywhere(&name)
                    }
                    Value::Seq(_) | Value::Scalar { .. } => {
                        let Some(observers) = r.string_list(value, &p) else {
                            continue;
                        };
                        // an empty list would read as "nobody": say so rather than guess
                        if observers.is_empty() {
                            r.problem(
                                &p,
                                value.mark,
                                "expected `\"*\"` (every observer) or a list of observer names, found an empty list",
                            );
                            continue;
                        }
                        for o in observers {
                            secrets.allow_for(&name, o.trim());
                        }
                    }
                    _ => r.problem(
                        &p,
                        value.mark.or(key.mark),
                        format!(
                            "expected `\"*\"` (every observer) or a list of observer names, found {}",
                            value.kind()
                        ),
                    ),
                }
            }
        }
        Value::Scalar { .. } => r.problem(
            path,
            node.mark,
            format!(
                "expected a list of variable names (`{path}: [HOOK_SECRET]`) or a map of variable name to observers (`{path}: {{ HOOK_SECRET: [orders] }}`), found {}",
                node.kind()
            ),
        ),
    }
    secrets
}

/// A variable name as written (never expanded: these are names, not values).
fn variable_name(r: &mut Reader, node: &Node, path: &str) -> Option<String> {
    let Value::Scalar { text, .. } = &node.value else {
        r.problem(
            path,
            node.mark,
            format!("expected a variable name, found {}", node.kind()),
        );
        return None;
    };
    let name = text.trim();
    if !valid_name(name) {
        r.problem(
            path,
            node.mark,
            format!(
                "{name:?} is not a variable name (letters, digits and `_`, not starting with a digit; write `HOOK_SECRET`, not `${{HOOK_SECRET}}`)"
            ),
        );
        return None;
    }
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::config::actions::actions_from_json;
    use crate::config::env::{expand, ExpandError};
    use crate::retry::RetryPolicy;

    fn process(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secrets(yaml: &str) -> (ActionSecrets, Vec<String>) {
        let tree = crate::config::yaml::parse(yaml).unwrap();
        let env = process(&[]);
        let mut r = Reader::new(&env);
        let s = read_action_secrets(&mut r, tree.get("action_secrets"));
        let problems = r.into_problems().iter().map(|p| p.to_string()).collect();
        (s, problems)
    }

    #[test]
    fn list_form_allows_every_observer_map_form_named_ones() {
        let (s, p) = secrets("action_secrets: [SLACK_URL]\n");
        assert!(p.is_empty(), "{p:?}");
        assert!(s.allows("any", "SLACK_URL"));
        assert!(!s.allows("any", "HOME"));

        let (s, p) = secrets(
            "action_secrets:\n  TOKEN: [orders, refunds]\n  SLACK_URL: \"*\"\n  ONE: orders\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert!(s.allows("orders", "TOKEN") && s.allows("refunds", "TOKEN"));
        assert!(!s.allows("rogue", "TOKEN"));
        assert!(s.allows("rogue", "SLACK_URL"));
        assert!(s.allows("orders", "ONE") && !s.allows("refunds", "ONE"));
    }

    #[test]
    fn bad_entries_are_reported_with_their_position() {
        let (_, p) = secrets("action_secrets:\n  - ${HOOK_SECRET}\n  - [x]\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("2:5: action_secrets[0]:") && p[0].contains("not `${HOOK_SECRET}`"),
            "{p:?}"
        );
        let (_, p) = secrets("action_secrets:\n  TOKEN: []\n  X: {a: 1}\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("action_secrets.TOKEN") && p[0].contains("empty list"),
            "{p:?}"
        );
        let (_, p) = secrets("action_secrets: HOOK_SECRET\n");
        assert_eq!(p.len(), 1, "{p:?}");
    }

    /// The rule of SPEC §2.7: a database-defined action reads only allowed variables, and
    /// neither the value nor a default of a refused one is used.
    #[test]
    fn database_actions_expand_only_allowed_variables() {
        let mut s = ActionSecrets::default();
        s.allow_for("TOKEN", "orders");
        let env = process(&[
            ("TOKEN", "tok-123"),
            ("DATABASE_URL", "postgres://u:pw@db/x"),
            ("HOME", "/root"),
        ]);
        let orders = s.env_for("orders", &env);
        assert_eq!(
            expand("Bearer ${TOKEN}", &orders).unwrap(),
            "Bearer tok-123"
        );
        for text in [
            "u=${DATABASE_URL}",
            "${HOME:-/tmp}",
            "${UNSET_AND_REFUSED:-x}",
        ] {
            let err = expand(text, &orders).unwrap_err();
            assert!(
                matches!(err, ExpandError::NotAllowed { .. }),
                "{text}: {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("action_secrets") && msg.contains("[orders]"),
                "{msg}"
            );
            assert!(!msg.contains("pw@db") && !msg.contains("/root"), "{msg}");
        }
        let rogue = s.env_for("rogue", &env);
        assert!(matches!(
            expand("${TOKEN}", &rogue).unwrap_err(),
            ExpandError::NotAllowed { .. }
        ));
        assert_eq!(rogue.var("TOKEN"), None);
    }

    #[test]
    fn file_observers_may_use_the_variables_they_use_in_the_file() {
        let yaml = "observers:\n  - name: orders\n    table: public.orders\n    actions:\n      - type: webhook\n        url: http://127.0.0.1:1/${PATH_PART:-x}\n        headers: { Authorization: \"Bearer ${TOKEN}\" }\n        secret: ${HOOK_SECRET}\n";
        let env = process(&[
            ("TOKEN", "t"),
            ("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ]);
        let config = crate::config::parse_str(
            yaml,
            &env,
            &crate::config::Defaults {
                worker_id: "w".into(),
            },
        )
        .unwrap();
        let s = &config.action_secrets;
        for v in ["TOKEN", "HOOK_SECRET", "PATH_PART"] {
            assert!(s.allows("orders", v), "{v}");
            assert!(!s.allows("other", v), "{v}");
        }
        assert!(!s.allows("orders", "DATABASE_URL"));

        // the same actions read back from the database, for `orders` and for another name
        let raw = &config.observers[0].actions_raw;
        let retry = RetryPolicy::default();
        assert!(actions_from_json(raw, &s.env_for("orders", &env), &retry).is_ok());
        let problems = actions_from_json(raw, &s.env_for("copycat", &env), &retry).unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 3, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("actions[0].secret:") && t.contains("${HOOK_SECRET}")),
            "{text:?}"
        );
        assert!(text.iter().all(|t| !t.contains("whsec_MfKQ")), "{text:?}");
    }
}
