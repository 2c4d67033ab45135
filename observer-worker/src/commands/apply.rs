//! `apply --config FILE [--dry-run] [--prune]`: create or update the file's observers in one
//! transaction, before any worker runs (deploy pipelines: migrations → apply → application →
//! workers; docs/OPERATIONS.md "Deploying").
//!
//! The plan is what the database did, not a guess: every observer of the file goes through
//! `observers.create_observer(..., replace => true)` (the same call the worker makes at start, so
//! tables, columns, conditions and actions are checked by the database), the definitions are
//! compared before and after, and `--dry-run` rolls the transaction back. Observers of the file's
//! group that are not in the file are reported; `--prune` disables them (never drops: their
//! events stay in the outbox and `enable_observer` brings them back).
//!
//! Exit codes: 0 applied (or, with `--dry-run`, the plan printed), 2 the file is invalid or the
//! database refused an observer (nothing was changed), 1 the database cannot be reached.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{json, Value};

use crate::cli::Format;
use crate::config::Config;
use crate::db::operator::OperatorDb;
use crate::db::queries::CREATE_OBSERVER;

use super::failure::CliError;
use super::output::json as to_json;
use super::session;

/// Every observer's definition as the database holds it (what `replace` may change).
const DEFINITIONS: &str = "SELECT name, group_name, \
     to_jsonb(o) - '{id,created_at,updated_at,created_by}'::text[] AS def \
     FROM observers.observer AS o";
const DISABLE: &str = "SELECT observers.disable_observer($1)";

#[derive(Debug, Default)]
pub struct Plan {
    pub group: String,
    pub created: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// in the group, not in the file, disabled by --prune
    pub disabled: Vec<String>,
    /// in the group, not in the file, left as they are
    pub not_in_file: Vec<String>,
}

pub async fn run(
    url: &str,
    config: &Config,
    dry_run: bool,
    prune: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let mut db = session::connect(url).await?;
    let plan = apply(&mut db, config, dry_run, prune).await?;
    let text = match format {
        Format::Json => to_json(&json!({
            "group": plan.group,
            "dry_run": dry_run,
            "created": plan.created,
            "changed": plan.changed,
            "unchanged": plan.unchanged,
            "disabled": plan.disabled,
            "not_in_file": plan.not_in_file,
        })),
        Format::Text => render(&plan, dry_run, prune),
    };
    let _ = writeln!(out, "{text}");
    Ok(0)
}

async fn apply(
    db: &mut OperatorDb,
    config: &Config,
    dry_run: bool,
    prune: bool,
) -> Result<Plan, CliError> {
    let group = config.worker.group.clone();
    let (target, user) = (db.target().to_owned(), db.user().to_owned());
    let as_cli = |e: crate::db::DbError| CliError::from_db(e, &target, &user);
    let pg = |e: tokio_postgres::Error| {
        CliError::from_db(
            crate::db::DbError::classify(&target, "COMMIT", e),
            &target,
            &user,
        )
    };
    let tx = db
        .transaction()
        .await
        .map_err(|e| CliError::from_db(e, &target, &user))?;
    let before = definitions(&tx).await.map_err(as_cli)?;
    for o in &config.observers {
        tx.execute(
            CREATE_OBSERVER,
            &[
                &o.name,
                &o.table,
                &o.events,
                &o.condition,
                &o.columns,
                &o.ordering_key,
                &o.actions_raw,
                &group,
            ],
        )
        .await
        .map_err(|e| {
            let db_msg = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string());
            if e.as_db_error().is_some() {
                // the database refused the definition: bad input, nothing was changed
                CliError::invalid(format!(
                    "observer {} (table {}): {db_msg}; nothing was applied",
                    o.name, o.table
                ))
            } else {
                CliError::runtime(format!("applying observer {}: {e}", o.name))
            }
        })?;
    }
    let in_file: std::collections::BTreeSet<&str> =
        config.observers.iter().map(|o| o.name.as_str()).collect();
    let mut plan = Plan {
        group: group.clone(),
        ..Plan::default()
    };
    for (name, (g, def)) in &before {
        if g != &group || in_file.contains(name.as_str()) {
            continue;
        }
        let enabled = def.get("enabled").and_then(Value::as_bool).unwrap_or(true);
        if prune && enabled {
            tx.execute(DISABLE, &[name])
                .await
                .map_err(|e| CliError::runtime(format!("disabling observer {name}: {e}")))?;
            plan.disabled.push(name.clone());
        } else {
            plan.not_in_file.push(name.clone());
        }
    }
    let after = definitions(&tx).await.map_err(as_cli)?;
    for o in &config.observers {
        match (before.get(&o.name), after.get(&o.name)) {
            (None, _) => plan.created.push(o.name.clone()),
            (Some(b), Some(a)) if b == a => plan.unchanged.push(o.name.clone()),
            _ => plan.changed.push(o.name.clone()),
        }
    }
    if dry_run {
        tx.rollback().await.map_err(pg)?;
    } else {
        tx.commit().await.map_err(pg)?;
    }
    Ok(plan)
}

async fn definitions(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<BTreeMap<String, (String, Value)>, crate::db::DbError> {
    let rows = tx
        .query(DEFINITIONS, &[])
        .await
        .map_err(|e| crate::db::DbError::classify("", "reading observers.observer", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (r.get::<_, String>(1), r.get::<_, Value>(2)),
            )
        })
        .collect())
}

fn render(p: &Plan, dry_run: bool, prune: bool) -> String {
    let mut s = String::new();
    let head = if dry_run {
        "plan (dry run: nothing was changed)"
    } else {
        "applied"
    };
    s.push_str(&format!("{head}: group {}\n", p.group));
    let lines: [(&str, &str, &Vec<String>); 5] = [
        ("+", "create", &p.created),
        ("~", "change", &p.changed),
        ("=", "unchanged", &p.unchanged),
        ("-", "disable (not in the file; --prune)", &p.disabled),
        (
            "?",
            "not in the file (kept; --prune disables it)",
            &p.not_in_file,
        ),
    ];
    for (mark, what, names) in lines {
        for n in names {
            s.push_str(&format!("  {mark} {n}: {what}\n"));
        }
    }
    let verb = if dry_run { "would be" } else { "were" };
    s.push_str(&format!(
        "{} to create, {} to change, {} unchanged, {} disabled, {} not in the file ({verb} applied in one transaction)",
        p.created.len(),
        p.changed.len(),
        p.unchanged.len(),
        p.disabled.len(),
        p.not_in_file.len()
    ));
    if !prune && !p.not_in_file.is_empty() {
        s.push_str(
            "\nobservers not in the file keep running; add --prune to disable them \
             (their events stay; observers.enable_observer brings one back)",
        );
    }
    s
}
