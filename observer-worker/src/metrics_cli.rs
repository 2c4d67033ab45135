//! `fraiseql-observers metrics`: reads a running worker's `/metrics` and prints a readable
//! summary (text tables) or the same summary as JSON. Exit 0 ok, 1 the worker cannot be
//! reached (or did not answer with metrics), 2 bad usage / configuration.
//!
//! Counters and histograms are cumulative since the worker started; quantiles are estimated
//! from the histogram buckets the way PromQL's `histogram_quantile` does.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::cli::Format;
use crate::error::{EXIT_OK, EXIT_RUNTIME};
use crate::telemetry::metrics::names;

/// The URL used without `--url` and without a configuration file (the default `metrics.listen`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:9187/metrics";

/// `http://<listen>/metrics`; an unspecified address (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn url_from_listen(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip = if a.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            format!("http://{ip}:{}/metrics", a.port())
        }
        Ok(a) => format!("http://{a}/metrics"),
        Err(_) => format!("http://{listen}/metrics"),
    }
}

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (comments skipped; malformed lines ignored).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// What the command prints.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub url: String,
    pub version: Option<String>,
    pub group: Option<String>,
    pub worker_id: Option<String>,
    pub ready: bool,
    pub leader: bool,
    pub database_up: bool,
    pub uptime_seconds: Option<f64>,
    pub events_matched: u64,
    pub events_processed: u64,
    /// Seconds, estimated from `observer_event_latency_seconds` (since start).
    pub event_latency: Quantiles,
    pub dedup_hits: u64,
    pub dedup_degraded: bool,
    pub actions: Vec<ActionRow>,
    pub observers: Vec<ObserverRow>,
    pub breakers: Vec<BreakerRow>,
    pub lookups: Vec<LookupRow>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ActionRow {
    pub action_type: String,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub parked: u64,
    pub dedup_skipped: u64,
    pub attempts: u64,
    pub attempts_failed: u64,
    /// Seconds per attempt.
    pub attempt_duration: Quantiles,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ObserverRow {
    pub observer: String,
    pub backlog: u64,
    pub oldest_age_seconds: f64,
    pub dlq: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BreakerRow {
    pub destination: String,
    pub state: String,
    pub opened: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LookupRow {
    pub lookup: String,
    pub hits: u64,
    pub misses: u64,
}

fn label<'a>(s: &'a Sample, key: &str) -> &'a str {
    s.labels.get(key).map(String::as_str).unwrap_or("")
}

fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// `histogram_quantile(q, ...)` over cumulative `(le, count)` buckets.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in &b {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0); // beyond the largest finite bucket
            }
            let in_bucket = c - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
        }
        prev = (le, c);
    }
    None
}

