//! Templates of action fields and lookup arguments (minijinja, Jinja2 syntax).
//!
//! * Compiled once, when the configuration is read: a syntax error is a config
//!   problem at the template's YAML path, never a surprise at delivery time.
//! * Strict: an undefined variable or attribute is an error at render time,
//!   and so is printing a null value (`{{ old }}` on an INSERT): a template
//!   never silently renders an empty string where a value was expected.
//!   Handle nulls explicitly: `{{ x if x is not none else "-" }}`.
//! * Bounded: every render runs on a fixed fuel budget (no runaway loops).
//! * The lookups a template uses (`lookup.<name>`) are found at compile time,
//!   so only those are resolved when it renders.
//!
//! The render context is the event (SPEC §4: `id`, `observer`, `op`, `table`,
//! `new`, `old`, `changed`, `txid`, `captured_at`) plus `lookup`, a map of the
//! resolved lookups.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

/// The name of the one template in each environment.
const NAME: &str = "template";
/// Instructions one render may execute (a generous bound for a message).
pub const RENDER_FUEL: u64 = 200_000;
/// Longest template source accepted.
pub const MAX_SOURCE_LEN: usize = 64 * 1024;
/// The variable lookups are reached through.
pub const LOOKUP_VAR: &str = "lookup";

/// Why a template does not compile (a configuration problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("template syntax error: {0}")]
    Syntax(String),
    #[error("template is longer than {MAX_SOURCE_LEN} bytes")]
    TooLong,
    #[error(
        "`lookup` must be used as `lookup.<name>` (e.g. `{{{{ lookup.customer.email }}}}`) so the worker knows \
         which lookups to resolve"
    )]
    BareLookup,
}

/// Why a render failed (deterministic for a given event: not retryable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// A compiled template. Cheap to clone.
#[derive(Clone)]
pub struct Template {
    env: Arc<Environment<'static>>,
    lookups: Arc<BTreeSet<String>>,
    /// Other top-level variables the template reads (`new`, `op`, ...).
    variables: Arc<BTreeSet<String>>,
    /// Row columns read as `new.<col>` / `old.<col>`: (`new` or `old`, column).
    row_columns: Arc<BTreeSet<(String, String)>>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // the source may contain an expanded secret: do not print it
        f.debug_struct("Template")
            .field("lookups", &self.lookups)
            .field("variables", &self.variables)
            .finish()
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(RENDER_FUEL));
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "a value in the template is null (none); handle it explicitly, e.g. \
                 `{{ x if x is not none else \"-\" }}`",
            ));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env
}

impl Template {
    /// Compiles `source`. Pure.
    pub fn compile(source: &str) -> Result<Template, CompileError> {
        if source.len() > MAX_SOURCE_LEN {
            return Err(CompileError::TooLong);
        }
        let mut env = environment();
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| CompileError::Syntax(describe(&e)))?;
        let (lookups, variables, row_columns) = {
            let t = env
                .get_template(NAME)
                .map_err(|e| CompileError::Syntax(describe(&e)))?;
            let mut lookups = BTreeSet::new();
            let mut variables = BTreeSet::new();
            let mut row_columns = BTreeSet::new();
            for v in t.undeclared_variables(true) {
                let mut parts = v.splitn(3, '.');
                let head = parts.next().unwrap_or_default();
                if head == "new" || head == "old" {
                    if let Some(col) = parts.clone().next().filter(|c| !c.is_empty()) {
                        row_columns.insert((head.to_owned(), col.to_owned()));
                    }
                }
                if head == LOOKUP_VAR {
                    match parts.next() {
                        Some(name) if !name.is_empty() => {
                            lookups.insert(name.to_owned());
                        }
                        _ => return Err(CompileError::BareLookup),
                    }
                } else {
                    variables.insert(head.to_owned());
                }
            }
            (lookups, variables, row_columns)
        };
        Ok(Template {
            env: Arc::new(env),
            lookups: Arc::new(lookups),
            variables: Arc::new(variables),
            row_columns: Arc::new(row_columns),
        })
    }

    /// Names of the lookups the template reads (`lookup.<name>`).
    pub fn lookups(&self) -> &BTreeSet<String> {
        &self.lookups
    }

    /// Row columns the template reads as `new.<col>` or `old.<col>` (`validate-config
    /// --database-url` checks them against the table).
    pub fn row_columns(&self) -> &BTreeSet<(String, String)> {
        &self.row_columns
    }

    /// Top-level variables other than `lookup` the template reads.
    pub fn variables(&self) -> &BTreeSet<String> {
        &self.variables
    }

    /// Renders against `context` (a map).
    pub fn render(&self, context: &Value) -> Result<String, RenderError> {
        let t = self
            .env
            .get_template(NAME)
            .map_err(|e| RenderError(describe(&e)))?;
        t.render(context).map_err(|e| RenderError(describe(&e)))
    }
}

