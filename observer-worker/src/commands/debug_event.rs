//! `debug-event ID`: one event end to end, from `observers.debug_event(id)`.

use std::io::Write;

use serde_json::Value;

use crate::cli::Format;
use crate::db::operator::{OperatorDb, DEBUG_EVENT};

use super::exact_json::Exact;
use super::failure::CliError;
use super::output::{cell, truncate, Table};
use super::session::fail;

const SECTIONS: [(&str, &str); 3] = [
    ("dlq", "DEAD LETTERS"),
    ("parked", "PARKED (waiting for redelivery)"),
    ("dedup", "DEDUPLICATION"),
];

pub async fn run(
    db: &OperatorDb,
    id: i64,
    format: Format,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let rows = db
        .text_rows("observers.debug_event", DEBUG_EVENT, &[&id])
        .await
        .map_err(|e| fail(db, e))?;
    // payloads keep every digit of their numbers (exact_json); the rest is read through Value
    let exact = Exact::from_db(rows.first().and_then(|r| r.as_deref()))?;
    let v = exact.to_value();
    let text = match format {
        Format::Json => format!("{}\n", exact.pretty()),
        Format::Text if knows_nothing(&v) => String::new(),
        Format::Text => render(id, &exact),
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write output: {e}")))?;
    if knows_nothing(&v) {
        return Err(CliError::not_found(format!(
            "no event with id {id}: it never existed, or retention dropped its day's outbox \
             partition (and it has no dead letters, parked pairs or attempts)"
        )));
    }
    Ok(0)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Neither the event nor any trace of it.
pub fn knows_nothing(v: &Value) -> bool {
    v.get("event").is_none_or(Value::is_null)
        && ["attempts", "dlq", "parked", "dedup"]
            .iter()
            .all(|k| list(v, k).is_empty())
}

/// A generic table of JSON objects: `id` first, then the other keys (payloads left out).
fn objects_table(items: &[Value]) -> String {
    let mut keys: Vec<String> = Vec::new();
    if items.iter().any(|it| it.get("id").is_some()) {
        keys.push("id".to_owned());
    }
    for it in items {
        if let Some(o) = it.as_object() {
            for k in o.keys() {
                if k != "payload" && k != "body" && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    let mut t = Table::new(&keys);
    for it in items {
        t.row(
            keys.iter()
                .map(|k| truncate(&cell(it.get(k)), 70))
                .collect(),
        );
    }
    t.render()
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// The text report; `exact` is `observers.debug_event(id)` (row images printed exactly).
pub fn render(id: i64, exact: &Exact) -> String {
    let v = &exact.to_value();
    let mut out = String::new();
    let event = v.get("event").filter(|e| !e.is_null());
    let exact_event = exact.get("event");
    match event {
        Some(e) => {
            out.push_str(&format!(
                "EVENT {}  {} on {}  (observer {}, txid {}, captured {})\n",
                cell(e.get("id")),
                cell(e.get("op")),
                cell(e.get("table")),
                cell(e.get("observer")),
                cell(e.get("txid")),
                cell(e.get("captured_at")),
            ));
            for k in ["new", "old", "changed"] {
                match exact_event.and_then(|x| x.get(k)) {
                    None | Some(Exact::Null) => {}
                    Some(x) => out.push_str(&format!("  {k:<8} {}\n", x.compact())),
                }
            }
        }
        None => out.push_str(&format!(
            "EVENT {id}: not in the outbox (never captured, or its day was dropped by retention)\n"
        )),
    }
    let state = v.get("state").and_then(Value::as_str).unwrap_or("unknown");
    let meaning = match state {
        "finished" | "delivered" => {
            "the group's cursor has passed it: each action was delivered, skipped as already \
             done, dead-lettered or queued for redelivery"
        }
        "pending" => "not delivered yet: the group's cursor has not reached it",
        "in_open_batch" => "in the batch the leader is working on right now",
        _ => "unknown",
    };
    out.push_str(&format!("\nSTATE {state}: {meaning}\n"));

    let observers = list(v, "observers");
    out.push_str("\nOBSERVERS\n");
    if observers.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut t = Table::new(&["observer", "matched", "reason"]);
        for o in observers {
            t.row(vec![
                cell(o.get("name")),
                cell(o.get("matched")),
                cell(o.get("reason")),
            ]);
        }
        out.push_str(&indent(&t.render()));
    }

    let actions = list(v, "actions");
    if !actions.is_empty() {
        out.push_str("\nACTIONS\n");
        let mut t = Table::new(&["action", "type", "webhook-id", "result"]);
        for a in actions {
            t.row(vec![
                cell(a.get("action_index")),
                cell(a.get("type")),
                cell(a.get("webhook_id")),
                cell(a.get("result")),
            ]);
        }
        out.push_str(&indent(&t.render()));
    }

    let attempts = list(v, "attempts");
    out.push_str("\nATTEMPTS\n");
    if attempts.is_empty() {
        out.push_str("  none recorded\n");
    } else {
        let mut t = Table::new(&[
            "action", "attempt", "at", "duration", "status", "outcome", "worker", "error",
        ]);
        for a in attempts {
            t.row(vec![
                cell(a.get("action_index")),
                cell(a.get("attempt")),
                cell(a.get("at")),
                a.get("duration_ms")
                    .filter(|d| !d.is_null())
                    .map(|d| format!("{d}ms"))
                    .unwrap_or_default(),
                cell(a.get("status")),
                cell(a.get("outcome")),
                cell(a.get("worker_id")),
                truncate(&cell(a.get("error")), 70),
            ]);
        }
        out.push_str(&indent(&t.render()));
    }

    for (key, title) in SECTIONS {
        let items = list(v, key);
        out.push_str(&format!("\n{title}\n"));
        if items.is_empty() {
            out.push_str("  none\n");
        } else {
            out.push_str(&indent(&objects_table(items)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_every_section() {
        let v = json!({
            "event": {"id": 42, "observer": "orders", "op": "UPDATE", "table": "public.orders",
                      "txid": 900, "captured_at": "2026-05-01T10:00:00+00:00",
                      "new": {"id": 1}, "old": {"id": 1}, "changed": ["total"]},
            "state": "finished",
            "actions": [{"action_index": 0, "type": "webhook", "webhook_id": "evt_42_0",
                         "result": "dead-lettered"}],
            "observers": [{"name": "orders", "matched": true, "reason": "captured"},
                          {"name": "big", "matched": false, "reason": "condition false"}],
            "attempts": [{"action_index": 0, "attempt": 1, "at": "2026-05-01T10:00:01+00:00",
                          "duration_ms": 12, "status": 500, "outcome": "retry", "error": "HTTP 500",
                          "worker_id": "w-1"}],
            "dlq": [{"id": 3, "error": "HTTP 500", "payload": {"x": 1}}],
            "parked": [], "dedup": []
        });
        let text = render(42, &Exact::from(&v));
        assert!(
            text.starts_with("EVENT 42  UPDATE on public.orders"),
            "{text}"
        );
        assert!(text.contains("changed  [\"total\"]"), "{text}");
        assert!(text.contains("STATE finished"), "{text}");
        assert!(
            text.contains("0       webhook  evt_42_0    dead-lettered"),
            "{text}"
        );
        assert!(
            text.contains("big       no       condition false"),
            "{text}"
        );
        assert!(text.contains("12ms"), "{text}");
        assert!(
            text.contains("DEAD LETTERS\n  ID  ERROR\n  3   HTTP 500\n"),
            "{text}"
        );
        assert!(!knows_nothing(&v));
    }

    #[test]
    fn unknown_event() {
        let v = json!({"event": null, "state": "unknown", "observers": [], "attempts": [],
                       "dlq": [], "parked": [], "dedup": []});
        assert!(knows_nothing(&v));
        assert!(render(5, &Exact::from(&v)).contains("EVENT 5: not in the outbox"));
    }
}
