//! Broken observers: an observer whose actions cannot be built (an unset `${VAR}`, an unknown
//! action type stored before `create_observer` refused it, a template using an undeclared
//! lookup, a bad URL). The worker runs none of its actions, and:
//!
//! * **its events are parked**, every pair of them, in `observers.parked` (the table of pairs
//!   whose breaker is open), so the event counts as finished and the group's checkpoint and
//!   every other observer of the group keep moving. The rows carry the destination
//!   [`parked_destination`] (`broken-observer:<id>`), which the parked-pairs loop skips while the
//!   observer is broken; once a reload finds it runnable (its definition was fixed in SQL, or
//!   the variable is set and the worker restarted) the loop delivers them with their original
//!   `webhook-id` through the fixed actions. Nothing is delivered with a half-built action (an
//!   observer is built whole or not at all) and nothing is dropped;
//! * **an observer with an `ordering_key` is held instead** (as before): parking would let its
//!   later events overtake the parked ones, breaking per-key order (SPEC §2.5). It holds its
//!   group until it is fixed, and says so;
//! * it is **reported**: an error in the log on every reload, in the heartbeat
//!   (`info.broken_observers`, which `observers.status()` shows as `broken`, and
//!   `fraiseql-observers status` / `status --check` as an error), and in the
//!   `observer_broken_observers` gauge.

use std::borrow::Cow;

use futures_util::future::join_all;
use serde_json::{json, Value};
use tracing::debug;

use super::dispatcher::EventOutcome;
use super::handler::Deliverer;
use crate::actions::Delivery;
use crate::config::actions::{AVAILABLE_ACTION_TYPES, LATER_ACTION_TYPES};
use crate::config::lookups::CACHE_EVICT_ACTION;
use crate::db::{FetchedEvent, ObserverDefinition, ParkRecord};
use crate::telemetry::metrics::PairOutcome;
use crate::telemetry::Stats;

/// Prefix of the `destination` of a broken observer's parked pairs (never a real
/// `scheme://host:port`, so it never matches a circuit breaker).
pub const PARKED_DESTINATION_PREFIX: &str = "broken-observer:";

/// The `destination` the pairs of broken observer `observer_id` are parked under.
pub fn parked_destination(observer_id: i32) -> String {
    format!("{PARKED_DESTINATION_PREFIX}{observer_id}")
}

/// An observer the worker cannot build, and what it needs to park its events.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokenObserver {
    pub id: i32,
    pub name: String,
    /// What is wrong, each with its path (`actions[0].url: ...`); never a secret's value.
    pub problems: Vec<String>,
    /// The stored type of each action (one parked pair per action); `unknown` where the type
    /// is missing. An observer stored without actions gets one pair, so that its events are
    /// still there when actions are added.
    pub action_types: Vec<String>,
    /// It has an `ordering_key`: its events are held (in order), not parked.
    pub ordered: bool,
}

impl BrokenObserver {
    pub fn new(def: &ObserverDefinition, problems: Vec<String>) -> BrokenObserver {
        let mut action_types: Vec<String> = def
            .actions
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|a| {
                        a.get("type")
                            .and_then(Value::as_str)
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .unwrap_or("unknown")
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default();
        if action_types.is_empty() {
            action_types.push("unknown".to_owned());
        }
        BrokenObserver {
            id: def.id,
            name: def.name.clone(),
            problems,
            action_types,
            ordered: def.ordering_key.as_ref().is_some_and(|k| !k.is_empty()),
        }
    }

    /// What happens to its events, for the log and `status`.
    pub fn consequence(&self, group: &str) -> String {
        if self.ordered {
            format!(
                "it has an ordering_key, so its events are held in order and every observer of \
                 group {group} waits until it is fixed"
            )
        } else {
            "its events are parked (observers.parked) and delivered once it is fixed".to_owned()
        }
    }

    /// One line: the problems and their consequence (`observers.status().broken`).
    pub fn summary(&self, group: &str) -> String {
        format!("{}; {}", self.problems.join("; "), self.consequence(group))
    }

    /// Its entry in the heartbeat's `info.broken_observers`.
    pub fn report(&self, group: &str) -> Value {
        json!({
            "observer_id": self.id,
            "observer": self.name,
            "problem": self.summary(group),
        })
    }

    /// The error kept with each parked pair (`observers.parked.last_error`, `debug-event`).
    fn parked_error(&self) -> String {
        format!(
            "observer {} is broken: {}",
            self.name,
            self.problems.join("; ")
        )
    }
}

/// An action type as a metric label: known types as they are, anything else `unknown`
/// (stored types are free text; labels stay bounded).
fn type_label(t: &str) -> &'static str {
    AVAILABLE_ACTION_TYPES
        .iter()
        .chain(LATER_ACTION_TYPES)
        .chain(std::iter::once(&CACHE_EVICT_ACTION))
        .find(|k| **k == t)
        .copied()
        .unwrap_or("unknown")
}

