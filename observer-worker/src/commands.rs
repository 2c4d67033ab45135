//! The CLI commands (other than the worker itself, see [`crate::worker`]).
//!
//! `validate-config` lives here; the operator commands (`status`, `dlq ...`, `debug-event`,
//! `replay`, `checkpoint ...`, `search`) each have a module below, share [`session`] (connect, check the
//! extension), [`failure`] (errors as advice, exit codes) and [`output`] (tables, ages, JSON), and
//! are dispatched by [`run_operator`]. Their SQL is in [`crate::db::operator`].

pub mod apply;
pub mod checkpoint;
pub mod debug_event;
pub mod dlq;
pub mod exact_json;
pub mod failure;
pub mod jobs;
pub mod output;
pub mod replay;
pub mod search;
pub mod session;
pub mod status;
pub mod time_arg;

use std::io::Write;
use std::path::Path;

use crate::cli::{Command, Format};
use crate::config::{self, yaml, Config, ConfigError, Defaults, Problem, ProcessEnv};
use crate::db::schema::TableInfo;
use crate::db::{Db, DbError};
use crate::error::{EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME};

pub use failure::CliError;

/// Runs an operator command (`status`, `dlq ...`, `debug-event`, `replay`, `checkpoint ...`)
/// against `url`.
/// Returns the exit code; errors are printed to stderr as `error: ...` (exit codes in
/// [`failure`]). Other commands return `None`.
pub async fn run_operator(
    command: &Command,
    url: &str,
    format: Format,
    out: &mut dyn Write,
) -> Option<i32> {
    let result = match command {
        Command::Status { .. }
        | Command::DebugEvent { .. }
        | Command::Dlq { .. }
        | Command::Replay { .. }
        | Command::Checkpoint { .. }
        | Command::Jobs { .. }
        | Command::Search { .. } => operator(command, url, format, out).await,
        _ => return None,
    };
    Some(match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.code
        }
    })
}

async fn operator(
    command: &Command,
    url: &str,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    // arguments are checked before connecting: a typo is exit 2 even when the database is down
    if let Command::Replay {
        observer,
        from,
        to,
        force,
        dry_run,
        ..
    } = command
    {
        replay::check(&replay::ReplayArgs {
            observer,
            from: *from,
            to: *to,
            force: *force,
            dry_run: *dry_run,
        })?;
    }
    if let Command::Dlq { command, .. } = command {
        dlq::precheck(command)?;
    }
    if let Command::Checkpoint { command, .. } = command {
        checkpoint::precheck(command)?;
    }
    let search = match command {
        Command::Search { args, .. } => Some(search::check(args, std::time::SystemTime::now())?),
        _ => None,
    };
    let db = session::connect(url).await?;
    if let Some(q) = &search {
        return search::run(&db, q, format, out).await;
    }
    match command {
        Command::Status { check, .. } => status::run(&db, format, *check, out).await,
        Command::DebugEvent { id, .. } => debug_event::run(&db, *id, format, out).await,
        Command::Dlq { command, .. } => dlq::run(&db, command, format, out).await,
        Command::Checkpoint { command, .. } => checkpoint::run(&db, command, format, out).await,
        Command::Jobs { command, .. } => jobs::run(&db, command, format, out).await,
        Command::Replay {
            observer,
            from,
            to,
            force,
            dry_run,
            ..
        } => {
            let a = replay::ReplayArgs {
                observer,
                from: *from,
                to: *to,
                force: *force,
                dry_run: *dry_run,
            };
            replay::run(&db, &a, format, out).await
        }
        _ => Ok(0),
    }
}

/// `validate-config FILE`: pure validation. Prints the result to stdout and
/// returns the exit code (0 valid, 2 invalid or unreadable).
pub fn validate_config(file: &Path, format: Format, out: &mut dyn Write) -> i32 {
    let result = config::load_file(file, &ProcessEnv, &Defaults::for_this_process());
    report_validation(file, result, format, out)
}