/// Variables every event provides (SPEC §4).
pub const EVENT_VARIABLES: &[&str] = &[
    "id",
    "observer",
    "op",
    "table",
    "new",
    "old",
    "changed",
    "txid",
    "captured_at",
];

/// The render context of an event (no lookups).
pub fn event_context(event: &serde_json::Value) -> Value {
    context(event, None)
}

/// The render context of an event with `lookup` set to `lookups` (name → value).
pub fn context(event: &serde_json::Value, lookups: Option<&serde_json::Value>) -> Value {
    let mut map = std::collections::BTreeMap::<&str, Value>::new();
    for k in EVENT_VARIABLES {
        let v = event.get(*k).unwrap_or(&serde_json::Value::Null);
        map.insert(k, Value::from_serialize(v));
    }
    if let Some(l) = lookups {
        map.insert(LOOKUP_VAR, Value::from_serialize(l));
    }
    Value::from(
        map.into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<std::collections::BTreeMap<String, Value>>(),
    )
}

/// One line: the error kind and detail, with the line number when known; no
/// template source (it may contain an expanded secret).
fn describe(e: &minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> serde_json::Value {
        json!({"id": 7, "observer": "o", "op": "INSERT", "table": "public.orders",
               "new": {"id": 3, "customer_id": 9, "total": 12.5, "note": null}, "old": null,
               "changed": null, "txid": 1, "captured_at": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn renders_event_fields_and_lookups() {
        let t = Template::compile("Order {{ new.id }} ({{ op }}) for {{ lookup.customer.name }}")
            .unwrap();
        assert_eq!(
            t.lookups().iter().collect::<Vec<_>>(),
            vec!["customer"],
            "lookups found at compile time"
        );
        assert!(t.variables().contains("new"));
        let ctx = context(&event(), Some(&json!({"customer": {"name": "Ada"}})));
        assert_eq!(t.render(&ctx).unwrap(), "Order 3 (INSERT) for Ada");
    }

    #[test]
    fn syntax_errors_are_compile_errors() {
        for bad in [
            "{{ new.id ",
            "{% if %}",
            "{{ new.id | }}",
            "{% for x in y %}",
        ] {
            let e = Template::compile(bad).unwrap_err();
            assert!(matches!(e, CompileError::Syntax(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn bare_lookup_is_rejected() {
        assert_eq!(
            Template::compile("{{ lookup }}").unwrap_err(),
            CompileError::BareLookup
        );
    }

    #[test]
    fn undefined_is_an_error_not_an_empty_string() {
        let ctx = event_context(&event());
        for src in [
            "{{ new.missing }}",
            "{{ nothing }}",
            "x{{ new.id.deeper }}",
            "{{ lookup.customer.email }}",
        ] {
            let t = Template::compile(src).unwrap();
            let e = t.render(&ctx).unwrap_err();
            assert!(e.0.contains("undefined"), "{src}: {e}");
        }
    }

    #[test]
    fn null_is_an_error_unless_handled() {
        let ctx = event_context(&event());
        let t = Template::compile("note: {{ new.note }}").unwrap();
        let e = t.render(&ctx).unwrap_err();
        assert!(e.0.contains("null"), "{e}");
        let t = Template::compile("note: {{ new.note if new.note is not none else '-' }}").unwrap();
        assert_eq!(t.render(&ctx).unwrap(), "note: -");
    }

    #[test]
    fn runaway_templates_are_bounded() {
        let t = Template::compile(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let e = t.render(&event_context(&event())).unwrap_err();
        assert!(e.0.to_lowercase().contains("fuel"), "{e}");
    }

    #[test]
    fn urlencode_is_available() {
        let t =
            Template::compile("/c/{{ new.note if new.note is not none else 'a b/c' | urlencode }}")
                .unwrap();
        assert_eq!(t.render(&event_context(&event())).unwrap(), "/c/a%20b/c");
    }
}
