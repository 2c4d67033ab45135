//! `search [TEXT] [--table T] [--observer O] [--op OP] [--since 1h] [--until T]
//! [--field new.customer_id=42] [--facet op | --timeseries hour] [--limit N] [--page TOKEN]`:
//! the audit trail on PostgreSQL (SQL: `observers.search()`, `observers.search_facets()`,
//! `observers.search_timeseries()`, 52_search.sql; docs/SEARCH.md).
//!
//! Events come newest first; when a page is full, the text output ends with the `--page` token
//! of the next one (JSON: `next_page`). Payload numbers are printed exactly as stored
//! (`exact_json`).

use std::io::Write;
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::cli::{Format, SearchArgs};
use crate::db::operator::OperatorDb;

use super::exact_json::Exact;
use super::failure::CliError;
use super::output::{cell, field, json as to_json, plural, truncate, Table};
use super::session::fail;
use super::time_arg::parse_time;

/// Events, newest first, one JSON object per row (text: numbers exact).
pub const SEARCH: &str = "SELECT to_jsonb(s)::text FROM observers.search(\
       query => $1, table_name => $2, observer => $3, op => $4, since => $5, until => $6, \
       fields => $7::text::jsonb, lim => $8, before_at => $9::text::timestamptz, before_id => $10) AS s";

/// Counts by a facet.
pub const FACETS: &str = "SELECT to_jsonb(s) FROM observers.search_facets(\
       facet => $1, query => $2, table_name => $3, observer => $4, op => $5, since => $6, \
       until => $7, fields => $8::text::jsonb, lim => $9) AS s";

/// Counts per bucket.
pub const TIMESERIES: &str = "SELECT to_jsonb(s) FROM observers.search_timeseries(\
       bucket => $1, query => $2, table_name => $3, observer => $4, op => $5, since => $6, \
       until => $7, fields => $8::text::jsonb) AS s";

/// The arguments, checked and typed before connecting.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub text: Option<String>,
    pub table: Option<String>,
    pub observer: Option<String>,
    pub op: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// `{"new.customer_id": "42"}` (values compared as text; `null` means absent/null).
    pub fields: Option<String>,
    pub limit: i32,
    /// The page token `<captured_at>/<event_id>` of the last row of the previous page.
    pub page: Option<(String, i64)>,
    pub facet: Option<String>,
    pub timeseries: Option<String>,
}

pub fn check(a: &SearchArgs, now: SystemTime) -> Result<SearchQuery, CliError> {
    let time = |s: &Option<String>, flag: &str| -> Result<Option<SystemTime>, CliError> {
        s.as_deref()
            .map(|s| parse_time(s, now).map_err(|e| CliError::invalid(format!("--{flag}: {e}"))))
            .transpose()
    };
    let since = time(&a.since, "since")?;
    let until = time(&a.until, "until")?;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(CliError::invalid(
                "--since must be earlier than --until (nothing can match)",
            ));
        }
    }
    let op = match a.op.as_deref().map(str::to_ascii_uppercase) {
        None => None,
        Some(op) if matches!(op.as_str(), "INSERT" | "UPDATE" | "DELETE") => Some(op),
        Some(op) => {
            return Err(CliError::invalid(format!(
                "--op must be INSERT, UPDATE or DELETE, not {op:?}"
            )))
        }
    };
    let mut fields = Map::new();
    for f in &a.fields {
        let Some((path, value)) = f.split_once('=') else {
            return Err(CliError::invalid(format!(
                "--field {f:?}: write PATH=VALUE, e.g. --field new.customer_id=42"
            )));
        };
        let path = path.trim();
        if !(path.starts_with("new.") || path.starts_with("old.")) || path.len() < 5 {
            return Err(CliError::invalid(format!(
                "--field {f:?}: the path starts with new. or old. (new.customer_id, old.status)"
            )));
        }
        let value = if value == "null" {
            Value::Null
        } else {
            Value::String(value.to_owned())
        };
        fields.insert(path.to_owned(), value);
    }
    if a.facet.is_some() && a.timeseries.is_some() {
        return Err(CliError::invalid(
            "--facet and --timeseries are two different reports: give one of them",
        ));
    }
    if let Some(b) = a.timeseries.as_deref() {
        if !matches!(b, "minute" | "hour" | "day") {
            return Err(CliError::invalid(format!(
                "--timeseries must be minute, hour or day, not {b:?}"
            )));
        }
    }
    if !(1..=10_000).contains(&a.limit) {
        return Err(CliError::invalid("--limit must be between 1 and 10000"));
    }
    let page = match a.page.as_deref() {
        None => None,
        Some(p) => Some(parse_page(p)?),
    };
    Ok(SearchQuery {
        text: a.text.clone().filter(|t| !t.trim().is_empty()),
        table: a.table.clone(),
        observer: a.observer.clone(),
        op,
        since,
        until,
        fields: (!fields.is_empty()).then(|| Value::Object(fields).to_string()),
        limit: a.limit,
        page,
        facet: a.facet.clone(),
        timeseries: a.timeseries.clone(),
    })
}

