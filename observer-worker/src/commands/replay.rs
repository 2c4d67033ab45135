//! `replay OBSERVER --from ID --to ID [--force] [--dry-run]`: deliver past events again.

use std::io::Write;

use serde_json::json;

use crate::cli::Format;
use crate::db::operator::{OperatorDb, REPLAY};

use super::failure::CliError;
use super::output::{json as to_json, plural};
use super::session::fail;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayArgs<'a> {
    pub observer: &'a str,
    pub from: i64,
    pub to: i64,
    pub force: bool,
    pub dry_run: bool,
}

pub fn check(a: &ReplayArgs<'_>) -> Result<(), CliError> {
    if a.from < 1 || a.to < a.from {
        return Err(CliError::invalid(format!(
            "invalid range --from {} --to {}: event ids start at 1 and --to must be at least --from",
            a.from, a.to
        )));
    }
    Ok(())
}

pub async fn run(
    db: &OperatorDb,
    a: &ReplayArgs<'_>,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    check(a)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&a.observer, &a.from, &a.to, &a.force];
    // replay() has no dry-run argument: run it in a transaction and roll it back (exact count,
    // nothing kept).
    let n = if a.dry_run {
        db.begin().await.map_err(|e| fail(db, e))?;
        let r = db.scalar_i64("observers.replay", REPLAY, &params).await;
        db.rollback().await.map_err(|e| fail(db, e))?;
        r
    } else {
        db.scalar_i64("observers.replay", REPLAY, &params).await
    }
    .map_err(|e| fail(db, e))?;
    let text = match format {
        Format::Json => to_json(&json!({
            "observer": a.observer, "from": a.from, "to": a.to, "force": a.force,
            "dry_run": a.dry_run, "queued": n,
        })),
        Format::Text => render(a, n),
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write output: {e}")))?;
    Ok(0)
}

pub fn render(a: &ReplayArgs<'_>, n: i64) -> String {
    let pairs = plural(n, "event/action pair", "event/action pairs");
    let range = format!("events {}..={} of observer {}", a.from, a.to, a.observer);
    let mut s = if a.dry_run {
        format!("would queue {pairs} of {range} for redelivery (dry run: nothing changed)")
    } else {
        format!(
            "queued {pairs} of {range} for redelivery with their original webhook-ids; the \
             running worker of the observer's group delivers them"
        )
    };
    if n == 0 {
        s.push_str(
            ": nothing in that range (ids outside the outbox, another observer's events, or \
             already queued)",
        );
    }
    if !a.force && n > 0 {
        s.push_str(
            "; with deduplication on, pairs already delivered are skipped (--force sends them anyway)",
        );
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_checked_and_rendered() {
        let a = ReplayArgs {
            observer: "orders",
            from: 10,
            to: 5,
            force: false,
            dry_run: false,
        };
        assert_eq!(check(&a).unwrap_err().code, 2);
        let a = ReplayArgs { to: 20, ..a };
        assert!(check(&a).is_ok());
        assert!(render(&a, 11).starts_with("queued 11 event/action pairs of events 10..=20"));
        let d = ReplayArgs { dry_run: true, ..a };
        assert!(render(&d, 1).contains("would queue 1 event/action pair"));
        assert!(render(&d, 0).contains("nothing in that range"));
    }
}
