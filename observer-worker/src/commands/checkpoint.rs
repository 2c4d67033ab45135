//! `checkpoint show [--group G]` and `checkpoint skip --group G [--dry-run] [--yes]`: a group's
//! delivery cursor (SQL: `observers.checkpoint_show()` / `observers.checkpoint_skip()`).

use std::io::Write;

use serde_json::{json, Value};

use crate::cli::{CheckpointCommand, Format};
use crate::db::operator::{OperatorDb, CHECKPOINT_SHOW, CHECKPOINT_SKIP};

use super::failure::CliError;
use super::output::{ago, cell, field, json as to_json, plural, Table};
use super::session::fail;

/// Checks the arguments before connecting: a skip needs `--dry-run` or `--yes` (there is no
/// prompt: the CLI runs in scripts and CI without a terminal).
pub fn precheck(c: &CheckpointCommand) -> Result<(), CliError> {
    if let CheckpointCommand::Skip {
        group,
        dry_run,
        yes,
    } = c
    {
        if group.trim().is_empty() {
            return Err(CliError::invalid("--group must not be empty"));
        }
        if !dry_run && !yes {
            return Err(CliError::invalid(format!(
                "refusing to skip the backlog of group {group} without --yes: every event \
                 committed so far would count as delivered. Run `checkpoint skip --group {group} \
                 --dry-run` first to see what would be skipped, then add --yes"
            )));
        }
    }
    Ok(())
}

pub async fn run(
    db: &OperatorDb,
    c: &CheckpointCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    precheck(c)?;
    let text = match c {
        CheckpointCommand::Show { group } => {
            let rows = db
                .json_rows("observers.checkpoint_show", CHECKPOINT_SHOW, &[group])
                .await
                .map_err(|e| fail(db, e))?;
            if let (Some(g), true) = (group, rows.is_empty()) {
                return Err(CliError::not_found(format!(
                    "group {g} has no observers and no checkpoint (`checkpoint show` lists the groups)"
                )));
            }
            match format {
                Format::Json => to_json(&Value::Array(rows)),
                Format::Text => render_show(&rows),
            }
        }
        CheckpointCommand::Skip { group, dry_run, .. } => {
            let rows = db
                .json_rows(
                    "observers.checkpoint_skip",
                    CHECKPOINT_SKIP,
                    &[group, dry_run],
                )
                .await
                .map_err(|e| fail(db, e))?;
            match format {
                Format::Json => to_json(&json!({
                    "group": group, "dry_run": dry_run,
                    "skipped": rows.iter().filter_map(|r| r.get("skipped").and_then(Value::as_i64)).sum::<i64>(),
                    "observers": rows,
                })),
                Format::Text => render_skip(group, *dry_run, &rows),
            }
        }
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write output: {e}")))?;
    Ok(0)
}

pub fn render_show(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "no groups (no observers, no checkpoints)\n".to_owned();
    }
    let mut t = Table::new(&[
        "group",
        "backlog",
        "oldest undelivered",
        "batch",
        "last_id",
        "max_id",
        "epoch",
        "snap_lo",
        "snap_hi",
        "updated",
    ]);
    for r in rows {
        let batch = match r.get("batch_open").and_then(Value::as_bool) {
            Some(true) => "open",
            _ => "none",
        };
        t.row(vec![
            field(r, "group_name"),
            field(r, "backlog"),
            ago(r.get("oldest_undelivered_secs")),
            batch.to_owned(),
            field(r, "last_id"),
            field(r, "max_id"),
            field(r, "epoch"),
            field(r, "snap_lo"),
            field(r, "snap_hi"),
            cell(r.get("updated_at")),
        ]);
    }
    t.render()
}

pub fn render_skip(group: &str, dry_run: bool, rows: &[Value]) -> String {
    let total: i64 = rows
        .iter()
        .filter_map(|r| r.get("skipped").and_then(Value::as_i64))
        .sum();
    let events = plural(total, "event", "events");
    let mut s = if dry_run {
        format!("would skip {events} of group {group} (dry run: nothing changed)\n")
    } else {
        format!(
            "skipped {events} of group {group}: its cursor now starts after every event committed \
             so far (a leader in the middle of a batch was fenced and starts a new batch)\n"
        )
    };
    let mut t = Table::new(&["observer", "skipped", "from_id", "to_id"]);
    let mut replays = Vec::new();
    for r in rows {
        t.row(vec![
            field(r, "observer"),
            field(r, "skipped"),
            field(r, "from_id"),
            field(r, "to_id"),
        ]);
        if let (Some(o), Some(from), Some(to)) = (
            r.get("observer").and_then(Value::as_str),
            r.get("from_id").and_then(Value::as_i64),
            r.get("to_id").and_then(Value::as_i64),
        ) {
            replays.push(format!(
                "  fraiseql-observers replay {o} --from {from} --to {to}"
            ));
        }
    }
    if !t.is_empty() {
        s.push_str(&t.render());
    }
    if !replays.is_empty() {
        s.push_str(
            "the skipped events stay replayable while the outbox retains them (observers.retention):\n",
        );
        for r in replays {
            s.push_str(&r);
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_needs_dry_run_or_yes() {
        let skip = |dry_run, yes| CheckpointCommand::Skip {
            group: "g".into(),
            dry_run,
            yes,
        };
        let e = precheck(&skip(false, false)).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(
            e.message.contains("--yes") && e.message.contains("--dry-run"),
            "{e}"
        );
        assert!(precheck(&skip(true, false)).is_ok());
        assert!(precheck(&skip(false, true)).is_ok());
        assert!(precheck(&CheckpointCommand::Show { group: None }).is_ok());
    }

    #[test]
    fn skip_report_names_the_replay_ranges() {
        let rows = vec![
            json!({"observer": "orders", "skipped": 3, "from_id": 5, "to_id": 9, "applied": false}),
            json!({"observer": "lines", "skipped": 0, "from_id": null, "to_id": null, "applied": false}),
        ];
        let s = render_skip("g", true, &rows);
        assert!(
            s.starts_with("would skip 3 events of group g (dry run"),
            "{s}"
        );
        assert!(s.contains("replay orders --from 5 --to 9"), "{s}");
        assert!(!s.contains("replay lines"), "{s}");
    }
}