/// `2026-05-01T10:00:00.123456+00:00/1042` -> (time text, id).
pub fn parse_page(p: &str) -> Result<(String, i64), CliError> {
    let bad = || {
        CliError::invalid(format!(
            "--page {p:?}: use the token printed under the previous page (<captured_at>/<id>)"
        ))
    };
    let (at, id) = p.rsplit_once('/').ok_or_else(bad)?;
    let id: i64 = id.parse().map_err(|_| bad())?;
    if at.len() < 19 || !at.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    Ok((at.to_owned(), id))
}

pub async fn run(
    db: &OperatorDb,
    q: &SearchQuery,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let text = if let Some(facet) = &q.facet {
        let rows = db
            .json_rows(
                "observers.search_facets",
                FACETS,
                &[
                    facet,
                    &q.text,
                    &q.table,
                    &q.observer,
                    &q.op,
                    &q.since,
                    &q.until,
                    &q.fields,
                    &q.limit,
                ],
            )
            .await
            .map_err(|e| fail(db, e))?;
        match format {
            Format::Json => to_json(&json!({"facet": facet, "values": rows})),
            Format::Text => render_counts(facet, "value", &rows),
        }
    } else if let Some(bucket) = &q.timeseries {
        let rows = db
            .json_rows(
                "observers.search_timeseries",
                TIMESERIES,
                &[
                    bucket,
                    &q.text,
                    &q.table,
                    &q.observer,
                    &q.op,
                    &q.since,
                    &q.until,
                    &q.fields,
                ],
            )
            .await
            .map_err(|e| fail(db, e))?;
        match format {
            Format::Json => to_json(&json!({"bucket": bucket, "series": rows})),
            Format::Text => render_counts(bucket, "bucket_start", &rows),
        }
    } else {
        let (before_at, before_id) = match &q.page {
            Some((at, id)) => (Some(at.clone()), Some(*id)),
            None => (None, None),
        };
        let rows = db
            .text_rows(
                "observers.search",
                SEARCH,
                &[
                    &q.text,
                    &q.table,
                    &q.observer,
                    &q.op,
                    &q.since,
                    &q.until,
                    &q.fields,
                    &q.limit,
                    &before_at,
                    &before_id,
                ],
            )
            .await
            .map_err(|e| fail(db, e))?;
        let events = rows
            .iter()
            .map(|t| Exact::from_db(t.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if events.len() == q.limit as usize {
            events.last().and_then(page_token)
        } else {
            None
        };
        match format {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(&json!({
                    "events": events,
                    "next_page": next,
                }))
                .map_err(|e| CliError::runtime(format!("cannot render JSON: {e}")))?;
                s.push('\n');
                s
            }
            Format::Text => render_events(&events, next.as_deref()),
        }
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write output: {e}")))?;
    Ok(0)
}

/// The `--page` token that continues after this row.
fn page_token(row: &Exact) -> Option<String> {
    let v = row.to_value();
    let at = v.get("captured_at")?.as_str()?.to_owned();
    let id = v.get("event_id")?.as_i64()?;
    Some(format!("{at}/{id}"))
}

pub fn render_events(events: &[Exact], next: Option<&str>) -> String {
    if events.is_empty() {
        return "no events found\n".to_owned();
    }
    let mut t = Table::new(&["id", "captured_at", "observer", "table", "op", "row"]);
    for e in events {
        let v = e.to_value();
        // the row as it is after the change (before it, for a DELETE)
        let row = match e.get("new") {
            Some(n) if !n.is_null() => n.compact(),
            _ => e.get("old").map(Exact::compact).unwrap_or_default(),
        };
        t.row(vec![
            field(&v, "event_id"),
            cell(v.get("captured_at")),
            field(&v, "observer_name"),
            field(&v, "table_label"),
            field(&v, "operation"),
            truncate(&row, 80),
        ]);
    }
    let mut s = t.render();
    s.push_str(&plural(events.len() as i64, "event", "events"));
    s.push_str(", newest first\n");
    if let Some(n) = next {
        s.push_str(&format!("next page: --page '{n}'\n"));
    }
    s
}

pub fn render_counts(what: &str, key: &str, rows: &[Value]) -> String {
    if rows.is_empty() {
        return "no events found\n".to_owned();
    }
    let mut t = Table::new(&[what, "events"]);
    for r in rows {
        t.row(vec![field(r, key), field(r, "events")]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args() -> SearchArgs {
        SearchArgs {
            text: Some("refund".into()),
            table: None,
            observer: None,
            op: None,
            since: None,
            until: None,
            fields: vec![],
            limit: 50,
            page: None,
            facet: None,
            timeseries: None,
        }
    }

    #[test]
    fn arguments_are_checked_before_connecting() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let q = check(
            &SearchArgs {
                since: Some("1h".into()),
                op: Some("update".into()),
                fields: vec!["new.customer_id=42".into(), "old.note=null".into()],
                ..args()
            },
            now,
        )
        .unwrap();
        assert_eq!(q.since, Some(now - Duration::from_secs(3600)));
        assert_eq!(q.op.as_deref(), Some("UPDATE"));
        let f: Value = serde_json::from_str(q.fields.as_deref().unwrap()).unwrap();
        assert_eq!(f, json!({"new.customer_id": "42", "old.note": null}));
        for (bad, needle) in [
            (
                SearchArgs {
                    op: Some("truncate".into()),
                    ..args()
                },
                "--op",
            ),
            (
                SearchArgs {
                    fields: vec!["customer_id=1".into()],
                    ..args()
                },
                "new. or old.",
            ),
            (
                SearchArgs {
                    fields: vec!["new.id".into()],
                    ..args()
                },
                "PATH=VALUE",
            ),
            (
                SearchArgs {
                    since: Some("1h".into()),
                    until: Some("2h".into()),
                    ..args()
                },
                "earlier",
            ),
            (
                SearchArgs {
                    facet: Some("op".into()),
                    timeseries: Some("hour".into()),
                    ..args()
                },
                "one of them",
            ),
            (
                SearchArgs {
                    timeseries: Some("week".into()),
                    ..args()
                },
                "minute, hour or day",
            ),
            (SearchArgs { limit: 0, ..args() }, "--limit"),
            (
                SearchArgs {
                    page: Some("nonsense".into()),
                    ..args()
                },
                "--page",
            ),
        ] {
            let e = check(&bad, now).unwrap_err();
            assert_eq!(e.code, 2, "{e}");
            assert!(e.message.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn page_tokens_round_trip() {
        let row = Exact::parse(
            r#"{"event_id": 1042, "captured_at": "2026-05-01T10:00:00.123456+00:00", "new": {"total": 1500.00}}"#,
        )
        .unwrap();
        let t = page_token(&row).unwrap();
        assert_eq!(t, "2026-05-01T10:00:00.123456+00:00/1042");
        assert_eq!(
            parse_page(&t).unwrap(),
            ("2026-05-01T10:00:00.123456+00:00".to_owned(), 1042)
        );
        let text = render_events(&[row], Some(&t));
        assert!(text.contains("1500.00"), "numbers exact: {text}");
        assert!(text.contains("next page: --page '2026-05-01T10:00:00.123456+00:00/1042'"));
    }
}