/// `validate-config FILE --database-url URL`: the pure validation, then (if
/// it passed) the observers are checked against the live schema: tables,
/// columns, ordering keys and conditions. Read-only. Exit 1 if the database
/// cannot be reached.
pub async fn validate_config_live(
    file: &Path,
    database_url: &str,
    format: Format,
    out: &mut dyn Write,
) -> i32 {
    let result = config::load_file(file, &ProcessEnv, &Defaults::for_this_process());
    let config = match result {
        Ok(c) => c,
        Err(e) => return report_validation(file, Err(e), format, out),
    };
    let tree = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| yaml::parse(&s).ok());
    let db = match Db::new(database_url, std::time::Duration::from_secs(5)) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    match live_problems(&db, &config, tree.as_ref()).await {
        Ok(problems) if problems.is_empty() => report_validation(file, Ok(config), format, out),
        Ok(problems) => {
            let e = ConfigError::Invalid {
                file: file.display().to_string(),
                problems,
            };
            report_validation(file, Err(e), format, out)
        }
        Err(e) => {
            eprintln!("error: cannot check the configuration against the database: {e}");
            EXIT_RUNTIME
        }
    }
}

/// Checks the observers of `config` against the live schema.
pub async fn live_problems(
    db: &Db,
    config: &Config,
    tree: Option<&yaml::Node>,
) -> Result<Vec<Problem>, DbError> {
    let mut problems = Vec::new();
    if db.extension_version().await?.is_none() {
        problems.push(Problem {
            path: String::new(),
            mark: None,
            message: format!(
                "the pg_observers extension is not installed in the database at {}: run `CREATE EXTENSION pg_observers;`",
                db.target()
            ),
        });
        return Ok(problems);
    }
    for (i, o) in config.observers.iter().enumerate() {
        // internal eviction observers are reported at their lookup (`lookups[j].table`)
        let (section, item) = match crate::config::lookups::evict_observer_lookup(config, i) {
            Some(j) => ("lookups", j),
            None => ("observers", i),
        };
        let base = format!("{section}[{item}]");
        let node = tree.and_then(|t| t.get(section)).and_then(|n| n.item(item));
        let at = |key: &str| -> (String, Option<yaml::Mark>) {
            (
                format!("{base}.{key}"),
                node.and_then(|n| n.get(key))
                    .and_then(|n| n.mark)
                    .or(node.and_then(|n| n.mark)),
            )
        };
        let mut push = |key: &str, message: String| {
            let (path, mark) = at(key);
            problems.push(Problem {
                path,
                mark,
                message,
            });
        };
        let info = match db.table_info(&o.table).await {
            Ok(info) => info,
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                push("table", format!("invalid table name {:?}: {e}", o.table));
                continue;
            }
        };
        let (label, columns) = match info {
            TableInfo::Missing => {
                push(
                    "table",
                    format!("table {} does not exist in the database", o.table),
                );
                continue;
            }
            TableInfo::NotATable { label, kind } => {
                push(
                    "table",
                    format!("{label} is {kind}; observers can only watch tables"),
                );
                continue;
            }
            TableInfo::Table { label, columns } => (label, columns),
        };
        for (key, list) in [("columns", &o.columns), ("ordering_key", &o.ordering_key)] {
            for col in list.iter().flatten() {
                if !columns.contains(col) {
                    push(
                        key,
                        format!(
                            "column {col:?} does not exist in {label} (its columns: {})",
                            columns.join(", ")
                        ),
                    );
                }
            }
        }
        // templates: every new.<col> / old.<col> they read must be a column of the table, and
        // old / new must exist for the observer's events
        let mut template_problems = Vec::new();
        for (j, action) in o.actions.iter().enumerate() {
            let crate::config::ActionConfig::Slack(slack) = action else {
                continue;
            };
            let text = node
                .and_then(|n| n.get("actions"))
                .and_then(|n| n.item(j))
                .and_then(|n| n.get("text"));
            let path = format!("{base}.actions[{j}].text");
            let mark = text.and_then(|n| n.mark).or(node.and_then(|n| n.mark));
            for (side, col) in slack.text.row_columns() {
                let message = if !columns.contains(col) {
                    format!(
                        "template reads {side}.{col}, but {label} has no column {col:?} (its columns: {})",
                        columns.join(", ")
                    )
                } else if side == "old" && o.events.iter().all(|e| e == "INSERT") {
                    format!("template reads old.{col}, but INSERT events have no old row: use new.{col}")
                } else if side == "new" && o.events.iter().all(|e| e == "DELETE") {
                    format!("template reads new.{col}, but DELETE events have no new row: use old.{col}")
                } else {
                    continue;
                };
                template_problems.push(Problem {
                    path: path.clone(),
                    mark,
                    message,
                });
            }
        }
        if let Some(cond) = &o.condition {
            for op in &o.events {
                if let Some(msg) = db.condition_error(&label, cond, op).await? {
                    let msg = if msg.contains("missing FROM-clause entry for table \"old\"")
                        && op == "INSERT"
                    {
                        "references OLD, which INSERT events do not have: use NEW or put INSERT in a separate observer".to_owned()
                    } else if msg.contains("missing FROM-clause entry for table \"new\"")
                        && op == "DELETE"
                    {
                        "references NEW, which DELETE events do not have: use OLD or put DELETE in a separate observer".to_owned()
                    } else {
                        msg
                    };
                    push(
                        "condition",
                        format!("condition does not compile for {op} events on {label}: {msg}"),
                    );
                    break;
                }
            }
        }
        problems.extend(template_problems);
    }
    Ok(problems)
}

