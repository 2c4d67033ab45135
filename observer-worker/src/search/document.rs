//! The document the Elasticsearch sink indexes for one event, built in the worker from the
//! outbox row that `observers.feed_fetch()` returned (docs/SEARCH.md, "Mappings").
//!
//! It used to be built in SQL (`jsonb_build_object` with a `jsonb_path_query` for
//! `payload_text` and a `jsonb_each` for `payload_fields`), about 53 µs of database CPU per
//! document, on the same server as delivery's queries. Here the row images arrive as their
//! `jsonb::text` and are never parsed into values: one pass over the text finds the scalars,
//! and every piece of the document is spliced from the text as the database wrote it. So numbers
//! keep every digit (`1500.00` stays `1500.00`), and the document is **byte for byte** what the
//! SQL built: the same key order (jsonb's: shorter keys first, then bytewise), the same `", "`
//! and `": "` separators, the same string escapes (`jsonb::text` escapes exactly the characters
//! [`escape_into`] escapes, so an escaped value can be copied as it is). One difference by
//! design: `payload_fields` is sorted bytewise (the SQL sorted by the database's collation; the
//! e2e test compares against the SQL with `COLLATE "C"`). It is a keyword array: its order means
//! nothing to the index.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::db::FeedRow as EventRow;

/// The document of one event, ready for a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `YYYY.MM.DD`, the capture day (UTC): the daily index.
    pub day: String,
    /// Unix seconds of `captured_at` (the lag metric).
    pub captured_at: f64,
    /// The JSON text.
    pub source: String,
}

/// A row image that is not JSON text (the database sends `jsonb::text`, so this is a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_id}: the {image} row image is not valid JSON text (at byte {at})")]
pub struct DocumentError {
    pub event_id: i64,
    pub image: &'static str,
    pub at: usize,
}

/// Builds the document of `row` (see the module's documentation for the format).
pub fn build(row: &EventRow) -> Result<Document, DocumentError> {
    let mut text: Vec<&str> = Vec::new();
    let mut fields: Vec<Field> = Vec::new();
    for (image, prefix, json) in [("new", "new.", &row.new), ("old", "old.", &row.old)] {
        if let Some(json) = json {
            scan(json, prefix, &mut text, &mut fields).map_err(|at| DocumentError {
                event_id: row.event_id,
                image,
                at,
            })?;
        }
    }
    // ORDER BY the field path (unescaped), bytewise
    fields.sort_by(|a, b| a.path.cmp(&b.path));

    let (micros, day_num) = micros_and_day(row.captured_at);
    let (y, m, d) = civil_from_days(day_num);
    let tod = micros - day_num * 86_400_000_000;
    let (hh, mm, ss, us) = (
        tod / 3_600_000_000,
        tod / 60_000_000 % 60,
        tod / 1_000_000 % 60,
        tod % 1_000_000,
    );

    let mut out = String::with_capacity(
        256 + row.new.as_deref().map_or(0, str::len) * 2
            + row.old.as_deref().map_or(0, str::len) * 2,
    );
    // jsonb key order: by length, then bytewise
    out.push_str("{\"op\": ");
    opt_string(&mut out, row.op.as_deref());
    out.push_str(", \"new\": ");
    out.push_str(row.new.as_deref().unwrap_or("null"));
    out.push_str(", \"old\": ");
    out.push_str(row.old.as_deref().unwrap_or("null"));
    out.push_str(", \"txid\": ");
    opt_number(&mut out, row.txid);
    out.push_str(", \"table\": ");
    opt_string(&mut out, row.table.as_deref());
    out.push_str(", \"changed\": ");
    match &row.changed {
        None => out.push_str("null"),
        Some(cols) => {
            out.push('[');
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                opt_string(&mut out, c.as_deref());
            }
            out.push(']');
        }
    }
    out.push_str(", \"event_id\": ");
    out.push_str(&row.event_id.to_string());
    out.push_str(", \"observer\": ");
    opt_string(&mut out, row.observer.as_deref());
    out.push_str(&format!(
        ", \"captured_at\": \"{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{us:06}Z\""
    ));
    out.push_str(", \"observer_id\": ");
    opt_number(&mut out, row.observer_id);
    out.push_str(", \"payload_text\": ");
    if text.is_empty() {
        out.push_str("null");
    } else {
        out.push('"');
        for (i, t) in text.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(t);
        }
        out.push('"');
    }
    out.push_str(", \"payload_fields\": ");
    if fields.is_empty() {
        out.push_str("null");
    } else {
        out.push('[');
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push('"');
            out.push_str(f.prefix);
            out.push_str(f.raw_key);
            out.push('=');
            out.push_str(f.raw_value);
            out.push('"');
        }
        out.push(']');
    }
    out.push('}');
    Ok(Document {
        day: format!("{y:04}.{m:02}.{d:02}"),
        captured_at: micros as f64 / 1e6,
        source: out,
    })
}

