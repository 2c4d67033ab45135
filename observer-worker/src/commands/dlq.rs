//! `dlq list / show / retry / retry-all / purge / stats`: the dead-letter queue.
//!
//! Retrying queues a dead letter for redelivery by the running worker of its group, with the
//! same webhook-id; the entry leaves the DLQ only when that delivery succeeds (on failure it
//! stays, with its error, attempts and retries updated).

use std::io::Write;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::cli::{DlqCommand, DlqFilterArgs, Format};
use crate::db::operator::{
    DlqFilter, OperatorDb, DLQ_LIST, DLQ_PURGE, DLQ_RETRY, DLQ_RETRY_ALL, DLQ_SHOW, DLQ_STATS,
};

use super::exact_json::Exact;
use super::failure::CliError;
use super::output::{field, json as to_json, plural, truncate, Table};
use super::session::fail;
use super::time_arg::parse_time;

/// Turns the command-line filters into typed ones (times parsed relative to `now`).
pub fn filter(args: &DlqFilterArgs, now: SystemTime) -> Result<DlqFilter, CliError> {
    let time = |s: &Option<String>, flag: &str| -> Result<Option<SystemTime>, CliError> {
        s.as_deref()
            .map(|s| parse_time(s, now).map_err(|e| CliError::invalid(format!("--{flag}: {e}"))))
            .transpose()
    };
    let f = DlqFilter {
        observer: args.observer.clone(),
        since: time(&args.since, "since")?,
        before: time(&args.before, "before")?,
        error_contains: args.error_contains.clone(),
    };
    if let (Some(a), Some(b)) = (f.since, f.before) {
        if a >= b {
            return Err(CliError::invalid(
                "--since must be earlier than --before (nothing can match)",
            ));
        }
    }
    Ok(f)
}

/// Checks a purge before anything is sent: a filter, --id or --all, and not --all with filters.
pub fn check_purge(f: &DlqFilter, ids: &[i64], all: bool) -> Result<(), CliError> {
    if all && (!f.is_empty() || !ids.is_empty()) {
        return Err(CliError::invalid(
            "--all deletes every dead letter: do not combine it with --observer, --since, \
             --before, --error or --id",
        ));
    }
    if !all && f.is_empty() && ids.is_empty() {
        return Err(CliError::invalid(
            "refusing to purge without a filter: give --observer, --since, --before, --error or \
             --id (add --dry-run to see how many match), or --all to delete every dead letter",
        ));
    }
    Ok(())
}

/// Checks the arguments without touching the database (exit 2 for a typo even when the
/// database is down).
pub fn precheck(command: &DlqCommand) -> Result<(), CliError> {
    let now = SystemTime::now();
    match command {
        DlqCommand::List { filter: f, limit } => {
            filter(f, now)?;
            if *limit < 1 {
                return Err(CliError::invalid("--limit must be at least 1"));
            }
        }
        DlqCommand::RetryAll { filter: f, .. } => {
            filter(f, now)?;
        }
        DlqCommand::Purge {
            filter: f,
            ids,
            all,
            ..
        } => check_purge(&filter(f, now)?, ids, *all)?,
        DlqCommand::Show { .. } | DlqCommand::Retry { .. } | DlqCommand::Stats => {}
    }
    Ok(())
}