fn report_validation(
    file: &Path,
    result: Result<Config, ConfigError>,
    format: Format,
    out: &mut dyn Write,
) -> i32 {
    let name = file.display().to_string();
    let written = match (&result, format) {
        (Ok(c), Format::Text) => writeln!(
            out,
            "{name}: valid ({} observer{} in group `{}`)",
            c.observers.len(),
            if c.observers.len() == 1 { "" } else { "s" },
            c.worker.group
        ),
        (Ok(c), Format::Json) => writeln!(
            out,
            "{}",
            serde_json::json!({"file": name, "valid": true, "observers": c.observers.len(), "group": c.worker.group, "problems": []})
        ),
        (Err(e), Format::Text) => writeln!(out, "{e}"),
        (Err(e), Format::Json) => writeln!(out, "{}", problems_json(&name, e)),
    };
    match (result, written) {
        (_, Err(_)) => EXIT_RUNTIME,
        (Ok(_), Ok(())) => EXIT_OK,
        (Err(_), Ok(())) => EXIT_CONFIG,
    }
}

/// `{"file":…, "valid": false, "problems": [{"path","line","column","message"}]}`.
pub fn problems_json(file: &str, e: &ConfigError) -> serde_json::Value {
    let problems: Vec<serde_json::Value> = match e {
        ConfigError::Read { .. } => vec![
            serde_json::json!({"path": "", "line": null, "column": null, "message": e.to_string()}),
        ],
        ConfigError::Invalid { problems, .. } => problems
            .iter()
            .map(|p| {
                serde_json::json!({
                    "path": p.path,
                    "line": p.mark.map(|m| m.line),
                    "column": p.mark.map(|m| m.column),
                    "message": p.message,
                })
            })
            .collect(),
    };
    serde_json::json!({"file": file, "valid": false, "problems": problems})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_config_exit_codes_and_output() {
        let dir = std::env::temp_dir().join(format!("ow-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(&good, "worker: { group: g1 }\n").unwrap();
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "worker:\n  batch_size: lots\n  colour: red\n").unwrap();

        let mut out = Vec::new();
        assert_eq!(validate_config(&good, Format::Text, &mut out), 0);
        assert!(String::from_utf8_lossy(&out).contains("valid (0 observers in group `g1`)"));

        let mut out = Vec::new();
        assert_eq!(validate_config(&bad, Format::Text, &mut out), 2);
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.contains("bad.yaml:2:15: worker.batch_size: expected a whole number"),
            "{text}"
        );
        assert!(
            text.contains("bad.yaml:3:3: worker.colour: unknown key `colour`"),
            "{text}"
        );

        let mut out = Vec::new();
        assert_eq!(validate_config(&bad, Format::Json, &mut out), 2);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["valid"], false);
        assert_eq!(v["problems"][1]["line"], 3);
        assert_eq!(v["problems"][1]["column"], 3);

        let mut out = Vec::new();
        assert_eq!(
            validate_config(&dir.join("missing.yaml"), Format::Text, &mut out),
            2
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
