//! Rendering for people: aligned tables, short timestamps, ages ("3m ago").

use serde_json::Value;

/// An aligned plain-text table. Empty cells print as `-`; newlines inside cells become spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(headers: &[S]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.as_ref().to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let clean = |c: &str| {
            let c = c.replace(['\n', '\r', '\t'], " ");
            if c.is_empty() {
                "-".to_owned()
            } else {
                c
            }
        };
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|c| clean(c)).collect())
            .collect();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<width$}", width = *w))
                .collect();
            out.push_str(padded.join("  ").trim_end());
            out.push('\n');
        };
        line(&self.headers);
        for r in &rows {
            line(r);
        }
        out
    }
}

/// A JSON value as a table cell: strings unquoted, null empty, timestamps shortened.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => short_time(s).unwrap_or_else(|| s.clone()),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(other) => other.to_string(),
    }
}

/// `obj[key]` as a cell.
pub fn field(obj: &Value, key: &str) -> String {
    cell(obj.get(key))
}

/// `2026-05-01T10:00:00.123456+00:00` (PostgreSQL in UTC) -> `2026-05-01 10:00:00Z`;
/// `None` for anything that is not such a timestamp.
pub fn short_time(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let looks = b.len() >= 19
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && b[16] == b':'
        && b[..4].iter().all(u8::is_ascii_digit);
    if !looks {
        return None;
    }
    let utc = s.ends_with("+00:00") || s.ends_with('Z');
    Some(format!(
        "{} {}{}",
        &s[..10],
        &s[11..19],
        if utc { "Z" } else { "" }
    ))
}

/// Seconds as a compact duration: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn compact_duration(secs: f64) -> String {
    let s = secs.abs().round() as u64;
    let (d, h, m, sec) = (s / 86_400, (s / 3_600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// An age in seconds as `3m12s ago` (empty for null).
pub fn ago(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(s) => format!("{} ago", compact_duration(s)),
        None => String::new(),
    }
}

/// Seconds until something (`in 8s`, or `8s ago` when past).
pub fn until(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(s) if s >= 0.0 => format!("in {}", compact_duration(s)),
        Some(s) => format!("{} ago", compact_duration(s)),
        None => String::new(),
    }
}

/// Truncates to `max` characters with an ellipsis.
pub fn truncate(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Pretty JSON followed by a newline (the `--format json` output of every operator command).
pub fn json(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// `1 dead letter`, `3 dead letters`.
pub fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_fill_blanks() {
        let mut t = Table::new(&["id", "error"]);
        t.row(vec!["1".into(), "HTTP 500\nboom".into()]);
        t.row(vec!["12".into(), String::new()]);
        assert_eq!(t.render(), "ID  ERROR\n1   HTTP 500 boom\n12  -\n");
    }

    #[test]
    fn cells_and_times() {
        assert_eq!(cell(Some(&json!(null))), "");
        assert_eq!(cell(Some(&json!(true))), "yes");
        assert_eq!(cell(Some(&json!(42))), "42");
        assert_eq!(
            cell(Some(&json!("2026-05-01T10:00:00.123456+00:00"))),
            "2026-05-01 10:00:00Z"
        );
        assert_eq!(cell(Some(&json!("plain text"))), "plain text");
        assert_eq!(short_time("2026-05-01"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(compact_duration(4.6), "5s");
        assert_eq!(compact_duration(192.0), "3m12s");
        assert_eq!(compact_duration(7_500.0), "2h05m");
        assert_eq!(compact_duration(273_600.0), "3d04h");
        assert_eq!(ago(Some(&json!(61.2))), "1m01s ago");
        assert_eq!(until(Some(&json!(8.0))), "in 8s");
        assert_eq!(until(Some(&json!(-3.0))), "3s ago");
        assert_eq!(ago(None), "");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(plural(1, "entry", "entries"), "1 entry");
    }
}
