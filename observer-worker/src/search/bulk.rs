//! The Elasticsearch bulk API, pure: NDJSON bodies, batches by count and bytes, and what an
//! answer means for each item (docs/SEARCH.md, "Per-item handling").
//!
//! | answer                                   | meaning                                        |
//! |------------------------------------------|------------------------------------------------|
//! | item 2xx                                 | indexed: done                                  |
//! | item 409 (`version_conflict_engine_exception`) | indexed before (a resend after a crash): done |
//! | item 429, 5xx                            | send this item again, after a backoff          |
//! | item 400 and other 4xx                   | dead letter, with the reason                   |
//! | request 413                              | split the request in two (a lone document: dead letter) |
//! | request 429, 5xx                         | send the whole request again, after a backoff  |
//! | request 401/403, other 4xx, no answer, timeout | hold everything (breaker open), try again later |

use serde_json::Value;

/// One document to create.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub event_id: i64,
    /// `<prefix>-YYYY.MM.DD`.
    pub index: String,
    /// `_id`: `evt_<installation>_<event id>`.
    pub id: String,
    /// The document (JSON text).
    pub source: String,
}

impl Item {
    /// Bytes this item adds to a bulk body.
    pub fn body_len(&self) -> usize {
        action_line(self).len() + 1 + self.source.len() + 1
    }
}

fn action_line(i: &Item) -> String {
    serde_json::json!({"create": {"_index": i.index, "_id": i.id}}).to_string()
}

/// The NDJSON body of a bulk request: `create` actions (a document that exists answers 409).
pub fn ndjson<'a>(items: impl IntoIterator<Item = &'a Item>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(action_line(i).as_bytes());
        out.push(b'\n');
        out.extend_from_slice(i.source.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Splits `items` into bulk requests of at most `max_count` items and `max_bytes` body bytes
/// (an item larger than `max_bytes` goes alone). Order is kept.
pub fn chunks(items: Vec<Item>, max_count: usize, max_bytes: usize) -> Vec<Vec<Item>> {
    let mut out: Vec<Vec<Item>> = Vec::new();
    let mut cur: Vec<Item> = Vec::new();
    let mut bytes = 0usize;
    for i in items {
        let len = i.body_len();
        if !cur.is_empty() && (cur.len() >= max_count.max(1) || bytes + len > max_bytes) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += len;
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What one item's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAnswer {
    Created,
    Exists,
    Retry { status: u16, reason: String },
    DeadLetter { status: u16, reason: String },
}

pub fn classify_item(status: u16, reason: &str) -> ItemAnswer {
    match status {
        200..=299 => ItemAnswer::Created,
        409 => ItemAnswer::Exists,
        // 401/403 on one item: a block (read-only index) or rights on that index; wait for it
        429 | 500..=599 | 401 | 403 => ItemAnswer::Retry {
            status,
            reason: reason.to_owned(),
        },
        _ => ItemAnswer::DeadLetter {
            status,
            reason: reason.to_owned(),
        },
    }
}

/// What a bulk request's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// One answer per item, in order.
    Items(Vec<ItemAnswer>),
    TooLarge,
    RetryAll {
        status: u16,
        reason: String,
    },
    Hold {
        reason: String,
    },
}

/// Classifies an HTTP answer to a bulk request of `n` items.
pub fn classify_response(status: u16, body: &[u8], n: usize) -> Answer {
    match status {
        200..=299 => match parse_items(body, n) {
            Ok(items) => Answer::Items(items),
            // a 200 we cannot read: the items may or may not be in; resending is safe (409)
            Err(reason) => Answer::RetryAll { status, reason },
        },
        413 => Answer::TooLarge,
        429 | 500..=599 => Answer::RetryAll {
            status,
            reason: error_reason(body).unwrap_or_else(|| format!("HTTP {status}")),
        },
        _ => Answer::Hold {
            reason: format!(
                "HTTP {status}: {}",
                error_reason(body).unwrap_or_else(|| snippet(body))
            ),
        },
    }
}

fn parse_items(body: &[u8], n: usize) -> Result<Vec<ItemAnswer>, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the bulk answer is not JSON ({e}): {}", snippet(body)))?;
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("the bulk answer has no items: {}", snippet(body)))?;
    if items.len() != n {
        return Err(format!(
            "the bulk answer has {} items for {n} documents",
            items.len()
        ));
    }
    items
        .iter()
        .map(|it| {
            // {"create": {...}} (or whatever the action was called)
            let inner = it
                .as_object()
                .and_then(|o| o.values().next())
                .ok_or_else(|| "a bulk answer item is not an object".to_owned())?;
            let status = inner
                .get("status")
                .and_then(Value::as_u64)
                .ok_or_else(|| "a bulk answer item has no status".to_owned())?;
            let status = u16::try_from(status).unwrap_or(599);
            let reason = inner.get("error").map(describe_error).unwrap_or_default();
            Ok(classify_item(status, &reason))
        })
        .collect()
}

