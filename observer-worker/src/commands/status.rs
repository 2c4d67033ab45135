//! `status`: the operator's view. Observers (backlog, oldest undelivered age, leader and lease,
//! dead letters, parked pairs, open breakers, last error), workers (heartbeat age, leader),
//! circuit breakers, and a list of problems (broken observers, no leader, no live worker, stale
//! heartbeats, capture broken by a schema change, dead letters, open breakers, Redis degraded).

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{json, Value};

use crate::cli::Format;
use crate::db::operator::{OperatorDb, BREAKERS, STATUS, WORKERS};

use super::failure::CliError;
use super::output::{
    ago, compact_duration, field, json as to_json, plural, truncate, until, Table,
};
use super::session::fail;

/// A worker whose last heartbeat is older than this is not running (the worker beats every 5 s;
/// the same bound as `status().workers`).
pub const STALE_AFTER_SECS: f64 = 30.0;

/// Workers not seen for longer than this are left out of the text table and the problems (their
/// heartbeat rows stay in `observers.worker` until deleted; `--format json` lists them).
pub const FORGET_AFTER_SECS: f64 = 86_400.0;

fn forgotten(w: &Value) -> bool {
    f(w, "heartbeat_age_s").is_some_and(|a| a > FORGET_AFTER_SECS)
}

/// Everything `status` shows.
#[derive(Debug, Clone, Default)]
pub struct StatusReport {
    pub observers: Vec<Value>,
    pub workers: Vec<Value>,
    /// `None`: the role may not read `observers.breakers` (needs observers_admin).
    pub breakers: Option<Vec<Value>>,
}

/// One thing an operator should look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `error` (nothing is delivered) or `warning`.
    pub severity: &'static str,
    pub group: Option<String>,
    pub observer: Option<String>,
    pub message: String,
}

/// `status --check` exit code when a problem of severity `error` is found.
pub const EXIT_PROBLEM: i32 = 4;