pub async fn run(
    db: &OperatorDb,
    command: &DlqCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let now = SystemTime::now();
    let text = match command {
        DlqCommand::List {
            filter: args,
            limit,
        } => {
            if *limit < 1 {
                return Err(CliError::invalid("--limit must be at least 1"));
            }
            let f = filter(args, now)?;
            let rows = db
                .json_rows(
                    "observers.dlq_list",
                    DLQ_LIST,
                    &[&f.observer, &f.since, &f.before, &f.error_contains, limit],
                )
                .await
                .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&Value::Array(rows)),
                Format::Text => render_list(&rows, *limit),
            }
        }
        DlqCommand::Show { id } => {
            let entry = show(db, *id).await?;
            match format {
                Format::Json => format!("{}\n", entry.pretty()),
                Format::Text => render_show(&entry),
            }
        }
        DlqCommand::Retry { id, dry_run } => {
            let entry = show(db, *id).await?.to_value();
            let queued = if *dry_run {
                db.begin().await.map_err(|e| fail(db, e))?;
                let r = db
                    .scalar_bool("observers.dlq_retry", DLQ_RETRY, &[id])
                    .await;
                db.rollback().await.map_err(|e| fail(db, e))?;
                r
            } else {
                db.scalar_bool("observers.dlq_retry", DLQ_RETRY, &[id])
                    .await
            }
            .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&json!({
                    "id": id, "webhook_id": entry.get("webhook_id"), "queued": queued,
                    "already_pending": !queued, "dry_run": dry_run,
                })),
                Format::Text => render_retry(&entry, *id, queued, *dry_run),
            }
        }
        DlqCommand::RetryAll {
            filter: args,
            dry_run,
        } => {
            let f = filter(args, now)?;
            let n = db
                .scalar_i64(
                    "observers.dlq_retry_all",
                    DLQ_RETRY_ALL,
                    &[&f.observer, &f.since, &f.before, &f.error_contains, dry_run],
                )
                .await
                .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&json!({"queued": n, "dry_run": dry_run})),
                Format::Text if *dry_run => format!(
                    "would queue {} for redelivery (dry run: nothing changed)\n",
                    plural(n, "dead letter", "dead letters")
                ),
                Format::Text => format!(
                    "queued {} for redelivery by the running worker of each group (same \
                     webhook-ids); entries leave the DLQ when their delivery succeeds\n",
                    plural(n, "dead letter", "dead letters")
                ),
            }
        }
        DlqCommand::Purge {
            filter: args,
            ids,
            all,
            dry_run,
        } => {
            let f = filter(args, now)?;
            check_purge(&f, ids, *all)?;
            let ids: Option<Vec<i64>> = (!ids.is_empty()).then(|| ids.clone());
            let n = db
                .scalar_i64(
                    "observers.dlq_purge",
                    DLQ_PURGE,
                    &[
                        &f.observer,
                        &f.since,
                        &f.before,
                        &f.error_contains,
                        &ids,
                        all,
                        dry_run,
                    ],
                )
                .await
                .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&json!({"deleted": n, "dry_run": dry_run})),
                Format::Text if *dry_run => format!(
                    "would delete {} (dry run: nothing changed)\n",
                    plural(n, "dead letter", "dead letters")
                ),
                Format::Text => format!("deleted {}\n", plural(n, "dead letter", "dead letters")),
            }
        }
        DlqCommand::Stats => {
            let rows = db
                .json_rows("observers.dlq_stats", DLQ_STATS, &[])
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

/// One dead letter, its payload's numbers exact (`exact_json`).
async fn show(db: &OperatorDb, id: i64) -> Result<Exact, CliError> {
    let rows = db
        .text_rows("observers.dlq_show", DLQ_SHOW, &[&id])
        .await
        .map_err(|e| fail(db, e))?;
    match rows.first() {
        Some(text) => Exact::from_db(text.as_deref()),
        None => Err(CliError::not_found(format!(
            "no dead letter with id {id}: see `fraiseql-observers dlq list`"
        ))),
    }
}

fn action(e: &Value) -> String {
    format!("{}:{}", field(e, "action_index"), field(e, "action_type"))
}

pub fn render_list(rows: &[Value], limit: i32) -> String {
    if rows.is_empty() {
        return "no dead letters match\n".to_owned();
    }
    let mut t = Table::new(&[
        "id",
        "observer",
        "event",
        "action",
        "webhook-id",
        "attempts",
        "status",
        "retries",
        "retry pending",
        "created",
        "error",
    ]);
    for e in rows {
        t.row(vec![
            field(e, "id"),
            field(e, "observer"),
            field(e, "event_id"),
            action(e),
            field(e, "webhook_id"),
            field(e, "attempts"),
            field(e, "last_status"),
            field(e, "retries"),
            field(e, "retry_pending"),
            field(e, "created_at"),
            truncate(&field(e, "error"), 70),
        ]);
    }
    let mut out = t.render();
    out.push_str(&format!(
        "{} (oldest first)",
        plural(rows.len() as i64, "dead letter", "dead letters")
    ));
    if rows.len() as i64 >= i64::from(limit) {
        out.push_str(&format!(
            "; showing the first {limit}: narrow the filters or raise --limit"
        ));
    }
    out.push('\n');
    out
}

pub fn render_show(exact: &Exact) -> String {
    let e = &exact.to_value();
    let mut out = String::new();
    let rows = [
        ("id", field(e, "id")),
        ("observer", field(e, "observer")),
        ("group", field(e, "group_name")),
        ("event", field(e, "event_id")),
        ("action", action(e)),
        ("webhook-id", field(e, "webhook_id")),
        ("error", field(e, "error")),
        ("attempts", field(e, "attempts")),
        ("last status", field(e, "last_status")),
        ("created", field(e, "created_at")),
        ("retries", field(e, "retries")),
        ("last retry", field(e, "last_retry_at")),
        ("retry pending", field(e, "retry_pending")),
    ];
    for (k, v) in rows {
        let v = if v.is_empty() { "-".to_owned() } else { v };
        out.push_str(&format!("{k:<14} {v}\n"));
    }
    out.push_str("payload:\n");
    let payload = match exact.get("payload") {
        Some(Exact::Null) | None => "-".to_owned(),
        Some(p) => p.pretty(),
    };
    for l in payload.lines() {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn render_retry(e: &Value, id: i64, queued: bool, dry_run: bool) -> String {
    let wid = field(e, "webhook_id");
    match (queued, dry_run) {
        (true, false) => format!(
            "dead letter {id} queued for redelivery with webhook-id {wid}; the running worker of \
             group {} delivers it, and it leaves the DLQ when that succeeds \
             (`fraiseql-observers dlq show {id}` shows the outcome)\n",
            field(e, "group_name")
        ),
        (true, true) => format!(
            "dead letter {id} would be queued for redelivery with webhook-id {wid} (dry run: \
             nothing changed)\n"
        ),
        (false, _) => {
            format!("dead letter {id} already has a retry pending; nothing to do\n")
        }
    }
}

pub fn render_stats(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "the dead-letter queue is empty\n".to_owned();
    }
    let mut t = Table::new(&[
        "observer",
        "group",
        "entries",
        "retry pending",
        "oldest",
        "newest",
        "last error",
    ]);
    for r in rows {
        t.row(vec![
            field(r, "observer"),
            field(r, "group_name"),
            field(r, "entries"),
            field(r, "retry_pending"),
            field(r, "oldest"),
            field(r, "newest"),
            truncate(&field(r, "last_error"), 70),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        json!({"id": 7, "observer": "orders", "group_name": "default", "event_id": 42,
               "action_index": 0, "action_type": "webhook", "webhook_id": "evt_42_0",
               "error": "HTTP 500 Internal Server Error: boom", "attempts": 5, "last_status": 500,
               "created_at": "2026-05-01T10:00:00.5+00:00", "retries": 1,
               "last_retry_at": null, "retry_pending": false,
               "payload": {"id": 42, "op": "INSERT"}})
    }

    #[test]
    fn filters_parse_and_purge_is_guarded() {
        let now = humantime::parse_rfc3339("2026-05-01T10:00:00Z").unwrap();
        let f = filter(
            &DlqFilterArgs {
                observer: Some("orders".into()),
                since: Some("1h".into()),
                before: Some("2026-05-01T09:30:00Z".into()),
                error_contains: None,
            },
            now,
        )
        .unwrap();
        assert_eq!(
            f.since,
            Some(humantime::parse_rfc3339("2026-05-01T09:00:00Z").unwrap())
        );
        let e = filter(
            &DlqFilterArgs {
                since: Some("soon".into()),
                ..Default::default()
            },
            now,
        )
        .unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.starts_with("--since: invalid time"), "{e}");
        let e = filter(
            &DlqFilterArgs {
                since: Some("10m".into()),
                before: Some("1h".into()),
                ..Default::default()
            },
            now,
        )
        .unwrap_err();
        assert!(e.message.contains("earlier"), "{e}");

        let none = DlqFilter::default();
        assert_eq!(check_purge(&none, &[], false).unwrap_err().code, 2);
        assert!(check_purge(&none, &[], true).is_ok());
        assert!(check_purge(&none, &[3], false).is_ok());
        assert!(check_purge(&f, &[], false).is_ok());
        assert_eq!(check_purge(&f, &[], true).unwrap_err().code, 2);
    }

    #[test]
    fn list_show_stats_rendering() {
        let text = render_list(&[entry()], 100);
        assert!(text.contains("evt_42_0"), "{text}");
        assert!(text.contains("0:webhook"), "{text}");
        assert!(text.contains("2026-05-01 10:00:00Z"), "{text}");
        assert!(text.ends_with("1 dead letter (oldest first)\n"), "{text}");
        assert!(render_list(&[entry()], 1).contains("raise --limit"));
        assert_eq!(render_list(&[], 10), "no dead letters match\n");

        let text = render_show(&Exact::from(&entry()));
        assert!(text.contains("webhook-id     evt_42_0\n"), "{text}");
        assert!(text.contains("last retry     -\n"), "{text}");
        assert!(text.contains("  \"op\": \"INSERT\""), "{text}");

        let stats = render_stats(&[json!({"observer": "orders", "group_name": "default",
            "entries": 3, "retry_pending": 1, "oldest": null, "newest": null, "last_error": "x"})]);
        assert!(stats.starts_with("OBSERVER  GROUP    ENTRIES"), "{stats}");
        assert_eq!(render_stats(&[]), "the dead-letter queue is empty\n");

        assert!(render_retry(&entry(), 7, false, false).contains("already has a retry pending"));
        assert!(render_retry(&entry(), 7, true, true).contains("dry run"));
    }
}