/// `type: reason` of an Elasticsearch error object (or its text).
fn describe_error(e: &Value) -> String {
    match e {
        Value::Object(o) => {
            let t = o.get("type").and_then(Value::as_str).unwrap_or("error");
            let r = o.get("reason").and_then(Value::as_str).unwrap_or("");
            format!("{t}: {r}")
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn error_reason(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("error").map(describe_error)
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else if s.is_empty() {
        "(empty body)".to_owned()
    } else {
        s.to_owned()
    }
}

/// The index template (composable, `PUT _index_template/<prefix>`): a strict envelope with
/// typed fields; the row images stored but not indexed (no mapping per user column, so no
/// mapping explosion); `payload_text` and `payload_fields` make the payload searchable.
pub fn index_template(prefix: &str) -> Value {
    serde_json::json!({
        "index_patterns": [format!("{prefix}-*")],
        "template": {
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "event_id": {"type": "long"},
                    "observer": {"type": "keyword"},
                    "observer_id": {"type": "integer"},
                    "table": {"type": "keyword"},
                    "op": {"type": "keyword"},
                    "txid": {"type": "long"},
                    "captured_at": {"type": "date"},
                    "changed": {"type": "keyword"},
                    "new": {"type": "object", "enabled": false},
                    "old": {"type": "object", "enabled": false},
                    "payload_text": {"type": "text"},
                    "payload_fields": {"type": "keyword", "ignore_above": 1024}
                }
            }
        },
        "_meta": {"created_by": "fraiseql-observers", "docs": "docs/SEARCH.md"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, source: &str) -> Item {
        Item {
            event_id: id,
            index: "observer-events-2026.05.01".into(),
            id: format!("evt_x_{id}"),
            source: source.into(),
        }
    }

    #[test]
    fn ndjson_has_an_action_and_a_source_line_per_item() {
        let body = ndjson(&[item(1, r#"{"a":1}"#), item(2, r#"{"b":2}"#)]);
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            r#"{"create":{"_id":"evt_x_1","_index":"observer-events-2026.05.01"}}"#
        );
        assert_eq!(lines[1], r#"{"a":1}"#);
        assert!(text.ends_with('\n'));
        assert_eq!(
            item(1, r#"{"a":1}"#).body_len() + item(2, r#"{"b":2}"#).body_len(),
            text.len()
        );
    }

    #[test]
    fn chunks_by_count_and_bytes_keep_order() {
        let items: Vec<Item> = (1..=7).map(|i| item(i, "{}")).collect();
        let c = chunks(items.clone(), 3, usize::MAX);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 1]);
        let one = items[0].body_len();
        let c = chunks(items.clone(), 100, one * 2);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 2, 1]);
        let flat: Vec<i64> = c.into_iter().flatten().map(|i| i.event_id).collect();
        assert_eq!(flat, (1..=7).collect::<Vec<_>>());
        // an item bigger than the byte limit goes alone
        let big = item(9, &"x".repeat(100));
        let c = chunks(vec![item(8, "{}"), big, item(10, "{}")], 100, 50);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
    }

    #[test]
    fn item_answers() {
        let body = br#"{"errors":true,"items":[
            {"create":{"_id":"1","status":201,"result":"created"}},
            {"create":{"_id":"2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},
            {"create":{"_id":"3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"_id":"4","status":400,"error":{"type":"strict_dynamic_mapping_exception","reason":"no [x]"}}},
            {"create":{"_id":"5","status":503,"error":"unavailable"}}]}"#;
        let a = classify_response(200, body, 5);
        assert_eq!(
            a,
            Answer::Items(vec![
                ItemAnswer::Created,
                ItemAnswer::Exists,
                ItemAnswer::Retry {
                    status: 429,
                    reason: "es_rejected_execution_exception: queue full".into()
                },
                ItemAnswer::DeadLetter {
                    status: 400,
                    reason: "strict_dynamic_mapping_exception: no [x]".into()
                },
                ItemAnswer::Retry {
                    status: 503,
                    reason: "unavailable".into()
                },
            ])
        );
    }

    #[test]
    fn request_answers() {
        assert_eq!(classify_response(413, b"", 3), Answer::TooLarge);
        assert!(matches!(
            classify_response(503, br#"{"error":{"type":"x","reason":"y"}}"#, 3),
            Answer::RetryAll { status: 503, ref reason } if reason == "x: y"
        ));
        assert!(matches!(
            classify_response(429, b"slow down", 3),
            Answer::RetryAll { status: 429, .. }
        ));
        for s in [401, 403, 404, 400] {
            assert!(
                matches!(classify_response(s, b"{}", 3), Answer::Hold { .. }),
                "{s}"
            );
        }
        // a 200 whose items do not match what was sent: resend (safe: create answers 409)
        assert!(matches!(
            classify_response(200, br#"{"items":[]}"#, 2),
            Answer::RetryAll { .. }
        ));
        assert!(matches!(
            classify_response(200, b"<html>", 2),
            Answer::RetryAll { .. }
        ));
    }

    #[test]
    fn template_is_strict_and_stores_rows_unindexed() {
        let t = index_template("audit");
        assert_eq!(t["index_patterns"][0], "audit-*");
        let m = &t["template"]["mappings"];
        assert_eq!(m["dynamic"], "strict");
        assert_eq!(m["properties"]["new"]["enabled"], false);
        assert_eq!(m["properties"]["captured_at"]["type"], "date");
    }
}