fn quantiles(samples: &[&Sample]) -> Quantiles {
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
        .filter_map(|s| {
            let le = match label(s, "le") {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect();
    Quantiles {
        count: samples
            .iter()
            .find(|s| s.name.ends_with("_count"))
            .map(|s| count(s.value))
            .unwrap_or(0),
        p50: quantile(0.5, &buckets),
        p95: quantile(0.95, &buckets),
        p99: quantile(0.99, &buckets),
    }
}

/// Builds the summary from the samples of one scrape.
pub fn summarize(url: &str, samples: &[Sample]) -> Summary {
    let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    let mut s = Summary {
        url: url.to_owned(),
        ..Summary::default()
    };
    if let Some(info) = samples.iter().find(|x| x.name == names::WORKER_INFO) {
        s.version = info.labels.get("version").cloned();
        s.group = info.labels.get("group").cloned();
        s.worker_id = info.labels.get("worker_id").cloned();
    }
    s.ready = value(names::READY) == Some(1.0);
    s.leader = samples
        .iter()
        .any(|x| x.name == names::LEADER && x.value == 1.0);
    s.database_up = value(names::DATABASE_UP) == Some(1.0);
    s.uptime_seconds = value(names::WORKER_START_TIME).map(|t| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(t);
        (now - t).max(0.0)
    });
    s.events_matched = value(names::EVENTS_MATCHED).map(count).unwrap_or(0);
    s.events_processed = value(names::EVENTS_PROCESSED).map(count).unwrap_or(0);
    let latency: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.name.starts_with(names::EVENT_LATENCY))
        .collect();
    s.event_latency = quantiles(&latency);
    s.dedup_hits = value(names::DEDUP_HITS).map(count).unwrap_or(0);
    s.dedup_degraded = value(names::DEDUP_DEGRADED) == Some(1.0);

    let mut actions: BTreeMap<String, ActionRow> = BTreeMap::new();
    for x in samples {
        let row = |actions: &mut BTreeMap<String, ActionRow>| {
            let t = label(x, "action_type").to_owned();
            actions
                .entry(t.clone())
                .or_insert_with(|| ActionRow {
                    action_type: t,
                    ..ActionRow::default()
                })
                .clone()
        };
        if x.name == names::ACTIONS {
            let mut r = row(&mut actions);
            let n = count(x.value);
            match label(x, "outcome") {
                "delivered" => r.delivered += n,
                "dead_lettered" => r.dead_lettered += n,
                "parked" => r.parked += n,
                "dedup_skipped" => r.dedup_skipped += n,
                _ => {}
            }
            actions.insert(r.action_type.clone(), r);
        } else if x.name == names::ACTION_ATTEMPTS {
            let mut r = row(&mut actions);
            r.attempts += count(x.value);
            if label(x, "outcome") == "failed" {
                r.attempts_failed += count(x.value);
            }
            actions.insert(r.action_type.clone(), r);
        }
    }
    for r in actions.values_mut() {
        let hist: Vec<&Sample> = samples
            .iter()
            .filter(|x| {
                x.name.starts_with(names::ACTION_DURATION)
                    && label(x, "action_type") == r.action_type
            })
            .collect();
        r.attempt_duration = quantiles(&hist);
    }
    s.actions = actions.into_values().collect();

    let mut observers: BTreeMap<String, ObserverRow> = BTreeMap::new();
    for x in samples {
        let name = label(x, "observer");
        let entry = |o: &mut BTreeMap<String, ObserverRow>| -> ObserverRow {
            o.get(name).cloned().unwrap_or_else(|| ObserverRow {
                observer: name.to_owned(),
                ..ObserverRow::default()
            })
        };
        let mut r = if [names::BACKLOG, names::BACKLOG_OLDEST_AGE, names::DLQ_SIZE]
            .contains(&x.name.as_str())
        {
            entry(&mut observers)
        } else {
            continue;
        };
        match x.name.as_str() {
            names::BACKLOG => r.backlog = count(x.value),
            names::BACKLOG_OLDEST_AGE => r.oldest_age_seconds = x.value,
            _ => r.dlq = count(x.value),
        }
        observers.insert(name.to_owned(), r);
    }
    s.observers = observers.into_values().collect();

    let opened: BTreeMap<&str, u64> = samples
        .iter()
        .filter(|x| x.name == names::BREAKER_OPENED)
        .map(|x| (label(x, "destination"), count(x.value)))
        .collect();
    s.breakers = samples
        .iter()
        .filter(|x| x.name == names::BREAKER_STATE)
        .map(|x| BreakerRow {
            destination: label(x, "destination").to_owned(),
            state: match x.value as i64 {
                0 => "closed",
                1 => "half_open",
                _ => "open",
            }
            .to_owned(),
            opened: opened.get(label(x, "destination")).copied().unwrap_or(0),
        })
        .collect();

    let mut lookups: BTreeMap<String, LookupRow> = BTreeMap::new();
    for x in samples {
        let hit = x.name == names::LOOKUP_CACHE_HITS;
        if !hit && x.name != names::LOOKUP_CACHE_MISSES {
            continue;
        }
        let name = label(x, "lookup").to_owned();
        let r = lookups.entry(name.clone()).or_insert_with(|| LookupRow {
            lookup: name,
            ..LookupRow::default()
        });
        if hit {
            r.hits = count(x.value);
        } else {
            r.misses = count(x.value);
        }
    }
    s.lookups = lookups.into_values().collect();
    s
}

fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v < 1.0 => format!("{:.1}ms", v * 1000.0),
        Some(v) => format!("{v:.2}s"),
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// The text form of a summary.
pub fn render_text(s: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "worker    fraiseql-observers {}  group {}  id {}  ready {}  leader {}  database {}{}",
        s.version.as_deref().unwrap_or("?"),
        s.group.as_deref().unwrap_or("?"),
        s.worker_id.as_deref().unwrap_or("?"),
        yes(s.ready),
        yes(s.leader),
        if s.database_up { "up" } else { "DOWN" },
        s.uptime_seconds
            .map(|u| format!(
                "  up {}",
                humantime::format_duration(Duration::from_secs(u as u64))
            ))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "events    matched {}  processed {}  end-to-end latency p50 {}  p95 {}  p99 {}",
        s.events_matched,
        s.events_processed,
        secs(s.event_latency.p50),
        secs(s.event_latency.p95),
        secs(s.event_latency.p99)
    )?;
    writeln!(
        out,
        "dedup     hits {}  degraded {}",
        s.dedup_hits,
        yes(s.dedup_degraded)
    )?;
    writeln!(out, "(counters and quantiles since the worker started)")?;
    if !s.actions.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = s
            .actions
            .iter()
            .map(|a| {
                vec![
                    a.action_type.clone(),
                    a.delivered.to_string(),
                    a.dead_lettered.to_string(),
                    a.parked.to_string(),
                    a.dedup_skipped.to_string(),
                    a.attempts.to_string(),
                    a.attempts_failed.to_string(),
                    secs(a.attempt_duration.p50),
                    secs(a.attempt_duration.p99),
                ]
            })
            .collect();
        table(
            out,
            &[
                "ACTION",
                "DELIVERED",
                "DEAD_LETTERED",
                "PARKED",
                "DEDUP_SKIPPED",
                "ATTEMPTS",
                "FAILED",
                "ATTEMPT_P50",
                "ATTEMPT_P99",
            ],
            &rows,
        )?;
    }
    if !s.observers.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = s
            .observers
            .iter()
            .map(|o| {
                vec![
                    o.observer.clone(),
                    o.backlog.to_string(),
                    humantime::format_duration(Duration::from_secs(o.oldest_age_seconds as u64))
                        .to_string(),
                    o.dlq.to_string(),
                ]
            })
            .collect();
        table(out, &["OBSERVER", "BACKLOG", "OLDEST", "DLQ"], &rows)?;
    }
    if !s.breakers.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = s
            .breakers
            .iter()
            .map(|b| vec![b.destination.clone(), b.state.clone(), b.opened.to_string()])
            .collect();
        table(out, &["DESTINATION", "BREAKER", "OPENED"], &rows)?;
    }
    if !s.lookups.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = s
            .lookups
            .iter()
            .map(|l| vec![l.lookup.clone(), l.hits.to_string(), l.misses.to_string()])
            .collect();
        table(out, &["LOOKUP", "CACHE_HITS", "CACHE_MISSES"], &rows)?;
    }
    Ok(())
}