/// `YYYY-MM-DD` (UTC) of a Unix time in seconds: the capture day of an event whose day the
/// batch did not fetch (the parked table and deduplication key pairs by it).
pub fn utc_day(unix_seconds: f64) -> String {
    let days = (unix_seconds / 86_400.0).floor() as i64;
    // civil_from_days (H. Hinnant): days since 1970-01-01 -> proleptic Gregorian date
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl Deliverer {
    /// Parks every pair of `event` (its observer is broken): finished once all are durable.
    pub(crate) async fn park_broken(
        &self,
        observer: &BrokenObserver,
        event: &FetchedEvent,
    ) -> EventOutcome {
        let Some(parker) = &self.parker else {
            return EventOutcome::Unfinished;
        };
        let day = if event.day.is_empty() {
            utc_day(event.captured_at)
        } else {
            event.day.clone()
        };
        let body = String::from_utf8_lossy(&event.body).into_owned();
        let destination = parked_destination(observer.id);
        let error = observer.parked_error();
        let records = observer
            .action_types
            .iter()
            .enumerate()
            .map(|(index, action_type)| ParkRecord {
                event_id: event.id,
                observer_id: observer.id,
                action_index: index as i32,
                action_type: Cow::Owned(action_type.clone()),
                // the same id the pair gets when it is delivered directly
                webhook_id: Delivery::new(&self.installation, event.id, index, event.body.clone())
                    .webhook_id,
                day: day.clone(),
                destination: destination.clone(),
                body: body.clone(),
                attempts: 0,
                last_error: Some(error.clone()),
            });
        let parked = join_all(records.map(|r| parker.park(r))).await;
        if !parked.iter().all(|done| *done) {
            return EventOutcome::Unfinished; // shutting down: delivered again by the next run
        }
        Stats::add(&self.stats.broken_parked, parked.len() as u64);
        Stats::add(&self.stats.events_finished, 1);
        if let Some(m) = &self.layers.metrics {
            for t in &observer.action_types {
                m.pair(type_label(t), PairOutcome::Parked);
            }
            m.event_finished(event.captured_at);
        }
        debug!(observer = %observer.name, event_id = event.id, pairs = parked.len(), "observer is broken: event parked");
        EventOutcome::Finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(actions: Value, ordering_key: Option<Vec<String>>) -> ObserverDefinition {
        ObserverDefinition {
            id: 7,
            name: "orders".into(),
            table_name: "public.orders".into(),
            actions,
            ordering_key,
            enabled: true,
        }
    }

    #[test]
    fn one_pair_per_stored_action_and_at_least_one() {
        let b = BrokenObserver::new(
            &def(
                json!([{"type": " webhook ", "url": "${X}"}, {"type": "pigeon"}, {"url": "x"}]),
                None,
            ),
            vec!["actions[0].url: environment variable X is not set".into()],
        );
        assert_eq!(b.action_types, vec!["webhook", "pigeon", "unknown"]);
        assert!(!b.ordered);
        let b = BrokenObserver::new(&def(json!([]), Some(vec![])), vec!["p".into()]);
        assert_eq!(b.action_types, vec!["unknown"]);
        assert!(!b.ordered, "an empty ordering_key orders nothing");
    }

    #[test]
    fn summary_says_what_happens_to_the_events() {
        let problems = vec!["actions[0].url: environment variable X is not set".to_owned()];
        let parked =
            BrokenObserver::new(&def(json!([{"type": "webhook"}]), None), problems.clone());
        assert_eq!(
            parked.summary("g"),
            "actions[0].url: environment variable X is not set; its events are parked \
             (observers.parked) and delivered once it is fixed"
        );
        let held = BrokenObserver::new(
            &def(
                json!([{"type": "webhook"}]),
                Some(vec!["customer_id".into()]),
            ),
            problems,
        );
        assert!(held.ordered);
        assert!(held
            .summary("g")
            .contains("every observer of group g waits"));
        let r = parked.report("g");
        assert_eq!(r["observer_id"], 7);
        assert_eq!(r["observer"], "orders");
        assert_eq!(
            parked.parked_error(),
            "observer orders is broken: actions[0].url: environment variable X is not set"
        );
        assert_eq!(parked_destination(7), "broken-observer:7");
    }

    /// `ARRAY['a', 'b']` of the line of `sql` that declares `var`.
    fn sql_array(sql: &str, var: &str) -> Vec<String> {
        let line = sql
            .lines()
            .find(|l| l.trim_start().starts_with(var) && l.contains("ARRAY["))
            .unwrap_or_else(|| panic!("{var} not declared"));
        let inner = &line[line.find("ARRAY[").unwrap() + 6..line.rfind(']').unwrap()];
        inner
            .split(',')
            .map(|t| t.trim().trim_matches('\'').to_owned())
            .collect()
    }

    /// `observers.create_observer` refuses exactly the types this worker cannot build.
    #[test]
    fn sql_knows_the_same_action_types() {
        let sql = include_str!("../../../pg_observers/sql/bootstrap/30_admin_api.sql");
        let mut known: Vec<String> = AVAILABLE_ACTION_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect();
        known.push(CACHE_EVICT_ACTION.to_owned());
        assert_eq!(sql_array(sql, "v_known"), known);
        let later: Vec<String> = LATER_ACTION_TYPES.iter().map(|t| t.to_string()).collect();
        assert_eq!(sql_array(sql, "v_later"), later);
    }

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(type_label("webhook"), "webhook");
        assert_eq!(type_label("cache_evict"), "cache_evict");
        assert_eq!(type_label("email"), "email");
        assert_eq!(type_label("pigeon"), "unknown");
    }

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0.0), "1970-01-01");
        assert_eq!(utc_day(86_399.999_999), "1970-01-01");
        assert_eq!(utc_day(86_400.0), "1970-01-02");
        assert_eq!(utc_day(951_782_400.0), "2000-02-29");
        assert_eq!(utc_day(1_798_761_599.5), "2026-12-31");
        assert_eq!(utc_day(1_798_761_600.0), "2027-01-01");
        assert_eq!(utc_day(-1.0), "1969-12-31");
    }
}
