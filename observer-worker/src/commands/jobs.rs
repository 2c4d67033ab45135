//! `jobs list / show ID / retry ID / cancel ID / stats`: the job queue (SQL:
//! `observers.job_list/job_show/job_retry/job_cancel/job_stats`, docs/JOBS.md).

use std::io::Write;

use serde_json::{json, Value};

use crate::cli::{Format, JobsCommand};

use super::failure::CliError;
use super::output::{cell, field, json as to_json, truncate, Table};
use super::session::fail;
use crate::db::operator::OperatorDb;

const LIST: &str = "SELECT to_jsonb(j) FROM observers.job_list($1, $2, $3, $4) AS j";
const SHOW: &str = "SELECT to_jsonb(j) FROM observers.job_show($1) AS j";
const RETRY: &str = "SELECT observers.job_retry($1)";
const CANCEL: &str = "SELECT observers.job_cancel($1)";
const STATS: &str = "SELECT to_jsonb(s) || jsonb_build_object('oldest_due_secs', \
     extract(epoch FROM s.oldest_due_age)) FROM observers.job_stats() AS s";

const STATES: &[&str] = &[
    "available",
    "scheduled",
    "running",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
];

pub async fn run(
    db: &OperatorDb,
    c: &JobsCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let text = match c {
        JobsCommand::List {
            state,
            queue,
            observer,
            limit,
        } => {
            if let Some(s) = state {
                if !STATES.contains(&s.as_str()) {
                    return Err(CliError::invalid(format!(
                        "--state {s:?}: expected one of {}",
                        STATES.join(", ")
                    )));
                }
            }
            let rows = db
                .json_rows("observers.job_list", LIST, &[state, queue, observer, limit])
                .await
                .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&Value::Array(rows)),
                Format::Text => render_list(&rows),
            }
        }
        JobsCommand::Show { id } => {
            let rows = db
                .json_rows("observers.job_show", SHOW, &[id])
                .await
                .map_err(|e| fail(db, e))?;
            let Some(job) = rows.into_iter().next() else {
                return Err(CliError::not_found(format!(
                    "job {id} does not exist (finished jobs are kept for observers.retention)"
                )));
            };
            match format {
                Format::Json => to_json(&job),
                Format::Text => render_show(&job),
            }
        }
        JobsCommand::Retry { id } | JobsCommand::Cancel { id } => {
            let (what, sql, ctx) = match c {
                JobsCommand::Retry { .. } => ("retried", RETRY, "observers.job_retry"),
                _ => ("cancelled", CANCEL, "observers.job_cancel"),
            };
            let changed = db
                .scalar_bool(ctx, sql, &[id])
                .await
                .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&json!({ "id": id, what: changed })),
                Format::Text if changed => format!("job {id} {what}\n"),
                Format::Text => format!("job {id} not {what} (already due, running or finished)\n"),
            }
        }
        JobsCommand::Stats => {
            let rows = db
                .json_rows("observers.job_stats", STATS, &[])
                .await
                .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&Value::Array(rows)),
                Format::Text => render_stats(&rows),
            }
        }
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write output: {e}")))?;
    Ok(0)
}

fn render_list(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut t = Table::new(&[
        "id",
        "state",
        "queue",
        "observer",
        "action",
        "event",
        "attempts",
        "run_at",
        "worker",
        "last error",
    ]);
    for r in rows {
        t.row(vec![
            field(r, "id"),
            field(r, "state"),
            field(r, "queue"),
            field(r, "observer"),
            field(r, "action_index"),
            field(r, "event_id"),
            format!("{}/{}", field(r, "attempts"), field(r, "max_attempts")),
            cell(r.get("run_at")),
            field(r, "worker_id"),
            truncate(&field(r, "last_error"), 60),
        ]);
    }
    t.render()
}

fn render_show(job: &Value) -> String {
    let mut s = String::new();
    for k in [
        "id",
        "state",
        "group_name",
        "queue",
        "observer",
        "action_index",
        "event_id",
        "webhook_id",
        "unique_key",
        "attempts",
        "max_attempts",
        "priority",
        "run_at",
        "created_at",
        "started_at",
        "finished_at",
        "worker_id",
        "last_status",
        "last_error",
        "enqueued_by",
        "dlq_id",
    ] {
        s.push_str(&format!("{k:<13} {}\n", cell(job.get(k))));
    }
    s.push_str(&format!("body          {}\n", field(job, "body")));
    s
}

fn render_stats(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut t = Table::new(&[
        "group",
        "queue",
        "paused",
        "available",
        "scheduled",
        "running",
        "retryable",
        "completed",
        "discarded",
        "cancelled",
        "oldest due",
    ]);
    for r in rows {
        t.row(vec![
            field(r, "group_name"),
            field(r, "queue"),
            field(r, "paused"),
            field(r, "available"),
            field(r, "scheduled"),
            field(r, "running"),
            field(r, "retryable"),
            field(r, "completed"),
            field(r, "discarded"),
            field(r, "cancelled"),
            super::output::ago(r.get("oldest_due_secs")),
        ]);
    }
    t.render()
}