/// A top-level scalar column of a row image: `new.<key>=<value>`.
struct Field<'a> {
    /// `new.<key>`, unescaped (the sort key).
    path: Vec<u8>,
    prefix: &'static str,
    /// The key and the value as escaped JSON string contents (a number or boolean as written).
    raw_key: &'a str,
    raw_value: &'a str,
}

/// One pass over a row image's JSON text: every string, number and boolean value (not keys,
/// not nulls), in document order, as escaped JSON string contents (`text`), and the top-level
/// scalar members (`fields`). `Err(byte offset)` if the text is not JSON.
fn scan<'a>(
    json: &'a str,
    prefix: &'static str,
    text: &mut Vec<&'a str>,
    fields: &mut Vec<Field<'a>>,
) -> Result<(), usize> {
    let b = json.as_bytes();
    // open containers: true for an object
    let mut stack: Vec<bool> = Vec::new();
    let mut expect_key = false;
    // the key of the current top-level member
    let mut top_key: Option<&'a str> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let scalar: &'a str = match c {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {
                i += 1;
                continue;
            }
            b'{' | b'[' => {
                stack.push(c == b'{');
                expect_key = c == b'{';
                i += 1;
                continue;
            }
            b'}' | b']' => {
                if stack.pop() != Some(c == b'}') {
                    return Err(i);
                }
                expect_key = false;
                i += 1;
                continue;
            }
            b',' => {
                expect_key = stack.last() == Some(&true);
                i += 1;
                continue;
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                loop {
                    match b.get(j) {
                        None => return Err(i),
                        Some(b'\\') => j += 2,
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                i = j + 1;
                let s = json.get(start..j).ok_or(start)?;
                if expect_key {
                    expect_key = false;
                    if stack.len() == 1 {
                        top_key = Some(s);
                    }
                    continue;
                }
                s
            }
            b't' | b'f' | b'n' => {
                let lit: &[u8] = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !b[i..].starts_with(lit) {
                    return Err(i);
                }
                i += lit.len();
                if c == b'n' {
                    continue;
                }
                &json[i - lit.len()..i]
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                &json[start..i]
            }
            _ => return Err(i),
        };
        text.push(scalar);
        if stack.len() == 1 && stack[0] {
            if let Some(k) = top_key {
                let mut path = prefix.as_bytes().to_vec();
                path.extend_from_slice(unescape(k).as_bytes());
                fields.push(Field {
                    path,
                    prefix,
                    raw_key: k,
                    raw_value: scalar,
                });
            }
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(b.len())
    }
}

/// The text of escaped JSON string contents (only keys with a backslash need the work).
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    match serde_json::from_str::<String>(&format!("\"{raw}\"")) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(raw),
    }
}

/// Appends `s` as a JSON string, escaped as PostgreSQL's `escape_json` does (and `jsonb::text`
/// therefore wrote every string of the row images): `"` `\` and the control characters, with
/// the short forms `\b \f \n \r \t` and `\u00XX` (lowercase hex) for the others.
pub fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn opt_string(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => escape_into(out, s),
        None => out.push_str("null"),
    }
}

fn opt_number<T: ToString>(out: &mut String, n: Option<T>) {
    match n {
        Some(n) => out.push_str(&n.to_string()),
        None => out.push_str("null"),
    }
}

/// Microseconds since the Unix epoch and the day number (days since 1970-01-01, floor).
fn micros_and_day(t: SystemTime) -> (i64, i64) {
    let micros = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    };
    (micros, micros.div_euclid(86_400_000_000))
}