pub async fn run(
    db: &OperatorDb,
    format: Format,
    check: bool,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let observers = db
        .json_rows("observers.status()", STATUS, &[])
        .await
        .map_err(|e| fail(db, e))?;
    let workers = db
        .json_rows("reading observers.worker", WORKERS, &[])
        .await
        .map_err(|e| fail(db, e))?;
    let breakers = match db
        .json_rows("reading observers.breakers", BREAKERS, &[])
        .await
    {
        Ok(rows) => Some(rows),
        Err(e) if e.sqlstate() == Some("42501") => None,
        Err(e) => return Err(fail(db, e)),
    };
    let report = StatusReport {
        observers,
        workers,
        breakers,
    };
    let text = match format {
        Format::Text => render_text(&report),
        Format::Json => to_json(&report_json(&report)),
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write output: {e}")))?;
    let failing = check && problems(&report).iter().any(|p| p.severity == "error");
    Ok(if failing { EXIT_PROBLEM } else { 0 })
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn i(v: &Value, key: &str) -> i64 {
    v.get(key)
        .and_then(|x| x.as_i64().or_else(|| x.as_str()?.parse().ok()))
        .unwrap_or(0)
}

/// Heartbeat within [`STALE_AFTER_SECS`], and not the farewell a worker writes when it stops.
fn live(w: &Value) -> bool {
    s(w, "role").as_deref() != Some("stopped")
        && f(w, "heartbeat_age_s").is_some_and(|a| a <= STALE_AFTER_SECS)
}

fn stopped(w: &Value) -> bool {
    s(w, "role").as_deref() == Some("stopped")
}

/// The problems of a report, most serious first.
pub fn problems(r: &StatusReport) -> Vec<Problem> {
    let mut out = Vec::new();
    // groups that have enabled observers
    let mut groups: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    for o in &r.observers {
        if o.get("enabled") == Some(&Value::Bool(false)) {
            continue;
        }
        let g = s(o, "group_name").unwrap_or_default();
        let entry = groups.entry(g).or_insert((false, Vec::new()));
        entry.0 |= s(o, "leader").is_some();
        entry.1.push(s(o, "observer").unwrap_or_default());
    }
    for o in &r.observers {
        // a running worker cannot build it (observers.status().broken): it delivers nothing
        if let Some(why) = s(o, "broken") {
            let name = s(o, "observer").unwrap_or_default();
            out.push(Problem {
                severity: "error",
                group: s(o, "group_name"),
                observer: Some(name.clone()),
                message: format!(
                    "observer {name} is broken: {why}. Fix its definition \
                     (observers.create_observer(..., replace => true), or the worker's YAML file) \
                     or set the variable and restart the worker; docs/TROUBLESHOOTING.md, \
                     \"An observer is broken\""
                ),
            });
        }
    }
    for (g, (has_leader, names)) in &groups {
        if *has_leader {
            continue;
        }
        let alive: Vec<&Value> = r
            .workers
            .iter()
            .filter(|w| s(w, "group_name").as_deref() == Some(g.as_str()) && live(w))
            .collect();
        let message = if alive.is_empty() {
            format!(
                "group {g} has no leader and no running worker (no heartbeat in the last {}s): \
                 events of {} are not being delivered. Start `fraiseql-observers start --config FILE` \
                 with worker.group: {g}",
                STALE_AFTER_SECS as u64,
                names.join(", ")
            )
        } else {
            format!(
                "group {g} has no leader although {} alive: one should take the lease within \
                 failover.lease_ttl; if it does not, read their logs (database errors, fenced)",
                plural(alive.len() as i64, "worker is", "workers are")
            )
        };
        out.push(Problem {
            severity: "error",
            group: Some(g.clone()),
            observer: None,
            message,
        });
    }
    // capture broken by a schema change (observers.status().capture_error): for an enabled
    // observer an error (row changes are lost until it is repaired)
    for o in &r.observers {
        let Some(why) = s(o, "capture_error") else {
            continue;
        };
        let name = s(o, "observer").unwrap_or_default();
        let enabled = o.get("enabled") != Some(&Value::Bool(false));
        let message = if enabled {
            format!(
                "observer {name} does not capture as defined: {why}. Run \
                 SELECT * FROM observers.repair_observer('{name}'): it puts back what it can and \
                 says what to do otherwise (docs/TROUBLESHOOTING.md, \"Capture broken by a \
                 schema change\")"
            )
        } else {
            format!(
                "observer {name} (disabled): its triggers do not match its definition: {why}. \
                 observers.enable_observer('{name}') or observers.repair_observer('{name}') \
                 puts them back"
            )
        };
        out.push(Problem {
            severity: if enabled { "error" } else { "warning" },
            group: s(o, "group_name"),
            observer: Some(name),
            message,
        });
    }
    for w in &r.workers {
        let id = s(w, "worker_id").unwrap_or_default();
        let g = s(w, "group_name").unwrap_or_default();
        if stopped(w) || forgotten(w) {
            // a clean shutdown is not a problem by itself (no leader / no worker is reported
            // per group above)
        } else if !live(w) {
            out.push(Problem {
                severity: "warning",
                group: Some(g.clone()),
                observer: None,
                message: format!(
                    "worker {id} (group {g}): last heartbeat {}: stopped, or cannot reach the \
                     database (a stopped worker's row stays until it is seen again)",
                    ago(w.get("heartbeat_age_s"))
                ),
            });
        } else if w.get("dedup_degraded") == Some(&Value::Bool(true)) {
            out.push(Problem {
                severity: "warning",
                group: Some(g.clone()),
                observer: None,
                message: format!(
                    "worker {id} (group {g}): Redis is unreachable, deduplication runs on \
                     PostgreSQL meanwhile; fix Redis (docs/TROUBLESHOOTING.md, \"Redis down\")"
                ),
            });
        }
    }
    if let Some(breakers) = &r.breakers {
        let mut open: BTreeMap<(String, String), (String, i64)> = BTreeMap::new();
        for b in breakers {
            if s(b, "state").as_deref() == Some("closed")
                || f(b, "age_s").is_none_or(|a| a > STALE_AFTER_SECS)
            {
                continue;
            }
            open.insert(
                (
                    s(b, "group_name").unwrap_or_default(),
                    s(b, "destination").unwrap_or_default(),
                ),
                (s(b, "state").unwrap_or_default(), i(b, "parked")),
            );
        }
        for ((g, d), (state, parked)) in open {
            out.push(Problem {
                severity: "warning",
                group: Some(g),
                observer: None,
                message: format!(
                    "destination {d}: circuit breaker {state}, {} waiting for it; fix the endpoint, \
                     they are delivered when it recovers",
                    plural(parked, "pair", "pairs")
                ),
            });
        }
    }
    for o in &r.observers {
        let n = i(o, "dlq_count");
        if n > 0 {
            let name = s(o, "observer").unwrap_or_default();
            let last = s(o, "last_error")
                .map(|e| format!(" (last error: {})", truncate(&e, 80)))
                .unwrap_or_default();
            out.push(Problem {
                severity: "warning",
                group: s(o, "group_name"),
                observer: Some(name.clone()),
                message: format!(
                    "observer {name}: {}{last}; see `fraiseql-observers dlq list --observer {name}`",
                    plural(n, "dead letter", "dead letters")
                ),
            });
        }
    }
    out
}

/// `{"observers": [...], "workers": [...], "breakers": [...] | null, "problems": [...]}`.
pub fn report_json(r: &StatusReport) -> Value {
    let problems: Vec<Value> = problems(r)
        .into_iter()
        .map(|p| {
            json!({"severity": p.severity, "group": p.group, "observer": p.observer, "message": p.message})
        })
        .collect();
    json!({
        "observers": r.observers,
        "workers": r.workers,
        "breakers": r.breakers,
        "problems": problems,
    })
}

/// The job queue's depth per observer (`status().jobs`, `oldest_job_age`); nothing when no
/// observer has an unfinished job.
fn render_jobs(r: &StatusReport) -> String {
    let with_jobs: Vec<&Value> = r.observers.iter().filter(|o| i(o, "jobs") > 0).collect();
    if with_jobs.is_empty() {
        return String::new();
    }
    let mut t = Table::new(&["observer", "group", "unfinished", "oldest due"]);
    for o in with_jobs {
        t.row(vec![
            field(o, "observer"),
            field(o, "group_name"),
            field(o, "jobs"),
            f(o, "oldest_job_age_s")
                .map(compact_duration)
                .unwrap_or_default(),
        ]);
    }
    format!(
        "\nJOBS (unfinished jobs per observer; oldest due: how long the oldest waiting job is past its run_at)\n{}",
        indent(&t.render())
    )
}

pub fn render_text(r: &StatusReport) -> String {
    let mut out = String::new();
    out.push_str("OBSERVERS\n");
    if r.observers.is_empty() {
        out.push_str(
            "  no observers in this database (create them from SQL or the worker's YAML file)\n",
        );
    } else {
        let mut t = Table::new(&[
            "observer",
            "group",
            "table",
            "enabled",
            "backlog",
            "oldest",
            "leader",
            "lease",
            "dlq",
            "parked",
            "open breakers",
            "last error",
        ]);
        for o in &r.observers {
            let open = o
                .get("open_breakers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let last_error = match s(o, "last_error") {
                Some(e) => {
                    let when = ago(o.get("last_error_age_s"));
                    let e = truncate(&e, 60);
                    if when.is_empty() {
                        e
                    } else {
                        format!("{e} ({when})")
                    }
                }
                None => String::new(),
            };
            let leader = match s(o, "leader") {
                Some(l) => l,
                None if o.get("enabled") == Some(&Value::Bool(false)) => String::new(),
                None => "NONE".to_owned(),
            };
            t.row(vec![
                field(o, "observer"),
                field(o, "group_name"),
                field(o, "table_name"),
                field(o, "enabled"),
                field(o, "backlog"),
                f(o, "oldest_undelivered_age_s")
                    .map(compact_duration)
                    .unwrap_or_default(),
                leader,
                if s(o, "leader").is_some() {
                    until(o.get("lease_expires_in_s"))
                } else {
                    String::new()
                },
                field(o, "dlq_count"),
                field(o, "parked"),
                open,
                last_error,
            ]);
        }
        out.push_str(&indent(&t.render()));
    }
    out.push_str(&render_jobs(r));

    out.push_str(&format!(
        "\nWORKERS (heartbeat every 5s; not running after {}s without one)\n",
        STALE_AFTER_SECS as u64
    ));
    if r.workers.is_empty() {
        out.push_str("  no worker has ever sent a heartbeat to this database: none is running\n");
    } else {
        let mut t = Table::new(&[
            "group",
            "worker",
            "state",
            "leader",
            "last heartbeat",
            "started",
            "version",
            "pid",
        ]);
        for w in r.workers.iter().filter(|w| !forgotten(w)) {
            // the lease is the truth; the heartbeat's role can be up to 5 s old
            let state = if live(w) {
                match (w.get("leader") == Some(&Value::Bool(true)), s(w, "role")) {
                    (true, _) => "leader".to_owned(),
                    (false, Some(r)) if r == "leader" => "standby".to_owned(),
                    (false, r) => r.unwrap_or_else(|| "running".to_owned()),
                }
            } else if stopped(w) {
                "stopped".to_owned()
            } else {
                "NOT RUNNING".to_owned()
            };
            t.row(vec![
                field(w, "group_name"),
                field(w, "worker_id"),
                state,
                field(w, "leader"),
                ago(w.get("heartbeat_age_s")),
                field(w, "started_at"),
                field(w, "version"),
                field(w, "pid"),
            ]);
        }
        if !t.is_empty() {
            out.push_str(&indent(&t.render()));
        }
        let old = r.workers.iter().filter(|w| forgotten(w)).count();
        if old > 0 {
            out.push_str(&format!(
                "  {} not seen for over a day not shown (--format json lists them)\n",
                plural(old as i64, "worker", "workers")
            ));
        }
        if !r.workers.iter().any(live) {
            out.push_str("  no worker is running (all stopped, or no heartbeat in the last 30s)\n");
        }
    }

    match &r.breakers {
        None => out.push_str(
            "\nBREAKERS\n  not readable by this role (observers.breakers needs observers_admin)\n",
        ),
        Some(b) if b.is_empty() => {}
        Some(b) => {
            out.push_str("\nBREAKERS (as each worker last reported them)\n");
            let mut t = Table::new(&[
                "group",
                "destination",
                "worker",
                "state",
                "times opened",
                "parked",
                "reported",
            ]);
            for x in b {
                t.row(vec![
                    field(x, "group_name"),
                    field(x, "destination"),
                    field(x, "worker_id"),
                    field(x, "state"),
                    field(x, "times_opened"),
                    field(x, "parked"),
                    ago(x.get("age_s")),
                ]);
            }
            out.push_str(&indent(&t.render()));
        }
    }

    let problems = problems(r);
    out.push_str("\nPROBLEMS\n");
    if problems.is_empty() {
        out.push_str("  none\n");
    } else {
        for p in &problems {
            let mark = if p.severity == "error" {
                "ERROR"
            } else {
                "WARN "
            };
            out.push_str(&format!("  {mark} {}\n", p.message));
        }
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer(leader: Option<&str>, dlq: i64) -> Value {
        json!({
            "observer": "orders", "group_name": "default", "table_name": "public.orders",
            "enabled": true, "backlog": 4, "oldest_undelivered_age_s": 75.0,
            "leader": leader, "lease_expires_in_s": 8.2, "dlq_count": dlq,
            "parked": 0, "open_breakers": [], "last_error": if dlq > 0 { json!("HTTP 500: boom") } else { json!(null) },
            "last_error_age_s": 120.0
        })
    }

    fn worker(id: &str, age: f64, leader: bool) -> Value {
        json!({"group_name": "default", "worker_id": id, "role": if leader {"leader"} else {"standby"},
               "version": "0.1.0", "pid": 42, "started_at": "2026-05-01T10:00:00+00:00",
               "heartbeat_age_s": age, "leader": leader, "dedup_degraded": false})
    }

    #[test]
    fn healthy_system_has_no_problems() {
        let r = StatusReport {
            observers: vec![observer(Some("w-1"), 0)],
            workers: vec![worker("w-1", 2.0, true)],
            breakers: Some(vec![]),
        };
        assert!(problems(&r).is_empty(), "{:?}", problems(&r));
        let text = render_text(&r);
        assert!(text.contains("orders"), "{text}");
        assert!(text.contains("1m15s"), "oldest age: {text}");
        assert!(text.contains("in 8s"), "lease: {text}");
        assert!(text.contains("PROBLEMS\n  none"), "{text}");
    }

    #[test]
    fn no_worker_no_leader_and_dead_letters_are_reported() {
        let r = StatusReport {
            observers: vec![observer(None, 3)],
            workers: vec![worker("w-1", 300.0, false)],
            breakers: Some(vec![json!({"group_name": "default", "worker_id": "w-1",
                "destination": "http://x:80", "state": "open", "parked": 5, "age_s": 300.0})]),
        };
        let p = problems(&r);
        assert_eq!(p[0].severity, "error");
        assert!(
            p[0].message.contains("no leader and no running worker"),
            "{p:?}"
        );
        assert!(p
            .iter()
            .any(|x| x.message.contains("worker w-1") && x.message.contains("5m00s ago")));
        assert!(p.iter().any(|x| x.message.contains("3 dead letters")
            && x.message.contains("dlq list --observer orders")));
        // the breaker report is stale (the worker is gone): not reported as open
        assert!(
            !p.iter().any(|x| x.message.contains("circuit breaker")),
            "{p:?}"
        );
        let text = render_text(&r);
        assert!(text.contains("NONE"), "{text}");
        assert!(text.contains("NOT RUNNING"), "{text}");
        assert!(text.contains("no worker is running"), "{text}");
        let v = report_json(&r);
        assert_eq!(v["problems"][0]["severity"], "error");
        assert_eq!(v["observers"][0]["dlq_count"], 3);
    }

    #[test]
    fn a_broken_observer_is_an_error() {
        let mut bad = observer(Some("w-1"), 0);
        bad["observer"] = json!("bad");
        bad["broken"] = json!("actions[0].url: environment variable UNSET_VAR is not set; its events are parked (observers.parked) and delivered once it is fixed");
        let r = StatusReport {
            observers: vec![observer(Some("w-1"), 0), bad],
            workers: vec![worker("w-1", 1.0, true)],
            breakers: Some(vec![]),
        };
        let p = problems(&r);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].severity, "error");
        assert_eq!(p[0].observer.as_deref(), Some("bad"));
        assert!(
            p[0].message.starts_with(
                "observer bad is broken: actions[0].url: environment variable UNSET_VAR is not set"
            ),
            "{p:?}"
        );
        let text = render_text(&r);
        assert!(text.contains("ERROR observer bad is broken"), "{text}");
        assert_eq!(report_json(&r)["problems"][0]["observer"], "bad");
        // `broken` NULL (or absent: an older extension) is no problem
        let mut fine = observer(Some("w-1"), 0);
        fine["broken"] = Value::Null;
        let r = StatusReport {
            observers: vec![fine],
            workers: vec![worker("w-1", 1.0, true)],
            breakers: Some(vec![]),
        };
        assert!(problems(&r).is_empty(), "{:?}", problems(&r));
    }

    #[test]
    fn job_queue_depth_is_shown_only_when_jobs_wait() {
        let mut o = observer(Some("w-1"), 0);
        let r = StatusReport {
            observers: vec![o.clone()],
            workers: vec![worker("w-1", 1.0, true)],
            breakers: Some(vec![]),
        };
        assert!(!render_text(&r).contains("JOBS"), "{}", render_text(&r));
        o["jobs"] = json!(1200);
        o["oldest_job_age_s"] = json!(95.0);
        let r = StatusReport {
            observers: vec![o],
            ..r
        };
        let text = render_text(&r);
        let jobs = text
            .lines()
            .skip_while(|l| !l.starts_with("JOBS"))
            .nth(2)
            .unwrap_or_default();
        assert!(
            jobs.contains("orders") && jobs.contains("1200") && jobs.contains("1m35s"),
            "{text}"
        );
    }

    #[test]
    fn open_breakers_and_empty_database() {
        let r = StatusReport {
            observers: vec![observer(Some("w-1"), 0)],
            workers: vec![worker("w-1", 1.0, true)],
            breakers: Some(vec![json!({"group_name": "default", "worker_id": "w-1",
                "destination": "http://x:80", "state": "open", "parked": 5, "age_s": 1.0})]),
        };
        let p = problems(&r);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0]
            .message
            .contains("http://x:80: circuit breaker open, 5 pairs"));

        let mut w = worker("w-1", 1.0, false);
        w["role"] = json!("stopped");
        let r = StatusReport {
            observers: vec![observer(None, 0)],
            workers: vec![w],
            breakers: Some(vec![]),
        };
        let p = problems(&r);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("no leader and no running worker"),
            "{p:?}"
        );
        assert!(render_text(&r).contains("stopped"));

        let r = StatusReport {
            observers: vec![observer(Some("w-1"), 0)],
            workers: vec![worker("w-1", 1.0, true), worker("w-old", 200_000.0, false)],
            breakers: Some(vec![]),
        };
        assert!(problems(&r).is_empty(), "{:?}", problems(&r));
        let text = render_text(&r);
        assert!(!text.contains("w-old"), "{text}");
        assert!(
            text.contains("1 worker not seen for over a day not shown"),
            "{text}"
        );

        let empty = render_text(&StatusReport::default());
        assert!(empty.contains("no observers"), "{empty}");
        assert!(
            empty.contains("no worker has ever sent a heartbeat"),
            "{empty}"
        );
    }

    #[test]
    fn broken_capture_is_an_error_for_an_enabled_observer() {
        let mut o = observer(Some("w-1"), 0);
        o["capture_error"] =
            json!("UPDATE not captured: trigger observers_1_update on public.orders is missing");
        let mut off = observer(None, 0);
        off["observer"] = json!("paused");
        off["enabled"] = json!(false);
        off["capture_error"] =
            json!("DELETE not captured: trigger observers_2_delete on public.orders is missing");
        let r = StatusReport {
            observers: vec![o, off],
            workers: vec![worker("w-1", 1.0, true)],
            breakers: Some(vec![]),
        };
        let p = problems(&r);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].severity, "error");
        assert_eq!(p[0].observer.as_deref(), Some("orders"));
        assert!(
            p[0].message
                .contains("observers_1_update on public.orders is missing")
                && p[0].message.contains("observers.repair_observer('orders')"),
            "{p:?}"
        );
        assert_eq!(p[1].severity, "warning", "a disabled observer: {p:?}");
        assert!(p[1].message.contains("enable_observer('paused')"), "{p:?}");
        assert!(render_text(&r).contains("ERROR observer orders does not capture as defined"));
        assert_eq!(report_json(&r)["problems"][0]["severity"], "error");
    }
}