/// Why the metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the worker's metrics endpoint at {url}: {message}. Check that the worker is running (`fraiseql-observers start`), that `metrics` is enabled in its configuration, and that the URL matches `metrics.listen` (pass --url URL or -c FILE)")]
    Unreachable { url: String, message: String },
    #[error(
        "{url} answered HTTP {status}, not metrics: is that the worker's metrics.listen address?"
    )]
    Status { url: String, status: u16 },
    #[error(
        "{url} answered, but without any observer_* metric: is that a fraiseql-observers worker?"
    )]
    NotOurs { url: String },
}

/// Fetches and parses `url`.
pub async fn fetch(url: &str) -> Result<Vec<Sample>, FetchError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| FetchError::Unreachable {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    let unreachable = |e: reqwest::Error| FetchError::Unreachable {
        url: url.to_owned(),
        message: crate::db::root_cause(&e),
    };
    let response = client.get(url).send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let text = response.text().await.map_err(unreachable)?;
    let samples = parse(&text);
    if !samples.iter().any(|s| s.name.starts_with("observer_")) {
        return Err(FetchError::NotOurs {
            url: url.to_owned(),
        });
    }
    Ok(samples)
}

/// The command: fetch, summarise, print. Returns the exit code.
pub async fn run(url: &str, format: Format, out: &mut dyn Write) -> i32 {
    let samples = match fetch(url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_RUNTIME;
        }
    };
    let summary = summarize(url, &samples);
    let written = match format {
        Format::Text => render_text(&summary, out),
        Format::Json => serde_json::to_writer_pretty(&mut *out, &summary)
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(out)),
    };
    match written {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: writing the output failed: {e}");
            EXIT_RUNTIME
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP observer_actions_total x
# TYPE observer_actions_total counter
observer_actions_total{action_type="webhook",outcome="delivered"} 40
observer_actions_total{action_type="webhook",outcome="dead_lettered"} 10
observer_action_attempts_total{action_type="webhook",outcome="delivered"} 40
observer_action_attempts_total{action_type="webhook",outcome="failed"} 20
observer_action_duration_seconds_bucket{action_type="webhook",le="0.01"} 30
observer_action_duration_seconds_bucket{action_type="webhook",le="0.1"} 60
observer_action_duration_seconds_bucket{action_type="webhook",le="+Inf"} 60
observer_action_duration_seconds_sum{action_type="webhook"} 1.2
observer_action_duration_seconds_count{action_type="webhook"} 60
observer_backlog_events{group="default",observer="bad"} 3
observer_dlq_size{group="default",observer="bad"} 10
observer_circuit_breaker_state{destination="http://h:80"} 2
observer_circuit_breaker_opened_total{destination="http://h:80"} 1
observer_lookup_cache_hits_total{lookup="customer"} 5
observer_events_matched_total 50
observer_worker_info{group="default",version="0.1.0",worker_id="w \"1\""} 1
observer_leader{group="default"} 1
observer_database_up 0
"#;

    #[test]
    fn parses_labels_with_escapes() {
        let s = parse(TEXT);
        let info = s.iter().find(|x| x.name == "observer_worker_info").unwrap();
        assert_eq!(info.labels["worker_id"], "w \"1\"");
        assert_eq!(info.value, 1.0);
        assert_eq!(s.len(), 18);
    }

    #[test]
    fn summarises_actions_observers_breakers() {
        let s = summarize("u", &parse(TEXT));
        assert_eq!(s.events_matched, 50);
        assert!(s.leader);
        assert!(!s.database_up);
        let a = &s.actions[0];
        assert_eq!(
            (a.delivered, a.dead_lettered, a.attempts, a.attempts_failed),
            (40, 10, 60, 20)
        );
        assert_eq!(a.attempt_duration.count, 60);
        assert_eq!(a.attempt_duration.p50, Some(0.01));
        assert_eq!(s.observers[0].backlog, 3);
        assert_eq!(s.observers[0].dlq, 10);
        assert_eq!(s.breakers[0].state, "open");
        assert_eq!(s.breakers[0].opened, 1);
        assert_eq!(s.lookups[0].hits, 5);
        let mut out = Vec::new();
        render_text(&s, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("database DOWN"), "{text}");
        assert!(text.contains("webhook"), "{text}");
    }

    #[test]
    fn quantiles_interpolate_like_promql() {
        let b = [(0.1, 50.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        let p75 = quantile(0.75, &b).unwrap();
        assert!((p75 - 0.55).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            url_from_listen("0.0.0.0:9187"),
            "http://127.0.0.1:9187/metrics"
        );
        assert_eq!(url_from_listen("[::]:9000"), "http://[::1]:9000/metrics");
        assert_eq!(
            url_from_listen("10.0.0.5:9187"),
            "http://10.0.0.5:9187/metrics"
        );
    }
}