/// (year, month, day) of a day number (days since 1970-01-01), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn row(new: Option<&str>, old: Option<&str>) -> EventRow {
        EventRow {
            event_id: 42,
            observer_id: Some(3),
            observer: Some("orders".into()),
            table: Some("public.orders".into()),
            op: Some("UPDATE".into()),
            txid: Some(987),
            // 2026-05-01T10:00:00.000123Z
            captured_at: UNIX_EPOCH + Duration::from_micros(1_777_629_600_000_123),
            new: new.map(Into::into),
            old: old.map(Into::into),
            changed: Some(vec![Some("status".into())]),
        }
    }

    #[test]
    fn a_document_is_what_jsonb_build_object_wrote() {
        let r = row(
            Some(
                r#"{"id": 7, "note": "refund \"asap\"", "total": 1500.00, "status": "paid", "tags": ["a", 1, {"x": true}], "extra": null}"#,
            ),
            Some(r#"{"id": 7, "status": "new"}"#),
        );
        let d = build(&r).unwrap();
        assert_eq!(d.day, "2026.05.01");
        assert_eq!(
            d.source,
            concat!(
                r#"{"op": "UPDATE", "new": {"id": 7, "note": "refund \"asap\"", "total": 1500.00, "status": "paid", "tags": ["a", 1, {"x": true}], "extra": null}, "#,
                r#""old": {"id": 7, "status": "new"}, "txid": 987, "table": "public.orders", "changed": ["status"], "event_id": 42, "observer": "orders", "#,
                r#""captured_at": "2026-05-01T10:00:00.000123Z", "observer_id": 3, "#,
                r#""payload_text": "7 refund \"asap\" 1500.00 paid a 1 true 7 new", "#,
                r#""payload_fields": ["new.id=7", "new.note=refund \"asap\"", "new.status=paid", "new.total=1500.00", "old.id=7", "old.status=new"]}"#
            )
        );
        let v: serde_json::Value = serde_json::from_str(&d.source).expect("valid JSON");
        assert_eq!(v["payload_fields"][1], "new.note=refund \"asap\"");
    }

    #[test]
    fn nulls_and_empty_images() {
        let mut r = row(None, None);
        r.changed = None;
        r.observer = None;
        r.observer_id = None;
        let d = build(&r).unwrap();
        assert!(
            d.source.contains(r#""new": null, "old": null"#),
            "{}",
            d.source
        );
        assert!(d.source.contains(r#""changed": null"#));
        assert!(d.source.contains(r#""observer": null"#));
        assert!(d
            .source
            .ends_with(r#""payload_text": null, "payload_fields": null}"#));
        // an image with only nulls and containers has no text and no fields
        let d = build(&row(Some(r#"{"a": null, "b": {}, "c": []}"#), None)).unwrap();
        assert!(d
            .source
            .ends_with(r#""payload_text": null, "payload_fields": null}"#));
        // an empty string is a value
        let d = build(&row(Some(r#"{"a": ""}"#), None)).unwrap();
        assert!(d
            .source
            .ends_with(r#""payload_text": "", "payload_fields": ["new.a="]}"#));
    }

    #[test]
    fn fields_sort_by_the_unescaped_path_and_keep_escapes() {
        // "a\"" (0x61 0x22) sorts before "a\\" ... and "ab" (0x61 0x62): bytewise on the text
        let d = build(&row(Some(r#"{"ab": 1, "a\"": 2, "é": "\u0001\n"}"#), None)).unwrap();
        assert!(
            d.source
                .ends_with(r#""payload_fields": ["new.a\"=2", "new.ab=1", "new.é=\u0001\n"]}"#),
            "{}",
            d.source
        );
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for bad in [
            r#"{"a": 1"#,
            r#"{"a": "x}"#,
            r#"{"a": tru}"#,
            r#"{"a": 1]"#,
            "@",
        ] {
            let e = build(&row(Some(bad), None)).unwrap_err();
            assert_eq!(e.image, "new", "{bad}");
        }
    }

    #[test]
    fn escapes_match_postgres() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é/");
        assert_eq!(
            s,
            r#""a\"b\\c\b\f\n\r\t\u0001\u001f"#.to_owned() + "\u{7f}é/\""
        );
    }

    #[test]
    fn capture_days_and_times_in_utc() {
        for (micros, day, ts) in [
            (0i64, "1970.01.01", "1970-01-01T00:00:00.000000Z"),
            (
                951_782_400_000_000,
                "2000.02.29",
                "2000-02-29T00:00:00.000000Z",
            ),
            (
                1_798_761_599_999_999,
                "2026.12.31",
                "2026-12-31T23:59:59.999999Z",
            ),
            (-1, "1969.12.31", "1969-12-31T23:59:59.999999Z"),
        ] {
            let mut r = row(None, None);
            r.captured_at = if micros >= 0 {
                UNIX_EPOCH + Duration::from_micros(micros as u64)
            } else {
                UNIX_EPOCH - Duration::from_micros((-micros) as u64)
            };
            let d = build(&r).unwrap();
            assert_eq!(d.day, day);
            assert!(
                d.source.contains(&format!("\"captured_at\": \"{ts}\"")),
                "{}",
                d.source
            );
        }
    }
}
